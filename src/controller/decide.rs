//! What one reconcile decides, given what it saw: [`decide`]. Pure: no I/O, no clock (`now`
//! is given), nothing logged that changes behaviour.
//!
//! In order: validate; read the requests; render; which writes are ours to make (ownership);
//! every departure together (requested drains, maintenance moves, the rollout's picks); each
//! node's step (lifecycle); the budgets that follow the phases; where the grid's new sessions
//! go; the status to record; the writes and Events. Once acting has said what the API server
//! and OMERO answered, [`Decision::settle`] says what the record must say instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration as StdDuration,
};

use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{Resource, ResourceExt};

use super::{
    diff,
    nodes::{self, NodeFacts, Writes},
    observe::Observation,
    pods,
    port::{ChildKind, ChildObject, Event, RedirectQuery},
    probe_memory,
    status::{self, Assessment},
};
use crate::{
    Error,
    api::{
        self, DatabaseEndpoint, NodeStatus, ObjectProblem, OmeroCluster, OmeroClusterStatus, RolloutStatus,
    },
    departures,
    lifecycle::{self, NodeInput, PodObservation, Policy},
    maintenance, render, request, rollout, stopping,
};

/// Reconcile at least this often, so drift is corrected even without watch events.
pub const RESYNC: StdDuration = StdDuration::from_secs(300);
/// How often a grid's redirect row is re-asserted while the operator steers new sessions.
pub const REDIRECT_REASSERT: StdDuration = StdDuration::from_secs(30);

/// One reconcile's decision: the status to record, then what to do, then what to announce.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The status as read.
    pub old: OmeroClusterStatus,
    /// The status to record before acting.
    pub status: OmeroClusterStatus,
    /// Whether to write it: it changed, or there are writes whose decisions it must hold
    /// first (an operator killed after the write finds them there and carries them out).
    pub record: bool,
    pub actions: Actions,
    /// The nodes' transitions and the maintenance waits, announced once the record stands
    /// (the status's own transitions are added then, from the final record).
    pub events: Vec<Event>,
    /// When to look again without a watch event.
    pub requeue: StdDuration,
    /// What `status` is made from, to make it again from what acting found.
    assessment: Assessment,
    /// The problems known before acting (ownership, immutable fields, pods refused).
    known_problems: Vec<ObjectProblem>,
}

/// What the decision calls for once it is recorded, in the order it is done.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Actions {
    /// Point the grid's new sessions at this node. It keeps OMERO itself working, so it is
    /// done even while paused; it is idempotent and re-asserted.
    pub redirect: Option<Redirect>,
    /// Objects to apply, each with the uid of the object it replaces (a precondition): the
    /// counter's ConfigMap first (a pod that mounts it does not start until it exists), then
    /// Deployments, Services, budgets.
    pub applies: Vec<Apply>,
    /// Kind, name and uid (a precondition) of the objects of nodes that left and are drained.
    pub deletes: Vec<(ChildKind, String, String)>,
    /// Pods (name, uid) of drained nodes moving off a Kubernetes node.
    pub pod_deletes: Vec<(String, String)>,
    /// Pod name and the routable label it gets.
    pub labels: Vec<(String, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    pub object: ChildObject,
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub node: String,
    pub query: RedirectQuery,
}

impl Actions {
    /// No write to the API server (the redirect is OMERO's row, not an object).
    pub fn writes_nothing(&self) -> bool {
        self.applies.is_empty()
            && self.deletes.is_empty()
            && self.pod_deletes.is_empty()
            && self.labels.is_empty()
    }
}

/// What acting found that the decision could not know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Writes the API server refused, or objects replaced by someone else's.
    pub refusals: Vec<ObjectProblem>,
    /// The redirect, when it was tried: the node, or why it failed.
    pub redirect: Option<Result<String, String>>,
}

impl Decision {
    /// The status to record once more after acting, when what acting found changes it.
    pub fn settle(&self, outcome: &Outcome, now: Timestamp) -> Option<OmeroClusterStatus> {
        let mut problems: Vec<ObjectProblem> =
            self.known_problems.iter().chain(&outcome.refusals).cloned().collect();
        problems.sort();
        let redirect = outcome.redirect.clone().or_else(|| self.assessment.redirect.clone());
        if problems == self.status.object_problems && redirect == self.assessment.redirect {
            return None;
        }
        let assessment = Assessment { object_problems: problems, redirect, ..self.assessment.clone() };
        Some(status::next_status(&self.old, &assessment, now))
    }

    /// Events of the recorded transitions from the status as read to `recorded`.
    pub fn transition_events(&self, recorded: &OmeroClusterStatus) -> Vec<Event> {
        status::transition_events(&self.old, recorded, &self.assessment.drain_problems)
    }
}

/// Everything one reconcile decides from the cluster as read and what was observed of it.
pub fn decide(cluster: &OmeroCluster, observation: &Observation, now: Timestamp) -> Result<Decision, Error> {
    let old = observation.old_status(cluster);
    if let Err(errors) = api::validate(cluster) {
        return Ok(invalid(cluster, old, errors, now));
    }
    let children = &observation.children;
    let name = cluster.name_any();
    let uid = cluster.uid();

    // What is asked for, and what it renders to.
    let node_names: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut request = request::parse(cluster.annotations(), &request::nameable_nodes(cluster));
    let master = cluster.spec.grid_master().map(|n| n.name.as_str());
    if let Some(master) = master {
        request::keep_grid_master(&mut request, master);
    }
    let (ours, pods) = pods::of_cluster(&children.deployments, &children.pods, uid.as_deref());
    let current_token = |node: &str| {
        let object = render::node_object_name(&name, node);
        ours.iter()
            .find(|d| d.metadata.name.as_deref() == Some(object.as_str()))
            .and_then(|d| render::restart_token_of(d))
            .map(str::to_string)
    };
    request::settle_consent(&mut request, &node_names, current_token);
    let tokens = rollout::restart_tokens(&request, node_names.iter().copied(), current_token);
    let desired = render::render_with_restarts(cluster, &tokens);

    // Which writes are ours to make at all.
    let owner = uid.as_deref();
    let services = plan_writes(&desired.services, &children.services, observation, owner)?;
    let config_maps = plan_writes(&desired.config_maps, &children.config_maps, observation, owner)?;

    // Every departure together: requested drains, then maintenance moves, then rollout picks.
    let facts = nodes::with_target_revisions(
        cluster,
        nodes::facts(cluster, &old, &ours, &pods),
        &desired.deployments,
    );
    let views: Vec<rollout::NodeView> = facts.iter().map(|f| f.view(cluster)).collect();
    let limits = rollout::Limits {
        max_unavailable: cluster.spec.max_unavailable(),
        allow_downtime: request.allow_downtime,
        paused: request.paused,
    };
    let hosts = maintenance::hosts(children.kube_nodes.as_deref(), cluster.spec.maintenance_taint_keys());
    let placements: Vec<maintenance::Placement> =
        facts.iter().zip(&views).map(|(f, view)| f.placement(view)).collect();
    let requests = departures::Requests {
        drain: &request.drain,
        force: request.force,
        force_nodes: &request.force_nodes,
    };
    let departures::Departures { moves, rollout: restarts, removals_started, .. } =
        departures::decide(&placements, &hosts, requests, &limits);

    // Each node's step, with what the cluster's `spec.stopped` asks of it.
    let states: Vec<stopping::NodeState<'_>> = facts
        .iter()
        .map(|f| stopping::NodeState {
            name: &f.name,
            role: f.role(cluster),
            phase: f.previous.map(|s| s.phase).unwrap_or_default(),
        })
        .collect();
    let mut powers = stopping::decide(cluster.spec.stopped, &states);
    let inputs: Vec<NodeInput<'_>> = facts
        .iter()
        .map(|f| {
            let power = powers.remove(&f.name).unwrap_or(stopping::Power::Run);
            node_input(cluster, f, observation, &request, (&restarts, &moves, &removals_started), power)
        })
        .collect();
    let policy = Policy {
        timeout: cluster.spec.drain_timeout(),
        on_deadline: cluster.spec.on_deadline(),
        force: request.force,
        ready_timeout: cluster.spec.ready_timeout(),
        paused: request.paused,
    };
    let steps = lifecycle::step(&inputs, &policy, now);
    let mut statuses: Vec<NodeStatus> = steps.iter().map(|d| d.status.clone()).collect();
    nodes::record_session_probes(cluster, &facts, &mut statuses);
    let maintenance_events = status::maintenance_waits(&old, &mut statuses, &moves.waiting);

    // Each node's Deployment runs its pod unless the node is recorded Stopped.
    let desired_deployments = nodes::scaled(&desired.deployments, &statuses);
    let deployments = plan_writes(&desired_deployments, &children.deployments, observation, owner)?;
    // Each node's budget follows the phase just decided: open once drained or not serving.
    let desired_budgets = render::budget::budgets(cluster, &statuses);
    let budgets = plan_writes(&desired_budgets, &children.budgets, observation, owner)?;
    let known_problems: Vec<ObjectProblem> = deployments
        .problems
        .iter()
        .chain(&services.problems)
        .chain(&config_maps.problems)
        .cloned()
        .chain(pods::pod_refusals(ours.iter().copied()))
        .chain(budgets.problems.iter().cloned())
        .collect();

    let (redirect, redirect_action) = redirect(master, &statuses, &old, &pods, observation.database.as_ref());
    let rollout_status = RolloutStatus {
        target_revision: cluster_revision(&desired.deployments),
        up_to_date_nodes: statuses.iter().filter(|s| !s.leaving && s.up_to_date).count() as i32,
        pending: restarts.pending.clone(),
        waiting: restarts.waiting.clone(),
        waiting_for_consent: restarts.needs_consent,
        paused: request.paused,
    };
    let mut assessment = Assessment {
        generation: cluster.meta().generation,
        refused: lifecycle::refused(&request.drain, &statuses),
        nodes: statuses,
        invalid: Vec::new(),
        drain_problems: request.problems.clone(),
        redirect,
        object_problems: Vec::new(),
        rollout: Some(rollout_status),
        requests: request::observed(cluster.annotations()),
        stopped: cluster.spec.stopped && !request.paused,
        read_only_pool: cluster.spec.read_only_pool.clone().map(|pool| (pool, cluster.name_any())),
    };

    // The writes these decisions call for.
    let labels = steps.iter().filter_map(|d| Some((d.status.pod.clone()?, d.set_routable?))).collect();
    let writes = nodes::writes(
        (deployments, services, config_maps),
        (&children.deployments, &children.services, &children.config_maps),
        (&desired_deployments, &desired.services, &desired.config_maps),
        (budgets, &children.budgets, &desired_budgets),
        &children.pods,
        uid.as_deref(),
        &assessment.nodes,
        labels,
        request.paused,
    );
    // A write tried again keeps its refusal in the record until it succeeds (no flicker).
    assessment.object_problems =
        known_problems.iter().chain(writes.retried_refusals(&old.object_problems)).cloned().collect();
    assessment.object_problems.sort();
    let next = status::next_status(&old, &assessment, now);
    let actions = Actions { redirect: redirect_action, ..actions(writes) };
    let events = steps
        .iter()
        .flat_map(|d| d.events.iter().map(status::node_event))
        .chain(maintenance_events)
        .collect();
    Ok(Decision {
        record: !probe_memory::same_record(&next, &old) || !actions.writes_nothing(),
        requeue: requeue_after(&next, cluster.spec.ready_timeout(), now),
        old,
        status: next,
        actions,
        events,
        assessment,
        known_problems,
    })
}

/// An invalid spec changes nothing that runs: only the status (and its Events) say what is
/// wrong.
fn invalid(
    cluster: &OmeroCluster,
    old: OmeroClusterStatus,
    errors: Vec<api::ValidationError>,
    now: Timestamp,
) -> Decision {
    let assessment = Assessment {
        generation: cluster.meta().generation,
        nodes: old.nodes.clone(),
        invalid: errors,
        requests: request::observed(cluster.annotations()),
        stopped: cluster.spec.stopped,
        // An invalid spec changes nothing: the pool's status is the one before it.
        ..Default::default()
    };
    let next = status::next_status(&old, &assessment, now);
    Decision {
        record: !probe_memory::same_record(&next, &old),
        requeue: RESYNC,
        old,
        status: next,
        actions: Actions::default(),
        events: Vec::new(),
        assessment,
        known_problems: Vec::new(),
    }
}

/// [`diff::plan_writes`] with what the look-ups by name found.
fn plan_writes<'a, K: diff::Child>(
    desired: &'a [K],
    existing: &[K],
    observation: &Observation,
    owner_uid: Option<&str>,
) -> Result<diff::Plan<'a, K>, Error> {
    let nothing_looked_up = BTreeMap::new();
    let found = observation.found.get(&K::KIND).unwrap_or(&nothing_looked_up);
    diff::plan_writes(desired, existing, found, owner_uid)
        .map_err(|source| Error::Serialize { what: format!("a {}", K::kind(&())), source })
}

/// What the lifecycle needs of one node: its facts, this reconcile's probe result and the
/// departures decided for it.
fn node_input<'a>(
    cluster: &OmeroCluster,
    fact: &'a NodeFacts<'a>,
    observation: &Observation,
    request: &request::Request,
    (restarts, moves, removals): (&rollout::Plan, &'a maintenance::Plan, &BTreeSet<String>),
    power: stopping::Power,
) -> NodeInput<'a> {
    let probe = observation.probes.get(&fact.name);
    NodeInput {
        name: &fact.name,
        previous: fact.previous,
        pod: fact.pod,
        drain_requested: request.drain.contains(&fact.name),
        probe_sample: probe.and_then(|(_, sample)| sample.clone()),
        probe: probe.map(|(outcome, _)| outcome.clone()),
        probe_interval: fact.probe_interval(cluster),
        serving_probe_interval: fact.serving_probe_interval(cluster),
        target_revision: fact.target_revision,
        deployment_exists: fact.deployment.is_some(),
        deployment_revision: fact.deployment_revision(),
        selected: restarts.selected.contains(&fact.name) || removals.contains(&fact.name),
        leaving: fact.spec.is_none(),
        force: request.force_nodes.contains(&fact.name),
        maintenance: moves.moves.get(&fact.name).map(String::as_str),
        power,
    }
}

/// Where the grid's new sessions go, as the record says it, and the redirect to make. A
/// redirect that failed last time stays recorded as failed while it is tried again: acting
/// says whether it still fails (see [`Decision::settle`]), so the record does not flicker.
fn redirect(
    master: Option<&str>,
    statuses: &[NodeStatus],
    old: &OmeroClusterStatus,
    pods: &BTreeMap<String, PodObservation>,
    database: Option<&Result<(DatabaseEndpoint, String), String>>,
) -> (Option<Result<String, String>>, Option<Redirect>) {
    let Some(master) = master else { return (None, None) };
    let Some(target) = lifecycle::redirect_target(statuses, master) else {
        // A grid that had a target and lost every serving node: the row names a JVM that may
        // be gone, and OMERO may clear it; a Blitz starting on a NULL row fails until a node
        // serves.
        let lost = old.redirect_node.is_some() || old.redirect_error.is_some();
        let why = "no node serves: the row keeps its last value until one does, and a Blitz that starts \
                   while OMERO has cleared it fails (IceGrid restarts it) until then";
        return (lost.then(|| Err(why.to_string())), None);
    };
    let Some(pod_ip) = pods.get(&target.name).and_then(|p| p.ip.clone()) else {
        return (Some(Err(format!("node {} has no pod IP", target.name))), None);
    };
    let database = match database {
        Some(Ok(database)) => database.clone(),
        Some(Err(e)) => return (Some(Err(e.clone())), None),
        None => return (Some(Err("the database credentials were not read".into())), None),
    };
    let recorded = match &old.redirect_error {
        Some(e) => Err(e.clone()),
        None => Ok(target.name.clone()),
    };
    let query = RedirectQuery { pod_ip, database };
    (Some(recorded), Some(Redirect { node: target.name.clone(), query }))
}

/// The writes as the actions that carry them out, each object owned.
fn actions(writes: Writes<'_>) -> Actions {
    let apply = |object: ChildObject, uid: Option<String>| Apply { object, uid };
    let applies = (writes
        .config_maps
        .into_iter()
        .map(|w| apply(ChildObject::ConfigMap(Box::new(w.object.clone())), w.uid)))
    .chain(
        writes
            .deployments
            .into_iter()
            .map(|w| apply(ChildObject::Deployment(Box::new(w.object.clone())), w.uid)),
    )
    .chain(
        writes.services.into_iter().map(|w| apply(ChildObject::Service(Box::new(w.object.clone())), w.uid)),
    )
    .chain(
        writes
            .budgets
            .into_iter()
            .map(|w| apply(ChildObject::PodDisruptionBudget(Box::new(w.object.clone())), w.uid)),
    )
    .collect();
    Actions {
        redirect: None,
        applies,
        deletes: writes.deletes,
        pod_deletes: writes.pod_deletes,
        labels: writes.labels,
    }
}

/// A digest of every node's target revision, for status.
fn cluster_revision(deployments: &[Deployment]) -> String {
    let all: Vec<&str> = deployments.iter().filter_map(|d| render::revision_of(&d.metadata)).collect();
    render::revision::of_text(&all.join(","))
}

/// Next look: the earliest probe, deadline or ready timeout of a node in motion, else the
/// resync period; while the operator steers a grid's new sessions, often enough to re-assert
/// the redirect row, which OMERO rewrites when nodes join or leave.
fn requeue_after(next: &OmeroClusterStatus, ready_timeout: api::Duration, now: Timestamp) -> StdDuration {
    let requeue = lifecycle::next_wakeup(&next.nodes, ready_timeout)
        .map(|at| {
            let wait = at.duration_since(now);
            StdDuration::try_from(wait).unwrap_or(StdDuration::ZERO).max(StdDuration::from_secs(1))
        })
        .map_or(RESYNC, |wait| wait.min(RESYNC));
    if next.redirect_node.is_some() || next.redirect_error.is_some() {
        requeue.min(REDIRECT_REASSERT)
    } else {
        requeue
    }
}
