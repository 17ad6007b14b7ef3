//! The per-container shim: a small process, started by the runtime in its
//! own session, that outlives agent restarts as containerd's shims do.
//!
//! It makes itself a child subreaper, so the container's init becomes its
//! child once `runc create` returns; it copies the container's stdout and
//! stderr into the CRI log file; it reaps the init (nobody else waits on
//! it, so the exit status can be neither lost nor raced for), notes an OOM
//! kill from the memory cgroup, deletes the runc container and writes
//! `exit.json` before it ends.
//!
//! To the runtime that started it, it prints one line on stdout:
//! `started <pid>` or `error <message>`.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::logs::{self, Stream};

/// How a container ended, as the shim records it (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Unix milliseconds.
    pub started_at: u64,
    pub finished_at: u64,
}

/// The shim's arguments.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    pub id: String,
    /// The container's directory: `bundle/`, and where the shim writes
    /// `init.pid`, `exit.json` and `runc.log`.
    pub dir: PathBuf,
    pub log: PathBuf,
    /// The memory cgroup directory, for OOM kills.
    pub memory_cgroup: PathBuf,
}

impl ShimArgs {
    /// As command-line arguments (after the shim's own subcommand).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            self.runc.clone().into(),
            self.runc_root.clone().into(),
            self.id.clone().into(),
            self.dir.clone().into(),
            self.log.clone().into(),
            self.memory_cgroup.clone().into(),
        ]
    }

    /// From command-line arguments.
    pub fn parse(args: &[std::ffi::OsString]) -> Option<Self> {
        let [runc, root, id, dir, log, mem] = args else {
            return None;
        };
        Some(Self {
            runc: runc.into(),
            runc_root: root.into(),
            id: id.to_string_lossy().into_owned(),
            dir: dir.into(),
            log: log.into(),
            memory_cgroup: mem.into(),
        })
    }
}

pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The last error runc logged (`--log-format json`).
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(String::from))
}

fn runc(args: &ShimArgs) -> Command {
    let mut c = Command::new(&args.runc);
    c.arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(args.dir.join("runc.log"))
        .arg("--log-format")
        .arg("json");
    c
}

/// Run the shim; returns the process exit code.
pub fn main(args: ShimArgs) -> i32 {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut out = std::io::stdout();
    let report = |out: &mut std::io::Stdout, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let started = match start(&args) {
        Ok(x) => x,
        Err(e) => {
            report(&mut out, format!("error {}", e.replace('\n', " ")));
            let _ = runc(&args).args(["delete", "--force", &args.id]).status();
            return 1;
        }
    };
    let (pid, stdout_r, stderr_r, started_at) = started;
    report(&mut out, format!("started {pid}"));
    // nothing more to say: let the runtime's reader see the end
    // SAFETY: replacing fd 1 with /dev/null; both fds are valid.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 1,
    };
    let log_path = args.log.clone();
    let copier = std::thread::spawn(move || {
        rt.block_on(async move {
            let (sink, writer) = logs::open(log_path, logs::DEFAULT_MAX_BYTES);
            let copy = |fd: OwnedFd, stream: Stream| {
                let mut w = sink.writer(stream);
                async move {
                    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                        return;
                    };
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            };
            tokio::join!(
                copy(stdout_r, Stream::Stdout),
                copy(stderr_r, Stream::Stderr)
            );
            drop(sink);
            writer.finish().await;
        })
    });

    let status = reap(pid);
    // the kernel ends the rest of the pid namespace with its init; give
    // the log copier a moment to drain what they wrote
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !copier.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let oom = std::fs::read_to_string(args.memory_cgroup.join("memory.oom_control"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .map(|n| n.trim().parse::<u64>().unwrap_or(0))
            })
        })
        .unwrap_or(0)
        > 0;
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        (128 + s, Some(s))
    } else {
        (255, None)
    };
    let record = ExitRecord {
        exit_code,
        signal,
        // an OOM kill anywhere in the container, as containerd reports it
        oom_killed: oom,
        started_at,
        finished_at: unix_millis(SystemTime::now()),
    };
    let _ = runc(&args)
        .args(["delete", "--force", &args.id])
        .stderr(Stdio::null())
        .status();
    let _ = super::images::write_atomic(
        &args.dir.join("exit.json"),
        &serde_json::to_vec(&record).unwrap_or_default(),
    );
    if copier.is_finished() {
        let _ = copier.join();
    }
    0
}

type Started = (i32, OwnedFd, OwnedFd, u64);

fn start(args: &ShimArgs) -> Result<Started, String> {
    let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let pid_file = args.dir.join("init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let status = runc(args)
        .arg("create")
        .arg("--bundle")
        .arg(args.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
    if !status.success() {
        return Err(runc_error(&args.dir.join("runc.log"))
            .unwrap_or_else(|| format!("runc create failed ({status})")));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("runc create wrote no pid file")?;
    let started_at = unix_millis(SystemTime::now());
    let status = runc(args)
        .args(["start", &args.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
    if !status.success() {
        return Err(runc_error(&args.dir.join("runc.log"))
            .unwrap_or_else(|| format!("runc start failed ({status})")));
    }
    Ok((pid, out_r, err_r, started_at))
}

/// Reap children until `pid` exits; its wait status.
fn reap(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // not our child after all: follow it until it is gone
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
            return 255 << 8;
        }
    }
}
