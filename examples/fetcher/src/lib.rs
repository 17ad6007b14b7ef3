//! An HTTP function that calls another Service by name: every request is
//! forwarded (GET, same path and query) to `$UPSTREAM` (for example
//! `http://hello:80`, a Service name the node resolves) through
//! `wasi:http/outgoing-handler`, and answered with
//! `fetched from UPSTREAM: <upstream body>`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Fetcher);

struct Fetcher;

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let outgoing = resp.body().expect("response body");
    ResponseOutparam::set(out, Ok(resp));
    let stream = outgoing.write().expect("body stream");
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

fn fetch(upstream: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let authority = upstream
        .strip_prefix("http://")
        .ok_or_else(|| format!("UPSTREAM {upstream:?} must start with http://"))?
        .trim_end_matches('/');
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&Scheme::Http)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    let resp = loop {
        if let Some(r) = future.get() {
            break r
                .map_err(|_| "response taken twice".to_string())?
                .map_err(|e| format!("{e:?}"))?;
        }
        future.subscribe().block();
    };
    let status = resp.status();
    let body = resp.consume().map_err(|_| "body")?;
    let stream = body.stream().map_err(|_| "stream")?;
    let mut data = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        data.extend_from_slice(&chunk);
    }
    Ok((status, data))
}

impl wasip2::exports::http::incoming_handler::Guest for Fetcher {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "http://hello:80".into());
        let path = req.path_with_query().unwrap_or_else(|| "/".into());
        match fetch(&upstream, &path) {
            Ok((status, body)) => {
                let mut text = format!("fetched from {upstream}: ").into_bytes();
                text.extend_from_slice(&body);
                respond(out, status, &text);
            }
            Err(e) => respond(out, 502, format!("fetching {upstream}{path}: {e}\n").as_bytes()),
        }
    }
}
