//! An HTTP function that calls the Kubernetes API the in-cluster way, as
//! client-go's `rest.InClusterConfig` does: the API server's address from
//! `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, the ServiceAccount
//! token and namespace from `/var/run/secrets/kubernetes.io/serviceaccount`
//! (the token is re-read on every call: the agent refreshes it). The
//! host's outbound HTTPS verifies the server against the cluster CA.
//!
//! `GET /PATH` requests `https://$KUBERNETES_SERVICE_HOST:$PORT/PATH` with
//! `NAMESPACE` in PATH replaced by the pod's namespace, and answers with
//! the API server's status code and body. `GET /whoami` asks for a
//! SelfSubjectReview.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(InCluster);

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

struct InCluster;

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let resp = OutgoingResponse::new(headers);
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

fn call(method: Method, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let token = std::fs::read_to_string(format!("{SA_DIR}/token"))
        .map_err(|e| format!("reading the token: {e}"))?;
    let headers = Fields::new();
    headers
        .set("authorization", &[format!("Bearer {}", token.trim()).into_bytes()])
        .map_err(|e| format!("{e:?}"))?;
    headers
        .set("accept", &[b"application/json".to_vec()])
        .map_err(|e| format!("{e:?}"))?;
    if body.is_some() {
        headers
            .set("content-type", &[b"application/json".to_vec()])
            .map_err(|e| format!("{e:?}"))?;
    }
    let req = OutgoingRequest::new(headers);
    req.set_method(&method).map_err(|_| "method")?;
    req.set_scheme(Some(&Scheme::Https)).map_err(|_| "scheme")?;
    req.set_authority(Some(&format!("{host}:{port}")))
        .map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let outgoing = req.body().map_err(|_| "request body")?;
    if let Some(b) = body {
        let stream = outgoing.write().map_err(|_| "request stream")?;
        stream.blocking_write_and_flush(b).map_err(|e| format!("{e:?}"))?;
        drop(stream);
    }
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
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

impl wasip2::exports::http::incoming_handler::Guest for InCluster {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let namespace = std::fs::read_to_string(format!("{SA_DIR}/namespace")).unwrap_or_default();
        let path = req.path_with_query().unwrap_or_else(|| "/".into());
        let result = if path == "/whoami" {
            call(
                Method::Post,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                Some(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#),
            )
        } else {
            call(Method::Get, &path.replace("NAMESPACE", namespace.trim()), None)
        };
        match result {
            Ok((status, body)) => respond(out, status, &body),
            Err(e) => respond(out, 502, format!("{{\"error\": {e:?}}}").as_bytes()),
        }
    }
}
