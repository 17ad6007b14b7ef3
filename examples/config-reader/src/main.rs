//! Reads configuration from the environment and from a mounted ConfigMap
//! (/config), and prints what it found.
fn main() {
    let mut vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("APP_")).collect();
    vars.sort();
    for (k, v) in vars {
        println!("env {k}={v}");
    }
    let mut files: Vec<_> = match std::fs::read_dir("/config") {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => {
            println!("no /config: {e}");
            return;
        }
    };
    files.sort();
    for f in files {
        let content = std::fs::read_to_string(&f).unwrap_or_default();
        println!("file {}={}", f.display(), content.trim());
    }
}
