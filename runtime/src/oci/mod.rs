//! Linux containers through Debian's `runc`, beside the Wasm runtime.
//!
//! - [`images`]: pulls and imports OCI images into a layer store;
//! - [`bundle`]: the `config.json` of a container;
//! - [`shim`]: the per-container process that holds the container's init,
//!   its logs and its exit status across agent restarts.
//!
//! A container's root is an overlay of its image's layers under an upper
//! directory of its own. Its cgroup is `<cgroup parent>/<id>` in each
//! cgroup v1 hierarchy (runc's cgroupfs driver).

pub mod bundle;
pub mod gc;
pub mod images;
pub mod shim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::image::{ImageRef, PullPolicy};
use crate::{
    ContainerId, ContainerRuntime, ContainerSpec, ContainerState, ContainerUsage, Created, ExecIo,
    Exit, RuntimeError,
};
use images::{ImageKind, ImageStore};
use shim::{ExitRecord, ShimArgs};

/// Where the OCI runtime keeps its state and which programs it runs.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// Containers, images and runc's state live under here.
    pub root: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// The program and leading arguments that start a shim (the `wk`
    /// binary and its shim subcommand); [`ShimArgs`] follow.
    pub shim: Vec<std::ffi::OsString>,
    /// DER certificates trusted for registries besides the web's roots.
    pub extra_roots: Vec<Vec<u8>>,
}

struct Ctr {
    spec: ContainerSpec,
    dir: PathBuf,
    runc_id: String,
    cgroup: String,
    state: watch::Sender<ContainerState>,
}

struct Inner {
    config: OciConfig,
    images: ImageStore,
    containers: Mutex<HashMap<ContainerId, Arc<Ctr>>>,
}

/// The runc runtime.
#[derive(Clone)]
pub struct OciRuntime {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runc id of a container (`uid/name/attempt` → `uid_name_attempt`).
pub fn runc_id(id: &ContainerId) -> String {
    id.0.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn exit_of(r: &ExitRecord) -> Exit {
    let reason = if r.oom_killed {
        "OOMKilled"
    } else if r.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Exit {
        exit_code: r.exit_code,
        reason: reason.into(),
        message: r.signal.map(|s| format!("ended by signal {s}")),
        started_at: from_millis(r.started_at),
        finished_at: from_millis(r.finished_at),
    }
}

fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // overlayfs lists the top layer first
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (src, dst, fstype, data) = (
        c(b"overlay")?,
        c(target.as_os_str().as_bytes())?,
        c(b"overlay")?,
        c(data.as_bytes())?,
    );
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(target: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(p) = std::ffi::CString::new(target.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

fn pid_alive_as(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Wait for a process that is not our child to end (pidfd readiness).
async fn wait_foreign(pid: i32) {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return;
    }
    // SAFETY: the fd was just opened and is ours.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the pidfd, which stays open while registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl OciRuntime {
    /// A runtime keeping its state under `config.root`; fails if runc cannot run.
    pub fn new(config: OciConfig) -> Result<Self, RuntimeError> {
        let images = ImageStore::new(config.root.join("images"), config.extra_roots.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                images,
                containers: Mutex::default(),
            }),
        })
    }

    /// Whether runc is on this machine.
    pub fn available(runc: &Path) -> bool {
        std::process::Command::new(runc)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The image store (for imports and garbage collection).
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// What `image` is: a Wasm artifact or a Linux image.
    pub async fn image_kind(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&crate::image::Credentials>,
    ) -> Result<ImageKind, RuntimeError> {
        match ImageRef::parse(image) {
            ImageRef::File(_) => Ok(ImageKind::Wasm),
            ImageRef::Registry(r) => self.inner.images.kind(&r, policy, credentials).await,
        }
    }

    fn container(&self, id: &ContainerId) -> Result<Arc<Ctr>, RuntimeError> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.clone()))
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.inner.config.runc);
        c.arg("--root").arg(self.inner.config.root.join("runc"));
        c
    }

    /// Run a runc command whose failure changes nothing (killing or
    /// deleting a container that may be gone already).
    async fn runc_quiet(&self, args: &[&str]) {
        let _ = self
            .runc()
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }

    fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.inner.config.root.join("containers").join(runc_id(id))
    }

    fn cgroup_dir(&self, ctrl: &str, cgroup: &str) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup")
            .join(ctrl)
            .join(cgroup.trim_start_matches('/'))
    }

    /// Take over a container a previous run of the agent started: if its
    /// shim is still there (or it has ended and left its exit), it is
    /// followed as if this runtime had started it. `None`: nothing to adopt.
    pub fn adopt(&self, spec: ContainerSpec) -> Option<ContainerState> {
        let dir = self.container_dir(&spec.id);
        let runc_id = runc_id(&spec.id);
        let cgroup = cgroup_path(&spec);
        let exit: Option<ExitRecord> = std::fs::read(dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let shim_pid: Option<i32> = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let started: Option<u64> = std::fs::read_to_string(dir.join("started"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let state = match (&exit, shim_pid, started) {
            (Some(e), _, _) => ContainerState::Exited(exit_of(e)),
            (None, Some(pid), Some(at)) if pid_alive_as(pid, &runc_id) => ContainerState::Running {
                started_at: from_millis(at),
            },
            _ => return None,
        };
        let (tx, _) = watch::channel(state.clone());
        let ctr = Arc::new(Ctr {
            spec: spec.clone(),
            dir: dir.clone(),
            runc_id,
            cgroup,
            state: tx,
        });
        lock(&self.inner.containers).insert(spec.id, ctr.clone());
        if let (ContainerState::Running { .. }, Some(pid)) = (&state, shim_pid) {
            tokio::spawn(async move {
                wait_foreign(pid).await;
                finish(&ctr).await;
            });
        }
        Some(state)
    }
}

/// The cgroup of a container: `<parent>/<runc id>`.
fn cgroup_path(spec: &ContainerSpec) -> String {
    let parent = if spec.linux.cgroup_parent.is_empty() {
        "/wasmkube"
    } else {
        spec.linux.cgroup_parent.as_str()
    };
    format!("{}/{}", parent.trim_end_matches('/'), runc_id(&spec.id))
}

/// Read the shim's exit record and mark the container exited.
async fn finish(ctr: &Ctr) {
    let exit = match tokio::fs::read(ctr.dir.join("exit.json")).await {
        Ok(b) => serde_json::from_slice::<ExitRecord>(&b)
            .ok()
            .map(|r| exit_of(&r)),
        Err(_) => None,
    };
    let exit = exit.unwrap_or_else(|| {
        let started_at = match &*ctr.state.borrow() {
            ContainerState::Running { started_at } => *started_at,
            _ => SystemTime::now(),
        };
        Exit {
            exit_code: 255,
            reason: "Unknown".into(),
            message: Some("the container's shim ended without recording an exit".into()),
            started_at,
            finished_at: SystemTime::now(),
        }
    });
    ctr.state.send_replace(ContainerState::Exited(exit));
}

#[async_trait::async_trait]
impl ContainerRuntime for OciRuntime {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn supports(&self, image: &str) -> bool {
        matches!(ImageRef::parse(image), ImageRef::Registry(_))
    }

    async fn create(&self, spec: ContainerSpec) -> Result<Created, RuntimeError> {
        let cid = spec.id.clone();
        let create_err = |reason: String| RuntimeError::Create {
            id: cid.clone(),
            reason,
        };
        let image = self
            .inner
            .images
            .get(
                &spec.image,
                spec.pull_policy,
                spec.pull_credentials.as_ref(),
            )
            .await?;
        let dir = self.container_dir(&spec.id);
        let rootfs = dir.join("bundle").join("rootfs");
        // a leftover of an earlier attempt under the same id
        unmount(&rootfs);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        for d in [&rootfs, &dir.join("upper"), &dir.join("work")] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| create_err(format!("{}: {e}", d.display())))?;
        }
        mount_overlay(
            &image.layers,
            &dir.join("upper"),
            &dir.join("work"),
            &rootfs,
        )
        .map_err(|e| create_err(format!("mounting the root filesystem: {e}")))?;
        let hostname = if spec.linux.hostname.is_empty() {
            runc_id(&spec.id)
        } else {
            spec.linux.hostname.clone()
        };
        let mut etc_files = Vec::new();
        let etc = dir.join("etc");
        let _ = tokio::fs::create_dir_all(&etc).await;
        let ip = spec
            .pod_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        let hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
        );
        for (name, body) in [("hosts", hosts), ("hostname", format!("{hostname}\n"))] {
            let p = etc.join(name);
            tokio::fs::write(&p, body)
                .await
                .map_err(|e| create_err(format!("{}: {e}", p.display())))?;
            etc_files.push((format!("/etc/{name}"), p));
        }
        if let Some(resolv) = &spec.linux.resolv_conf {
            let p = etc.join("resolv.conf");
            tokio::fs::write(&p, resolv)
                .await
                .map_err(|e| create_err(format!("{}: {e}", p.display())))?;
            etc_files.push(("/etc/resolv.conf".into(), p));
        }
        let mut spec = spec;
        spec.linux.hostname = hostname;
        let cgroup = cgroup_path(&spec);
        let config = bundle::config(
            &spec,
            &image.config,
            &bundle::Placement {
                rootfs: &rootfs,
                cgroups_path: &cgroup,
                etc_files: &etc_files,
            },
        );
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                unmount(&rootfs);
                return Err(create_err(e));
            }
        };
        images::write_atomic(
            &dir.join("bundle").join("config.json"),
            &serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|e| create_err(format!("writing config.json: {e}")))?;
        let (state, _) = watch::channel(ContainerState::Created);
        let ctr = Arc::new(Ctr {
            runc_id: runc_id(&spec.id),
            spec: spec.clone(),
            dir,
            cgroup,
            state,
        });
        lock(&self.inner.containers).insert(spec.id, ctr);
        Ok(Created { image_id: image.id })
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let ctr = self.container(id)?;
        let start_err = |reason: String| RuntimeError::Start {
            id: id.clone(),
            reason,
        };
        if *ctr.state.borrow() != ContainerState::Created {
            return Err(start_err("container already started".into()));
        }
        let cfg = &self.inner.config;
        let args = ShimArgs {
            runc: cfg.runc.clone(),
            runc_root: cfg.root.join("runc"),
            id: ctr.runc_id.clone(),
            dir: ctr.dir.clone(),
            log: ctr.spec.log_path.clone(),
            memory_cgroup: self.cgroup_dir("memory", &ctr.cgroup),
            io: match &ctr.spec.linux {
                l if l.tty => "tty",
                l if l.stdin && l.stdin_once => "stdin-once",
                l if l.stdin => "stdin",
                _ => "-",
            }
            .into(),
        };
        let (program, lead) = cfg
            .shim
            .split_first()
            .ok_or_else(|| start_err("no shim program configured".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .args(args.to_args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe; the shim leaves the agent's
        // session so that it outlives the agent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| start_err(format!("starting the shim: {e}")))?;
        if let Some(pid) = child.id() {
            let _ = tokio::fs::write(ctr.dir.join("shim.pid"), pid.to_string()).await;
        }
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
        }
        let line = line.trim();
        if let Some(msg) = line.strip_prefix("error ") {
            let _ = child.wait().await;
            return Err(start_err(msg.to_string()));
        }
        if !line.starts_with("started ") {
            let status = child.wait().await;
            return Err(start_err(format!(
                "the shim ended without starting the container ({status:?})"
            )));
        }
        let started_at = SystemTime::now();
        let _ = tokio::fs::write(
            ctr.dir.join("started"),
            shim::unix_millis(started_at).to_string(),
        )
        .await;
        ctr.state
            .send_replace(ContainerState::Running { started_at });
        tokio::spawn(async move {
            let _ = child.wait().await;
            finish(&ctr).await;
        });
        Ok(())
    }

    fn usage(&self, id: &ContainerId) -> Option<ContainerUsage> {
        let ctr = self.container(id).ok()?;
        let read = |ctrl: &str, file: &str| {
            std::fs::read_to_string(self.cgroup_dir(ctrl, &ctr.cgroup).join(file)).ok()
        };
        let cpu_nanos = read("cpuacct", "cpuacct.usage")?
            .trim()
            .parse()
            .unwrap_or(0);
        let usage: u64 = read("memory", "memory.usage_in_bytes")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // the working set, as the kubelet reports it
        let inactive: u64 = read("memory", "memory.stat")
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("total_inactive_file ")?.trim().parse().ok())
            })
            .unwrap_or(0);
        Some(ContainerUsage {
            cpu_nanos,
            memory_bytes: usage.saturating_sub(inactive),
            ..Default::default()
        })
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        let ctr = self.container(id)?;
        let mut rx = ctr.state.subscribe();
        let exited =
            |s: &ContainerState| matches!(s, ContainerState::Exited(_) | ContainerState::Created);
        if exited(&rx.borrow()) {
            return Ok(());
        }
        self.runc_quiet(&["kill", &ctr.runc_id, "TERM"]).await;
        let natural =
            tokio::time::timeout(grace, async { rx.wait_for(exited).await.map(|_| ()) }).await;
        if natural.is_err() {
            self.runc_quiet(&["kill", &ctr.runc_id, "KILL"]).await;
            let _ = rx.wait_for(exited).await;
        }
        Ok(())
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let ctr = lock(&self.inner.containers).remove(id);
        let Some(ctr) = ctr else {
            return Ok(());
        };
        if matches!(*ctr.state.borrow(), ContainerState::Running { .. }) {
            self.runc_quiet(&["kill", &ctr.runc_id, "KILL"]).await;
        }
        self.runc_quiet(&["delete", "--force", &ctr.runc_id]).await;
        unmount(&ctr.dir.join("bundle").join("rootfs"));
        let _ = tokio::fs::remove_dir_all(&ctr.dir).await;
        Ok(())
    }

    async fn status(&self, id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        Ok(self.container(id)?.state.borrow().clone())
    }

    async fn wait(&self, id: &ContainerId) -> Result<Exit, RuntimeError> {
        let ctr = self.container(id)?;
        let mut rx = ctr.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, ContainerState::Exited(_)))
            .await
            .map_err(|_| RuntimeError::NotFound(id.clone()))?
            .clone();
        match state {
            ContainerState::Exited(e) => Ok(e),
            _ => Err(RuntimeError::NotFound(id.clone())),
        }
    }

    async fn attach_input(
        &self,
        id: &ContainerId,
        input: crate::AttachInput,
    ) -> Result<(), RuntimeError> {
        let ctr = self.container(id)?;
        let linux = &ctr.spec.linux;
        if !linux.stdin && !linux.tty {
            // Kubernetes drops input for a container without stdin
            return Ok(());
        }
        let err = |reason: String| RuntimeError::Exec {
            id: id.clone(),
            reason,
        };
        let open = |name: &str| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(ctr.dir.join(name))
                .map_err(|e| err(format!("the container's {name}: {e}")))
        };
        let mut to = open(shim::STDIN_FIFO)?;
        let sizes = match (input.resize, linux.tty) {
            (Some(mut sizes), true) => {
                let mut resize = open(shim::RESIZE_FIFO)?;
                Some(tokio::spawn(async move {
                    while let Some(s) = sizes.recv().await {
                        let line = format!("{} {}\n", s.width, s.height);
                        if resize.write_all(line.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }))
            }
            _ => None,
        };
        let mut from = input.stdin;
        let _ = tokio::io::copy(&mut from, &mut to).await;
        if let Some(t) = sizes {
            t.abort();
        }
        if linux.stdin_once && !linux.tty {
            // the first attach is over: the shim lets go of the input
            let _ = tokio::fs::write(ctr.dir.join(shim::STDIN_DONE), b"").await;
        }
        Ok(())
    }

    async fn exec(
        &self,
        id: &ContainerId,
        command: Vec<String>,
        io: ExecIo,
    ) -> Result<Exit, RuntimeError> {
        let ctr = self.container(id)?;
        let exec_err = |reason: String| RuntimeError::Exec {
            id: id.clone(),
            reason,
        };
        if !matches!(*ctr.state.borrow(), ContainerState::Running { .. }) {
            return Err(exec_err("container is not running".into()));
        }
        if command.is_empty() {
            return Err(exec_err("no command given".into()));
        }
        let started_at = SystemTime::now();
        let mut cmd = self.runc();
        cmd.arg("exec").kill_on_drop(true);
        let ExecIo {
            tty,
            mut resize,
            stdin,
            mut stdout,
            mut stderr,
        } = io;
        let mut child = if tty {
            // runc makes a terminal in the container and relays it to its
            // own terminal, which must be a controlling one: give it a pty
            // of ours (a console socket would need a detached process)
            let (master, slave) = openpty().map_err(|e| exec_err(format!("openpty: {e}")))?;
            // The caller's size before the command starts. runc sizes the
            // container's terminal from ours only once the command runs, so
            // one that asks at once (`stty size`) would see 0x0: given in
            // the process spec (`consoleSize`), runc sizes it before.
            let size = match resize.as_mut() {
                Some(sizes) => tokio::time::timeout(FIRST_SIZE_WAIT, sizes.recv())
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let spec = match size {
                Some(size) => {
                    set_window_size(&master, size);
                    Some(
                        exec_process(&ctr.dir, &command, size)
                            .await
                            .map_err(exec_err)?,
                    )
                }
                None => None,
            };
            let dup = |f: &std::fs::File| {
                f.try_clone()
                    .map(std::process::Stdio::from)
                    .map_err(|e| exec_err(e.to_string()))
            };
            match &spec {
                Some(spec) => cmd.arg("--process").arg(&spec.0).arg(&ctr.runc_id),
                None => cmd
                    .args(["--tty", "--env", "TERM=xterm"])
                    .arg(&ctr.runc_id)
                    .args(&command),
            };
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(std::process::Stdio::from(slave));
            // SAFETY: setsid and ioctl are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| exec_err(format!("running runc exec: {e}")))?;
            drop(cmd); // our copies of the slave: the master reads EIO once runc is gone
                       // the caller's size on our terminal: the kernel tells runc
                       // (SIGWINCH), and runc sizes the container's terminal to match
            let resizer = match (resize, master.try_clone()) {
                (Some(mut sizes), Ok(m)) => Some(tokio::spawn(async move {
                    while let Some(size) = sizes.recv().await {
                        set_window_size(&m, size);
                    }
                })),
                _ => None,
            };
            let reader =
                tokio::fs::File::from_std(master.try_clone().map_err(|e| exec_err(e.to_string()))?);
            let feed = stdin.map(|mut from| {
                let mut to = tokio::fs::File::from_std(master);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = to.flush().await;
                    }
                })
            });
            pump(Some(reader), &mut stdout).await;
            if let Some(f) = feed {
                f.abort();
            }
            if let Some(r) = resizer {
                r.abort();
            }
            drop(spec);
            child
        } else {
            cmd.arg(&ctr.runc_id)
                .args(&command)
                .stdin(if stdin.is_some() {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                })
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd
                .spawn()
                .map_err(|e| exec_err(format!("running runc exec: {e}")))?;
            // stdin is fed until it ends or the command does
            let feed = match (stdin, child.stdin.take()) {
                (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.shutdown().await;
                })),
                _ => None,
            };
            let out = child.stdout.take();
            let err = child.stderr.take();
            tokio::join!(pump(out, &mut stdout), pump(err, &mut stderr));
            if let Some(f) = feed {
                f.abort();
            }
            child
        };
        let status = child
            .wait()
            .await
            .map_err(|e| exec_err(format!("waiting for runc exec: {e}")))?;
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(Exit {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at: SystemTime::now(),
        })
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Write the process spec of a terminal exec of `command` in the container
/// whose directory is `dir`: the container's own process (user, working
/// directory, environment, capabilities), as `runc exec` starts from, with
/// the command, a terminal of `size` and `TERM=xterm`.
async fn exec_process(
    dir: &Path,
    command: &[String],
    size: crate::TerminalSize,
) -> Result<TempFile, String> {
    static EXECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let config_path = dir.join("bundle").join("config.json");
    let config: serde_json::Value = tokio::fs::read(&config_path)
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut process = config["process"].clone();
    let Some(p) = process.as_object_mut() else {
        return Err(format!("{}: no process", config_path.display()));
    };
    p.insert("args".into(), serde_json::json!(command));
    p.insert("terminal".into(), true.into());
    p.insert(
        "consoleSize".into(),
        serde_json::json!({"height": size.height, "width": size.width}),
    );
    let mut env: Vec<serde_json::Value> = p
        .get("env")
        .and_then(|e| e.as_array())
        .map(|e| {
            e.iter()
                .filter(|v| !v.as_str().is_some_and(|s| s.starts_with("TERM=")))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    env.push("TERM=xterm".into());
    p.insert("env".into(), env.into());
    let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("exec-{n}.json"));
    tokio::fs::write(&path, process.to_string())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(TempFile(path))
}

/// How long a terminal exec waits for the caller's window size before it
/// starts the command without one (kubectl sends it as it connects).
const FIRST_SIZE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Set a terminal's window size.
fn set_window_size(tty: &std::fs::File, size: crate::TerminalSize) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid terminal fd and a winsize the call only reads.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// A new pseudo-terminal: (master, slave).
fn openpty() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills two fds we then own; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are owned by nobody else.
    unsafe {
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        ))
    }
}

/// Copy a child's output to an exec stream until either ends.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    r: Option<R>,
    w: &mut Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
) {
    let Some(mut r) = r else {
        return;
    };
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let _ = w.flush().await;
    }
}
