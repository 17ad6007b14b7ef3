//! `exec` sessions over Kubernetes' WebSocket channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts
//! with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`,
//! 4 terminal resize, and in v5 255 "close this channel" (the client's end of
//! stdin). kube-apiserver proxies the same stream to the kubelet; our API
//! server proxies it to this agent.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmkube_runtime::{ContainerId, ContainerRuntime, ExecIo, Exit, RuntimeError};

pub use crate::api::kubelet::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, V4, V5};

/// A client message's bytes (channel byte first). Binary frames, as
/// kubectl sends, and text frames, as the Python client sends what it is
/// given as `str` (stdin, resizes): the API server reads both alike.
pub fn payload(m: &Message) -> Option<&[u8]> {
    match m {
        Message::Binary(b) => Some(b),
        Message::Text(t) => Some(t.as_bytes()),
        _ => None,
    }
}

/// A resize message's payload: `{"Width":80,"Height":24}`.
pub fn parse_resize(payload: &[u8]) -> Option<wasmkube_runtime::TerminalSize> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(wasmkube_runtime::TerminalSize {
        width: u16::try_from(v["Width"].as_u64()?).ok()?,
        height: u16::try_from(v["Height"].as_u64()?).ok()?,
    })
}

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

/// The `Status` sent on the error channel when the command ends, as the
/// kubelet sends it.
pub fn exit_status(command: &[String], result: &Result<Exit, RuntimeError>) -> Value {
    match result {
        Ok(exit) if exit.exit_code == 0 => json!({"metadata": {}, "status": "Success"}),
        Ok(exit) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {}",
                exit.exit_code
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit.exit_code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": e.to_string(),
            "reason": "InternalError",
        }),
    }
}

/// What a session runs.
pub struct Session {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub id: ContainerId,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Run one exec over `socket` until the command ends.
pub async fn run(socket: WebSocket, s: Session) {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
    // one writer owns the socket's sending half
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        // a normal closure (1000): client-go's WebSocket executor reports
        // any other close, even one with no code, as an error
        let _ = sink
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    let (stdin_r, mut stdin_w) = tokio::io::duplex(64 * 1024);
    let (out_r, out_w) = tokio::io::duplex(64 * 1024);
    let (err_r, err_w) = tokio::io::duplex(64 * 1024);
    // the client's messages: stdin data, its close, terminal resizes
    let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(8);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = incoming.next().await {
            let Some(b) = payload(&m) else {
                if matches!(m, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let stdin_data = match b.first() {
                Some(&RESIZE) => {
                    if let Some(size) = parse_resize(&b[1..]) {
                        let _ = resize_tx.try_send(size);
                    }
                    continue;
                }
                Some(&STDIN) => &b[1..],
                Some(&CLOSE) if b.get(1) == Some(&STDIN) => break,
                _ => continue,
            };
            if stdin_w.write_all(stdin_data).await.is_err() {
                break;
            }
        }
        // dropping the writer ends the guest's stdin
    });
    let pump = |mut r: tokio::io::DuplexStream, channel: u8, wanted: bool| {
        let tx = out_tx.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) if wanted => {
                        let m = Message::Binary(frame(channel, &buf[..n]).into());
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    };
    let io = ExecIo {
        tty: s.tty,
        resize: s.tty.then_some(resize_rx),
        stdin: s
            .stdin
            .then(|| Box::new(stdin_r) as Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>),
        stdout: Box::new(out_w),
        stderr: Box::new(err_w),
    };
    let exec = s.runtime.exec(&s.id, s.command.clone(), io);
    let (result, _, _) = tokio::join!(
        exec,
        pump(out_r, STDOUT, s.stdout),
        pump(err_r, STDERR, s.stderr),
    );
    let status = exit_status(&s.command, &result);
    let _ = out_tx
        .send(Message::Binary(
            frame(ERROR, status.to_string().as_bytes()).into(),
        ))
        .await;
    drop(out_tx);
    reader.abort();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn exit(code: i32) -> Result<Exit, RuntimeError> {
        Ok(Exit {
            exit_code: code,
            reason: "x".into(),
            message: None,
            started_at: SystemTime::now(),
            finished_at: SystemTime::now(),
        })
    }

    #[test]
    fn resize_messages_are_kubectls_json() {
        assert_eq!(
            parse_resize(br#"{"Width":123,"Height":45}"#),
            Some(wasmkube_runtime::TerminalSize {
                width: 123,
                height: 45
            })
        );
        assert_eq!(parse_resize(b"{}"), None);
        assert_eq!(parse_resize(br#"{"Width":70000,"Height":1}"#), None);
    }

    #[test]
    fn the_final_status_carries_the_exit_code_as_the_kubelet_does() {
        let cmd = vec!["ls".to_string(), "/".to_string()];
        assert_eq!(
            exit_status(&cmd, &exit(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = exit_status(&cmd, &exit(3));
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
        let s = exit_status(
            &cmd,
            &Err(RuntimeError::Exec {
                id: ContainerId("c".into()),
                reason: "container is not running".into(),
            }),
        );
        assert_eq!(s["status"], "Failure");
        assert!(s["message"].as_str().unwrap().contains("not running"));
        assert_eq!(frame(STDOUT, b"hi"), vec![1, b'h', b'i']);
    }
}
