//! A long-running worker that shuts down cleanly when its pod is deleted:
//! it polls `wasmkube:pod/lifecycle.shutdown-requested` (the WASI stand-in
//! for SIGTERM), then records that it finished to `/data/shutdown.txt` and
//! exits 0 within the pod's grace period.
//!
//! Builds for both targets: as a preview 1 module the interface is a plain
//! core import, as a preview 2 component a WIT import.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmkube:pod/guest-imports",
    generate_all,
});

use std::time::Duration;
use wasmkube::pod::lifecycle::shutdown_requested;

fn main() {
    println!("graceful: working");
    let mut ticks: u64 = 0;
    while !shutdown_requested() {
        std::thread::sleep(Duration::from_millis(50));
        ticks += 1;
    }
    println!("graceful: shutdown requested after {ticks} ticks, saving state");
    if let Err(e) = std::fs::write(
        "/data/shutdown.txt",
        format!("clean shutdown after {ticks} ticks\n"),
    ) {
        eprintln!("graceful: /data/shutdown.txt: {e}");
    }
    println!("graceful: bye");
}
