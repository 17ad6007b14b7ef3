//! Who is asking, and may they: identities, request attributes, RBAC, the
//! Node authorizer, ServiceAccount tokens, join tokens and the default
//! policy. Everything here is pure (no I/O): the API server feeds it what
//! the store holds.
//!
//! - [`attributes`]: an HTTP request as Kubernetes' authorizers see it.
//! - [`rbac`]: rule matching, role resolution, escalation checks.
//! - [`node`]: what an agent (`system:node:NAME`) may read and write.
//! - [`token`]: ServiceAccount JWTs (issue, verify, JWKS).
//! - [`join`]: the `K10…` join token format.
//! - [`policy`]: the default ClusterRoles and bindings.

pub mod attributes;
pub mod join;
pub mod node;
pub mod podsecurity;
pub mod policy;
pub mod rbac;
pub mod token;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use attributes::Attributes;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group that bypasses authorization.
pub const MASTERS: &str = "system:masters";
/// The group of every agent.
pub const NODES: &str = "system:nodes";
/// The prefix of an agent's user name.
pub const NODE_PREFIX: &str = "system:node:";
/// The prefix of a ServiceAccount's user name.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The group of every ServiceAccount.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The user the API server presents to agents.
pub const APISERVER_USER: &str = "system:kube-apiserver";
/// The group of servers talking Raft to each other.
pub const PEERS: &str = "system:wk-servers";

/// An authenticated user, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(rename = "username")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with these groups, plus `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        let mut u = Self {
            name: name.into(),
            ..Default::default()
        };
        for g in groups {
            u.add_group(g);
        }
        u.add_group(AUTHENTICATED);
        u
    }

    fn add_group(&mut self, g: &str) {
        if !self.groups.iter().any(|x| x == g) {
            self.groups.push(g.to_string());
        }
    }

    /// The identity of a verified client certificate: CN is the user, O the groups.
    pub fn from_cert(cn: &str, organizations: &[String]) -> Self {
        let groups: Vec<&str> = organizations.iter().map(String::as_str).collect();
        Self::new(cn, &groups)
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether authorization is bypassed (`system:masters`).
    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node name of an agent's identity (`system:node:NAME` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group(NODES) {
            return None;
        }
        self.name
            .strip_prefix(NODE_PREFIX)
            .filter(|n| !n.is_empty())
    }

    /// `(namespace, name)` of a ServiceAccount's identity.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')
    }

    /// How Kubernetes names the user in denials: `User "NAME"`.
    pub fn describe(&self) -> String {
        format!("User {:?}", self.name)
    }
}

/// The user name of a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reason appended to the message (may be empty).
    Deny(String),
    /// Not this authorizer's business: ask the next one.
    NoOpinion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_like_kubernetes() {
        let node = UserInfo::from_cert("system:node:edge-1", &["system:nodes".into()]);
        assert_eq!(node.node_name(), Some("edge-1"));
        assert!(node.in_group(AUTHENTICATED));
        // the name alone is not enough: the group must say node too
        let fake = UserInfo::new("system:node:edge-1", &[]);
        assert_eq!(fake.node_name(), None);
        let sa = UserInfo::new(
            service_account_user("kube-system", "deployment-controller"),
            &[],
        );
        assert_eq!(
            sa.service_account(),
            Some(("kube-system", "deployment-controller"))
        );
        assert!(UserInfo::new("system:admin", &[MASTERS]).is_master());
    }
}
