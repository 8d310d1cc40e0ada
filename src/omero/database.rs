//! The `database` probe: open user sessions of one node, read from OMERO's own tables.
//!
//! Read-only by construction: a `READ ONLY` transaction, SELECTs only, nothing created (no
//! index, no temporary table) in OMERO's database.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use futures::future::BoxFuture;
use tokio::time::{Instant, timeout_at};
use tokio_postgres::{IsolationLevel, NoTls, Transaction};

use super::{DatabaseCredentials, ProbeError, ProbeTimeouts, error, ice_proxy};

/// Live OMERO nodes, newest first (a pod IP reused by a later JVM start matches its newest
/// row first). Row 0 is the placeholder every OMERO database has.
const LIVE_NODES_SQL: &str =
    "SELECT id, uuid, conn FROM node WHERE down IS NULL AND id <> 0 ORDER BY up DESC";

/// The rule of [`OPEN_SESSIONS_SQL`] (sessions `s` on the nodes `$1`), as a literal so that the
/// count and the listing (`super::session_list`) are built from one text and cannot drift apart.
macro_rules! open_sessions_where {
    () => {
        "s.node = ANY($1) AND s.closed IS NULL \
         AND NOT (s.owner = 0 AND s.useragent IS NOT DISTINCT FROM 'Python service') \
         AND NOT EXISTS (SELECT 1 FROM share sh WHERE sh.session_id = s.id)"
    };
}
pub(super) use open_sessions_where;

/// Open sessions of people on the nodes `$1` (bigint[]): not closed, not a share, and not one
/// of OMERO's own service sessions.
///
/// The rule for service sessions: owner `root` (experimenter 0) **and** user agent `Python
/// service`. Processor-0 and Tables-0 each log in so at start and keep that session for their
/// whole life, on the Blitz that served them (omero-py `omero/util/__init__.py`
/// `internal_service_factory`; read from the source, not observed on a running server), so a
/// count that includes them never reaches zero. Both conditions, so that a person working as
/// root (an admin in OMERO.insight) still counts, and so does a script of a normal user that
/// happens to send the same agent string. If the inference is wrong for some OMERO version
/// (another agent string), those sessions count and a drain ends at its deadline instead: never
/// too early. A JVM's own internal session has no user agent and lives on the placeholder node 0,
/// which is never a pod's node, so it needs no rule.
pub const OPEN_SESSIONS_SQL: &str = concat!("SELECT count(*) FROM session s WHERE ", open_sessions_where!());

/// Connections per pool: probes of one database run one at a time per node and briefly.
const POOL_SIZE: usize = 2;

/// Database pools, shared by every cluster whose probes use the same host, port, database and
/// user. A new password for a key replaces its pool, so a rotated password leaves no pool
/// behind that still holds the old one.
#[derive(Default)]
pub struct Pools {
    pools: Arc<Mutex<HashMap<PoolKey, PoolEntry>>>,
    closer: OnceLock<()>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    database: String,
    user: String,
}

struct PoolEntry {
    password: String,
    pool: Pool,
}

impl Pools {
    pub fn len(&self) -> usize {
        lock(&self.pools).len()
    }

    /// Starts, once and from within the runtime, the task that closes connections idle for
    /// `idle`. It ends when the pools are dropped.
    pub(super) fn close_idle_connections(&self, idle: Duration) {
        self.closer.get_or_init(|| {
            let pools = Arc::downgrade(&self.pools);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(idle / 2);
                loop {
                    tick.tick().await;
                    let Some(live) = pools.upgrade() else { return };
                    for entry in lock(&live).values() {
                        entry.pool.retain(|_, metrics| metrics.last_used() < idle);
                    }
                }
            });
        });
    }

    pub(super) fn get(&self, credentials: &DatabaseCredentials<'_>, timeouts: &ProbeTimeouts) -> Pool {
        let endpoint = credentials.endpoint;
        let key = PoolKey {
            host: endpoint.host.clone(),
            port: endpoint.port,
            database: endpoint.name.clone(),
            user: endpoint.user.clone(),
        };
        let mut pools = lock(&self.pools);
        if let Some(entry) = pools.get(&key)
            && entry.password == credentials.password
        {
            return entry.pool.clone();
        }
        let pool = new_pool(&key, credentials.password, timeouts);
        pools.insert(key, PoolEntry { password: credentials.password.to_owned(), pool: pool.clone() });
        pool
    }
}

fn lock(pools: &Mutex<HashMap<PoolKey, PoolEntry>>) -> MutexGuard<'_, HashMap<PoolKey, PoolEntry>> {
    // A panic elsewhere while holding the lock leaves the map itself intact.
    pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn new_pool(key: &PoolKey, password: &str, timeouts: &ProbeTimeouts) -> Pool {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&key.host)
        .port(key.port)
        .dbname(&key.database)
        .user(&key.user)
        .password(password)
        // So that a DBA sees who holds these connections in pg_stat_activity.
        .application_name("omero-operator")
        .connect_timeout(timeouts.connect)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60));
    let manager =
        Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    // Building a pool connects nothing and fails only for a zero size.
    Pool::builder(manager).max_size(POOL_SIZE).build().expect("a pool of two connections")
}

/// Open user sessions on the live node(s) whose `conn` has the pod IP.
pub async fn count(
    pools: &Pools,
    timeouts: &ProbeTimeouts,
    credentials: &DatabaseCredentials<'_>,
    pod_ip: IpAddr,
) -> Result<u64, ProbeError> {
    let statement = timeouts.statement;
    let outcome =
        with_connection(pools, timeouts, credentials, |client| Box::pin(query(client, pod_ip, statement)))
            .await?;
    outcome.map_err(|other_hosts| not_registered(credentials, pod_ip, &other_hosts))
}

/// Runs `work` on a pooled connection, all within `timeouts.total`. A connection that failed
/// or was abandoned mid-query is closed, not returned to the pool.
pub(super) async fn with_connection<T>(
    pools: &Pools,
    timeouts: &ProbeTimeouts,
    credentials: &DatabaseCredentials<'_>,
    work: impl for<'c> FnOnce(&'c mut ClientWrapper) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>,
) -> Result<T, ProbeError> {
    let endpoint = describe_endpoint(credentials);
    let fail = |reason: String| ProbeError::Database { endpoint: endpoint.clone(), reason };
    let deadline = Instant::now() + timeouts.total;
    let timed_out = || fail(format!("no answer within {}", seconds(timeouts.total)));

    pools.close_idle_connections(timeouts.idle);
    let pool = pools.get(credentials, timeouts);
    let mut client = match timeout_at(deadline, pool.get()).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => return Err(fail(describe_pool_error(&error))),
        Err(_) => return Err(timed_out()),
    };
    let result = match timeout_at(deadline, work(&mut client)).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => Err(fail(describe_pg_error(&error, timeouts.statement))),
        Err(_) => Err(timed_out()),
    };
    if result.is_err() {
        drop(Object::take(client));
    }
    result
}

/// One live JVM of an OMERO node.
pub(super) struct LiveNode {
    pub id: i64,
    pub uuid: String,
}

/// The live nodes whose `conn` publishes `pod_ip`, newest first (never an empty `Ok`); when
/// there are none, the hosts the other live nodes publish (for the error message).
pub(super) async fn live_nodes_at(
    transaction: &Transaction<'_>,
    pod_ip: IpAddr,
) -> Result<Result<Vec<LiveNode>, Vec<String>>, tokio_postgres::Error> {
    let mut matching = Vec::new();
    let mut other_hosts = Vec::new();
    for row in transaction.query(LIVE_NODES_SQL, &[]).await? {
        let conn: Option<&str> = row.try_get(2)?;
        let conn = conn.unwrap_or_default();
        if ice_proxy::has_host(conn, pod_ip) {
            matching.push(LiveNode { id: row.try_get(0)?, uuid: row.try_get(1)? });
        } else {
            other_hosts.extend(ice_proxy::hosts(conn));
        }
    }
    Ok(if matching.is_empty() { Err(other_hosts) } else { Ok(matching) })
}

/// A read-only transaction that sees one snapshot (so the live nodes and what is read of their
/// sessions agree, even when a node goes down in between), bounded by `statement_timeout`.
pub(super) async fn snapshot(
    client: &mut ClientWrapper,
    statement_timeout: Duration,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    let transaction = client
        .build_transaction()
        .read_only(true)
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    set_statement_timeout(&transaction, statement_timeout).await?;
    Ok(transaction)
}

/// LOCAL: the setting ends with the transaction and never leaks into a pooled connection.
pub(super) async fn set_statement_timeout(
    transaction: &Transaction<'_>,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    transaction.batch_execute(&format!("SET LOCAL statement_timeout = {}", timeout.as_millis().max(1))).await
}

/// The error for a pod no live node publishes.
pub(super) fn not_registered(
    credentials: &DatabaseCredentials<'_>,
    pod_ip: IpAddr,
    other_hosts: &[String],
) -> ProbeError {
    ProbeError::NodeNotRegistered {
        endpoint: describe_endpoint(credentials),
        pod_ip: pod_ip.to_string(),
        live: describe_live_hosts(other_hosts),
    }
}

/// Open user sessions of the pod's live node(s), or the hosts the other live nodes publish.
async fn query(
    client: &mut ClientWrapper,
    pod_ip: IpAddr,
    statement_timeout: Duration,
) -> Result<Result<u64, Vec<String>>, tokio_postgres::Error> {
    let transaction = snapshot(client, statement_timeout).await?;
    let outcome = match live_nodes_at(&transaction, pod_ip).await? {
        Ok(nodes) => {
            let ids: Vec<i64> = nodes.iter().map(|n| n.id).collect();
            let open: i64 = transaction.query_one(OPEN_SESSIONS_SQL, &[&ids]).await?.try_get(0)?;
            // count(*) is never negative.
            Ok(u64::try_from(open).unwrap_or_default())
        }
        Err(other_hosts) => Err(other_hosts),
    };
    transaction.commit().await?;
    Ok(outcome)
}

pub(super) fn describe_endpoint(credentials: &DatabaseCredentials<'_>) -> String {
    let e = credentials.endpoint;
    let host = if e.host.contains(':') { format!("[{}]", e.host) } else { e.host.clone() };
    format!("{}@{}:{}/{}", e.user, host, e.port, e.name)
}

fn describe_live_hosts(hosts: &[String]) -> String {
    const SHOWN: usize = 8;
    let loopback = |h: &&str| h.starts_with("127.") || *h == "::1";
    let mut hosts: Vec<&str> = hosts.iter().map(String::as_str).filter(|h| !loopback(h)).collect();
    hosts.sort_unstable();
    hosts.dedup();
    match hosts.len() {
        0 => "no live node publishes a host".to_owned(),
        n if n > SHOWN => format!("live nodes publish {}, and {} more", hosts[..SHOWN].join(", "), n - SHOWN),
        _ => format!("live nodes publish {}", hosts.join(", ")),
    }
}

fn describe_pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Backend(error) => describe_pg_error(error, Duration::ZERO),
        other => other.to_string(),
    }
}

/// The server's own message when there is one, with a hint for the failures a sysadmin fixes;
/// otherwise the chain of causes (e.g. "error connecting to server: Connection refused").
fn describe_pg_error(error: &tokio_postgres::Error, statement_timeout: Duration) -> String {
    use tokio_postgres::error::SqlState;
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        let hint = if *code == SqlState::QUERY_CANCELED {
            format!(
                " (statement_timeout {}: a lock on the table or an overloaded server)",
                seconds(statement_timeout)
            )
        } else if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            " (check the password Secret and pg_hba.conf)".to_owned()
        } else if *code == SqlState::UNDEFINED_TABLE {
            " (is this an OMERO database?)".to_owned()
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            " (the probe needs SELECT on node, session and share)".to_owned()
        } else {
            String::new()
        };
        return format!("{} [SQLSTATE {}]{hint}", db.message(), code.code());
    }
    error::chain(error)
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseEndpoint, SecretKeyRef};

    fn endpoint(host: &str) -> DatabaseEndpoint {
        DatabaseEndpoint {
            host: host.into(),
            port: 5432,
            name: "omero".into(),
            user: "omero".into(),
            password_secret: SecretKeyRef { name: "db".into(), key: "password".into() },
        }
    }

    #[test]
    fn endpoint_is_named_without_the_password() {
        let e = endpoint("db.example.org");
        let credentials = DatabaseCredentials { endpoint: &e, password: "s3cret" };
        assert_eq!(describe_endpoint(&credentials), "omero@db.example.org:5432/omero");
        let e = endpoint("fd00::5");
        let credentials = DatabaseCredentials { endpoint: &e, password: "s3cret" };
        assert_eq!(describe_endpoint(&credentials), "omero@[fd00::5]:5432/omero");
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }

    #[test]
    fn live_hosts_are_listed_without_loopback_and_bounded() {
        assert_eq!(describe_live_hosts(&[]), "no live node publishes a host");
        let hosts: Vec<String> =
            ["10.0.0.2", "127.0.0.1", "::1", "10.0.0.1", "10.0.0.2"].map(String::from).into();
        assert_eq!(describe_live_hosts(&hosts), "live nodes publish 10.0.0.1, 10.0.0.2");
        let many: Vec<String> = (1..=10).map(|i| format!("10.0.0.{i:02}")).collect();
        assert!(describe_live_hosts(&many).ends_with("10.0.0.08, and 2 more"));
    }

    #[test]
    fn pools_are_keyed_without_the_secret_reference_and_replaced_on_a_new_password() {
        let pools = Pools::default();
        let timeouts = ProbeTimeouts::default();
        let a = endpoint("db");
        let mut b = endpoint("db");
        b.password_secret.name = "another-cluster-secret".into();
        pools.get(&DatabaseCredentials { endpoint: &a, password: "p" }, &timeouts);
        pools.get(&DatabaseCredentials { endpoint: &b, password: "p" }, &timeouts);
        assert_eq!(pools.len(), 1);
        pools.get(&DatabaseCredentials { endpoint: &b, password: "rotated" }, &timeouts);
        assert_eq!(pools.len(), 1);
        let mut c = endpoint("db");
        c.user = "omero_ro".into();
        pools.get(&DatabaseCredentials { endpoint: &c, password: "p" }, &timeouts);
        assert_eq!(pools.len(), 2);
    }
}
