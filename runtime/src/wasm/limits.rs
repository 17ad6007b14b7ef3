//! Memory and CPU limits for one store.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// What a container's instances use, summed over them (its main instance,
/// its execs, an HTTP function's requests in flight).
#[derive(Debug, Default)]
pub struct Usage {
    /// CPU time spent running guest code, cumulative.
    pub cpu_nanos: AtomicU64,
    /// Linear memory held now.
    pub memory_bytes: AtomicU64,
}

/// Caps the sum of a store's linear memories; growing past it traps.
pub struct MemoryLimiter {
    max: Option<usize>,
    total: usize,
    exceeded: bool,
    usage: Option<Arc<Usage>>,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(u) = &self.usage {
            u.memory_bytes
                .fetch_sub(self.total as u64, Ordering::Relaxed);
        }
    }
}

impl MemoryLimiter {
    pub fn new(max: Option<u64>, usage: Option<Arc<Usage>>) -> Self {
        Self {
            max: max.map(|m| m as usize),
            total: 0,
            exceeded: false,
            usage,
        }
    }

    /// Whether the guest tried to grow past its limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.total + desired.saturating_sub(current);
        if let Some(max) = self.max {
            if next > max {
                self.exceeded = true;
                wasmtime::bail!(
                    "memory limit exceeded: the guest asked for {next} bytes, its limit is {max}"
                );
            }
        }
        if let Some(u) = &self.usage {
            u.memory_bytes
                .fetch_add((next - self.total) as u64, Ordering::Relaxed);
        }
        self.total = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

/// The CFS-like accounting period.
pub const PERIOD: Duration = Duration::from_millis(100);

struct ThrottleState {
    period_start: Instant,
    used: Duration,
    resumed: Instant,
}

/// Accounts the time a guest runs between epoch ticks and, once it has used
/// its quota for the current period, pauses it until the period ends.
#[derive(Clone)]
pub struct CpuThrottle {
    quota: Option<Duration>,
    state: Arc<Mutex<ThrottleState>>,
    usage: Option<Arc<Usage>>,
}

type Pause = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl CpuThrottle {
    pub fn new(cpu_millis: Option<u64>, usage: Option<Arc<Usage>>) -> Self {
        let now = Instant::now();
        Self {
            usage,
            quota: cpu_millis.map(|m| PERIOD.mul_f64(m as f64 / 1000.0)),
            state: Arc::new(Mutex::new(ThrottleState {
                period_start: now,
                used: Duration::ZERO,
                resumed: now,
            })),
        }
    }

    /// Called on each epoch tick while the guest runs: the future to await
    /// before it continues (a plain yield, or a sleep when over quota).
    pub fn pause(&self) -> Pause {
        let now = Instant::now();
        let wake = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let resumed = s.resumed;
            let ran = now.saturating_duration_since(resumed);
            s.used += ran;
            if let Some(u) = &self.usage {
                // between two ticks the guest may also have waited in a host
                // call; a tick proves at most one tick of running
                let counted = ran.min(super::TICK);
                u.cpu_nanos
                    .fetch_add(counted.as_nanos() as u64, Ordering::Relaxed);
            }
            if now >= s.period_start + PERIOD {
                s.period_start = now;
                s.used = Duration::ZERO;
            }
            match self.quota {
                Some(q) if s.used >= q => Some(s.period_start + PERIOD),
                _ => None,
            }
        };
        let state = self.state.clone();
        Box::pin(async move {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::task::yield_now().await,
            }
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if wake.is_some() {
                s.period_start = now;
                s.used = Duration::ZERO;
            }
            s.resumed = now;
        })
    }
}
