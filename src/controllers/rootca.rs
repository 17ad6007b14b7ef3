//! The root CA publisher: every namespace has a `kube-root-ca.crt`
//! ConfigMap holding the cluster's server CA, which pods mount (with their
//! token) to verify the API server, as kube-controller-manager's does.

use std::sync::Arc;

use serde_json::json;

use super::CancelToken;
use crate::api::{meta, resources};
use crate::apiserver::admission::ROOT_CA_CONFIGMAP;
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

struct Controller {
    client: Client,
    ca: String,
    namespaces: Arc<Cache>,
    configmaps: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, ns: String) -> Result<Next, ClientError> {
        let live = self
            .namespaces
            .get_live(&ns)
            .is_some_and(|n| n["status"]["phase"] != "Terminating");
        if !live {
            return Ok(Next::Done);
        }
        let res = resources::lookup("configmaps").expect("configmaps are served");
        let want = json!({"ca.crt": self.ca});
        match self.configmaps.get(&format!("{ns}/{ROOT_CA_CONFIGMAP}")) {
            Some(cm) if cm["data"] == want => Ok(Next::Done),
            Some(cm) => {
                let mut next = (*cm).clone();
                next["data"] = want;
                match self
                    .client
                    .replace(res, Some(&ns), ROOT_CA_CONFIGMAP, &next)
                    .await
                {
                    Ok(_) => Ok(Next::Done),
                    Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Next::Done),
                    Err(e) => Err(e),
                }
            }
            None => {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": want});
                match self.client.create(res, Some(&ns), &cm).await {
                    Ok(_) => Ok(Next::Done),
                    Err(e) if matches!(e.code(), Some(409 | 404 | 403)) => Ok(Next::Done),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Run until `cancel`; `ca` is the server CA bundle (PEM).
pub async fn run(client: Client, ca: String, cancel: CancelToken) {
    let (namespaces, configmaps) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_configmap = {
        let queue = queue.clone();
        move |c: Change| {
            let obj = match &c {
                Change::Applied(o) | Change::Deleted(o) => o,
            };
            if meta::name(obj) == ROOT_CA_CONFIGMAP {
                queue.add(meta::namespace(obj));
            }
        }
    };
    let watches = vec![
        Watch::new("namespaces", &namespaces, runtime::enqueue_self(&queue)),
        // only the CA bundles: every other ConfigMap write costs this controller nothing
        Watch::selected(
            "configmaps",
            "fieldSelector=metadata.name%3Dkube-root-ca.crt",
            &configmaps,
            on_configmap,
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        ca,
        namespaces,
        configmaps,
    });
    runtime::run_controller(
        "root-ca-cert-publisher",
        &client,
        watches,
        queue,
        1,
        controller,
        cancel,
    )
    .await;
}
