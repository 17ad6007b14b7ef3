//! Controllers that run inside `wk server` (the controller manager). They use
//! only the public API, through [`crate::client::Client`].

pub mod namespace;

/// Cancellation for controller loops: a watch channel that turns `true` on shutdown.
pub type CancelToken = tokio::sync::watch::Receiver<bool>;
