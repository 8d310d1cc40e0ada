//! Why a session count is unknown, worded for the sysadmin who reads it in status and Events.

/// A probe that could not count. Carries text, not driver errors, so that it can be stored,
/// compared and cloned into status.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The probe cannot run as configured (no credentials, no port, a bad pod IP or path).
    #[error("session probe: {0}")]
    Config(String),
    /// PostgreSQL refused, failed or timed out. `endpoint` is `user@host:port/database`.
    #[error("database {endpoint}: {reason}")]
    Database { endpoint: String, reason: String },
    /// The database answered, but no live OMERO node publishes the pod's IP in `node.conn`:
    /// its server has not registered yet, or publishes another address.
    #[error("database {endpoint}: no live OMERO node has host {pod_ip} in node.conn ({live})")]
    NodeNotRegistered { endpoint: String, pod_ip: String, live: String },
    /// The session counter beside the server failed, did not answer or has no fresh count.
    #[error("session counter {url}: {reason}")]
    Counter { url: String, reason: String },
    /// The metrics endpoint failed, timed out or did not hold a usable count.
    #[error("metrics {url}: {reason}")]
    Metrics { url: String, reason: String },
}

/// An error and its causes on one line, e.g. "error connecting to server: Connection refused
/// (os error 111)". A cause whose text its parent already shows is left out.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
