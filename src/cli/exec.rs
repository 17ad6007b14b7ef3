//! `wkctl exec POD [-c C] [-i] [-t] -- COMMAND [ARGS...]`: over the API
//! server's `pods/exec` WebSocket (`v5.channel.k8s.io`), as kubectl does.
//! For a Wasm container the command runs as a fresh instance of its module
//! with the container's env and volumes.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::{resource, CliError, Context};
use crate::api::kubelet::{CLOSE, ERROR, STDERR, STDIN, STDOUT, V4, V5};

#[derive(clap::Args)]
pub struct Exec {
    /// The pod (or pod/NAME).
    pub pod: String,
    /// The container (default: the pod's first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Accepted for kubectl compatibility: Wasm guests have no terminal, so
    /// this allocates none.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The exit code in a final `Status` from the error channel.
pub fn exit_code(status: &Value) -> Result<i32, String> {
    if status["status"] == "Success" {
        return Ok(0);
    }
    if status["reason"] == "NonZeroExitCode" {
        if let Some(code) = status["details"]["causes"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["reason"] == "ExitCode"))
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
        {
            return Ok(code);
        }
    }
    Err(status["message"]
        .as_str()
        .unwrap_or("exec failed")
        .to_string())
}

impl Exec {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let pods = resource("pods")?;
        let name = super::pod_name(&self.pod);
        let container = match &self.container {
            Some(c) => c.clone(),
            None => {
                let pod = ctx.client.get(pods, Some(&ctx.namespace), name).await?;
                let names: Vec<&str> = pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                let first = names.first().copied().unwrap_or_default().to_string();
                if names.len() > 1 {
                    eprintln!("Defaulted container {first:?} out of: {}", names.join(", "));
                }
                first
            }
        };
        let enc = super::get::urlencode;
        let mut q = vec![
            format!("container={}", enc(&container)),
            "stdout=true".into(),
            "stderr=true".into(),
        ];
        if self.stdin {
            q.push("stdin=true".into());
        }
        q.extend(self.command.iter().map(|c| format!("command={}", enc(c))));
        let server = ctx.client.server();
        let ws_base = server
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| server.strip_prefix("http://").map(|r| format!("ws://{r}")))
            .unwrap_or_else(|| server.to_string());
        let url = format!(
            "{ws_base}{}/exec?{}",
            pods.object_path(Some(&ctx.namespace), name),
            q.join("&")
        );
        let usage = |e: String| CliError::Usage(e);
        let mut req = url
            .into_client_request()
            .map_err(|e| usage(format!("exec request: {e}")))?;
        let headers = req.headers_mut();
        if let Some(auth) = ctx.client.authorization() {
            headers.insert(
                "Authorization",
                HeaderValue::from_str(&auth).map_err(|e| usage(e.to_string()))?,
            );
        }
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&format!("{V5}, {V4}")).map_err(|e| usage(e.to_string()))?,
        );
        let stream = ctx.client.connect().await?;
        let (ws, _) = match tokio_tungstenite::client_async(req, stream).await {
            Ok(c) => c,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body: Value = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                let message = body["message"].as_str().unwrap_or("exec failed");
                return Err(CliError::Usage(message.to_string()));
            }
            Err(e) => return Err(usage(format!("unable to upgrade connection: {e}"))),
        };
        let (mut sink, mut stream) = ws.split();
        let stdin_task = self.stdin.then(|| {
            tokio::spawn(async move {
                let mut input = tokio::io::stdin();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut m = vec![STDIN];
                            m.extend_from_slice(&buf[..n]);
                            if sink.send(Message::Binary(m.into())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sink.send(Message::Binary(vec![CLOSE, STDIN].into())).await;
            })
        });
        let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
        let mut status = None;
        while let Some(m) = stream.next().await {
            let Ok(Message::Binary(b)) = m else {
                continue;
            };
            match b.first().copied() {
                Some(STDOUT) => {
                    let _ = out.write_all(&b[1..]).await;
                    let _ = out.flush().await;
                }
                Some(STDERR) => {
                    let _ = err.write_all(&b[1..]).await;
                    let _ = err.flush().await;
                }
                Some(ERROR) => {
                    status = serde_json::from_slice::<Value>(&b[1..]).ok();
                }
                _ => {}
            }
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        let status =
            status.ok_or_else(|| usage("the exec stream ended without a status".into()))?;
        match exit_code(&status) {
            Ok(0) => Ok(()),
            Ok(code) => Err(CliError::Exit(code)),
            Err(message) => Err(CliError::Usage(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_come_from_the_final_status() {
        assert_eq!(exit_code(&json!({"status": "Success"})), Ok(0));
        assert_eq!(
            exit_code(&json!({"status": "Failure", "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}})),
            Ok(42)
        );
        assert_eq!(
            exit_code(&json!({"status": "Failure", "message": "container is not running"})),
            Err("container is not running".to_string())
        );
    }
}
