//! What the API server and the node agents agree on (the kubelet API's
//! wire protocol): the channels of `exec`/`attach` streams, log query
//! parameters, the port-forward upgrade. No I/O happens here.

use serde::Deserialize;

/// Kubernetes' WebSocket channel subprotocols for `exec` and `attach`.
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// The channel byte every binary message starts with.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The final `Status`.
pub const ERROR: u8 = 3;
/// Terminal resize (`{"Width":80,"Height":24}`).
pub const RESIZE: u8 = 4;
/// v5: "close this channel" (the client's end of stdin).
pub const CLOSE: u8 = 255;

/// Query parameters of a log request (those of `pods/log`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogParams {
    pub container: Option<String>,
    pub follow: Option<bool>,
    pub previous: Option<bool>,
    pub tail_lines: Option<usize>,
    pub timestamps: Option<bool>,
}

/// `exec`: the query is that of `pods/exec` (`command` repeated, `stdin`,
/// `stdout`, `stderr`, `tty`).
/// The `Upgrade` of a connection to a pod's port (`/portForward`).
pub const PORT_FORWARD_UPGRADE: &str = "wk-portforward";
