//! Controllers that run inside `wk server` (the controller manager). They use
//! only the public API, through [`crate::client::Client`].

pub mod namespace;
