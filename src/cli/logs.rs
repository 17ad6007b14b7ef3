//! `wkctl logs POD [-c C] [-f] [--previous] [--tail N] [--timestamps]`.

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{resource, CliError, Context};
use crate::client::ClientError;

#[derive(clap::Args)]
pub struct Logs {
    /// The pod (or pod/NAME).
    pub pod: String,
    /// The container (required when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Stream new lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous run of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

impl Logs {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let pods = resource("pods")?;
        let name = super::pod_name(&self.pod);
        let mut q = Vec::new();
        if let Some(c) = &self.container {
            q.push(format!("container={}", super::get::urlencode(c)));
        }
        if self.follow {
            q.push("follow=true".into());
        }
        if self.previous {
            q.push("previous=true".into());
        }
        if let Some(n) = self.tail.filter(|n| *n >= 0) {
            q.push(format!("tailLines={n}"));
        }
        if self.timestamps {
            q.push("timestamps=true".into());
        }
        let path = format!(
            "{}/log?{}",
            pods.object_path(Some(&ctx.namespace), name),
            q.join("&")
        );
        let resp = ctx.client.get_raw(&path).await?;
        let mut body = resp.bytes_stream();
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ClientError::Connect {
                server: ctx.client.server().to_string(),
                source,
            })?;
            let _ = out.write_all(&chunk).await;
            let _ = out.flush().await;
        }
        Ok(())
    }
}
