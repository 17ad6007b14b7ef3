//! `wkctl delete`: by file, by name, by selector or `--all`; waits for
//! finalizers to finish unless `--wait=false`, as kubectl does.

use std::time::Duration;

use serde_json::Value;

use super::get::urlencode;
use super::{manifest, ref_name, resource, CliError, Context};
use crate::api::resources::{self, Resource};

#[derive(clap::Args)]
pub struct Delete {
    /// TYPE [NAME...] or TYPE/NAME...
    pub args: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// Delete every object of the type in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Treat "not found" as success.
    #[arg(long = "ignore-not-found")]
    pub ignore_not_found: bool,
    /// Wait until the objects are gone (finalizers done).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
}

impl Delete {
    async fn delete_one(
        &self,
        ctx: &Context,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), CliError> {
        match ctx.client.delete(res, ns, name).await {
            Err(e) if e.is_not_found() && self.ignore_not_found => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(obj) => {
                let pending = obj
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null());
                let display = ref_name(res, name);
                let (kind, n) = display.split_once('/').unwrap_or((&display, name));
                println!("{kind} {n:?} deleted");
                if pending && self.wait {
                    for _ in 0..600 {
                        match ctx.client.get(res, ns, name).await {
                            Err(e) if e.is_not_found() => return Ok(()),
                            Err(e) => return Err(e.into()),
                            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    return Err(CliError::Usage(format!(
                        "timed out waiting for {display} to be deleted"
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let failed = std::cell::Cell::new(false);
        let report = |r: Result<(), CliError>| {
            if let Err(e) = r {
                eprintln!("{e}");
                failed.set(true);
            }
        };
        if !self.files.is_empty() {
            let (docs, errors) = manifest::read(&self.files);
            for e in &errors {
                eprintln!("{e}");
            }
            if !errors.is_empty() {
                failed.set(true);
            }
            for d in docs {
                let v = &d.value;
                let Some(res) = resources::find_kind(
                    v["apiVersion"].as_str().unwrap_or_default(),
                    v["kind"].as_str().unwrap_or_default(),
                ) else {
                    report(Err(CliError::Usage(format!(
                        "{} (document {}, line {}): no matches for kind {:?}",
                        d.source, d.index, d.line, v["kind"]
                    ))));
                    continue;
                };
                let ns = res.namespaced.then(|| {
                    v.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(&ctx.namespace)
                        .to_string()
                });
                report(
                    self.delete_one(ctx, res, ns.as_deref(), super::name_of(v))
                        .await,
                );
            }
        } else {
            let (first, rest) = self.args.split_first().ok_or_else(|| {
                CliError::Usage(
                    "You must provide one or more resources by argument or filename.".into(),
                )
            })?;
            if first.contains('/') {
                for a in &self.args {
                    let (t, n) = a.split_once('/').unwrap_or((a, ""));
                    let res = resource(t)?;
                    report(self.delete_one(ctx, res, ctx.ns_for(res), n).await);
                }
            } else {
                let res = resource(first)?;
                if rest.is_empty() {
                    if self.selector.is_none() && !self.all {
                        return Err(CliError::Usage(
                            "resource(s) were provided, but no name was specified".into(),
                        ));
                    }
                    let q = self
                        .selector
                        .as_ref()
                        .map(|s| format!("labelSelector={}", urlencode(s)))
                        .unwrap_or_default();
                    let list = ctx.client.list(res, ctx.ns_for(res), &q).await?;
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        eprintln!("No resources found");
                    }
                    for o in items {
                        report(
                            self.delete_one(ctx, res, ctx.ns_for(res), super::name_of(&o))
                                .await,
                        );
                    }
                } else {
                    for n in rest {
                        report(self.delete_one(ctx, res, ctx.ns_for(res), n).await);
                    }
                }
            }
        }
        if failed.get() {
            Err(CliError::Reported)
        } else {
            Ok(())
        }
    }
}
