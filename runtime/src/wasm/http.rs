//! HTTP functions: components exporting `wasi:http/incoming-handler` (the
//! `wasi:http/proxy` world), served as `wasmtime serve` serves them.
//!
//! The component is pre-instantiated once ([`ProxyPre`], on the pooling
//! allocator); every request gets a fresh instance in its own store, so an
//! idle function holds no instance at all and one request cannot see
//! another's state. Per container: at most `concurrency` requests at once
//! (more wait for a slot, up to the timeout, then 503), a request body
//! limit (413), and a deadline for the whole request (504; the instance is
//! interrupted). A trap answers 500; the function keeps serving. Outbound
//! requests (`wasi:http/outgoing-handler`) resolve cluster names first.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::limits::MemoryLimiter;
use super::{schedule, wasi_builder, GuestHost, Kill, Launch, Stdio};
use crate::logs::LogSink;
use crate::{HttpBody, HttpLimits, NameLookup};

/// The store data of one request's instance.
pub(super) struct HttpHost {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: ClusterHooks,
    pub(super) memory: MemoryLimiter,
    config: WasiConfigVariables,
    lookup: Option<NameLookup>,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl GuestHost for HttpHost {
    fn lookup(&self) -> Option<&NameLookup> {
        self.lookup.as_ref()
    }
    fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// Outbound requests: a cluster name in the URI is resolved to one of its
/// addresses (the Host header keeps the name). Plain HTTP goes through
/// wasmtime-wasi-http's default sender; HTTPS through ours, which trusts
/// the cluster CA too and verifies the name, not the address.
struct ClusterHooks {
    lookup: Option<NameLookup>,
    tls: Arc<rustls::ClientConfig>,
}

use super::outgoing::SendResult;

impl WasiHttpHooks for ClusterHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        _ = fut;
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            let Some(authority) = request.uri().authority().cloned() else {
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid) });
            };
            let host = authority.host().to_string();
            let port = authority.port_u16().unwrap_or(443);
            let connect = self
                .lookup
                .as_ref()
                .and_then(|l| (l.0)(&host))
                .and_then(|addrs| addrs.first().copied())
                .map(|ip| std::net::SocketAddr::new(ip, port).to_string())
                .unwrap_or_else(|| format!("{host}:{port}"));
            return Box::new(super::outgoing::send_https(
                request,
                options,
                connect,
                host,
                self.tls.clone(),
            ));
        }
        if let (Some(lookup), Some(authority)) = (&self.lookup, request.uri().authority().cloned())
        {
            if let Some(addrs) = (lookup.0)(authority.host()) {
                if let Some(ip) = addrs.first() {
                    let port = authority.port_u16().unwrap_or(80);
                    let mut parts = request.uri().clone().into_parts();
                    if let Ok(a) = format!("{ip}:{port}").parse() {
                        parts.authority = Some(a);
                        if let Ok(uri) = http::Uri::from_parts(parts) {
                            *request.uri_mut() = uri;
                        }
                    }
                }
            }
        }
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// A running HTTP function.
pub(super) struct Function {
    pre: ProxyPre<HttpHost>,
    /// Outbound HTTPS trust (public roots and the node's extra roots).
    tls: Arc<rustls::ClientConfig>,
    permits: Arc<tokio::sync::Semaphore>,
    limits: HttpLimits,
    /// Requests being handled now.
    pub(super) in_flight: AtomicUsize,
    /// Requests answered since the start.
    pub(super) served: AtomicU64,
    /// The container's log, while it runs.
    pub(super) log: Mutex<Option<LogSink>>,
}

impl Function {
    /// Link and pre-instantiate `component`; fails naming what the
    /// component needs that the node does not offer.
    pub(super) fn new(
        engine: &Engine,
        component: &Component,
        limits: HttpLimits,
        tls: Arc<rustls::ClientConfig>,
    ) -> wasmtime::Result<Self> {
        let mut linker = Linker::<HttpHost>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |h: &mut HttpHost| {
            WasiConfig::from(&h.config)
        })?;
        super::guest_imports(&mut linker)?;
        let pre = ProxyPre::new(linker.instantiate_pre(component)?)?;
        Ok(Self {
            pre,
            tls,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1))),
            limits,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            log: Mutex::new(None),
        })
    }
}

/// A plain-text response from the host (not the function).
pub(super) fn host_response(status: u16, message: String) -> http::Response<HttpBody> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(message + "\n"))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_default()
}

/// Counts a request in flight while alive.
struct InFlight(Arc<Function>);

impl InFlight {
    fn new(f: &Arc<Function>) -> Self {
        f.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(f.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request's instance ended without a response.
#[derive(Debug)]
struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for TimedOut {}

/// Serve one request: a fresh instance of the function's component.
pub(super) async fn handle(
    engine: &Engine,
    spec: &crate::ContainerSpec,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
    usage: Arc<super::Usage>,
    f: &Arc<Function>,
    req: http::Request<HttpBody>,
) -> http::Response<HttpBody> {
    let limits = f.limits;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return host_response(
            413,
            format!(
                "request body of {} bytes is over this function's limit of {} bytes",
                declared.unwrap_or(0),
                limits.max_body
            ),
        );
    }
    let permit = match tokio::time::timeout(limits.timeout, f.permits.clone().acquire_owned()).await
    {
        Ok(Ok(p)) => p,
        _ => {
            return host_response(
                503,
                format!(
                    "the function is at its concurrency limit of {}",
                    limits.concurrency
                ),
            )
        }
    };
    let counted = InFlight::new(f);
    let max = limits.max_body;
    let (parts, body) = req.into_parts();
    // a body without a declared length may still run over: the guest's read
    // fails, and the caller gets a 413 whatever the guest answers
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over_flag = over.clone();
    let body = http_body_util::Limited::new(body, max as usize).map_err(move |e| {
        if e.is::<http_body_util::LengthLimitError>() {
            over_flag.store(true, Ordering::Relaxed);
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max))
        } else {
            wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
        }
    });
    let req = http::Request::from_parts(parts, body);

    let Some(log) = f.log.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return host_response(503, "the function is not running".into());
    };
    let stop = Arc::new(Kill::default());
    let ctx = match wasi_builder(Launch {
        spec,
        args: &spec.args,
        stdio: Stdio::log(&log),
        stop: stop.clone(),
        shutdown: shutdown.clone(),
        usage: usage.clone(),
    }) {
        Ok(mut b) => b.build(),
        Err(e) => {
            return host_response(500, e);
        }
    };
    let lookup = spec.name_lookup.clone();
    let mut store = Store::new(
        engine,
        HttpHost {
            ctx,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: ClusterHooks {
                lookup: lookup.clone(),
                tls: f.tls.clone(),
            },
            memory: MemoryLimiter::new(spec.memory_limit, Some(usage.clone())),
            config: WasiConfigVariables::from_iter(spec.env.clone()),
            lookup,
            shutdown,
        },
    );
    store.limiter(|h| &mut h.memory);
    schedule(&mut store, stop.clone(), spec.cpu_millis, usage);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let prepared = (|| -> wasmtime::Result<_> {
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        Ok((req, out))
    })();
    let (wreq, out) = match prepared {
        Ok(v) => v,
        Err(e) => {
            return host_response(400, format!("bad request: {e:#}"));
        }
    };
    let pre = f.pre.clone();
    let func = f.clone();
    let deadline = limits.timeout;
    let task = tokio::spawn(async move {
        let _permit = permit;
        let _counted = counted;
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, wreq, out)
                .await
        };
        let result = tokio::select! {
            r = tokio::time::timeout(deadline, run) => match r {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::new(TimedOut)),
            },
            _ = stop.wait() => Err(wasmtime::Error::new(TimedOut)),
        };
        func.served.fetch_add(1, Ordering::Relaxed);
        let oom = store.data().memory.exceeded();
        (result, oom)
    });
    let response = tokio::time::timeout(deadline, rx).await;
    if over.load(Ordering::Relaxed) {
        return host_response(
            413,
            format!("request body is over this function's limit of {max} bytes"),
        );
    }
    match response {
        Ok(Ok(Ok(resp))) => {
            resp.map(|b| b.map_err(|e| Box::new(e) as crate::BoxError).boxed_unsync())
        }
        Ok(Ok(Err(code))) => host_response(500, format!("the function failed: {code:?}")),
        Ok(Err(_)) => match task.await {
            Ok((Err(e), _)) if e.is::<TimedOut>() => host_response(
                504,
                format!(
                    "the function did not answer within {}s",
                    deadline.as_secs_f64()
                ),
            ),
            Ok((_, true)) => host_response(
                500,
                format!(
                    "the function exceeded its memory limit of {} bytes",
                    spec.memory_limit.unwrap_or(0)
                ),
            ),
            Ok((Err(e), _)) => host_response(500, format!("the function trapped: {e:#}")),
            Ok((Ok(()), _)) => {
                host_response(500, "the function returned without a response".into())
            }
            Err(e) => host_response(500, format!("the function's task failed: {e}")),
        },
        Err(_) => {
            // the task's own deadline interrupts the instance
            host_response(
                504,
                format!(
                    "the function did not answer within {}s",
                    deadline.as_secs_f64()
                ),
            )
        }
    }
}

/// How long a stopping function waits between looks at its in-flight count.
pub(super) const DRAIN_POLL: Duration = Duration::from_millis(10);
