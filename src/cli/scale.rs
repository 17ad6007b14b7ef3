//! `wkctl scale TYPE/NAME --replicas=N` (or `TYPE NAME`): through the
//! `scale` subresource.

use serde_json::json;

use super::{ref_name, resource, CliError, Context};

#[derive(clap::Args)]
pub struct Scale {
    /// TYPE/NAME, or TYPE then NAME.
    #[arg(required = true, num_args = 1..=2)]
    pub target: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    pub replicas: i64,
}

/// `(type, name)` from `TYPE/NAME` or `TYPE NAME`.
pub fn split_target(target: &[String]) -> Result<(String, String), CliError> {
    match target {
        [one] => one
            .split_once('/')
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .ok_or_else(|| CliError::Usage(format!("expected TYPE/NAME, got {one:?}"))),
        [t, n] => Ok((t.clone(), n.clone())),
        _ => Err(CliError::Usage("expected TYPE/NAME".into())),
    }
}

impl Scale {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let (kind, name) = split_target(&self.target)?;
        let res = resource(&kind)?;
        if !res.scale {
            return Err(CliError::Usage(format!(
                "cannot scale {}: it has no scale subresource",
                res.plural
            )));
        }
        if self.replicas < 0 {
            return Err(CliError::Usage("--replicas must be 0 or more".into()));
        }
        let path = format!("{}/scale", res.object_path(ctx.ns_for(res), &name));
        ctx.client
            .request_as(
                reqwest::Method::PATCH,
                &path,
                Some(&json!({"spec": {"replicas": self.replicas}})),
                "application/merge-patch+json",
            )
            .await?;
        println!("{} scaled", ref_name(res, &name));
        Ok(())
    }
}
