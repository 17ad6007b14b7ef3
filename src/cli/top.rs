//! `wkctl top nodes|pods`: resource use from `metrics.k8s.io`, as kubectl
//! prints it.

use reqwest::Method;
use serde_json::Value;

use super::{CliError, Context};
use crate::api::quantity;

#[derive(clap::Subcommand)]
pub enum Top {
    /// CPU and memory of nodes.
    #[command(alias = "node", alias = "no")]
    Nodes {
        /// Only nodes with these labels.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// CPU and memory of pods.
    #[command(alias = "pod", alias = "po")]
    Pods {
        /// Pods of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only pods with these labels.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Per container.
        #[arg(long)]
        containers: bool,
    },
}

fn query(selector: &Option<String>) -> String {
    selector
        .as_ref()
        .map(|s| {
            format!(
                "?{}",
                serde_urlencoded::to_string([("labelSelector", s)]).unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

fn cores(q: &Value) -> String {
    let m = q
        .as_str()
        .and_then(|s| quantity::millicores(s).ok())
        .unwrap_or(0);
    format!("{m}m")
}

fn mebibytes(q: &Value) -> String {
    let b = q
        .as_str()
        .and_then(|s| quantity::bytes(s).ok())
        .unwrap_or(0);
    format!("{}Mi", b / (1024 * 1024))
}

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i + 1 == r.len() {
                        c.clone()
                    } else {
                        format!("{c:<w$}   ", w = widths[i])
                    }
                })
                .collect::<String>()
                + "\n"
        })
        .collect()
}

impl Top {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let unavailable = |e: crate::client::ClientError| {
            CliError::Usage(format!("Metrics API not available: {e}"))
        };
        match self {
            Top::Nodes { selector } => {
                let list = ctx
                    .client
                    .request(
                        Method::GET,
                        &format!("/apis/metrics.k8s.io/v1beta1/nodes{}", query(selector)),
                        None,
                    )
                    .await
                    .map_err(unavailable)?;
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "CPU(cores)".into(),
                    "CPU(%)".into(),
                    "MEMORY(bytes)".into(),
                    "MEMORY(%)".into(),
                ]];
                for m in list["items"].as_array().into_iter().flatten() {
                    let name = m["metadata"]["name"].as_str().unwrap_or("");
                    let node = ctx
                        .client
                        .request(Method::GET, &format!("/api/v1/nodes/{name}"), None)
                        .await
                        .unwrap_or(Value::Null);
                    let alloc = &node["status"]["allocatable"];
                    let pct = |used: u64, total: u64| {
                        (used * 100)
                            .checked_div(total)
                            .map_or_else(|| "<unknown>".to_string(), |p| format!("{p}%"))
                    };
                    let cpu_used = m["usage"]["cpu"]
                        .as_str()
                        .and_then(|s| quantity::millicores(s).ok())
                        .unwrap_or(0);
                    let mem_used = m["usage"]["memory"]
                        .as_str()
                        .and_then(|s| quantity::bytes(s).ok())
                        .unwrap_or(0);
                    let cpu_total = alloc["cpu"]
                        .as_str()
                        .and_then(|s| quantity::millicores(s).ok())
                        .unwrap_or(0);
                    let mem_total = alloc["memory"]
                        .as_str()
                        .and_then(|s| quantity::bytes(s).ok())
                        .unwrap_or(0);
                    rows.push(vec![
                        name.to_string(),
                        cores(&m["usage"]["cpu"]),
                        pct(cpu_used, cpu_total),
                        mebibytes(&m["usage"]["memory"]),
                        pct(mem_used, mem_total),
                    ]);
                }
                print!("{}", table(rows));
            }
            Top::Pods {
                all_namespaces,
                selector,
                containers,
            } => {
                let base = if *all_namespaces {
                    "/apis/metrics.k8s.io/v1beta1/pods".to_string()
                } else {
                    format!(
                        "/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods",
                        ctx.namespace
                    )
                };
                let list = ctx
                    .client
                    .request(Method::GET, &format!("{base}{}", query(selector)), None)
                    .await
                    .map_err(unavailable)?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    let scope = if *all_namespaces {
                        "any namespace".to_string()
                    } else {
                        format!("{} namespace", ctx.namespace)
                    };
                    eprintln!("No resources found in {scope}.");
                    return Ok(());
                }
                let mut header = Vec::new();
                if *all_namespaces {
                    header.push("NAMESPACE".to_string());
                }
                header.push("NAME".into());
                if *containers {
                    header.push("CONTAINER".into());
                }
                header.extend(["CPU(cores)".to_string(), "MEMORY(bytes)".into()]);
                let mut rows = vec![header];
                for m in &items {
                    let prefix = |row: &mut Vec<String>| {
                        if *all_namespaces {
                            row.push(m["metadata"]["namespace"].as_str().unwrap_or("").into());
                        }
                        row.push(m["metadata"]["name"].as_str().unwrap_or("").into());
                    };
                    let cs = m["containers"].as_array().cloned().unwrap_or_default();
                    if *containers {
                        for c in &cs {
                            let mut row = Vec::new();
                            prefix(&mut row);
                            row.push(c["name"].as_str().unwrap_or("").into());
                            row.push(cores(&c["usage"]["cpu"]));
                            row.push(mebibytes(&c["usage"]["memory"]));
                            rows.push(row);
                        }
                    } else {
                        let cpu: u64 = cs
                            .iter()
                            .filter_map(|c| c["usage"]["cpu"].as_str())
                            .filter_map(|s| quantity::millicores(s).ok())
                            .sum();
                        let mem: u64 = cs
                            .iter()
                            .filter_map(|c| c["usage"]["memory"].as_str())
                            .filter_map(|s| quantity::bytes(s).ok())
                            .sum();
                        let mut row = Vec::new();
                        prefix(&mut row);
                        row.push(format!("{cpu}m"));
                        row.push(format!("{}Mi", mem / (1024 * 1024)));
                        rows.push(row);
                    }
                }
                print!("{}", table(rows));
            }
        }
        Ok(())
    }
}
