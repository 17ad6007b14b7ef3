//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets
//! the rules of every ClusterRole its selectors match (how `admin`, `edit`
//! and `view` are built, and how CRD authors extend them), as
//! kube-controller-manager's clusterrole-aggregation controller does.
//!
//! [`aggregate`] decides (pure).

use std::sync::Arc;

use serde_json::{json, Value};

use super::CancelToken;
use crate::api::{meta, resources, selector};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The rules of `role` under its aggregation rule: every rule of every
/// other ClusterRole a selector matches, once each, ordered by role name.
pub fn aggregate(role: &Value, all: &[Arc<Value>]) -> Vec<Value> {
    let selectors: Vec<&Value> = role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut sources: Vec<&Arc<Value>> = all
        .iter()
        .filter(|r| meta::name(r) != meta::name(role))
        .filter(|r| {
            selectors.iter().any(|s| {
                selector::LabelSelector::from_object(s)
                    .map(|sel| !sel.is_empty() && sel.matches_object(r))
                    .unwrap_or(false)
            })
        })
        .collect();
    sources.sort_by(|a, b| meta::name(a).cmp(meta::name(b)));
    let mut rules: Vec<Value> = Vec::new();
    for r in sources {
        for rule in r["rules"].as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    rules
}

struct Controller {
    client: Client,
    roles: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(role) = self.roles.get_live(&key) else {
            return Ok(Next::Done);
        };
        if role.get("aggregationRule").is_none_or(Value::is_null) {
            return Ok(Next::Done);
        }
        let rules = json!(aggregate(&role, &self.roles.all()));
        if role["rules"] == rules || (rules == json!([]) && role["rules"].is_null()) {
            return Ok(Next::Done);
        }
        let res = resources::lookup("clusterroles").expect("clusterroles are served");
        let mut next = (*role).clone();
        next["rules"] = rules;
        match self.client.replace(res, None, &key, &next).await {
            Ok(_) => Ok(Next::Done),
            Err(e) if e.code() == Some(404) => Ok(Next::Done),
            Err(e) => Err(e),
        }
    }
}

/// Run until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let roles = Cache::new();
    let queue = WorkQueue::new();
    // any role's change may change what an aggregated role collects
    let on_role = {
        let (queue, roles) = (queue.clone(), roles.clone());
        move |_: Change| {
            for r in roles.all() {
                if r.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    queue.add(&runtime::key_of(&r));
                }
            }
        }
    };
    let watches = vec![Watch::new("clusterroles", &roles, on_role)];
    let controller = Arc::new(Controller {
        client: client.clone(),
        roles,
    });
    runtime::run_controller(
        "clusterrole-aggregation",
        &client,
        watches,
        queue,
        1,
        controller,
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregated_role_collects_the_rules_its_selectors_match() {
        let r = |name: &str, labels: Value, rules: Value| {
            Arc::new(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
        };
        let view_rule = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let crd_rule = json!({"apiGroups": ["x.io"], "resources": ["widgets"], "verbs": ["get"]});
        let all = vec![
            r(
                "agg-view",
                json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                json!([view_rule]),
            ),
            r(
                "widgets-view",
                json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                json!([crd_rule, view_rule]),
            ),
            r(
                "other",
                json!({}),
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            ),
        ];
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        assert_eq!(aggregate(&view, &all), vec![view_rule, crd_rule]);
        let empty =
            json!({"metadata": {"name": "x"}, "aggregationRule": {"clusterRoleSelectors": [{}]}});
        assert!(
            aggregate(&empty, &all).is_empty(),
            "an empty selector matches nothing here"
        );
    }
}
