//! `wkctl rollout status|history|undo|restart|pause|resume deployment/NAME`.

use std::time::Duration;

use serde_json::{json, Value};

use super::scale::split_target;
use super::{ref_name, resource, CliError, Context};
use crate::api::resources::Resource;
use crate::controllers::deployment::{revision, HASH_LABEL};
use crate::controllers::replicaset::controller_of;

#[derive(clap::Subcommand)]
pub enum Rollout {
    /// Watch a rollout until it completes (exit 1 if it exceeds its progress deadline).
    Status(Target),
    /// The revisions kept as history.
    History(Target),
    /// Roll back to the previous revision, or to --to-revision.
    Undo(Undo),
    /// Restart every pod by rolling out an unchanged template.
    Restart(Target),
    /// Stop rolling out template changes.
    Pause(Target),
    /// Roll out again.
    Resume(Target),
}

#[derive(clap::Args)]
pub struct Target {
    /// deployment/NAME, or deployment NAME.
    #[arg(required = true, num_args = 1..=2)]
    pub target: Vec<String>,
    /// For status: give up after this many seconds (0: wait as long as it takes).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
}

#[derive(clap::Args)]
pub struct Undo {
    #[command(flatten)]
    pub target: Target,
    /// The revision to roll back to (default: the one before the current).
    #[arg(long, default_value_t = 0)]
    pub to_revision: i64,
}

/// kubectl's progress line for a deployment, or `Ok(None)` once done.
pub fn progress(d: &Value) -> Result<Option<String>, String> {
    let name = d["metadata"]["name"].as_str().unwrap_or("");
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let generation = int(&d["metadata"]["generation"]);
    let st = &d["status"];
    if int(&st["observedGeneration"]) < generation {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".to_string(),
        ));
    }
    let progressing = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing");
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        return Err(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let want = int(&d["spec"]["replicas"]);
    let (updated, total, available) = (
        int(&st["updatedReplicas"]),
        int(&st["replicas"]),
        int(&st["availableReplicas"]),
    );
    Ok(if updated < want {
        Some(format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."))
    } else if total > updated {
        Some(format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", total - updated))
    } else if available < updated {
        Some(format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."))
    } else {
        None
    })
}

fn deployment_target(t: &Target) -> Result<(&'static Resource, String), CliError> {
    let (kind, name) = split_target(&t.target)?;
    let res = resource(&kind)?;
    if res.kind != "Deployment" {
        return Err(CliError::Usage(format!(
            "rollout is supported for deployments, not {}",
            res.plural
        )));
    }
    Ok((res, name))
}

async fn owned_sets(ctx: &Context, d: &Value) -> Result<Vec<Value>, CliError> {
    let rs = resource("replicasets")?;
    let list = ctx.client.list(rs, Some(&ctx.namespace), "").await?;
    let uid = d["metadata"]["uid"].as_str().unwrap_or("");
    let mut sets: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| controller_of(r).is_some_and(|(_, _, u)| u == uid))
        .collect();
    sets.sort_by_key(revision);
    Ok(sets)
}

impl Rollout {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        match self {
            Rollout::Status(t) => {
                let (res, name) = deployment_target(t)?;
                let started = std::time::Instant::now();
                let mut last = String::new();
                loop {
                    let d = ctx.client.get(res, Some(&ctx.namespace), &name).await?;
                    match progress(&d) {
                        Ok(None) => {
                            println!("deployment {name:?} successfully rolled out");
                            return Ok(());
                        }
                        Ok(Some(line)) => {
                            if line != last {
                                println!("{line}");
                                last = line;
                            }
                        }
                        Err(e) => return Err(CliError::Usage(e)),
                    }
                    if t.timeout > 0 && started.elapsed() > Duration::from_secs(t.timeout) {
                        return Err(CliError::Usage(
                            "timed out waiting for the condition".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Rollout::History(t) => {
                let (res, name) = deployment_target(t)?;
                let d = ctx.client.get(res, Some(&ctx.namespace), &name).await?;
                println!("{}", ref_name(res, &name));
                println!("REVISION  CHANGE-CAUSE");
                for rs in owned_sets(ctx, &d).await? {
                    let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
                        .as_str()
                        .unwrap_or("<none>");
                    println!("{:<9} {cause}", revision(&rs));
                }
                println!();
                Ok(())
            }
            Rollout::Undo(u) => {
                let (res, name) = deployment_target(&u.target)?;
                let d = ctx.client.get(res, Some(&ctx.namespace), &name).await?;
                let sets = owned_sets(ctx, &d).await?;
                let current = d["metadata"]["annotations"]
                    [crate::controllers::deployment::REVISION]
                    .as_str()
                    .and_then(|r| r.parse::<i64>().ok())
                    .unwrap_or(0);
                let target = if u.to_revision > 0 {
                    sets.iter().find(|rs| revision(rs) == u.to_revision)
                } else {
                    sets.iter().rev().find(|rs| revision(rs) < current)
                };
                let Some(rs) = target else {
                    return Err(CliError::Usage(if u.to_revision > 0 {
                        format!(
                            "unable to find specified revision {} in history",
                            u.to_revision
                        )
                    } else {
                        "no rollout history found for deployment".to_string()
                    }));
                };
                let mut template = rs["spec"]["template"].clone();
                if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
                    labels.remove(HASH_LABEL);
                }
                // a merge patch replaces the template's lists wholesale
                ctx.client
                    .merge_patch(
                        res,
                        Some(&ctx.namespace),
                        &name,
                        &json!({"spec": {"template": template}}),
                    )
                    .await?;
                println!("{} rolled back", ref_name(res, &name));
                Ok(())
            }
            Rollout::Restart(t) => {
                let (res, name) = deployment_target(t)?;
                let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                ctx.client
                    .merge_patch(
                        res,
                        Some(&ctx.namespace),
                        &name,
                        &json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}}),
                    )
                    .await?;
                println!("{} restarted", ref_name(res, &name));
                Ok(())
            }
            Rollout::Pause(t) | Rollout::Resume(t) => {
                let pause = matches!(self, Rollout::Pause(_));
                let (res, name) = deployment_target(t)?;
                ctx.client
                    .merge_patch(
                        res,
                        Some(&ctx.namespace),
                        &name,
                        &json!({"spec": {"paused": pause}}),
                    )
                    .await?;
                println!(
                    "{} {}",
                    ref_name(res, &name),
                    if pause { "paused" } else { "resumed" }
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_follow_kubectl() {
        let d = |updated: i64, total: i64, available: i64| {
            json!({"metadata": {"name": "web", "generation": 2}, "spec": {"replicas": 3},
                "status": {"observedGeneration": 2, "updatedReplicas": updated, "replicas": total, "availableReplicas": available}})
        };
        assert_eq!(
            progress(&d(1, 4, 3)).unwrap().unwrap(),
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        assert_eq!(
            progress(&d(3, 4, 3)).unwrap().unwrap(),
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        assert_eq!(
            progress(&d(3, 3, 2)).unwrap().unwrap(),
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
        );
        assert_eq!(progress(&d(3, 3, 3)).unwrap(), None);
        let mut stalled = d(1, 4, 3);
        stalled["status"]["conditions"] =
            json!([{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]);
        assert_eq!(
            progress(&stalled).unwrap_err(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }
}
