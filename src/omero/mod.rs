//! The OMERO side: session probes (database, counter, metrics) and the grid redirect row.
//!
//! These are I/O adapters. The drain state machine sees only what [`Client::count`]
//! returns: `Ok(Some(n))` open sessions, `Ok(None)` when the node has no probe, or an error,
//! never a made-up zero.

mod counter;
mod database;
mod error;
mod ice_proxy;
mod metrics;
pub mod prometheus_text;
mod redirect;
pub mod session_list;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{DatabaseEndpoint, SessionProbe, SessionProbeKind};

pub use counter::{
    COUNTER_FORMAT, COUNTER_PATH, COUNTER_PORT, MAX_SAMPLE_AGE, read_answer as read_counter_answer,
};
pub use database::OPEN_SESSIONS_SQL;
pub use error::ProbeError;
pub use metrics::{REFRESH_COUNTER, read_sessions, sum_metric};
pub use redirect::Redirect;

/// What to probe: one node's pod and the probe in force for it.
#[derive(Clone, Copy, Debug)]
pub struct ProbeTarget<'a> {
    /// The pod's IP (`status.podIP`).
    pub pod_ip: &'a str,
    /// The effective probe, defaults filled (`OmeroClusterSpec::session_probe_of`).
    pub probe: &'a SessionProbe,
    /// Needed by `database` probes; ignored by the others.
    pub database: Option<DatabaseCredentials<'a>>,
}

/// Where the database probe connects, with the password the controller read from the Secret.
#[derive(Clone, Copy)]
pub struct DatabaseCredentials<'a> {
    pub endpoint: &'a DatabaseEndpoint,
    pub password: &'a str,
}

impl std::fmt::Debug for DatabaseCredentials<'_> {
    // Derived Debug would print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("endpoint", self.endpoint)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Time limits of one probe. The defaults keep a probe well inside the default 15 s interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimeouts {
    /// TCP connect to PostgreSQL or to the metrics endpoint.
    pub connect: Duration,
    /// PostgreSQL `statement_timeout` of each query, enforced by the server.
    pub statement: Duration,
    /// The whole probe, enforced here: pool wait, connect, authentication and queries, or the
    /// HTTP request and its body.
    pub total: Duration,
    /// Pooled database connections unused this long are closed. Drains are rare, and between
    /// them OMERO's database should not carry the operator's idle connections; during a drain,
    /// probes (every 15 s by default) keep them open.
    pub idle: Duration,
}

impl Default for ProbeTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            statement: Duration::from_secs(5),
            total: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// The session probes of every cluster the operator runs. Cheap to clone: clones share the
/// database pools (one per host, port, database and user, whichever cluster asks) and the
/// HTTP client.
#[derive(Clone, Default)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    timeouts: ProbeTimeouts,
    pools: database::Pools,
    http: metrics::HttpClient,
}

impl Default for Inner {
    fn default() -> Self {
        Self::new(ProbeTimeouts::default())
    }
}

/// A session probe's answer: the sessions of people on the node, and which sample of the
/// source this is, when the source refreshes on its own schedule (`None`: read live).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCount {
    pub sessions: u64,
    pub sample: Option<String>,
}

impl Inner {
    fn new(timeouts: ProbeTimeouts) -> Self {
        Self { timeouts, pools: database::Pools::default(), http: metrics::http_client(&timeouts) }
    }
}

impl Client {
    pub fn new(timeouts: ProbeTimeouts) -> Self {
        Self { inner: Arc::new(Inner::new(timeouts)) }
    }

    /// Open sessions on the target's node: `Ok(None)` for `type: None`, an error whenever the
    /// count is unknown.
    pub async fn count(&self, target: &ProbeTarget<'_>) -> Result<Option<SessionCount>, ProbeError> {
        let inner = &*self.inner;
        let count = match target.probe.kind {
            SessionProbeKind::None => return Ok(None),
            SessionProbeKind::Database => {
                let pod_ip = parse_pod_ip(target.pod_ip)?;
                let credentials = target.database.ok_or_else(|| {
                    ProbeError::Config("a database probe needs the database endpoint and password".into())
                })?;
                let sessions = database::count(&inner.pools, &inner.timeouts, &credentials, pod_ip).await?;
                // Every query reads the table as it is now: always a new sample.
                SessionCount { sessions, sample: None }
            }
            SessionProbeKind::Metrics => {
                let pod_ip = parse_pod_ip(target.pod_ip)?;
                metrics::count(&inner.http, &inner.timeouts, pod_ip, target.probe).await?
            }
            SessionProbeKind::Counter => {
                let pod_ip = parse_pod_ip(target.pod_ip)?;
                counter::count(&inner.http, &inner.timeouts, pod_ip).await?
            }
        };
        tracing::debug!(pod_ip = target.pod_ip, probe = ?target.probe.kind, sessions = count.sessions, sample = ?count.sample, "counted open sessions");
        Ok(Some(count))
    }

    /// Grid topology: sends new sessions to the live node at `pod_ip`, by writing its UUID to
    /// `omero.cluster.redirect` (needs the read-write database credentials).
    pub async fn redirect_new_sessions(
        &self,
        credentials: &DatabaseCredentials<'_>,
        pod_ip: &str,
    ) -> Result<Redirect, ProbeError> {
        let inner = &*self.inner;
        let redirect =
            redirect::point_at(&inner.pools, &inner.timeouts, credentials, parse_pod_ip(pod_ip)?).await?;
        tracing::debug!(pod_ip, uuid = %redirect.node_uuid, changed = redirect.changed, "grid redirect");
        Ok(redirect)
    }

    /// How many database pools exist (one per host, port, database and user).
    pub fn database_pools(&self) -> usize {
        self.inner.pools.len()
    }
}

fn parse_pod_ip(pod_ip: &str) -> Result<IpAddr, ProbeError> {
    pod_ip.parse().map_err(|_| ProbeError::Config(format!("pod IP {pod_ip:?} is not an IP address")))
}
