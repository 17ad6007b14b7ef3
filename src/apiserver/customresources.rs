//! Keeps the served custom resources ([`crate::api::crd`]) in step with the
//! stored CustomResourceDefinitions: once at start, right after a CRD is
//! written here, and whenever the store changes a CRD (a write on another
//! server of an HA cluster arrives through the replicated log).

use std::sync::Arc;

use serde_json::Value;

use crate::api::{crd, resources};
use crate::client::CancelToken;
use crate::store::cache::Cache;

fn crds(cache: &Cache) -> Vec<Arc<Value>> {
    let res = resources::lookup("customresourcedefinitions.apiextensions.k8s.io")
        .expect("CRDs are served");
    cache
        .list(&res.prefix(None), None, None, None, &|_| true)
        .map(|p| p.items)
        .unwrap_or_default()
}

/// Rebuild the served custom resources from the CRDs in `cache`.
pub fn sync(cache: &Cache) {
    crd::sync(&crds(cache));
}

/// Sync now, then whenever the set of CRDs changes, until `stop`.
pub async fn follow(cache: Arc<Cache>, mut stop: CancelToken) {
    let fingerprint = |cache: &Cache| -> Vec<(String, String)> {
        crds(cache)
            .iter()
            .map(|c| {
                (
                    crate::api::meta::name(c).to_string(),
                    crate::api::meta::resource_version(c).to_string(),
                )
            })
            .collect()
    };
    let mut seen = fingerprint(&cache);
    crd::sync(&crds(&cache));
    let mut changes = cache.subscribe();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let now = fingerprint(&cache);
        if now != seen {
            crd::sync(&crds(&cache));
            seen = now;
        }
    }
}
