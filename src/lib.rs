//! wasmkube: a WebAssembly-first container orchestrator with a Kubernetes-shaped API.
//!
//! # Layout
//! - [`api`]: served kinds, selectors, defaulting and validation (no I/O).
//! - [`auth`]: identities, RBAC, the Node authorizer, ServiceAccount and
//!   join tokens, the default policy (no I/O).
//! - [`tls`]: the cluster's CAs and certificates, rustls configurations,
//!   the HTTPS accept loop.
//! - [`store`]: the replicated object store (openraft over redb) and the watch cache.
//! - [`apiserver`]: the Kubernetes-shaped HTTPS API: authentication,
//!   authorization, admission, verbs, watches, audit.
//! - [`client`]: the API client and kubeconfig, shared by `wkctl`, the
//!   controllers and the agent.
//! - [`controllers`]: the scheduler and controllers `wk server` runs.
//! - [`agent`]: the node agent (kubelet).
//! - [`cli`]: the `wkctl` command line.
//! - [`json`]: JSON values shrunk to fit before a cache keeps them (used
//!   by the store and the client alike).
//!
//! [`agent`] and [`server`] (and with them wasmtime) are in the default
//! `node` feature; `wkctl` builds without it.
#[cfg(feature = "node")]
pub mod agent;
pub mod api;
pub mod apiserver;
pub mod auth;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod json;
pub mod lincheck;
pub mod network;
#[cfg(feature = "node")]
pub mod server;
pub mod store;
pub mod tls;
