//! Reads configuration from the environment and from a mounted ConfigMap
//! (/config), and prints what it found. Built as a preview 2 component it
//! also reads `wasi:config/store`.

#[cfg(target_env = "p2")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmkube:pod/guest-imports",
    generate_all,
});

fn main() {
    #[cfg(target_env = "p2")]
    {
        use wasi::config::store;
        match store::get("APP_MODE") {
            Ok(v) => println!("wasi:config APP_MODE={}", v.unwrap_or_default()),
            Err(e) => println!("wasi:config error: {e:?}"),
        }
        let mut all = store::get_all().unwrap_or_default();
        all.retain(|(k, _)| k.starts_with("APP_"));
        all.sort();
        println!("wasi:config has {} APP_ keys", all.len());
    }
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("APP_"))
        .collect();
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
