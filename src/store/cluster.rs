//! Serving from any server of a Raft cluster: writes forwarded to the
//! leader (one hop), linearizable reads by ReadIndex, and membership
//! changes (join as a learner, promote to voter, remove).
//!
//! ```text
//!  follower: write ──► not the leader ──► POST https://LEADER/raft/write?target=ID
//!                                              │ leader: Store::write_here
//!                                              ▼
//!            ◄── response + log index ◄── committed and applied there
//!            wait until applied here too (read-your-writes on this server)
//!
//!  any server: read ──► get_read_log_id (leader: a heartbeat round to a quorum)
//!                       or POST https://LEADER/raft/read-index?target=ID
//!                  ──► wait until applied here up to that index ──► serve from the cache
//! ```
//!
//! Retries: a write that never reached a leader (no leader yet, connection
//! refused, openraft's ForwardToLeader: never appended or truncated) is
//! retried with jittered back-off for [`LEADER_WAIT`], then refused with
//! [`StoreError::NoLeader`] (503). With several voters every single write
//! carries a request id ([`Request::Once`]): a forwarded write whose answer
//! was lost is sent again under that id, and the state machine applies an
//! id at most once. When the retries run out after such a loss the outcome
//! is unknown: [`StoreError::Indeterminate`] (504), as etcd reports a
//! timed-out request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::types::{NodeId, Request, Response};
use super::{Store, StoreError};

/// How long a write waits to be committed once handed to Raft.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writes and reads retry while no leader can be reached.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// The longest pause between retries while there is no leader: short, so
/// a write goes through soon after an election (about one election timeout).
const MAX_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long a server waits to apply what the leader committed for it.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Election timeouts (the longest) after which a leader no quorum has
/// acknowledged counts as cut off: about 1.8 s at the defaults, past the
/// slow fsyncs of a loaded 2-core follower.
const QUORUM_ACK_WINDOW: u64 = 4;

/// What `/raft/write` answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Done {
        response: Response,
        index: u64,
    },
    NotLeader {
        leader: Option<String>,
        leader_id: Option<NodeId>,
    },
    Indeterminate(String),
    Failed(String),
}

impl From<Result<(Response, u64), StoreError>> for ForwardReply {
    fn from(r: Result<(Response, u64), StoreError>) -> Self {
        match r {
            Ok((response, index)) => ForwardReply::Done { response, index },
            Err(StoreError::NotLeader { leader, leader_id }) => {
                ForwardReply::NotLeader { leader, leader_id }
            }
            Err(StoreError::Indeterminate(m)) => ForwardReply::Indeterminate(m),
            Err(e) => ForwardReply::Failed(e.to_string()),
        }
    }
}

/// What `/raft/read-index` answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Apply up to this log index, then read.
    Index(u64),
    NotLeader {
        leader: Option<String>,
        leader_id: Option<NodeId>,
    },
    Failed(String),
}

/// A server asking to join: its id and the address peers reach it at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub address: String,
}

/// One server of the cluster, as `wk cluster members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: NodeId,
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    pub leader: bool,
    /// The last log index the leader knows this server holds (leader only).
    pub matched: Option<u64>,
}

/// The cluster's members as this server knows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Members {
    /// The server that answered.
    pub this: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// True while a joint (two-step) membership change is unfinished.
    pub joint: bool,
    pub members: Vec<Member>,
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // between half and all of d
    d / 2 + Duration::from_nanos(u64::from(nanos) % (d.as_nanos() as u64 / 2 + 1))
}

/// Whether a refusal means "not applied, ask someone else".
fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::NotLeader { .. } | StoreError::NoLeader(_))
}

/// Run `attempt` until it succeeds or fails for good. Refusals that mean
/// "not applied, ask again" (no leader yet, a leader that moved) are
/// retried with jitter, backing off to [`MAX_RETRY_DELAY`], for up to
/// [`LEADER_WAIT`]; then the last one is answered as [`StoreError::NoLeader`].
async fn with_leader_retries<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + LEADER_WAIT;
    let mut delay = Duration::from_millis(25);
    loop {
        match attempt().await {
            Err(e) if retryable(&e) => {
                if Instant::now() + delay > deadline {
                    return Err(StoreError::NoLeader(e.to_string()));
                }
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            done => return done,
        }
    }
}

impl Store {
    /// Write `req` (sealed) on whichever server leads: here, or forwarded.
    ///
    /// With more than one voter a single write gets a request id
    /// ([`Request::Once`]): a forwarded write whose answer was lost (the
    /// leader died or the connection broke after sending) is sent again
    /// under the same id, to whichever server leads by then, and the state
    /// machine applies it at most once. Only when the retries run out is
    /// the outcome unknown (504).
    pub(crate) async fn submit(&self, req: Request) -> Result<Response, StoreError> {
        let req =
            if self.sole_voter() || !matches!(req, Request::Put { .. } | Request::Delete { .. }) {
                req
            } else {
                Request::Once {
                    id: uuid::Uuid::new_v4().to_string(),
                    request: Box::new(req),
                }
            };
        let resendable = matches!(req, Request::Once { .. });
        let maybe_applied = std::sync::atomic::AtomicBool::new(false);
        let result = with_leader_retries(|| async {
            match self.write_here(req.clone()).await {
                Ok((resp, _)) => Ok(resp),
                Err(StoreError::NotLeader {
                    leader: Some(addr),
                    leader_id: Some(id),
                }) if id != self.node_id => match self.forward(id, &addr, &req).await {
                    Ok((resp, index)) => {
                        self.applied_at_least(index).await;
                        Ok(resp)
                    }
                    Err(StoreError::Indeterminate(m)) if resendable => {
                        tracing::debug!(error = %m, "resending a forwarded write under its request id");
                        maybe_applied.store(true, std::sync::atomic::Ordering::Relaxed);
                        Err(StoreError::NoLeader(m))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        })
        .await;
        match result {
            // it may have been applied by an attempt whose answer was lost
            Err(StoreError::NoLeader(m))
                if maybe_applied.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Err(StoreError::Indeterminate(m))
            }
            other => other,
        }
    }

    async fn forward(
        &self,
        id: NodeId,
        addr: &str,
        req: &Request,
    ) -> Result<(Response, u64), StoreError> {
        let url = format!("https://{addr}/raft/write?target={id}");
        let resp = match self
            .peer_http
            .post(&url)
            .timeout(WRITE_TIMEOUT + Duration::from_secs(2))
            .json(req)
            .send()
            .await
        {
            Ok(r) => r,
            // never sent: nothing can have been applied
            Err(e) if e.is_connect() => {
                return Err(StoreError::NoLeader(format!("leader {id} at {addr}: {e}")))
            }
            Err(e) => {
                return Err(StoreError::Indeterminate(format!(
                    "forwarded to the leader {id} at {addr}: {e}"
                )))
            }
        };
        let status = resp.status();
        if !status.is_success() {
            // refused before any write (wrong node, not a peer)
            let body = resp.text().await.unwrap_or_default();
            return Err(StoreError::NoLeader(format!(
                "{addr} refused the forwarded write: {status} {body}"
            )));
        }
        match resp.json::<ForwardReply>().await {
            Ok(ForwardReply::Done { response, index }) => Ok((response, index)),
            Ok(ForwardReply::NotLeader { leader, leader_id }) => {
                Err(StoreError::NotLeader { leader, leader_id })
            }
            Ok(ForwardReply::Indeterminate(m)) => Err(StoreError::Indeterminate(m)),
            Ok(ForwardReply::Failed(m)) => Err(StoreError::Raft(m)),
            Err(e) => Err(StoreError::Indeterminate(format!(
                "the leader's answer from {addr}: {e}"
            ))),
        }
    }

    /// Wait (up to [`APPLY_WAIT`]) until this server has applied `index`.
    async fn applied_at_least(&self, index: u64) -> bool {
        self.raft
            .wait(Some(APPLY_WAIT))
            .applied_index_at_least(Some(index), "apply what the leader committed")
            .await
            .is_ok()
    }

    /// Make the next read from the cache linearizable: learn the leader's
    /// commit index by ReadIndex (the leader confirms its leadership with a
    /// quorum) and wait until this server has applied that far.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        if self.sole_voter() {
            // every write went through this server and was applied before
            // it was acknowledged: the cache is already current
            return Ok(());
        }
        with_leader_retries(|| async {
            let index = self.read_index().await?;
            if index == 0 || self.applied_at_least(index).await {
                Ok(())
            } else {
                Err(StoreError::NoLeader(format!(
                    "this server did not apply up to index {index} within {APPLY_WAIT:?}"
                )))
            }
        })
        .await
    }

    /// The log index a linearizable read must wait for: the leader's own
    /// answer when this server leads, else the leader's over the network.
    async fn read_index(&self) -> Result<u64, StoreError> {
        match self.read_index_here().await {
            Ok(i) => Ok(i),
            Err(StoreError::NotLeader {
                leader: Some(addr),
                leader_id: Some(id),
            }) if id != self.node_id => {
                let url = format!("https://{addr}/raft/read-index?target={id}");
                let resp = self
                    .peer_http
                    .post(&url)
                    .timeout(LEADER_WAIT)
                    .send()
                    .await
                    .map_err(|e| StoreError::NoLeader(format!("leader {id} at {addr}: {e}")))?;
                if !resp.status().is_success() {
                    return Err(StoreError::NoLeader(format!(
                        "{addr} refused the read index: {}",
                        resp.status()
                    )));
                }
                match resp.json::<ReadIndexReply>().await {
                    Ok(ReadIndexReply::Index(i)) => Ok(i),
                    Ok(ReadIndexReply::NotLeader { leader, leader_id }) => {
                        Err(StoreError::NotLeader { leader, leader_id })
                    }
                    Ok(ReadIndexReply::Failed(m)) => Err(StoreError::NoLeader(m)),
                    Err(e) => Err(StoreError::NoLeader(e.to_string())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// ReadIndex on this server, if it leads.
    pub(crate) async fn read_index_here(&self) -> Result<u64, StoreError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(StoreError::NotLeader {
                    leader: f.leader_node.as_ref().map(|n| n.addr.clone()),
                    leader_id: f.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(StoreError::NotLeader {
                    leader: None,
                    leader_id: None,
                })
                .inspect_err(|_| tracing::debug!(quorum = %q, "read index: no quorum"))
            }
            Err(e) => Err(StoreError::Raft(e.to_string())),
        }
    }

    /// The cluster's members as this server sees them.
    pub fn members(&self) -> Members {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                address: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter".into()
                } else {
                    "learner".into()
                },
                leader: m.current_leader == Some(*id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        Members {
            this: self.node_id,
            leader: m.current_leader,
            term: m.current_term,
            joint: membership.get_joint_config().len() > 1,
            members,
        }
    }

    /// Whether this server is the cluster's only voter (the default
    /// one-server cluster).
    fn sole_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut voters = membership.voter_ids();
        voters.next() == Some(self.node_id) && voters.next().is_none()
    }

    /// Whether this server knows a leader (it is not cut off, or
    /// electing).
    ///
    /// A leader cut off from its followers still believes it leads (Raft
    /// has it step down only when it hears a higher term), so the leader
    /// counts itself only while a quorum has acknowledged it within
    /// [`QUORUM_ACK_WINDOW`] election timeouts.
    pub fn has_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            None => false,
            Some(leader) if leader == self.node_id => {
                let window = self.raft.config().election_timeout_max * QUORUM_ACK_WINDOW;
                m.millis_since_quorum_ack.is_some_and(|ms| ms <= window)
            }
            Some(_) => true,
        }
    }

    /// Whether this server leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// On the leader: add server `id` at `address` as a learner, wait until
    /// it has caught up (a far-behind server gets a snapshot), then make it
    /// a voter.
    pub async fn add_member(&self, id: NodeId, address: &str) -> Result<Members, StoreError> {
        let members = self.members();
        if let Some(m) = members.members.iter().find(|m| m.id == id) {
            if m.address != address {
                return Err(StoreError::Raft(format!(
                    "server id {id} is already a member at {}",
                    m.address
                )));
            }
        }
        if let Some(m) = members
            .members
            .iter()
            .find(|m| m.address == address && m.id != id)
        {
            return Err(StoreError::Raft(format!(
                "{address} is already the address of member {}: remove it first (`wk cluster remove {}`)",
                m.id, m.id
            )));
        }
        let mut node = BTreeMap::new();
        node.insert(id, BasicNode::new(address));
        if !members.members.iter().any(|m| m.id == id) {
            self.change_membership(ChangeMembers::AddNodes(node))
                .await?;
        }
        // caught up (a far-behind server gets a snapshot) before it votes
        self.raft
            .wait(Some(Duration::from_secs(300)))
            .metrics(
                |m| {
                    let last = m.last_log_index.unwrap_or(0);
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|l| l.index + 100 >= last)
                },
                "the new server caught up",
            )
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        let mut ids = BTreeSet::new();
        ids.insert(id);
        self.change_membership(ChangeMembers::AddVoterIds(ids))
            .await?;
        tracing::info!(id, %address, "server joined as a voter");
        Ok(self.members())
    }

    /// Change the membership, waiting out a change under way (another
    /// join, the reconcile loop) for up to a minute.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), StoreError> {
        use openraft::error::{ChangeMembershipError, ClientWriteError};
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(jitter(Duration::from_millis(200))).await;
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Err(StoreError::NotLeader {
                        leader: f.leader_node.as_ref().map(|n| n.addr.clone()),
                        leader_id: f.leader_id,
                    })
                }
                Err(e) => return Err(StoreError::Raft(e.to_string())),
            }
        }
    }

    /// The leader removed this server.
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// Turns true once the leader says this server was removed.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// On the leader: remove server `id` (voter or learner).
    pub async fn remove_member(&self, id: NodeId) -> Result<Members, StoreError> {
        let members = self.members();
        if !members.members.iter().any(|m| m.id == id) {
            return Err(StoreError::Raft(format!("no member has id {id}")));
        }
        let voters: BTreeSet<NodeId> = members
            .members
            .iter()
            .filter(|m| m.role == "voter" && m.id != id)
            .map(|m| m.id)
            .collect();
        if voters.is_empty() {
            return Err(StoreError::Raft("the last voter cannot be removed".into()));
        }
        let mut gone = BTreeSet::new();
        gone.insert(id);
        // a voter leaves the nodes too (retain = false), so the reconcile
        // loop never sees it as a learner to promote
        if members
            .members
            .iter()
            .any(|m| m.id == id && m.role == "voter")
        {
            self.change_membership(ChangeMembers::RemoveVoters(gone))
                .await?;
        } else {
            self.change_membership(ChangeMembers::RemoveNodes(gone))
                .await?;
        }
        tracing::info!(id, "server removed from the cluster");
        // tell it, so it stops now (it may never see the entry that
        // removed it: the leader stops replicating to it)
        if let Some(m) = members.members.iter().find(|m| m.id == id) {
            let url = format!("https://{}/raft/removed?target={id}", m.address);
            if let Err(e) = self
                .peer_http
                .post(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                tracing::info!(id, error = %e, "the removed server was not told (it is down?)");
            }
        }
        Ok(self.members())
    }

    /// On the leader, once: finish a joint membership change a crash
    /// interrupted, and promote learners that have caught up.
    pub async fn reconcile_membership(&self) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Ok(());
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let fail = |e: &dyn std::fmt::Display| StoreError::Raft(e.to_string());
        let joint = membership.get_joint_config();
        if joint.len() > 1 {
            let target: BTreeSet<NodeId> = joint.last().cloned().unwrap_or_default();
            tracing::info!(?target, "finishing an interrupted membership change");
            self.raft
                .change_membership(target, true)
                .await
                .map_err(|e| fail(&e))?;
            return Ok(());
        }
        // this server moved (a restore, a new --advertise): peers must
        // reach it at its new address
        if let Some(node) = membership.get_node(&self.node_id) {
            if node.addr != self.advertise {
                tracing::info!(from = %node.addr, to = %self.advertise, "this server's address changed");
                let mut nodes = BTreeMap::new();
                nodes.insert(self.node_id, BasicNode::new(&self.advertise));
                self.raft
                    .change_membership(ChangeMembers::SetNodes(nodes), false)
                    .await
                    .map_err(|e| fail(&e))?;
                return Ok(());
            }
        }
        let last = m.last_log_index.unwrap_or(0);
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let caught_up: BTreeSet<NodeId> = membership
            .learner_ids()
            .filter(|id| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .is_some_and(|l| l.index + 100 >= last)
            })
            .filter(|id| !voters.contains(id))
            .collect();
        if !caught_up.is_empty() {
            tracing::info!(?caught_up, "promoting caught-up learners to voters");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(caught_up), false)
                .await
                .map_err(|e| fail(&e))?;
        }
        Ok(())
    }

    /// Whether this server is in the cluster's membership (false for a
    /// server not joined yet, or removed).
    pub fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == self.node_id)
    }

    /// The addresses of every server, by id.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.members()
            .members
            .into_iter()
            .map(|m| (m.id, m.address))
            .collect()
    }
}

impl Store {
    /// Add a server, on the leader: here, or passed on to it (one hop).
    pub async fn join_via_leader(&self, req: &JoinRequest) -> Result<Members, StoreError> {
        match self.add_member(req.node_id, &req.address).await {
            Err(StoreError::NotLeader {
                leader: Some(addr),
                leader_id: Some(id),
            }) if id != self.node_id => {
                self.peer_call(&addr, &format!("raft/join?target={id}"), Some(req))
                    .await
            }
            other => other,
        }
    }

    /// Remove a server, on the leader: here, or passed on to it.
    pub async fn remove_via_leader(&self, id: NodeId) -> Result<Members, StoreError> {
        if self.is_leader() {
            return self.remove_member(id).await;
        }
        let m = self.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .ok_or_else(|| StoreError::NoLeader("no leader to change the membership".into()))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| StoreError::NoLeader(format!("leader {leader} has no address")))?;
        self.peer_call::<()>(&addr, &format!("raft/remove/{id}?target={leader}"), None)
            .await
    }

    async fn peer_call<B: Serialize>(
        &self,
        addr: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Members, StoreError> {
        let mut req = self
            .peer_http
            .post(format!("https://{addr}/{path}"))
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| StoreError::NoLeader(format!("{addr}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let message = body["message"].as_str().unwrap_or("refused").to_string();
            return Err(if status.as_u16() == 503 {
                StoreError::NoLeader(message)
            } else {
                StoreError::Raft(message)
            });
        }
        resp.json()
            .await
            .map_err(|e| StoreError::Raft(format!("the answer from {addr}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::Rejection;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for ms in [1u64, 25, 100, 500] {
            let d = Duration::from_millis(ms);
            for _ in 0..100 {
                let j = jitter(d);
                assert!(j >= d / 2 && j <= d, "{j:?} for {d:?}");
            }
        }
    }

    #[test]
    fn only_writes_that_never_reached_a_leader_are_retried() {
        assert!(retryable(&StoreError::NotLeader {
            leader: None,
            leader_id: None
        }));
        assert!(retryable(&StoreError::NoLeader("refused".into())));
        assert!(!retryable(&StoreError::Indeterminate("timed out".into())));
        assert!(!retryable(&StoreError::Rejected(Rejection::AlreadyExists)));
    }

    #[test]
    fn a_forwarded_result_keeps_its_meaning() {
        let done = ForwardReply::from(Ok((Response::None, 7)));
        assert!(matches!(done, ForwardReply::Done { index: 7, .. }));
        let moved = ForwardReply::from(Err(StoreError::NotLeader {
            leader: Some("10.0.0.2:6443".into()),
            leader_id: Some(3),
        }));
        assert!(matches!(
            moved,
            ForwardReply::NotLeader {
                leader_id: Some(3),
                ..
            }
        ));
        let unknown = ForwardReply::from(Err(StoreError::Indeterminate("x".into())));
        assert!(matches!(unknown, ForwardReply::Indeterminate(_)));
        // the wire form round-trips
        let text = serde_json::to_string(&ForwardReply::Done {
            response: Response::Rejected(Rejection::Conflict { current: 5 }),
            index: 9,
        })
        .unwrap();
        let back: ForwardReply = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            back,
            ForwardReply::Done {
                response: Response::Rejected(Rejection::Conflict { current: 5 }),
                index: 9
            }
        ));
    }
}
