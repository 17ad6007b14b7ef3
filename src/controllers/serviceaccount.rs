//! The ServiceAccount controller: every namespace has a `default`
//! ServiceAccount (recreated if deleted), as kube-controller-manager's does.

use std::sync::Arc;

use serde_json::json;

use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

struct Controller {
    client: Client,
    namespaces: Arc<Cache>,
    accounts: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, ns: String) -> Result<Next, ClientError> {
        let live = self
            .namespaces
            .get_live(&ns)
            .is_some_and(|n| n["status"]["phase"] != "Terminating");
        if !live || self.accounts.get(&format!("{ns}/{DEFAULT}")).is_some() {
            return Ok(Next::Done);
        }
        let res = resources::lookup("serviceaccounts").expect("serviceaccounts are served");
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT, "namespace": ns}});
        match self.client.create(res, Some(&ns), &sa).await {
            Ok(_) => Ok(Next::Done),
            Err(e) if matches!(e.code(), Some(409 | 404 | 403)) => Ok(Next::Done),
            Err(e) => Err(e),
        }
    }
}

/// Run until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (namespaces, accounts) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_account = {
        let queue = queue.clone();
        move |c: Change| {
            let obj = match &c {
                Change::Applied(o) | Change::Deleted(o) => o,
            };
            if meta::name(obj) == DEFAULT {
                queue.add(meta::namespace(obj));
            }
        }
    };
    let watches = vec![
        Watch::new("namespaces", &namespaces, runtime::enqueue_self(&queue)),
        Watch::selected(
            "serviceaccounts",
            "fieldSelector=metadata.name%3Ddefault",
            &accounts,
            on_account,
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        namespaces,
        accounts,
    });
    runtime::run_controller(
        "serviceaccount",
        &client,
        watches,
        queue,
        1,
        controller,
        cancel,
    )
    .await;
}
