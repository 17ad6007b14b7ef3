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
//! A container with `stdin: true` reads a FIFO, `stdin` in its directory,
//! that the shim holds open (until `stdin.done` appears, for `stdinOnce`);
//! `attach` writes into it. A container with `tty: true` gets a terminal
//! from runc (`--console-socket`): the shim keeps its master, copies what
//! it shows to the log, writes what arrives on the `stdin` FIFO into it and
//! applies the `WIDTH HEIGHT` lines of the `resize` FIFO.
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
    /// The container's stdio: `-`, `stdin`, `stdin-once` or `tty`.
    pub io: String,
}

/// The FIFO an attach writes a container's input into.
pub const STDIN_FIFO: &str = "stdin";
/// The FIFO of terminal sizes (`WIDTH HEIGHT` lines).
pub const RESIZE_FIFO: &str = "resize";
/// Made by the runtime when the first attach of a `stdinOnce` container ends.
pub const STDIN_DONE: &str = "stdin.done";

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
            self.io.clone().into(),
        ]
    }

    /// From command-line arguments.
    pub fn parse(args: &[std::ffi::OsString]) -> Option<Self> {
        let [runc, root, id, dir, log, mem, io] = args else {
            return None;
        };
        Some(Self {
            runc: runc.into(),
            runc_root: root.into(),
            id: id.to_string_lossy().into_owned(),
            dir: dir.into(),
            log: log.into(),
            memory_cgroup: mem.into(),
            io: io.to_string_lossy().into_owned(),
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
    let Started {
        pid,
        stdout: stdout_r,
        stderr: stderr_r,
        console,
        stdin_keep,
        started_at,
    } = started;
    // the input side: held for the container's life, or until the first
    // attach ends (stdinOnce); a terminal gets its input and sizes here
    let _stdin_keep = match (stdin_keep, args.io.as_str()) {
        (Some(keep), "stdin-once") => {
            let done = args.dir.join(STDIN_DONE);
            std::thread::spawn(move || {
                while !done.exists() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                drop(keep);
            });
            None
        }
        (keep, _) => keep,
    };
    if let Some(master) = &console {
        terminal_input(&args.dir, master);
    }
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
    let console_out = console.as_ref().and_then(|m| m.try_clone().ok());
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
            let terminal = async {
                // a terminal's master reads EIO once the container is gone
                let Some(master) = console_out else { return };
                let mut r = tokio::fs::File::from_std(std::fs::File::from(master));
                let mut w = sink.writer(Stream::Stdout);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            };
            tokio::join!(
                copy(stdout_r, Stream::Stdout),
                copy(stderr_r, Stream::Stderr),
                terminal
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

struct Started {
    pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The terminal's master (`tty`).
    console: Option<OwnedFd>,
    /// A write end of the stdin FIFO, so the container sees no end of input.
    stdin_keep: Option<OwnedFd>,
    started_at: u64,
}

fn cpath(p: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// A fresh FIFO at `path`.
fn mkfifo(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let c = cpath(path)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn open_fd(path: &Path, flags: i32) -> Result<OwnedFd, String> {
    let c = cpath(path)?;
    // SAFETY: a NUL-terminated path; the fd returned is ours.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The container's stdin FIFO: the read end for the container and a write
/// end that keeps it from seeing the end of its input.
fn stdin_fifo(dir: &Path) -> Result<(OwnedFd, OwnedFd), String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(STDIN_FIFO);
    mkfifo(&path)?;
    // a read end opens at once without a writer only when non-blocking
    let read = open_fd(&path, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let keep = open_fd(&path, libc::O_WRONLY)?;
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok((read, keep))
}

/// Receive the terminal master runc sends over the console socket.
fn recv_fd(conn: &std::os::unix::net::UnixStream) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = [0u8; 64];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: a connected socket and a msghdr describing our buffers.
    if unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) } < 0 {
        return Err(format!(
            "console socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel filled the control buffer msg describes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err("runc sent no terminal".into());
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Feed a terminal: the `stdin` FIFO's bytes into it, the `resize` FIFO's
/// sizes onto it. The FIFOs are opened read-write so they never end.
fn terminal_input(dir: &Path, master: &OwnedFd) {
    use std::io::{BufRead, Read};
    for name in [STDIN_FIFO, RESIZE_FIFO] {
        let path = dir.join(name);
        let (fifo, out) = match mkfifo(&path)
            .and_then(|_| open_fd(&path, libc::O_RDWR))
            .and_then(|f| {
                master
                    .try_clone()
                    .map(|m| (f, m))
                    .map_err(|e| e.to_string())
            }) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let resize = name == RESIZE_FIFO;
        std::thread::spawn(move || {
            let mut from = std::fs::File::from(fifo);
            let mut to = std::fs::File::from(out);
            if resize {
                for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
                    let mut it = line.split_whitespace().map(|n| n.parse::<u16>().ok());
                    if let (Some(Some(w)), Some(Some(h))) = (it.next(), it.next()) {
                        super::set_window_size(
                            &to,
                            crate::TerminalSize {
                                width: w,
                                height: h,
                            },
                        );
                    }
                }
            } else {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
    }
}

fn start(args: &ShimArgs) -> Result<Started, String> {
    let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let pid_file = args.dir.join("init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut create = runc(args);
    create
        .arg("create")
        .arg("--bundle")
        .arg(args.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file);
    let mut stdin_keep = None;
    let mut console_socket = None;
    match args.io.as_str() {
        "stdin" | "stdin-once" => {
            let (read, keep) = stdin_fifo(&args.dir)?;
            create.stdin(Stdio::from(read));
            stdin_keep = Some(keep);
        }
        "tty" => {
            let path = args.dir.join("console.sock");
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| format!("console socket {}: {e}", path.display()))?;
            create
                .arg("--console-socket")
                .arg(&path)
                .stdin(Stdio::null());
            console_socket = Some(listener);
        }
        _ => {
            create.stdin(Stdio::null());
        }
    }
    // runc hands over the terminal while it creates the container
    let console = console_socket.map(|l| {
        std::thread::spawn(move || {
            l.accept()
                .map_err(|e| e.to_string())
                .and_then(|(c, _)| recv_fd(&c))
        })
    });
    let status = create
        .arg(&args.id)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
    if !status.success() {
        return Err(runc_error(&args.dir.join("runc.log"))
            .unwrap_or_else(|| format!("runc create failed ({status})")));
    }
    let console = match console {
        None => None,
        Some(t) => Some(
            t.join()
                .map_err(|_| "receiving the terminal failed".to_string())??,
        ),
    };
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
    Ok(Started {
        pid,
        stdout: out_r,
        stderr: err_r,
        console,
        stdin_keep,
        started_at,
    })
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
