//! One reconcile of one OmeroCluster: read what exists -> validate -> render -> decide (drain)
//! -> apply the difference -> status. Every decision is made by a pure function; this file
//! only sequences them around the ports.

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{
    Context, diff,
    port::{Child, ChildKind, ClusterPort, Event, OmeroPort, RedirectQuery, SessionQuery},
    status::{self, Assessment},
};
use crate::{
    Error,
    api::{self, OmeroCluster, SessionProbeKind},
    drain::{self, NodeInput, PodObservation, Policy, ProbeOutcome},
    render,
};

/// Reconcile at least this often, so drift is corrected even without watch events.
pub const RESYNC: StdDuration = StdDuration::from_secs(300);
/// How often a grid's redirect row is re-asserted while the operator steers new sessions.
pub const REDIRECT_REASSERT: StdDuration = StdDuration::from_secs(30);

/// Returns when to look at the cluster again without a watch event.
pub async fn reconcile<P: ClusterPort, O: OmeroPort>(
    cluster: Arc<OmeroCluster>,
    ctx: Arc<Context<P, O>>,
) -> Result<StdDuration, Error> {
    let name = cluster.name_any();
    let ns = cluster.namespace().ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    let now = ctx.clock.now();
    let old = cluster.status.clone().unwrap_or_default();
    let children = ctx.port.children(&cluster).await?;

    if let Err(errors) = api::validate(&cluster) {
        // Change nothing that runs: only the status and an Event say what is wrong.
        let assessment = Assessment {
            generation: cluster.meta().generation,
            nodes: old.nodes.clone(),
            invalid: &errors,
            ..Default::default()
        };
        let next = status::next_status(&old, &assessment, now);
        let events = status::transition_events(&old, &next, &[]);
        write_status(&ctx.port, &cluster, &old, &next, &events).await?;
        return Ok(RESYNC);
    }

    // Write what differs from what runs, only where the object is ours, and remove the
    // children of nodes that left the spec.
    let desired = render::render(&cluster);
    let uid = cluster.uid();
    let serialize = |source| Error::Serialize { what: "a child object".into(), source };
    let found_deployments = find(
        &ctx.port,
        &ns,
        ChildKind::Deployment,
        diff::unseen(&desired.deployments, &children.deployments),
    )
    .await?;
    let found_services =
        find(&ctx.port, &ns, ChildKind::Service, diff::unseen(&desired.services, &children.services)).await?;
    let deployments =
        diff::plan(&desired.deployments, &children.deployments, &found_deployments, uid.as_deref())
            .map_err(serialize)?;
    let services = diff::plan(&desired.services, &children.services, &found_services, uid.as_deref())
        .map_err(serialize)?;
    for write in &deployments.writes {
        info!(cluster = %name, deployment = ?write.object.metadata.name, "applying");
        ctx.port.apply(&ns, Child::Deployment(write.object), write.uid.as_deref()).await?;
    }
    for write in &services.writes {
        info!(cluster = %name, service = ?write.object.metadata.name, "applying");
        ctx.port.apply(&ns, Child::Service(write.object), write.uid.as_deref()).await?;
    }
    let mut object_problems: Vec<api::ObjectProblem> =
        deployments.problems.into_iter().chain(services.problems).collect();
    object_problems.sort();
    let orphans = diff::orphans(&children.deployments, &desired.deployments, uid.as_deref())
        .into_iter()
        .map(|n| (ChildKind::Deployment, n))
        .chain(
            diff::orphans(&children.services, &desired.services, uid.as_deref())
                .into_iter()
                .map(|n| (ChildKind::Service, n)),
        );
    let mut events: Vec<Event> = Vec::new();
    for (kind, (child, child_uid)) in orphans {
        info!(cluster = %name, ?kind, child, "deleting: its node left the spec");
        ctx.port.delete_child(&ns, kind, &child, &child_uid).await?;
        if kind == ChildKind::Deployment {
            events.push(status::event(
                super::port::EventType::Normal,
                "NodeRemoved",
                "Delete",
                format!("deleted {child}: its node is no longer in the spec"),
            ));
        }
    }
    let ours: Vec<&str> = children
        .deployments
        .iter()
        .filter(|d| crate::ownership::is_controlled_by(&d.metadata, uid.as_deref()))
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();

    // Decide every node's phase and drain step.
    let node_names: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut request = drain::parse_request(cluster.annotations(), &node_names);
    let master = cluster.spec.grid_master().map(|n| n.name.as_str());
    if let Some(master) = master {
        drain::keep_grid_master(&mut request, master);
    }
    let pods = super::observe::pods_by_node(&children.pods, &ours);
    let mut probes = BTreeMap::new();
    for node in &cluster.spec.nodes {
        if drain::probe_due(old.node(&node.name), now) {
            let outcome = probe(&ctx, &cluster, &ns, node, pods.get(&node.name)).await;
            debug!(cluster = %name, node = %node.name, ?outcome, "session probe");
            probes.insert(node.name.as_str(), outcome);
        }
    }
    let inputs: Vec<NodeInput<'_>> = cluster
        .spec
        .nodes
        .iter()
        .map(|node| NodeInput {
            name: &node.name,
            previous: old.node(&node.name),
            pod: pods.get(&node.name),
            drain_requested: request.nodes.contains(&node.name),
            probe: probes.remove(node.name.as_str()),
            probe_interval: node.effective_session_probe().interval(),
        })
        .collect();
    let policy = Policy {
        timeout: cluster.spec.drain_timeout(),
        on_deadline: cluster.spec.on_deadline(),
        force: request.force,
    };
    let decisions = drain::step(&inputs, &policy, now);

    for decision in &decisions {
        if let (Some(routable), Some(pod)) = (decision.set_routable, &decision.status.pod) {
            info!(cluster = %name, node = %decision.status.name, routable, "labelling pod");
            ctx.port.set_routable(&ns, pod, routable).await?;
        }
        events.extend(decision.events.iter().map(status::drain_event));
    }

    let statuses: Vec<api::NodeStatus> = decisions.iter().map(|d| d.status.clone()).collect();
    let redirect = match master.and_then(|m| drain::redirect_target(&statuses, m)) {
        Some(target) => Some(redirect(&ctx, &cluster, &ns, target, pods.get(&target.name)).await),
        None => None,
    };

    let refused = drain::refused(&request, &statuses);
    let assessment = Assessment {
        generation: cluster.meta().generation,
        nodes: statuses,
        invalid: &[],
        drain_problems: &request.problems,
        refused,
        redirect,
        object_problems,
    };
    let next = status::next_status(&old, &assessment, now);
    events.extend(status::transition_events(&old, &next, &request.problems));
    write_status(&ctx.port, &cluster, &old, &next, &events).await?;

    let requeue = requeue_after(&next.nodes, now);
    // OMERO rewrites the redirect row when nodes join or leave: keep re-asserting it.
    Ok(if next.redirect_node.is_some() || next.redirect_error.is_some() {
        requeue.min(REDIRECT_REASSERT)
    } else {
        requeue
    })
}

/// Publishes the events, then writes the status if it changed. An Event that cannot be
/// published is logged, not retried: status carries the same facts and must not wait on it.
async fn write_status<P: ClusterPort>(
    port: &P,
    cluster: &OmeroCluster,
    old: &api::OmeroClusterStatus,
    next: &api::OmeroClusterStatus,
    events: &[Event],
) -> Result<(), Error> {
    for event in events {
        info!(cluster = %cluster.name_any(), reason = %event.reason, note = %event.note, "event");
        if let Err(error) = port.publish(cluster, event).await {
            warn!(cluster = %cluster.name_any(), reason = %event.reason, %error, "could not publish the event");
        }
    }
    if next != old {
        port.patch_status(cluster, next).await?;
    }
    Ok(())
}

/// What holds each of `names`, looked up by name: objects that do not carry the cluster's
/// labels, which the cluster must not write over.
async fn find<P: ClusterPort>(
    port: &P,
    ns: &str,
    kind: ChildKind,
    names: Vec<String>,
) -> Result<BTreeMap<String, k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>, Error> {
    let mut found = BTreeMap::new();
    for name in names {
        if let Some(meta) = port.find(ns, kind, &name).await? {
            found.insert(name, meta);
        }
    }
    Ok(found)
}

/// Next look: the earliest probe or deadline of a draining node, else the resync period.
fn requeue_after(nodes: &[api::NodeStatus], now: Timestamp) -> StdDuration {
    drain::next_wakeup(nodes)
        .map(|at| {
            let wait = at.duration_since(now);
            StdDuration::try_from(wait).unwrap_or(StdDuration::ZERO).max(StdDuration::from_secs(1))
        })
        .map_or(RESYNC, |wait| wait.min(RESYNC))
}

async fn probe<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    cluster: &OmeroCluster,
    ns: &str,
    node: &api::NodeSpec,
    pod: Option<&PodObservation>,
) -> ProbeOutcome {
    let probe = node.effective_session_probe();
    if probe.kind == SessionProbeKind::None {
        return ProbeOutcome::NoProbe;
    }
    let Some(pod_ip) = pod.and_then(|p| p.ip.clone()) else {
        return ProbeOutcome::Failed("the node's pod has no IP yet".into());
    };
    let database = if probe.kind == SessionProbeKind::Database {
        match primary_credentials(ctx, cluster, ns).await {
            Ok(credentials) => Some(credentials),
            Err(e) => return ProbeOutcome::Failed(e),
        }
    } else {
        None
    };
    let query = SessionQuery { pod_ip, probe, database };
    match ctx.omero.count_sessions(&query).await {
        Ok(Some(n)) => ProbeOutcome::Count(query.probe.user_sessions(n)),
        Ok(None) => ProbeOutcome::NoProbe,
        Err(e) => ProbeOutcome::Failed(e),
    }
}

/// The read-write database endpoint and its password (session probe, grid redirect).
async fn primary_credentials<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    cluster: &OmeroCluster,
    ns: &str,
) -> Result<(api::DatabaseEndpoint, String), String> {
    let endpoint = cluster.spec.database.primary();
    match ctx.port.secret_value(ns, &endpoint.password_secret).await {
        Ok(password) => Ok((endpoint, password)),
        Err(e) => Err(format!("reading the database password: {e}")),
    }
}

/// Points the grid's new sessions at `target`: the target node's name, or why it failed.
async fn redirect<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    cluster: &OmeroCluster,
    ns: &str,
    target: &api::NodeStatus,
    pod: Option<&PodObservation>,
) -> Result<String, String> {
    let pod_ip =
        pod.and_then(|p| p.ip.clone()).ok_or_else(|| format!("node {} has no pod IP", target.name))?;
    let database = primary_credentials(ctx, cluster, ns).await?;
    let changed = ctx.omero.redirect_new_sessions(&RedirectQuery { pod_ip, database }).await?;
    if changed {
        info!(cluster = %cluster.name_any(), node = %target.name, "grid redirect set");
    }
    Ok(target.name.clone())
}
