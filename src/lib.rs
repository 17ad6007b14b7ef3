//! wasmkube: a WebAssembly-first container orchestrator with a Kubernetes-shaped API.
//!
//! # Layout
//! - [`store`]: the replicated object store (openraft over redb) and the watch cache.
pub mod agent;
pub mod api;
pub mod apiserver;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod network;
pub mod server;
pub mod store;
