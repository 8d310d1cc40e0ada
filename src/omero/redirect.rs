//! The grid redirect: `omero.cluster.redirect` in OMERO's `configuration` table holds the UUID
//! of the node that ConfigRedirector sends new sessions to. The server only ever UPDATEs that
//! row (and rewrites it when nodes join or leave), so the operator inserts it when missing and
//! re-asserts it while it steers sessions away from draining nodes.

use std::net::IpAddr;

use super::{
    DatabaseCredentials, ProbeError, ProbeTimeouts,
    database::{self, Pools},
    ice_proxy,
};

pub const REDIRECT_PROPERTY: &str = "omero.cluster.redirect";

/// Live nodes, newest first: a pod IP reused by a later JVM start matches its newest row.
const LIVE_NODES_SQL: &str = "SELECT uuid, conn FROM node WHERE down IS NULL AND id <> 0 ORDER BY up DESC";

/// Sets the row, writing only when its value differs.
const UPSERT_SQL: &str = "INSERT INTO configuration (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value \
     WHERE configuration.value IS DISTINCT FROM EXCLUDED.value";

/// Where new sessions now go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// UUID of the target node's current JVM.
    pub node_uuid: String,
    /// The row was written (it was missing or named another node).
    pub changed: bool,
}

/// Points new sessions at the live node whose `conn` has `pod_ip`.
pub async fn point_at(
    pools: &Pools,
    timeouts: &ProbeTimeouts,
    credentials: &DatabaseCredentials<'_>,
    pod_ip: IpAddr,
) -> Result<Redirect, ProbeError> {
    let statement = timeouts.statement;
    let redirect = database::with_connection(pools, timeouts, credentials, |client| {
        Box::pin(upsert(client, pod_ip, statement))
    })
    .await?;
    redirect.ok_or_else(|| ProbeError::NodeNotRegistered {
        endpoint: database::describe_endpoint(credentials),
        pod_ip: pod_ip.to_string(),
        live: "no live node has it in node.conn".into(),
    })
}

async fn upsert(
    client: &mut deadpool_postgres::ClientWrapper,
    pod_ip: IpAddr,
    statement_timeout: std::time::Duration,
) -> Result<Option<Redirect>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!("SET LOCAL statement_timeout = {}", statement_timeout.as_millis().max(1)))
        .await?;
    let mut target = None;
    for row in transaction.query(LIVE_NODES_SQL, &[]).await? {
        let conn: Option<&str> = row.try_get(1)?;
        if ice_proxy::has_host(conn.unwrap_or_default(), pod_ip) {
            target = Some(row.try_get::<_, String>(0)?);
            break;
        }
    }
    let Some(node_uuid) = target else {
        transaction.rollback().await?;
        return Ok(None);
    };
    let written = transaction.execute(UPSERT_SQL, &[&REDIRECT_PROPERTY, &node_uuid]).await?;
    transaction.commit().await?;
    Ok(Some(Redirect { node_uuid, changed: written > 0 }))
}
