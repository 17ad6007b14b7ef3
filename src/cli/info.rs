//! `wkctl cluster-info`, `version` and `api-resources`.

use reqwest::Method;
use serde_json::Value;

use super::printers;
use super::{CliError, Context};

#[derive(clap::Args)]
pub struct ClusterInfo {}

impl ClusterInfo {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        ctx.client.request(Method::GET, "/api", None).await?;
        println!(
            "Kubernetes control plane is running at {}",
            ctx.client.server()
        );
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct Version {
    /// Print only the client version.
    #[arg(long)]
    pub client: bool,
}

impl Version {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        println!(
            "Client Version: v1.{}.0+wasmkube-{}",
            crate::apiserver::discovery::KUBERNETES_MINOR,
            env!("CARGO_PKG_VERSION")
        );
        if !self.client {
            let v = ctx.client.request(Method::GET, "/version", None).await?;
            println!(
                "Server Version: {}",
                v["gitVersion"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ApiResources {}

impl ApiResources {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let mut lists = vec![ctx.client.request(Method::GET, "/api/v1", None).await?];
        let groups = ctx.client.request(Method::GET, "/apis", None).await?;
        for g in groups["groups"].as_array().into_iter().flatten() {
            if let Some(gv) = g
                .pointer("/preferredVersion/groupVersion")
                .and_then(Value::as_str)
            {
                lists.push(
                    ctx.client
                        .request(Method::GET, &format!("/apis/{gv}"), None)
                        .await?,
                );
            }
        }
        let headers: Vec<String> = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
            .into_iter()
            .map(String::from)
            .collect();
        let mut rows = Vec::new();
        for l in &lists {
            let gv = l["groupVersion"].as_str().unwrap_or_default();
            for r in l["resources"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or_default();
                if name.contains('/') {
                    continue;
                }
                let short: Vec<&str> = r["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                rows.push(vec![
                    name.to_string(),
                    short.join(","),
                    gv.to_string(),
                    r["namespaced"].as_bool().unwrap_or(false).to_string(),
                    r["kind"].as_str().unwrap_or_default().to_string(),
                ]);
            }
        }
        print!("{}", printers::table(&headers, &rows));
        Ok(())
    }
}
