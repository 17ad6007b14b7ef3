//! The OCI runtime spec (`config.json`) of a container: a pure function of
//! the container, its image and where its root and cgroup live, checked
//! against oci-spec's types before it is written.
//!
//! Defaults follow containerd's: its capability set, masked and read-only
//! paths, the usual `/proc`, `/dev`, `/sys` mounts; `privileged` lifts them
//! as the kubelet asks containerd to.

use std::path::Path;

use serde_json::{json, Value};

use super::images::RunConfig;
use crate::{ContainerSpec, Security};

/// containerd's default capabilities (`oci.WithDefaultSpec`).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// containerd's masked paths.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's read-only paths.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Syscalls the `RuntimeDefault` seccomp profile refuses with EPERM (the
/// ones Docker's and containerd's profiles leave out of their allow list
/// for unprivileged containers).
const SECCOMP_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapon",
    "swapoff",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
];

/// The argv a container runs, with Kubernetes' rules: `command` replaces
/// the image's Entrypoint (and drops its Cmd), `args` replaces its Cmd.
pub fn argv(command: &[String], args: &[String], image: &RunConfig) -> Vec<String> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => entrypoint.into_iter().chain(args.iter().cloned()).collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// The environment: the image's, then the container's on top, with a PATH
/// and HOSTNAME as container runtimes set them.
pub fn env(image: &RunConfig, container: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        out.retain(|(ek, _)| ek != k);
        out.push((k.to_string(), v.to_string()));
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    for e in image.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in container {
        set(k, v);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid and gid from `runAsUser`/`runAsGroup`, else the image's `User`
/// (numeric, or a name in the rootfs' `/etc/passwd` and `/etc/group`).
pub fn user(security: &Security, image: &RunConfig, rootfs: &Path) -> Result<(u32, u32), String> {
    let (mut uid, mut gid) = (0u32, None::<u32>);
    if let Some(u) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (name, group) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        match name.parse::<u32>() {
            Ok(n) => uid = n,
            Err(_) => {
                let line = passwd
                    .lines()
                    .find(|l| l.split(':').next() == Some(name))
                    .ok_or_else(|| format!("image user {name:?} is not in /etc/passwd"))?;
                let f: Vec<&str> = line.split(':').collect();
                uid = f.get(2).and_then(|x| x.parse().ok()).unwrap_or(0);
                gid = f.get(3).and_then(|x| x.parse().ok());
            }
        }
        if let Some(g) = group {
            gid = Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => std::fs::read_to_string(rootfs.join("etc/group"))
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.split(':').next() == Some(g))
                    .and_then(|l| l.split(':').nth(2)?.parse().ok())
                    .ok_or_else(|| format!("image group {g:?} is not in /etc/group"))?,
            });
        }
    }
    if let Some(u) = security.run_as_user {
        uid = u;
    }
    if let Some(g) = security.run_as_group {
        gid = Some(g);
    }
    Ok((uid, gid.unwrap_or(0)))
}

/// CPU shares as the kubelet computes them from the request (2 for none).
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    match request_millis {
        None | Some(0) => 2,
        Some(m) => (m * 1024 / 1000).max(2),
    }
}

/// Where a container's root and cgroup live.
pub struct Placement<'a> {
    pub rootfs: &'a Path,
    pub cgroups_path: &'a str,
    /// Files bound over the image's: /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: &'a [(String, std::path::PathBuf)],
}

/// The `config.json` of a container.
pub fn config(
    spec: &ContainerSpec,
    image: &RunConfig,
    at: &Placement<'_>,
) -> Result<Value, String> {
    let linux = &spec.linux;
    let sec = &linux.security;
    let args = argv(&linux.command, &linux.args, image);
    if args.is_empty() {
        return Err("no command: the pod gives none and the image has no Entrypoint or Cmd".into());
    }
    let hostname = linux.hostname.clone();
    let (uid, gid) = user(sec, image, at.rootfs)?;
    let mut caps: Vec<String> = if sec.privileged {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    if !sec.privileged {
        if sec.cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            caps.clear();
        }
        let drop: Vec<String> = sec.cap_drop.iter().map(norm).collect();
        caps.retain(|c| !drop.contains(c));
        for c in &sec.cap_add {
            if c.eq_ignore_ascii_case("ALL") {
                caps = ALL_CAPS.iter().map(|c| c.to_string()).collect();
                continue;
            }
            let c = norm(c);
            if !ALL_CAPS.contains(&c.as_str()) {
                return Err(format!(
                    "securityContext.capabilities.add: unknown capability {c:?}"
                ));
            }
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    let no_new_privs = !sec.privileged && !sec.allow_privilege_escalation.unwrap_or(true);
    let cwd = spec
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if sec.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (dest, src) in at.etc_files {
        mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", "rw"]}));
    }
    for m in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.guest_path, "type": "bind",
            "source": m.host_path, "options": options}));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &spec.sandbox {
        namespaces.push(json!({"type": "network", "path": ns}));
    }

    let mut resources = json!({
        "devices": [{"allow": sec.privileged, "access": "rwm"}],
        "cpu": {"shares": cpu_shares(linux.cpu_request_millis.or(spec.cpu_millis))},
    });
    if let Some(m) = spec.memory_limit {
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = spec.cpu_millis {
        resources["cpu"]["quota"] = json!(c * 100);
        resources["cpu"]["period"] = json!(100_000);
    }
    let mut linux_json = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": at.cgroups_path,
        "maskedPaths": if sec.privileged { vec![] } else { MASKED.to_vec() },
        "readonlyPaths": if sec.privileged { vec![] } else { READ_ONLY.to_vec() },
    });
    if sec.seccomp_runtime_default && !sec.privileged {
        linux_json["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            "syscalls": [{"names": SECCOMP_DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        });
    }
    let mut envs = env(image, &spec.env, &hostname);
    if spec.linux.tty && !envs.iter().any(|e| e.starts_with("TERM=")) {
        // as containerd gives a container with a terminal
        envs.push("TERM=xterm".into());
    }
    let mut process = json!({
        "terminal": spec.linux.tty,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": envs,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": no_new_privs,
    });
    if !sec.supplemental_groups.is_empty() {
        process["user"]["additionalGids"] = json!(sec.supplemental_groups);
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": at.rootfs, "readonly": sec.read_only_root},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux_json,
    });
    // checked against the OCI runtime spec's types
    serde_json::from_value::<oci_spec::runtime::Spec>(config.clone())
        .map_err(|e| format!("the generated config.json is not a valid OCI spec: {e}"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(entry: &[&str], cmd: &[&str]) -> RunConfig {
        RunConfig {
            entrypoint: (!entry.is_empty()).then(|| entry.iter().map(|s| s.to_string()).collect()),
            cmd: (!cmd.is_empty()).then(|| cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let image = rc(&["/entry"], &["--default"]);
        assert_eq!(argv(&[], &[], &image), v(&["/entry", "--default"]));
        assert_eq!(argv(&[], &v(&["x"]), &image), v(&["/entry", "x"]));
        assert_eq!(argv(&v(&["/bin/sh"]), &[], &image), v(&["/bin/sh"]));
        assert_eq!(
            argv(&v(&["/bin/sh"]), &v(&["-c", "true"]), &image),
            v(&["/bin/sh", "-c", "true"])
        );
    }

    #[test]
    fn container_env_wins_over_the_image() {
        let image = RunConfig {
            env: Some(v(&["A=image", "PATH=/opt/bin"])),
            ..Default::default()
        };
        let e = env(&image, &[("A".into(), "pod".into())], "h");
        assert!(e.contains(&"A=pod".to_string()), "{e:?}");
        assert!(e.contains(&"PATH=/opt/bin".to_string()), "{e:?}");
        assert!(e.contains(&"HOSTNAME=h".to_string()), "{e:?}");
    }

    #[test]
    fn users_come_from_the_pod_then_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "adm:x:4:\n").unwrap();
        let none = Security::default();
        let image = |u: &str| RunConfig {
            user: Some(u.into()),
            ..Default::default()
        };
        assert_eq!(
            user(&none, &RunConfig::default(), dir.path()).unwrap(),
            (0, 0)
        );
        assert_eq!(user(&none, &image("www"), dir.path()).unwrap(), (33, 34));
        assert_eq!(
            user(&none, &image("1000:adm"), dir.path()).unwrap(),
            (1000, 4)
        );
        assert!(user(&none, &image("nobody"), dir.path()).is_err());
        let pod = Security {
            run_as_user: Some(7),
            run_as_group: Some(8),
            ..Default::default()
        };
        assert_eq!(user(&pod, &image("www"), dir.path()).unwrap(), (7, 8));
    }

    fn spec() -> ContainerSpec {
        let mut s = ContainerSpec::new(crate::ContainerId("u/c/0".into()), "busybox".into());
        s.linux.command = v(&["sh"]);
        s.linux.hostname = "pod".into();
        s
    }

    #[test]
    fn the_config_has_containerds_defaults_and_the_pods_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.memory_limit = Some(64 << 20);
        s.cpu_millis = Some(500);
        s.linux.cpu_request_millis = Some(250);
        s.sandbox = Some("/run/netns/x".into());
        s.linux.security.cap_drop = v(&["NET_RAW"]);
        s.linux.security.cap_add = v(&["NET_ADMIN"]);
        s.linux.security.allow_privilege_escalation = Some(false);
        let at = Placement {
            rootfs: dir.path(),
            cgroups_path: "/wasmkube/pod-u/c",
            etc_files: &[],
        };
        let c = config(&s, &RunConfig::default(), &at).unwrap();
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_NET_RAW")));
        assert!(caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(c["linux"]["resources"]["cpu"]["shares"], 256);
        assert!(c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "network", "path": "/run/netns/x"})));
        assert!(c["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        assert!(c["linux"].get("seccomp").is_none());

        s.linux.security.privileged = true;
        s.linux.security.seccomp_runtime_default = true;
        let c = config(&s, &RunConfig::default(), &at).unwrap();
        assert!(c["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(c["linux"]["maskedPaths"], json!([]));
        assert_eq!(c["linux"]["resources"]["devices"][0]["allow"], true);
        assert!(c["linux"].get("seccomp").is_none());

        s.linux.security.privileged = false;
        let c = config(&s, &RunConfig::default(), &at).unwrap();
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.linux.command.clear();
        let at = Placement {
            rootfs: dir.path(),
            cgroups_path: "/x",
            etc_files: &[],
        };
        let e = config(&s, &RunConfig::default(), &at).unwrap_err();
        assert!(e.contains("no command"), "{e}");
        s.linux.security.cap_add = v(&["BOGUS"]);
        s.linux.command = v(&["sh"]);
        assert!(config(&s, &RunConfig::default(), &at)
            .unwrap_err()
            .contains("BOGUS"));
    }
}
