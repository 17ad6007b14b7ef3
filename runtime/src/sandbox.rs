//! Pod sandboxes: a network namespace per pod, made before its containers
//! and pinned by a bind mount (as `ip netns add` pins one), so no pause
//! process is needed. OCI containers join it by path; Wasm containers run
//! on a thread that joined it, so every container of the pod shares one
//! `localhost`.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

fn cpath(p: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bring `lo` up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq we own.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        let r = if r == 0 {
            libc::ioctl(s, libc::SIOCSIFFLAGS, &req)
        } else {
            r
        };
        let e = io::Error::last_os_error();
        libc::close(s);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// Make a new network namespace with `lo` up, pinned at `path`.
/// An existing one at `path` is kept (an agent restart).
pub fn create(path: &Path) -> io::Result<()> {
    if is_pinned(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, b"")?;
    let target = path.to_path_buf();
    // unshare on a thread of its own, which then ends: the namespace lives
    // on through the bind mount
    std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare affects only this short-lived thread.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        loopback_up()?;
        let src = cpath(Path::new("/proc/thread-self/ns/net"))?;
        let dst = cpath(&target)?;
        // SAFETY: NUL-terminated paths; a bind mount of our namespace file.
        check(unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        })
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Whether a namespace is pinned at `path`.
pub fn is_pinned(path: &Path) -> bool {
    // a pinned namespace file is an nsfs inode, not the empty file below it
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: fstatfs into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Release the namespace pinned at `path` (it ends with its last user).
pub fn remove(path: &Path) -> io::Result<()> {
    if let Ok(p) = cpath(path) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Move the calling thread into the namespace pinned at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns with an open namespace fd, for this thread only.
    check(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// A tokio runtime on a thread inside a pod's network namespace: tasks
/// spawned on it open their sockets there. Dropping it ends the thread.
pub struct NetnsRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    pub path: PathBuf,
}

impl NetnsRuntime {
    pub fn start(path: &Path) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns = path.to_path_buf();
        std::thread::Builder::new()
            .name("wk-netns".into())
            .spawn(move || {
                let rt = enter(&ns).and_then(|_| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                });
                match rt {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        rt.shutdown_background();
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended"))??;
        Ok(Self {
            handle,
            _stop: stop_tx,
            path: path.to_path_buf(),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_sandbox_has_its_own_localhost() {
        if !root() {
            panic!("network namespaces need root (the test suite runs as root)");
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        create(&ns).unwrap();
        assert!(is_pinned(&ns));
        create(&ns).unwrap(); // kept
                              // a listener inside is not reachable from the host's localhost
        let rt = NetnsRuntime::start(&ns).unwrap();
        let h = rt.handle().clone();
        let port = h
            .block_on(h.spawn(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = l.accept().await {
                        use tokio::io::AsyncWriteExt;
                        let _ = s.write_all(b"inside").await;
                    }
                });
                port
            }))
            .unwrap();
        let inside = h
            .block_on(h.spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let mut b = Vec::new();
                s.read_to_end(&mut b).await.unwrap();
                b
            }))
            .unwrap();
        assert_eq!(inside, b"inside");
        let outside = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(
            outside.is_err() || {
                use std::io::Read;
                let mut b = Vec::new();
                let _ = outside.unwrap().read_to_end(&mut b);
                b != b"inside"
            }
        );
        drop(rt);
        remove(&ns).unwrap();
        assert!(!ns.exists());
    }
}
