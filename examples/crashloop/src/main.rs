//! Starts, complains, and exits with status 1: a crash-looper.
//!
//! With arguments `N DIR` it counts its attempts in `DIR/attempts` and
//! succeeds on attempt N: a flaky task for Job retries.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(n), Some(dir)) = (args.get(1).and_then(|n| n.parse::<u32>().ok()), args.get(2)) {
        let file = format!("{dir}/attempts");
        let attempt = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        let _ = std::fs::write(&file, attempt.to_string());
        if attempt >= n {
            println!("crashloop: attempt {attempt} of {n} succeeds");
            return;
        }
        eprintln!("crashloop: attempt {attempt} of {n} fails");
        std::process::exit(1);
    }
    eprintln!("crashloop: something went wrong, exiting with 1");
    std::process::exit(1);
}
