//! A small HTTP server on `wasi:sockets` (a preview 2 component): listens on
//! $POD_IP:$PORT (default 0.0.0.0:8080), one connection at a time. Binding
//! the pod IP (`POD_IP` from the downward API) gives each replica its own
//! port space even when several run on one machine.
//!
//! - `GET /healthz`: 200 for the first $HEALTHY_FOR health checks (default:
//!   always), 500 after that: a liveness probe target that goes bad.
//! - any other path: 200 with a greeting naming the pod and the path.
//! - `webserver check` exits 0 and `webserver fail` exits 1: subcommands for
//!   exec probes (an exec runs a fresh instance of the module);
//!   `webserver env NAME` prints a variable, `webserver cat` copies stdin
//!   to stdout, and `webserver get HOST:PORT PATH` fetches a page (by
//!   cluster DNS name too), for `wkctl exec`.
//! - `ACCESS_LOG=/path`: append a line per request (not health checks) to
//!   that file, for a log-shipping sidecar.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("check") => {
            println!("ok");
            return;
        }
        Some("fail") => {
            println!("not ok");
            std::process::exit(1);
        }
        Some("env") => {
            let name = args.get(2).map(String::as_str).unwrap_or("POD_NAME");
            println!("{}", std::env::var(name).unwrap_or_default());
            return;
        }
        Some("get") => {
            // `webserver get HOST:PORT PATH`: one GET, by name (cluster DNS
            // names resolve through wasi:sockets name lookup), body to stdout
            let target = args.get(2).map(String::as_str).unwrap_or("localhost:8080");
            let path = args.get(3).map(String::as_str).unwrap_or("/");
            match get(target, path) {
                Ok(body) => print!("{body}"),
                Err(e) => {
                    eprintln!("webserver get {target}{path}: {e}");
                    std::process::exit(1);
                }
            }
            return;
        }
        Some("cat") => {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::stdout());
            return;
        }
        _ => {}
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let healthy_for: Option<u64> = std::env::var("HEALTHY_FOR")
        .ok()
        .and_then(|v| v.parse().ok());
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "webserver".into());
    let ip = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| "0.0.0.0".into());
    let listener = match TcpListener::bind(format!("{ip}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webserver: bind {ip}:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("webserver: listening on {ip}:{port}");
    let mut health_checks: u64 = 0;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        let mut reader = BufReader::new(&conn);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // skip the headers
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => break,
                Ok(_) if h == "\r\n" || h == "\n" => break,
                Ok(_) => {}
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        if let Ok(log) = std::env::var("ACCESS_LOG") {
            if path != "/healthz" {
                // one line per request, for a log-shipping sidecar to follow
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| writeln!(f, "{pod} {}", line.trim_end()));
            }
        }
        let (status, body) = if path == "/healthz" {
            health_checks += 1;
            match healthy_for {
                Some(n) if health_checks > n => {
                    ("500 Internal Server Error", "unhealthy\n".to_string())
                }
                _ => ("200 OK", "ok\n".to_string()),
            }
        } else {
            ("200 OK", format!("hello from {pod} at {path}\n"))
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

fn get(target: &str, path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(target)?;
    let host = target.split(':').next().unwrap_or(target);
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(body)
}
