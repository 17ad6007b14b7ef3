//! `wkctl create namespace NAME`.

use serde_json::json;

use super::{resource, CliError, Context};

#[derive(clap::Subcommand)]
pub enum Create {
    /// Create a namespace.
    #[command(alias = "ns")]
    Namespace { name: String },
}

impl Create {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        match self {
            Create::Namespace { name } => {
                let res = resource("namespaces")?;
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                ctx.client.create(res, None, &obj).await?;
                println!("namespace/{name} created");
            }
        }
        Ok(())
    }
}
