//! Prints a greeting with its arguments and a few environment variables.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("Hello from wasmkube! args={:?}", &args[1..]);
    for key in ["POD_NAME", "POD_NAMESPACE", "NODE_NAME", "GREETING"] {
        if let Ok(v) = std::env::var(key) {
            println!("{key}={v}");
        }
    }
}
