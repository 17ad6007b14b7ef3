//! Raft RPCs between servers over HTTPS (JSON bodies), sent to the peer's
//! API address under `/raft/*` with mutual TLS: the peer's serving
//! certificate is checked against the server CA, and this server presents
//! its `system:wk-servers` client certificate, the only identity the peer
//! lets into `/raft/*`. Every RPC names its target's node id (`?target=`),
//! and a server refuses RPCs meant for another id (a wiped server that
//! came back at an old address under a new id, or a misrouted request).

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{NodeId, TypeConfig};

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
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let res = self
            .http
            .post(format!("{}/{path}?target={}", self.base, self.target))
            .timeout(option.hard_ttl())
            .json(req)
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
        let body: Result<Resp, RaftError<NodeId, E>> = res
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
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
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
