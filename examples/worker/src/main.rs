//! A long-running worker: appends a line to /data/work.log every interval
//! (args: [count] [interval-ms] [file]; count 0 runs forever; the file is
//! /data/work.log unless given, and `-` writes to standard output only, for
//! a pod with no volume).
use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let interval: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let file = args.get(3).map_or("/data/work.log", String::as_str);
    let mut i = 0;
    loop {
        i += 1;
        if file != "-" {
            // closed again before the sleep: an idle worker holds no file
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap_or_else(|e| panic!("open {file}: {e}"));
            // the whole line in one write: `writeln!` writes "tick ", the
            // number and the newline apart, and a guest stopped between
            // them (its pod deleted) leaves half a line for the next run
            // to append to
            f.write_all(format!("tick {i}\n").as_bytes())
                .expect("write");
        }
        println!("wrote tick {i}");
        if count != 0 && i >= count {
            break;
        }
        std::thread::sleep(Duration::from_millis(interval));
    }
}
