//! An HTTP function (`wasi:http/proxy` world): no socket, no main; the node
//! calls `handle` with a fresh instance per request.
//!
//! - any path: `hello from $POD_NAME: GET /path?query` (path and query echoed)
//! - `/echo`: the request body, streamed back
//! - `/trap`: panics (a trap: the caller gets a 500, the function keeps serving)
//! - `/sleep?ms=N`: answers after N ms (load for the autoscaler)
//! - `/spin`: loops forever (the request times out with a 504)
//! - `/file?path=/shared/x`: the file at that path of the pod's volumes (404 if absent)

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let outgoing = resp.body().expect("response body");
    ResponseOutparam::set(out, Ok(resp));
    let stream = outgoing.write().expect("body stream");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("write response body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

fn read_body(req: IncomingRequest) -> Vec<u8> {
    let body = req.consume().expect("request body");
    let stream = body.stream().expect("body stream");
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(_) => break, // closed (or the host refused more: over the limit)
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    data
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_else(|| "/".into());
        let method = method_name(&req.method());
        match path.split('?').next().unwrap_or("/") {
            "/echo" => {
                let body = read_body(req);
                respond(out, 200, &body);
            }
            "/trap" => panic!("asked to trap"),
            "/file" => {
                let file = path
                    .split_once("path=")
                    .map(|(_, v)| v.split('&').next().unwrap_or_default().to_string())
                    .unwrap_or_default();
                match std::fs::read(&file) {
                    Ok(bytes) => respond(out, 200, &bytes),
                    Err(e) => respond(out, 404, format!("{file}: {e}\n").as_bytes()),
                }
            }
            "/sleep" => {
                // `/sleep?ms=N`: answer after N milliseconds (a slow request)
                let ms: u64 = path
                    .split_once("ms=")
                    .and_then(|(_, v)| v.split('&').next()?.parse().ok())
                    .unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                respond(out, 200, format!("slept {ms} ms\n").as_bytes());
            }
            "/spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => {
                let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "hello-http".into());
                let text = format!("hello from {pod}: {method} {path}\n");
                respond(out, 200, text.as_bytes());
            }
        }
    }
}
