//! Runtime tests with tiny `.wat` fixtures.

use std::time::Duration;

use super::*;
use crate::logs;

/// A WASI preview 1 module that prints `text`, then calls `proc_exit(code)`
/// (or returns from `_start` when `code` is None).
fn p1_print(text: &str, code: Option<i32>) -> String {
    let exit = code
        .map(|c| format!("(call $exit (i32.const {c}))"))
        .unwrap_or_default();
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{text}\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            {exit}))"#,
        len = text.len() + 1
    )
}

const TRAP: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;

/// Grows memory one 64 KiB page at a time, forever.
const HOG: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $l (drop (memory.grow (i32.const 1))) (br $l))))"#;

/// Spins forever.
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;

/// A preview 2 component exporting `wasi:cli/run` that returns `ok` or `err`.
fn p2_run(ok: bool) -> String {
    format!(
        r#"(component
          (core module $m (func (export "run") (result i32) i32.const {}))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $inst (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
        if ok { 0 } else { 1 }
    )
}

struct Fixture {
    rt: WasmRuntime,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmRuntime::new(WasmConfig {
            cache_dir: dir.path().join("cache"),
            image_dir: dir.path().join("images"),
            pooling_instances: Some(16),
            extra_roots: Vec::new(),
            baseline_compiler: true,
        })
        .unwrap();
        Self { rt, dir }
    }

    fn spec(&self, name: &str, wat: &str) -> ContainerSpec {
        let bytes = wat::parse_str(wat).unwrap();
        let path = self.dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        ContainerSpec {
            id: ContainerId(name.into()),
            image: format!("file://{}", path.display()),
            args: vec![name.into()],
            env: vec![],
            working_dir: None,
            mounts: vec![],
            memory_limit: None,
            cpu_millis: None,
            log_path: self.dir.path().join(format!("{name}.log")),
            pull_policy: Default::default(),
            pull_credentials: None,
            pod_ip: None,
            name_lookup: None,
            http: Default::default(),
            sandbox: None,
            linux: Default::default(),
        }
    }

    async fn run(&self, spec: ContainerSpec) -> Exit {
        let id = spec.id.clone();
        self.rt.create(spec).await.unwrap();
        self.rt.start(&id).await.unwrap();
        self.rt.wait(&id).await.unwrap()
    }

    async fn log(&self, name: &str) -> Vec<String> {
        logs::read(&self.dir.path().join(format!("{name}.log")))
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect()
    }
}

#[tokio::test]
async fn a_module_runs_to_completion_and_its_output_is_logged() {
    let f = Fixture::new();
    let exit = f.run(f.spec("hello", &p1_print("hello, wasm", None))).await;
    assert_eq!((exit.exit_code, exit.reason.as_str()), (0, "Completed"));
    assert_eq!(f.log("hello").await, vec!["hello, wasm"]);
}

#[tokio::test]
async fn exit_codes_and_traps_become_terminated_states() {
    let f = Fixture::new();
    let exit = f.run(f.spec("exit3", &p1_print("bye", Some(3)))).await;
    assert_eq!((exit.exit_code, exit.reason.as_str()), (3, "Error"));
    let exit = f.run(f.spec("trap", TRAP)).await;
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (TRAP_EXIT_CODE, "Error")
    );
    assert!(
        exit.message.as_deref().unwrap().contains("unreachable"),
        "{:?}",
        exit.message
    );
}

#[tokio::test]
async fn growing_past_the_memory_limit_is_oomkilled() {
    let f = Fixture::new();
    let mut spec = f.spec("hog", HOG);
    spec.memory_limit = Some(4 * 1024 * 1024);
    let exit = f.run(spec).await;
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (KILLED_EXIT_CODE, "OOMKilled")
    );
}

#[tokio::test]
async fn a_spinning_guest_is_stopped_at_the_next_tick() {
    let f = Fixture::new();
    let spec = f.spec("spin", SPIN);
    let id = spec.id.clone();
    f.rt.create(spec).await.unwrap();
    f.rt.start(&id).await.unwrap();
    assert!(matches!(
        f.rt.status(&id).await.unwrap(),
        ContainerState::Running { .. }
    ));
    f.rt.stop(&id, Duration::from_secs(30)).await.unwrap();
    let exit = f.rt.wait(&id).await.unwrap();
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (KILLED_EXIT_CODE, "Killed")
    );
}

/// On a single-threaded executor a busy guest that never yielded would block
/// everything else forever; epoch ticks make it yield.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_guest_cannot_starve_others_on_the_same_thread() {
    let f = Fixture::new();
    let mut busy = f.spec("busy", SPIN);
    busy.cpu_millis = Some(100);
    let busy_id = busy.id.clone();
    f.rt.create(busy).await.unwrap();
    f.rt.start(&busy_id).await.unwrap();
    for i in 0..3 {
        let exit = f
            .run(f.spec(&format!("worker{i}"), &p1_print("done", None)))
            .await;
        assert_eq!(exit.reason, "Completed");
    }
    f.rt.stop(&busy_id, Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn compiled_artifacts_are_reused_from_memory_and_disk() {
    let f = Fixture::new();
    let wat = p1_print("cached", None);
    f.run(f.spec("a", &wat)).await;
    f.run(f.spec("b", &wat)).await;
    f.rt.tiered_up().await;
    assert_eq!(
        (f.rt.baseline_compiles(), f.rt.compile_stats()),
        (1, (1, 0)),
        "the second container reused the compiled module (one Winch compile, one tier-up)"
    );
    // a new engine (a restarted agent) finds the Cranelift code on disk
    let rt2 = WasmRuntime::new(WasmConfig {
        cache_dir: f.dir.path().join("cache"),
        image_dir: f.dir.path().join("images"),
        pooling_instances: None,
        extra_roots: Vec::new(),
        baseline_compiler: true,
    })
    .unwrap();
    let bytes = wat::parse_str(&wat).unwrap();
    rt2.compile(bytes.clone(), &crate::image::digest(&bytes))
        .await
        .unwrap();
    assert_eq!(rt2.compile_stats(), (0, 1));
}

#[tokio::test]
async fn a_new_module_starts_on_winch_code_and_later_pods_get_cranelift_code() {
    let f = Fixture::new();
    let winch = f.rt.inner.baseline.clone().expect("Winch engine on x86-64");
    let wat = p1_print("tiered", None);
    // the first pod runs (and finishes) on baseline code
    let exit = f.run(f.spec("first", &wat)).await;
    assert_eq!(exit.reason, "Completed");
    let bytes = wat::parse_str(&wat).unwrap();
    let digest = crate::image::digest(&bytes);
    f.rt.tiered_up().await;
    let later = f.rt.compile(bytes, &digest).await.unwrap();
    assert!(
        Engine::same(later.engine(), f.rt.engine()),
        "after the tier-up, new starts get the Cranelift code"
    );
    assert!(!Engine::same(later.engine(), &winch));
    assert!(
        f.rt.cache_path(&digest).exists(),
        "the Cranelift code is in the disk cache"
    );
    let exit = f.run(f.spec("second", &wat)).await;
    assert_eq!(exit.reason, "Completed");
    assert_eq!(
        (f.rt.baseline_compiles(), f.rt.compile_stats()),
        (1, (1, 0))
    );
}

#[tokio::test]
async fn a_module_winch_cannot_compile_waits_for_cranelift() {
    let f = Fixture::new();
    // tail calls: Cranelift compiles them, Winch does not
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func $count (param i32) (result i32)
          local.get 0
          i32.eqz
          if (result i32)
            i32.const 7
          else
            local.get 0
            i32.const 1
            i32.sub
            return_call $count
          end)
        (func (export "_start")
          i32.const 100000
          call $count
          call $exit))"#;
    let exit = f.run(f.spec("tail", wat)).await;
    assert_eq!(exit.exit_code, 7, "{exit:?}");
    assert_eq!(
        (f.rt.baseline_compiles(), f.rt.compile_stats()),
        (0, (1, 0))
    );
}

#[tokio::test]
async fn pods_of_one_new_module_started_together_compile_it_once() {
    let f = Fixture::new();
    let bytes = wat::parse_str(p1_print("together", None)).unwrap();
    let digest = crate::image::digest(&bytes);
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let (rt, bytes, digest) = (f.rt.clone(), bytes.clone(), digest.clone());
            tokio::spawn(async move { rt.compile(bytes, &digest).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.unwrap().unwrap();
    }
    f.rt.tiered_up().await;
    assert_eq!(
        (f.rt.baseline_compiles(), f.rt.compile_stats()),
        (1, (1, 0)),
        "one compilation (and one tier-up) for eight starts"
    );
    assert!(
        lock(&f.rt.inner.compiling).is_empty(),
        "no gate left behind"
    );
}

#[tokio::test]
async fn an_invalid_module_is_a_create_error_with_wasmtimes_reason() {
    let f = Fixture::new();
    let mut spec = f.spec("bad", TRAP);
    std::fs::write(
        spec.image.trim_start_matches("file://"),
        b"\0asm\x01\0\0\0\x05garbage",
    )
    .unwrap();
    spec.id = ContainerId("bad2".into());
    match f.rt.create(spec).await {
        Err(RuntimeError::Create { reason, .. }) => assert!(!reason.is_empty()),
        other => panic!("{other:?}"),
    }
    let mut spec = f.spec("notwasm", TRAP);
    std::fs::write(spec.image.trim_start_matches("file://"), b"#!/bin/sh\n").unwrap();
    spec.id = ContainerId("notwasm2".into());
    match f.rt.create(spec).await {
        Err(RuntimeError::Create { reason, .. }) => {
            assert!(reason.contains("not a WebAssembly binary"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let mut spec = f.spec("missing", TRAP);
    spec.image = "file:///no/such/module.wasm".into();
    assert!(matches!(
        f.rt.create(spec).await,
        Err(RuntimeError::Pull { .. })
    ));
    let mut spec = f.spec("nopull", TRAP);
    spec.image = "127.0.0.1:1/demo/absent:v1".into();
    spec.pull_policy = crate::image::PullPolicy::Never;
    assert!(matches!(
        f.rt.create(spec).await,
        Err(RuntimeError::NeverPull { .. })
    ));
}

#[tokio::test]
async fn preview2_components_run_wasi_cli_run() {
    let f = Fixture::new();
    let exit = f.run(f.spec("p2ok", &p2_run(true))).await;
    assert_eq!((exit.exit_code, exit.reason.as_str()), (0, "Completed"));
    let exit = f.run(f.spec("p2err", &p2_run(false))).await;
    assert_eq!((exit.exit_code, exit.reason.as_str()), (1, "Error"));
}

#[tokio::test(start_paused = true)]
async fn the_cpu_throttle_pauses_a_guest_over_its_quota_until_the_period_ends() {
    let t = limits::CpuThrottle::new(Some(100), None); // 10 ms per 100 ms period
    tokio::time::advance(Duration::from_millis(6)).await;
    let start = tokio::time::Instant::now();
    t.pause().await; // 6 ms used: just a yield
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::advance(Duration::from_millis(6)).await;
    let start = tokio::time::Instant::now();
    t.pause().await; // 12 ms used: sleeps to the end of the period
    assert_eq!(start.elapsed(), Duration::from_millis(88));
    let unlimited = limits::CpuThrottle::new(None, None);
    tokio::time::advance(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    unlimited.pause().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// Run with no arguments, it waits for the shutdown ask and exits 0. Run with
/// arguments (an exec), it copies up to 100 bytes of stdin to stdout and
/// exits 7.
const LISTENER: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $argsz (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasmkube:pod/lifecycle@0.1.0" "shutdown-requested" (func $asked (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $argsz (i32.const 0) (i32.const 4)))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 1))
      (then
        (loop $wait (br_if $wait (i32.eqz (call $asked))))
        (call $exit (i32.const 0))))
    (i32.store (i32.const 16) (i32.const 100))
    (i32.store (i32.const 20) (i32.const 100))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 32) (i32.const 100))
    (i32.store (i32.const 36) (i32.load (i32.const 24)))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
    (call $exit (i32.const 7))))"#;

#[tokio::test]
async fn exec_runs_a_fresh_instance_with_the_callers_stdio() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new();
    let spec = f.spec("listener", LISTENER);
    let id = spec.id.clone();
    f.rt.create(spec).await.unwrap();
    let io = || {
        let (stdin_r, stdin_w) = tokio::io::duplex(1024);
        let (out_r, out_w) = tokio::io::duplex(1024);
        let io = ExecIo {
            resize: None,
            tty: false,
            stdin: Some(Box::new(stdin_r)),
            stdout: Box::new(out_w),
            stderr: Box::new(tokio::io::sink()),
        };
        (io, stdin_w, out_r)
    };
    let (early, _, _) = io();
    assert!(
        matches!(
            f.rt.exec(&id, vec!["echo".into(), "x".into()], early).await,
            Err(RuntimeError::Exec { .. })
        ),
        "no exec before the container runs"
    );
    f.rt.start(&id).await.unwrap();
    let (exec_io, mut stdin, mut stdout) = io();
    stdin.write_all(b"ping from stdin").await.unwrap();
    drop(stdin);
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        f.rt.exec(&id, vec!["echo".into(), "x".into()], exec_io),
    )
    .await
    .expect("exec returned")
    .unwrap();
    assert_eq!((exit.exit_code, exit.reason.as_str()), (7, "Error"));
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_to_string(&mut out))
        .await
        .expect("stdout closed")
        .unwrap();
    assert_eq!(out, "ping from stdin");
    assert!(
        matches!(
            f.rt.status(&id).await.unwrap(),
            ContainerState::Running { .. }
        ),
        "the container itself kept running"
    );
    f.rt.stop(&id, Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn a_guest_that_imports_the_lifecycle_interface_is_asked_to_stop_and_finishes() {
    let f = Fixture::new();
    let spec = f.spec("graceful", LISTENER);
    let id = spec.id.clone();
    f.rt.create(spec).await.unwrap();
    f.rt.start(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.rt.stop(&id, Duration::from_secs(30)).await.unwrap();
    let exit = f.rt.wait(&id).await.unwrap();
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (0, "Completed"),
        "it heard the ask and exited on its own"
    );
    // and one that ignores the ask is interrupted when the grace period ends
    const DEAF: &str = r#"(module
      (import "wasmkube:pod/lifecycle@0.1.0" "shutdown-requested" (func $asked (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (loop $l (br $l))))"#;
    let spec = f.spec("deaf", DEAF);
    let id = spec.id.clone();
    f.rt.create(spec).await.unwrap();
    f.rt.start(&id).await.unwrap();
    f.rt.stop(&id, Duration::from_millis(200)).await.unwrap();
    let exit = f.rt.wait(&id).await.unwrap();
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (KILLED_EXIT_CODE, "Killed")
    );
    assert!(
        exit.finished_at.duration_since(exit.started_at).unwrap() >= Duration::from_millis(200),
        "it had its grace period"
    );
}

#[test]
fn guests_bind_only_the_unspecified_address_or_their_pod_ip() {
    use wasmtime_wasi::sockets::SocketAddrUse::*;
    let pod: IpAddr = "127.1.0.9".parse().unwrap();
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(socket_allowed(Some(pod), at("0.0.0.0:8080"), TcpBind));
    assert!(socket_allowed(Some(pod), at("[::]:8080"), TcpBind));
    assert!(socket_allowed(Some(pod), at("127.1.0.9:8080"), UdpBind));
    assert!(!socket_allowed(Some(pod), at("127.1.0.10:8080"), TcpBind));
    assert!(!socket_allowed(None, at("127.0.0.1:8080"), TcpBind));
    assert!(socket_allowed(Some(pod), at("127.0.0.1:5000"), TcpConnect));
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_too() {
    // sleeps an hour in poll_oneoff: no Wasm runs, so no epoch check fires
    const SLEEPER: &str = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 3600000000000))
        (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))"#;
    let f = Fixture::new();
    let spec = f.spec("sleeper", SLEEPER);
    let id = spec.id.clone();
    f.rt.create(spec).await.unwrap();
    f.rt.start(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(60), f.rt.stop(&id, Duration::ZERO))
        .await
        .expect("stop returns")
        .unwrap();
    let exit = f.rt.wait(&id).await.unwrap();
    assert_eq!(
        (exit.exit_code, exit.reason.as_str()),
        (KILLED_EXIT_CODE, "Killed")
    );
}
