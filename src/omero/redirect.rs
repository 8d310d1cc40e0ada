//! The grid redirect: `omero.cluster.redirect` in OMERO's `configuration` table holds the UUID
//! of the node that ConfigRedirector sends new sessions to. The server only ever UPDATEs that
//! row (and rewrites it when nodes join or leave), so the operator inserts it when missing and
//! re-asserts it while it steers sessions away from draining nodes.

use std::net::IpAddr;

use super::{
    DatabaseCredentials, ProbeError, ProbeTimeouts,
    database::{self, Pools},
};

pub const REDIRECT_PROPERTY: &str = "omero.cluster.redirect";

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
    redirect.map_err(|other_hosts| database::not_registered(credentials, pod_ip, &other_hosts))
}

/// Points the row at the pod's newest live node, or returns the hosts the others publish.
async fn upsert(
    client: &mut deadpool_postgres::ClientWrapper,
    pod_ip: IpAddr,
    statement_timeout: std::time::Duration,
) -> Result<Result<Redirect, Vec<String>>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    database::set_statement_timeout(&transaction, statement_timeout).await?;
    let node_uuid = match database::live_nodes_at(&transaction, pod_ip).await? {
        // `Ok` is never empty: the newest live JVM in the pod.
        Ok(mut nodes) => nodes.remove(0).uuid,
        Err(other_hosts) => {
            transaction.rollback().await?;
            return Ok(Err(other_hosts));
        }
    };
    let written = transaction.execute(UPSERT_SQL, &[&REDIRECT_PROPERTY, &node_uuid]).await?;
    transaction.commit().await?;
    Ok(Ok(Redirect { node_uuid, changed: written > 0 }))
}
