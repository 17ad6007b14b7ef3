//! Raft RPCs between servers over HTTPS (JSON bodies), sent to the peer's
//! API address under `/raft/*` with mutual TLS: the peer's serving
//! certificate is checked against the server CA, and this server presents
//! its `system:wk-servers` client certificate, the only identity the peer
//! lets into `/raft/*`. Every RPC names its target's node id (`?target=`),
//! and a server refuses RPCs meant for another id (a wiped server that
//! came back at an old address under a new id, or a misrouted request).

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;

use super::types::{NodeId, TypeConfig};

/// The largest append this server sends: a longer one is cut into fewer
/// entries (`PayloadTooLarge`, which openraft answers by sending fewer),
/// unless it is one entry. A follower far behind would otherwise be sent
/// up to `max_payload_entries` entries of up to a whole group commit each.
/// openraft gives an append one heartbeat interval (250 ms) to be sent,
/// parsed and fsynced: a follower whose appends never made it in time,
/// under load, campaigned again and again and never caught up.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// The largest Raft RPC body a server takes (`/raft/*`): an append of
/// [`MAX_APPEND_BYTES`], a snapshot chunk, or one entry of a big group
/// commit, as JSON.
pub const MAX_RPC_BODY: usize = 64 << 20;

/// Creates a [`Connection`] per peer.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
}

impl Network {
    /// A network over `http` (configured with the peer TLS identity).
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            http: self.http.clone(),
            target,
            base: format!("https://{}/raft", node.addr),
        }
    }
}

/// The RPC client for one peer.
pub struct Connection {
    http: reqwest::Client,
    target: NodeId,
    base: String,
}

impl Connection {
    /// POST the JSON `body` to the peer's `/raft/{path}`. A body over the
    /// peer's limit is `PayloadTooLarge` (for appends: send fewer entries).
    async fn call<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let res = self
            .http
            .post(format!("{}/{path}?target={}", self.base, self.target))
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // a server that is down: openraft backs off (see `backoff`)
                // instead of retrying in a tight loop
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if res.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(1),
            ));
        }
        let body: Result<Resp, RaftError<NodeId, E>> = res
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// An RPC's JSON body.
fn encode<T: serde::Serialize, E: std::error::Error>(
    rpc: &T,
) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// How many of `entries` to send instead when they take `len` bytes and
/// at most `max` may be sent; `None` when they fit or are one entry.
fn fewer_entries(entries: u64, len: usize, max: usize) -> Option<u64> {
    if len <= max || entries <= 1 {
        return None;
    }
    let fit = (u128::from(entries) * max as u128 / len as u128) as u64;
    Some(fit.clamp(1, entries - 1))
}

impl RaftNetwork<TypeConfig> for Connection {
    /// Between retries to an unreachable server: soon at first (a restart
    /// is back within a second), then every 500 ms.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(
            [50, 100, 200]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(std::time::Duration::from_millis),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        let entries = rpc.entries.len() as u64;
        if let Some(fewer) = fewer_entries(entries, body.len(), MAX_APPEND_BYTES) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fewer),
            ));
        }
        self.call("append", body, &option)
            .await
            .map_err(|e| match e {
                // over the peer's limit: half as many, down to one entry, which
                // no fewer can help (openraft retries a PayloadTooLarge at once)
                RPCError::PayloadTooLarge(too_large) if entries <= 1 => {
                    RPCError::Network(NetworkError::new(&too_large))
                }
                RPCError::PayloadTooLarge(_) => {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2))
                }
                e => e,
            })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = encode(&rpc)?;
        self.call("snapshot", body, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        self.call("vote", body, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_over_the_limit_are_cut_to_what_fits() {
        // they fit, or one entry (nothing fewer can help)
        assert_eq!(fewer_entries(300, 1000, 1000), None);
        assert_eq!(fewer_entries(1, 5000, 1000), None);
        // in proportion to the size, never all of them, never none
        assert_eq!(fewer_entries(300, 3000, 1000), Some(100));
        assert_eq!(fewer_entries(2, 1001, 1000), Some(1));
        assert_eq!(fewer_entries(300, 1_000_000, 1000), Some(1));
    }
}
