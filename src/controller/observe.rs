//! What one reconcile reads before it decides anything: the cluster's children (from the
//! caches), what holds the names the cluster wants that its children lack (looked up by
//! name, except those the operator just created itself: [`super::awaited`]), the session counts that are due, and the database credentials the probes and the
//! grid's redirect need. It decides nothing: what it reads follows from the spec and the
//! last status alone.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use kube::ResourceExt;
use tracing::debug;

use super::{
    Context, nodes, pods,
    port::{ChildKind, Children, ClusterPort, OmeroPort, SessionQuery},
    probe_memory::{self, ClusterMemory},
};
use crate::{
    Error,
    api::{self, DatabaseEndpoint, OmeroCluster, OmeroClusterStatus, SessionProbe, SessionProbeKind},
    lifecycle::{PodObservation, ProbeOutcome},
    render,
};

/// Everything [`super::decide::decide`] decides from, besides the cluster itself.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub children: Children,
    /// What holds each name the cluster wants that `children` lack, looked up by name, by
    /// kind (`None`: nothing holds it). Only these names may be created. A name the operator
    /// created and its watches have not delivered yet is not looked up, so not written.
    pub found: BTreeMap<ChildKind, BTreeMap<String, Option<ObjectMeta>>>,
    /// The counts of the nodes whose probe was due, by node name, each with the exporter
    /// sample it was read from.
    pub probes: BTreeMap<String, (ProbeOutcome, Option<String>)>,
    /// The read-write database's endpoint and password when a due probe or the grid's
    /// redirect needs them, or why they could not be read.
    pub database: Option<Result<(DatabaseEndpoint, String), String>>,
    /// What the operator remembers of the cluster's probes (when each is due, the backoff).
    pub remembered: ClusterMemory,
}

impl Observation {
    /// The cluster's status as read, with what is remembered of its probes.
    pub fn old_status(&self, cluster: &OmeroCluster) -> OmeroClusterStatus {
        probe_memory::recalled(cluster.status.as_ref(), &self.remembered)
    }
}

pub async fn observe<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    cluster: &OmeroCluster,
    now: Timestamp,
) -> Result<Observation, Error> {
    let ns = cluster.namespace().ok_or_else(|| Error::MissingNamespace(cluster.name_any()))?;
    let children = ctx.port.children(cluster).await?;
    let remembered = ctx.probe_memory.recall(cluster);
    // An invalid spec is neither rendered nor acted on: nothing more is worth reading.
    if api::validate(cluster).is_err() {
        return Ok(Observation { children, remembered, ..Observation::default() });
    }
    let awaited = ctx.awaited.still_awaited(cluster, &children, now);
    let found = look_up(&ctx.port, &ns, cluster, &children, &awaited).await?;

    let old = probe_memory::recalled(cluster.status.as_ref(), &remembered);
    let uid = cluster.uid();
    let (ours, pods) = pods::of_cluster(&children.deployments, &children.pods, uid.as_deref());
    let facts = nodes::facts(cluster, &old, &ours, &pods);
    let due: Vec<&nodes::NodeFacts<'_>> = nodes::probes_due(cluster, &facts, now).collect();
    let reads_database = |f: &&nodes::NodeFacts<'_>| {
        f.session_probe(cluster).is_some_and(|p| p.kind == SessionProbeKind::Database)
    };
    let database = if cluster.spec.grid_master().is_some() || due.iter().any(reads_database) {
        Some(primary_credentials(&ctx.port, cluster, &ns).await)
    } else {
        None
    };
    let mut probes = BTreeMap::new();
    for fact in due {
        let outcome = probe(&ctx.omero, fact.session_probe(cluster), fact.pod, database.as_ref()).await;
        debug!(cluster = %cluster.name_any(), node = %fact.name, ?outcome, "session probe");
        probes.insert(fact.name.clone(), outcome);
    }
    Ok(Observation { children, found, probes, database, remembered })
}

/// Looks up by name each name the cluster wants that `children` (the objects carrying its
/// labels) lack and that is not `awaited`: an object without the labels may hold it, and must
/// not be written over. The real port answers from its look-up caches, with no request.
async fn look_up<P: ClusterPort>(
    port: &P,
    ns: &str,
    cluster: &OmeroCluster,
    children: &Children,
    awaited: &BTreeSet<(ChildKind, String)>,
) -> Result<BTreeMap<ChildKind, BTreeMap<String, Option<ObjectMeta>>>, Error> {
    let wanted = render::object_names(cluster);
    let kinds = [
        (ChildKind::Deployment, wanted.deployments),
        (ChildKind::Service, wanted.services),
        (ChildKind::ConfigMap, wanted.config_maps),
        (ChildKind::PodDisruptionBudget, wanted.budgets),
    ];
    let mut found: BTreeMap<ChildKind, BTreeMap<String, Option<ObjectMeta>>> = BTreeMap::new();
    for (kind, wanted) in kinds {
        let unseen = wanted.into_iter().filter(|n| !children.holds(kind, n));
        for name in unseen.filter(|n| !awaited.contains(&(kind, n.clone()))) {
            let meta = port.find(ns, kind, &name).await?;
            found.entry(kind).or_default().insert(name, meta);
        }
    }
    Ok(found)
}

/// Counts a node's sessions with its probe.
async fn probe<O: OmeroPort>(
    omero: &O,
    probe: Option<SessionProbe>,
    pod: Option<&PodObservation>,
    database: Option<&Result<(DatabaseEndpoint, String), String>>,
) -> (ProbeOutcome, Option<String>) {
    let Some(probe) = probe.filter(|p| p.kind != SessionProbeKind::None) else {
        return (ProbeOutcome::NoProbe, None);
    };
    let Some(pod_ip) = pod.and_then(|p| p.ip.clone()) else {
        return (ProbeOutcome::Failed("the node's pod has no IP yet".into()), None);
    };
    let database = match (probe.kind, database) {
        (SessionProbeKind::Database, Some(Ok(credentials))) => Some(credentials.clone()),
        (SessionProbeKind::Database, Some(Err(e))) => return (ProbeOutcome::Failed(e.clone()), None),
        (SessionProbeKind::Database, None) => {
            return (ProbeOutcome::Failed("the database credentials were not read".into()), None);
        }
        _ => None,
    };
    let query = SessionQuery { pod_ip, probe, database };
    match omero.count_sessions(&query).await {
        Ok(Some(count)) => (ProbeOutcome::Count(count.sessions), count.sample),
        Ok(None) => (ProbeOutcome::NoProbe, None),
        Err(e) => (ProbeOutcome::Failed(e), None),
    }
}

/// The read-write database endpoint and its password (session probe, grid redirect).
async fn primary_credentials<P: ClusterPort>(
    port: &P,
    cluster: &OmeroCluster,
    ns: &str,
) -> Result<(DatabaseEndpoint, String), String> {
    let endpoint = cluster.spec.database.primary();
    match port.secret_value(ns, &endpoint.password_secret).await {
        Ok(password) => Ok((endpoint, password)),
        Err(e) => Err(format!("reading the database password: {e}")),
    }
}
