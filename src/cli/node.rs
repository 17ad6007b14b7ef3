//! `wkctl cordon|uncordon|drain NODE`.

use std::time::Duration;

use serde_json::{json, Value};

use super::{resource, CliError, Context};
use crate::controllers::replicaset::controller_of;

#[derive(clap::Args)]
pub struct NodeName {
    pub node: String,
}

#[derive(clap::Args)]
pub struct Drain {
    pub node: String,
    /// Leave DaemonSet pods in place (they would come back anyway).
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods no controller would recreate.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the evicted pods to go (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
}

async fn set_unschedulable(ctx: &Context, node: &str, on: bool) -> Result<(), CliError> {
    let nodes = resource("nodes")?;
    let current = ctx.client.get(nodes, None, node).await?;
    let word = if on { "cordoned" } else { "uncordoned" };
    if current["spec"]["unschedulable"].as_bool().unwrap_or(false) == on {
        println!("node/{node} already {word}");
        return Ok(());
    }
    let value = if on { json!(true) } else { Value::Null };
    ctx.client
        .merge_patch(
            nodes,
            None,
            node,
            &json!({"spec": {"unschedulable": value}}),
        )
        .await?;
    println!("node/{node} {word}");
    Ok(())
}

/// Cordon a node.
pub async fn cordon(ctx: &Context, n: &NodeName) -> Result<(), CliError> {
    set_unschedulable(ctx, &n.node, true).await
}

/// Uncordon a node.
pub async fn uncordon(ctx: &Context, n: &NodeName) -> Result<(), CliError> {
    set_unschedulable(ctx, &n.node, false).await
}

impl Drain {
    /// Cordon, then delete the node's pods so their controllers place them
    /// elsewhere, and wait for them to go.
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        set_unschedulable(ctx, &self.node, true).await?;
        let pods = resource("pods")?;
        let list = ctx
            .client
            .list(
                pods,
                None,
                &format!("fieldSelector=spec.nodeName%3D{}", self.node),
            )
            .await?;
        let items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        let mut evict = Vec::new();
        let mut problems = Vec::new();
        for p in &items {
            let id = format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or("")
            );
            match controller_of(p) {
                Some(("DaemonSet", _, _)) if self.ignore_daemonsets => {}
                Some(("DaemonSet", _, _)) => problems.push(format!("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {id}")),
                None if !self.force => problems.push(format!("cannot delete Pods that declare no controller (use --force to override): {id}")),
                _ => evict.push(p.clone()),
            }
        }
        if !problems.is_empty() {
            return Err(CliError::Usage(format!(
                "unable to drain node {:?} due to error: {}, continuing command...",
                self.node,
                problems.join(", ")
            )));
        }
        for p in &evict {
            let (ns, name) = (
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or(""),
            );
            println!("evicting pod {ns}/{name}");
            match ctx.client.delete(pods, Some(ns), name).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let started = std::time::Instant::now();
        for p in &evict {
            let (ns, name) = (
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or(""),
            );
            loop {
                match ctx.client.get(pods, Some(ns), name).await {
                    Err(e) if e.is_not_found() => break,
                    Ok(now) if now["metadata"]["uid"] != p["metadata"]["uid"] => break,
                    _ => {}
                }
                if self.timeout > 0 && started.elapsed() > Duration::from_secs(self.timeout) {
                    return Err(CliError::Usage(format!(
                        "drain did not complete within {}s",
                        self.timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!("pod/{name} evicted");
        }
        println!("node/{} drained", self.node);
        Ok(())
    }
}
