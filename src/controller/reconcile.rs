//! One reconcile of one OmeroCluster: read what exists -> validate -> render -> plan and decide
//! (ownership, rollout, node lifecycle) -> record the decisions in status -> act -> Events.
//!
//! Every decision is made by a pure function; this file only sequences them around the ports.
//! The order matters: the status write carries the cluster's `resourceVersion`, so a reconcile
//! that started from a stale copy (a watch cache lagging behind the operator's own last write)
//! is refused there and acts on nothing; and an operator killed after the write finds the same
//! decisions in status and carries them out (every action is idempotent). Events are published
//! only by the reconcile whose write recorded the transition: at most once per transition (an
//! operator killed between the write and the publish loses that Event; status still says it).

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{
    Context, diff, nodes,
    port::{Child, ChildKind, ClusterPort, Event, OmeroPort, RedirectQuery, SessionQuery, StatusWrite},
    status::{self, Assessment},
};
use crate::{
    Error,
    api::{self, OmeroCluster, RolloutStatus, SessionProbeKind},
    departures,
    lifecycle::{self, NodeInput, PodObservation, Policy, ProbeOutcome},
    maintenance, ownership, render, request, rollout,
};

/// Reconcile at least this often, so drift is corrected even without watch events.
pub const RESYNC: StdDuration = StdDuration::from_secs(300);
/// How often a grid's redirect row is re-asserted while the operator steers new sessions.
pub const REDIRECT_REASSERT: StdDuration = StdDuration::from_secs(30);
/// After a stale read (the status write was refused): look again almost at once, from the
/// watch cache, which by then holds the newer cluster.
pub const STALE_RETRY: StdDuration = StdDuration::from_millis(250);

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
            requests: request::observed(cluster.annotations()),
            ..Default::default()
        };
        let next = status::next_status(&old, &assessment, now);
        let events = status::transition_events(&old, &next, &[]);
        if next != old && ctx.port.write_status(&cluster, &next).await? == StatusWrite::Stale {
            return Ok(STALE_RETRY);
        }
        ctx.metrics.observe_status(&ns, &name, &old, &next, now);
        publish(&ctx.port, &cluster, &events).await;
        return Ok(RESYNC);
    }

    // What is asked for, and what it renders to.
    let node_names: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut request = request::parse(cluster.annotations(), &request::nameable_nodes(&cluster));
    let master = cluster.spec.grid_master().map(|n| n.name.as_str());
    if let Some(master) = master {
        request::keep_grid_master(&mut request, master);
    }
    let uid = cluster.uid();
    let ours: Vec<&k8s_openapi::api::apps::v1::Deployment> = children
        .deployments
        .iter()
        .filter(|d| ownership::is_controlled_by(&d.metadata, uid.as_deref()))
        .collect();
    let current_token = |node: &str| {
        let object = render::node_object_name(&name, node);
        ours.iter()
            .find(|d| d.metadata.name.as_deref() == Some(object.as_str()))
            .and_then(|d| render::restart_token_of(d))
            .map(str::to_string)
    };
    request::settle_consent(&mut request, &node_names, current_token);
    let tokens = rollout::restart_tokens(&request, node_names.iter().copied(), current_token);
    let desired = render::render_with_restarts(&cluster, &tokens);

    // Which writes are ours to make at all.
    let serialize = |source| Error::Serialize { what: "a child object".into(), source };
    let found = find(
        &ctx.port,
        &ns,
        ChildKind::Deployment,
        diff::unseen(&desired.deployments, &children.deployments),
    )
    .await?;
    let deployments =
        diff::plan(&desired.deployments, &children.deployments, &found, uid.as_deref()).map_err(serialize)?;
    let found =
        find(&ctx.port, &ns, ChildKind::Service, diff::unseen(&desired.services, &children.services)).await?;
    let services =
        diff::plan(&desired.services, &children.services, &found, uid.as_deref()).map_err(serialize)?;
    let found =
        find(&ctx.port, &ns, ChildKind::ConfigMap, diff::unseen(&desired.config_maps, &children.config_maps))
            .await?;
    let config_maps =
        diff::plan(&desired.config_maps, &children.config_maps, &found, uid.as_deref()).map_err(serialize)?;
    let plan_problems: Vec<api::ObjectProblem> = deployments
        .problems
        .iter()
        .chain(&services.problems)
        .chain(&config_maps.problems)
        .cloned()
        .chain(super::observe::pod_refusals(ours.iter().copied()))
        .collect();

    // Decide: which nodes the rollout moves, then every node's step.
    let our_names: Vec<&str> = ours.iter().filter_map(|d| d.metadata.name.as_deref()).collect();
    let pods = super::observe::pods_by_node(&children.pods, &our_names);
    let facts = nodes::facts(&cluster, &old, &desired.deployments, &ours, &pods);
    let views: Vec<rollout::NodeView> = facts.iter().map(|f| f.view(&cluster)).collect();
    let limits = rollout::Limits {
        max_unavailable: cluster.spec.max_unavailable(),
        allow_downtime: request.allow_downtime,
        paused: request.paused,
    };
    // Every departure together: requested drains, then maintenance moves, then rollout picks.
    let hosts = maintenance::hosts(children.kube_nodes.as_deref(), cluster.spec.maintenance_taint_keys());
    let placements: Vec<maintenance::Placement> =
        facts.iter().zip(&views).map(|(f, view)| f.placement(view)).collect();
    let requests = departures::Requests {
        drain: &request.drain,
        force: request.force,
        force_nodes: &request.force_nodes,
    };
    let departures::Departures { moves, rollout: plan, .. } =
        departures::decide(&placements, &hosts, requests, &limits);
    let mut probes = BTreeMap::new();
    for fact in nodes::probes_due(&cluster, &facts, now) {
        let outcome = probe(&ctx, &cluster, &ns, fact.session_probe(&cluster), fact.pod).await;
        debug!(cluster = %name, node = %fact.name, ?outcome, "session probe");
        probes.insert(fact.name.as_str(), outcome);
    }
    let inputs: Vec<NodeInput<'_>> = facts
        .iter()
        .map(|f| NodeInput {
            name: &f.name,
            previous: f.previous,
            pod: f.pod,
            drain_requested: request.drain.contains(&f.name),
            probe_sample: probes.get(f.name.as_str()).and_then(|(_, sample)| sample.clone()),
            probe: probes.remove(f.name.as_str()).map(|(outcome, _)| outcome),
            probe_interval: f.probe_interval(&cluster),
            serving_probe_interval: f.serving_probe_interval(&cluster),
            target_revision: f.target_revision,
            deployment_exists: f.deployment.is_some(),
            deployment_revision: f.deployment_revision(),
            selected: plan.selected.contains(&f.name),
            leaving: f.spec.is_none(),
            force: request.force_nodes.contains(&f.name),
            maintenance: moves.moves.get(&f.name).map(String::as_str),
        })
        .collect();
    let policy = Policy {
        timeout: cluster.spec.drain_timeout(),
        on_deadline: cluster.spec.on_deadline(),
        force: request.force,
        ready_timeout: cluster.spec.ready_timeout(),
        paused: request.paused,
    };
    let decisions = lifecycle::step(&inputs, &policy, now);
    let mut statuses: Vec<api::NodeStatus> = decisions.iter().map(|d| d.status.clone()).collect();
    nodes::record_session_probes(&cluster, &facts, &mut statuses);
    let maintenance_events = status::maintenance_waits(&old, &mut statuses, &moves.waiting);
    // Each node's budget follows the phase just decided: open once drained or not serving.
    let desired_budgets = render::budget::budgets(&cluster, &statuses);
    let found = find(
        &ctx.port,
        &ns,
        ChildKind::PodDisruptionBudget,
        diff::unseen(&desired_budgets, &children.budgets),
    )
    .await?;
    let budgets =
        diff::plan(&desired_budgets, &children.budgets, &found, uid.as_deref()).map_err(serialize)?;
    let plan_problems: Vec<api::ObjectProblem> =
        plan_problems.into_iter().chain(budgets.problems.iter().cloned()).collect();

    // The grid redirect keeps OMERO itself working, so it runs even while paused. It is
    // idempotent and re-asserted, so a stale read at worst re-asserts an older target once.
    let redirect = match (master, master.and_then(|m| lifecycle::redirect_target(&statuses, m))) {
        (_, Some(target)) => Some(redirect(&ctx, &cluster, &ns, target, pods.get(&target.name)).await),
        // A grid that had a target and lost every serving node: the row names a JVM that may be
        // gone, and OMERO may clear it; a Blitz starting on a NULL row fails until a node serves.
        (Some(_), None) if old.redirect_node.is_some() || old.redirect_error.is_some() => Some(Err(
            "no node serves: the row keeps its last value until one does, and a Blitz that starts while \
             OMERO has cleared it fails (IceGrid restarts it) until then"
                .to_string(),
        )),
        _ => None,
    };
    let rollout_status = RolloutStatus {
        target_revision: cluster_revision(&desired.deployments),
        up_to_date_nodes: statuses.iter().filter(|s| !s.leaving && s.up_to_date).count() as i32,
        pending: plan.pending.clone(),
        waiting: plan.waiting.clone(),
        waiting_for_consent: plan.needs_consent,
        paused: request.paused,
    };
    let mut assessment = Assessment {
        generation: cluster.meta().generation,
        refused: lifecycle::refused(&request.drain, &statuses),
        nodes: statuses,
        invalid: &[],
        drain_problems: &request.problems,
        redirect,
        object_problems: Vec::new(),
        rollout: Some(rollout_status),
        requests: request::observed(cluster.annotations()),
    };

    // The writes these decisions call for.
    let labels = decisions.iter().filter_map(|d| Some((d.status.pod.clone()?, d.set_routable?))).collect();
    let writes = nodes::writes(
        (deployments, services, config_maps),
        (&children.deployments, &children.services, &children.config_maps),
        (&desired.deployments, &desired.services, &desired.config_maps),
        (budgets, &children.budgets, &desired_budgets),
        &children.pods,
        uid.as_deref(),
        &assessment.nodes,
        labels,
        request.paused,
    );
    assessment.object_problems =
        plan_problems.iter().chain(writes.retried_refusals(&old.object_problems)).cloned().collect();
    assessment.object_problems.sort();
    let next = status::next_status(&old, &assessment, now);

    // Record, then act.
    let mut recorded = cluster.metadata.resource_version.clone();
    if next != old || !writes.is_empty() {
        match ctx.port.write_status(&cluster, &next).await? {
            StatusWrite::Stale => {
                debug!(cluster = %name, "stale read: the cluster changed since it was read; looking again");
                return Ok(STALE_RETRY);
            }
            StatusWrite::Written(resource_version) => recorded = resource_version,
        }
    }
    // The counter's script first: a pod that mounts it does not start until it exists.
    let children_written = writes
        .config_maps
        .iter()
        .map(|w| (Child::ConfigMap(w.object), w.uid.as_deref()))
        .chain(writes.deployments.iter().map(|w| (Child::Deployment(w.object), w.uid.as_deref())))
        .chain(writes.services.iter().map(|w| (Child::Service(w.object), w.uid.as_deref())))
        .chain(writes.budgets.iter().map(|w| (Child::PodDisruptionBudget(w.object), w.uid.as_deref())));
    let mut refusals = Vec::new();
    for (child, child_uid) in children_written {
        info!(cluster = %name, kind = child.kind().as_str(), child = child.name(), "applying");
        if let Err(error) = ctx.port.apply(&ns, child, child_uid).await {
            // A refusal is reported in status and an Event; retrying would not cure it. An
            // apply without a uid precondition may create, and is authorized as create.
            let Some(refusal) = error.refusal() else { return Err(error) };
            let kind = child.kind();
            if child_uid.is_some() && refusal.replaced_object() {
                // Replaced since the cache saw it: whose it is now decides the report. Ours
                // again (or gone) needs none: the next reconcile applies it from a fresh cache.
                let current = ctx.port.find(&ns, kind, child.name()).await?;
                if let Some(meta) = current.filter(|m| !ownership::is_controlled_by(m, uid.as_deref())) {
                    warn!(cluster = %name, kind = kind.as_str(), child = child.name(), "replaced by an object not ours");
                    refusals.push(ownership::not_owned(kind.as_str(), child.name(), &meta));
                }
                continue;
            }
            let verb = if child_uid.is_none() { "create" } else { "patch" };
            let problem =
                ownership::refused(kind.as_str(), child.name(), &ns, verb, kind.api_resource(), &refusal);
            warn!(cluster = %name, kind = kind.as_str(), child = child.name(), why = %problem.message, "refused");
            refusals.push(problem);
        }
    }
    let mut events: Vec<Event> = Vec::new();
    // A refused delete or label patch is reported like a refused apply, not retried blindly.
    let mut refused = |kind: &str, object: &str, verb: &str, resource, result: Result<(), Error>| {
        let Err(error) = result else { return Ok(()) };
        let Some(refusal) = error.refusal() else { return Err(error) };
        let problem = ownership::refused(kind, object, &ns, verb, resource, &refusal);
        warn!(cluster = %name, kind, child = object, why = %problem.message, "refused");
        refusals.push(problem);
        Ok(())
    };
    for (kind, child, child_uid) in &writes.deletes {
        info!(cluster = %name, ?kind, child, "deleting: its node left the spec and is drained");
        let result = ctx.port.delete_child(&ns, *kind, child, child_uid).await;
        refused(kind.as_str(), child, "delete", kind.api_resource(), result)?;
    }
    for (pod, pod_uid) in &writes.pod_deletes {
        info!(cluster = %name, pod, "deleting the pod of a drained node: it moves off its Kubernetes node");
        let result = ctx.port.delete_pod(&ns, pod, pod_uid).await;
        refused("Pod", pod, "delete", ("", "pods"), result)?;
    }
    for (pod, routable) in &writes.labels {
        info!(cluster = %name, pod, routable, "labelling pod");
        let result = ctx.port.set_routable(&ns, pod, *routable).await;
        refused("Pod", pod, "patch", ("", "pods"), result)?;
    }
    // What the API server refused changes the record: written once more, on the new version.
    let mut problems: Vec<api::ObjectProblem> = plan_problems.into_iter().chain(refusals).collect();
    problems.sort();
    events.extend(decisions.iter().flat_map(|d| d.events.iter().map(status::node_event)));
    events.extend(maintenance_events);
    let next = if problems == next.object_problems {
        next
    } else {
        assessment.object_problems = problems;
        let after = status::next_status(&old, &assessment, now);
        let mut current = (*cluster).clone();
        current.metadata.resource_version = recorded;
        if ctx.port.write_status(&current, &after).await? == StatusWrite::Stale {
            // The first write recorded these transitions: their Events go out all the same;
            // the refusals are recorded (and announced) by the next reconcile.
            events.extend(status::transition_events(&old, &next, &request.problems));
            publish(&ctx.port, &cluster, &events).await;
            return Ok(STALE_RETRY);
        }
        after
    };
    events.extend(status::transition_events(&old, &next, &request.problems));
    ctx.metrics.observe_status(&ns, &name, &old, &next, now);
    publish(&ctx.port, &cluster, &events).await;

    let requeue = requeue_after(&next.nodes, cluster.spec.ready_timeout(), now);
    // OMERO rewrites the redirect row when nodes join or leave: keep re-asserting it.
    Ok(if next.redirect_node.is_some() || next.redirect_error.is_some() {
        requeue.min(REDIRECT_REASSERT)
    } else {
        requeue
    })
}

/// A digest of every node's target revision, for status.
fn cluster_revision(deployments: &[k8s_openapi::api::apps::v1::Deployment]) -> String {
    let all: Vec<&str> = deployments.iter().filter_map(|d| render::revision_of(&d.metadata)).collect();
    render::revision::of_text(&all.join(","))
}

/// Publishes each Event. One that cannot be published is logged, not retried: status carries
/// the same facts and must not wait on it.
async fn publish<P: ClusterPort>(port: &P, cluster: &OmeroCluster, events: &[Event]) {
    for event in events {
        info!(cluster = %cluster.name_any(), reason = %event.reason, note = %event.note, "event");
        if let Err(error) = port.publish(cluster, event).await {
            warn!(cluster = %cluster.name_any(), reason = %event.reason, %error, "could not publish the event");
        }
    }
}

/// What holds each of `names`, looked up by name: objects that do not carry the cluster's
/// labels, which the cluster must not write over.
async fn find<P: ClusterPort>(
    port: &P,
    ns: &str,
    kind: ChildKind,
    names: Vec<String>,
) -> Result<BTreeMap<String, ObjectMeta>, Error> {
    let mut found = BTreeMap::new();
    for name in names {
        if let Some(meta) = port.find(ns, kind, &name).await? {
            found.insert(name, meta);
        }
    }
    Ok(found)
}

/// Next look: the earliest probe, deadline or ready timeout of a node in motion, else the
/// resync period.
fn requeue_after(nodes: &[api::NodeStatus], ready_timeout: api::Duration, now: Timestamp) -> StdDuration {
    lifecycle::next_wakeup(nodes, ready_timeout)
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
    probe: Option<api::SessionProbe>,
    pod: Option<&PodObservation>,
) -> (ProbeOutcome, Option<String>) {
    let Some(probe) = probe else { return (ProbeOutcome::NoProbe, None) };
    if probe.kind == SessionProbeKind::None {
        return (ProbeOutcome::NoProbe, None);
    }
    let Some(pod_ip) = pod.and_then(|p| p.ip.clone()) else {
        return (ProbeOutcome::Failed("the node's pod has no IP yet".into()), None);
    };
    let database = if probe.kind == SessionProbeKind::Database {
        match primary_credentials(ctx, cluster, ns).await {
            Ok(credentials) => Some(credentials),
            Err(e) => return (ProbeOutcome::Failed(e), None),
        }
    } else {
        None
    };
    let query = SessionQuery { pod_ip, probe, database };
    match ctx.omero.count_sessions(&query).await {
        Ok(Some(count)) => (ProbeOutcome::Count(count.sessions), count.sample),
        Ok(None) => (ProbeOutcome::NoProbe, None),
        Err(e) => (ProbeOutcome::Failed(e), None),
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
