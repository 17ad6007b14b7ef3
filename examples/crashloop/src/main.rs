//! Starts, complains, and exits with status 1: a crash-looper.
fn main() {
    eprintln!("crashloop: something went wrong, exiting with 1");
    std::process::exit(1);
}
