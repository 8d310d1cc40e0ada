//! The node state machine: `(node statuses, observations, now) -> (next statuses, actions)`.
//!
//! Pure: no I/O, no clock. The controller observes pods and runs session probes, calls
//! [`step`], then carries out the label patches and publishes the events it returns. All drain
//! state (start, deadline, counts, confirmations) is in [`NodeStatus`], which is persisted in
//! the OmeroCluster's status, so a restarted operator resumes a drain where it stood.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::api::{Duration, NodePhase, NodeStatus, OnDeadline};

/// `omero.openmicroscopy.org/drain: "backup,ro-2"` drains those nodes; removing a name
/// undrains it.
pub const DRAIN_ANNOTATION: &str = "omero.openmicroscopy.org/drain";
/// `omero.openmicroscopy.org/drain-force: "true"` lets the drain take the last serving node,
/// and ends drains held past their deadline (`drain.onDeadline: Hold`).
pub const FORCE_ANNOTATION: &str = "omero.openmicroscopy.org/drain-force";

/// Zero-session probes in a row that end a drain: one zero may be a race with a client that
/// connected just before the node stopped being routable.
pub const ZERO_CONFIRMATIONS: u32 = 2;
/// Longest wait between probes of a failing probe.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(300);

/// What the drain annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainRequest {
    pub nodes: BTreeSet<String>,
    pub force: bool,
    /// Entries that were ignored, each with why.
    pub problems: Vec<String>,
}

/// Reads the drain annotations against the cluster's node names. Bad entries are reported and
/// skipped; the good ones still count.
pub fn parse_request(annotations: &BTreeMap<String, String>, node_names: &[&str]) -> DrainRequest {
    let mut request = DrainRequest::default();
    if let Some(force) = annotations.get(FORCE_ANNOTATION) {
        match force.trim() {
            "true" => request.force = true,
            "false" | "" => {}
            other => request
                .problems
                .push(format!("{FORCE_ANNOTATION}: '{other}' is not a boolean; write \"true\" or remove it")),
        }
    }
    let Some(value) = annotations.get(DRAIN_ANNOTATION) else {
        return request;
    };
    if value.trim().is_empty() {
        return request;
    }
    for (i, entry) in value.split(',').enumerate() {
        let name = entry.trim();
        if name.is_empty() {
            request.problems.push(format!(
                "{DRAIN_ANNOTATION}: entry {} is empty; list node names separated by commas, e.g. \"backup,ro-2\"",
                i + 1
            ));
        } else if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
            request.problems.push(format!(
                "{DRAIN_ANNOTATION}: '{name}' is not a node name; list node names separated by commas"
            ));
        } else if !node_names.contains(&name) {
            request.problems.push(format!(
                "{DRAIN_ANNOTATION}: no node named '{name}'; nodes are {}",
                node_names.join(", ")
            ));
        } else {
            request.nodes.insert(name.to_string());
        }
    }
    request
}

/// What the controller saw of a node's pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObservation {
    pub name: String,
    pub ip: Option<String>,
    pub ready: bool,
    /// Carries `omero.openmicroscopy.org/routable=true`.
    pub routable: bool,
    pub image: Option<String>,
    /// Why the pod cannot run, when it cannot (crash loop, image pull failure, ...).
    pub failure: Option<String>,
}

/// The result of a session probe run in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Count(u64),
    /// The node has no probe (`sessionProbe.type: none`): only the deadline ends its drain.
    NoProbe,
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct NodeInput<'a> {
    pub name: &'a str,
    pub previous: Option<&'a NodeStatus>,
    pub pod: Option<&'a PodObservation>,
    pub drain_requested: bool,
    /// `Some` only when the controller probed this node in this reconcile (see [`probe_due`]).
    pub probe: Option<ProbeOutcome>,
    pub probe_interval: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub timeout: Duration,
    pub on_deadline: OnDeadline,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainEvent {
    Started { node: String, deadline: Timestamp },
    Completed { node: String },
    DeadlineReached { node: String, sessions: Option<u64>, proceeding: bool },
    Refused { node: String, reason: String },
    Undrained { node: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: NodeStatus,
    /// Set the pod's routable label to this value.
    pub set_routable: Option<bool>,
    pub events: Vec<DrainEvent>,
}

/// Whether the controller should probe this node's sessions now.
pub fn probe_due(previous: Option<&NodeStatus>, now: Timestamp) -> bool {
    previous.is_some_and(|s| {
        s.phase == NodePhase::Draining && s.next_probe_at.as_ref().is_none_or(|t| t.0 <= now)
    })
}

/// The earliest time a node needs looking at again without any watch event: its next probe or
/// its drain deadline.
pub fn next_wakeup(statuses: &[NodeStatus]) -> Option<Timestamp> {
    statuses
        .iter()
        .filter(|s| s.phase == NodePhase::Draining)
        .flat_map(|s| {
            let deadline = if s.deadline_reached { None } else { s.drain_deadline.as_ref() };
            [s.next_probe_at.as_ref(), deadline]
        })
        .flatten()
        .map(|t| t.0)
        .min()
}

/// One step for every node of the cluster, in the order given (spec order). Cluster-wide
/// rules (the last serving node) need all nodes at once.
pub fn step(nodes: &[NodeInput<'_>], policy: &Policy, now: Timestamp) -> Vec<Decision> {
    // Nodes that will serve new sessions unless this step takes them out.
    let mut serving = nodes.iter().filter(|n| would_serve(n)).count();
    nodes
        .iter()
        .map(|node| {
            let decision = step_node(node, policy, now, serving);
            let was = would_serve(node);
            let is = decision.status.phase == NodePhase::Serving;
            if was && !is {
                serving -= 1;
            }
            decision
        })
        .collect()
}

/// Serving now, or ready and back in service after this step unless it starts a drain.
fn would_serve(node: &NodeInput<'_>) -> bool {
    let phase = node.previous.map(|s| s.phase).unwrap_or_default();
    let ready = node.pod.is_some_and(|p| p.ready && p.failure.is_none());
    // A node whose drain was withdrawn is back in service in this very step.
    ready && (!phase.is_out_of_service() || !node.drain_requested)
}

fn step_node(node: &NodeInput<'_>, policy: &Policy, now: Timestamp, serving: usize) -> Decision {
    let previous =
        node.previous.cloned().unwrap_or_else(|| NodeStatus { name: node.name.into(), ..Default::default() });
    let mut status = NodeStatus {
        name: node.name.into(),
        ready: node.pod.is_some_and(|p| p.ready),
        routable: node.pod.is_some_and(|p| p.routable),
        image: node.pod.and_then(|p| p.image.clone()),
        pod: node.pod.map(|p| p.name.clone()),
        ..previous.clone()
    };
    let mut events = Vec::new();

    if !node.drain_requested {
        if previous.phase.is_out_of_service() {
            events.push(DrainEvent::Undrained { node: node.name.into() });
        }
        clear_drain(&mut status);
        status.phase = service_phase(node.pod);
        status.message = node.pod.and_then(|p| p.failure.clone());
        let set_routable = routable_patch(&mut status);
        return Decision { status, set_routable, events };
    }

    match previous.phase {
        NodePhase::Draining => continue_drain(node, policy, now, &mut status, &mut events),
        NodePhase::Drained | NodePhase::Restarting => {}
        NodePhase::Pending | NodePhase::Starting | NodePhase::Serving | NodePhase::Failed => {
            start_drain(node, policy, now, serving, &mut status, &mut events)
        }
    }
    let set_routable = routable_patch(&mut status);
    Decision { status, set_routable, events }
}

/// The label patch that makes the pod's routable label match its phase: on for a serving node
/// (its pod is ready), off for a node out of service. Other phases leave the label alone: a
/// pod that is not ready gets no traffic from the Service anyway.
/// The status reports the label as it will be once the patch is made (a failed patch fails
/// the reconcile, so the status is not written).
fn routable_patch(status: &mut NodeStatus) -> Option<bool> {
    let patch = if status.phase == NodePhase::Serving && !status.routable {
        Some(true)
    } else if status.phase.is_out_of_service() && status.routable {
        Some(false)
    } else {
        None
    };
    if let Some(routable) = patch {
        status.routable = routable;
    }
    patch
}

fn service_phase(pod: Option<&PodObservation>) -> NodePhase {
    match pod {
        None => NodePhase::Pending,
        Some(p) if p.failure.is_some() => NodePhase::Failed,
        Some(p) if p.ready => NodePhase::Serving,
        Some(_) => NodePhase::Starting,
    }
}

fn start_drain(
    node: &NodeInput<'_>,
    policy: &Policy,
    now: Timestamp,
    serving: usize,
    status: &mut NodeStatus,
    events: &mut Vec<DrainEvent>,
) {
    let ready = node.pod.is_some_and(|p| p.ready && p.failure.is_none());
    if !ready {
        // Nothing can hold a session on a node that cannot serve.
        clear_drain(status);
        status.phase = NodePhase::Drained;
        status.drain_started_at = Some(Time(now));
        status.message = Some("drained at once: the pod is not ready".into());
        events.push(DrainEvent::Completed { node: node.name.into() });
        return;
    }
    if serving <= 1 && !policy.force {
        let reason = "it is the last serving node: new sessions would have nowhere to go; add \
                      omero.openmicroscopy.org/drain-force: \"true\" to drain it anyway"
            .to_string();
        status.phase = NodePhase::Serving;
        if status.message.as_deref() != Some(&format!("drain refused: {reason}")) {
            events.push(DrainEvent::Refused { node: node.name.into(), reason: reason.clone() });
        }
        status.message = Some(format!("drain refused: {reason}"));
        return;
    }
    let deadline = later(now, policy.timeout);
    clear_drain(status);
    status.phase = NodePhase::Draining;
    status.drain_started_at = Some(Time(now));
    status.drain_deadline = Some(Time(deadline));
    status.next_probe_at = Some(Time(now));
    status.message = Some("draining: no new sessions; waiting for open sessions to end".into());
    events.push(DrainEvent::Started { node: node.name.into(), deadline });
}

fn continue_drain(
    node: &NodeInput<'_>,
    policy: &Policy,
    now: Timestamp,
    status: &mut NodeStatus,
    events: &mut Vec<DrainEvent>,
) {
    status.phase = NodePhase::Draining;
    if !node.pod.is_some_and(|p| p.ready && p.failure.is_none()) {
        status.phase = NodePhase::Drained;
        status.next_probe_at = None;
        status.message = Some("drained: the pod stopped being ready, so it holds no sessions".into());
        events.push(DrainEvent::Completed { node: node.name.into() });
        return;
    }
    match &node.probe {
        Some(ProbeOutcome::Count(n)) => {
            status.sessions = Some(i64::try_from(*n).unwrap_or(i64::MAX));
            status.sessions_observed_at = Some(Time(now));
            status.probe_error = None;
            status.probe_failures = 0;
            status.zero_session_probes = if *n == 0 { status.zero_session_probes + 1 } else { 0 };
            status.next_probe_at = Some(Time(later(now, node.probe_interval)));
            status.message = Some(format!("draining: {n} open sessions"));
        }
        Some(ProbeOutcome::NoProbe) => {
            status.next_probe_at = None;
            status.message = Some("draining: no session probe; waiting for the deadline".into());
        }
        Some(ProbeOutcome::Failed(error)) => {
            status.probe_failures += 1;
            status.zero_session_probes = 0;
            status.probe_error = Some(error.clone());
            status.next_probe_at =
                Some(Time(later(now, probe_backoff(node.probe_interval, status.probe_failures))));
            status.message = Some(format!(
                "draining: session probe failing ({} in a row); last good count {}",
                status.probe_failures,
                status.sessions.map_or("none".to_string(), |n| n.to_string())
            ));
        }
        None => {}
    }
    if status.zero_session_probes >= ZERO_CONFIRMATIONS {
        status.phase = NodePhase::Drained;
        status.next_probe_at = None;
        status.message = Some("drained: no open sessions".into());
        events.push(DrainEvent::Completed { node: node.name.into() });
        return;
    }
    let deadline = status.drain_deadline.as_ref().map(|t| t.0);
    let proceed = policy.on_deadline == OnDeadline::Proceed || policy.force;
    let reached_now = deadline.is_some_and(|d| d <= now) && !status.deadline_reached;
    if reached_now {
        status.deadline_reached = true;
        let sessions = status.sessions.and_then(|n| u64::try_from(n).ok());
        events.push(DrainEvent::DeadlineReached { node: node.name.into(), sessions, proceeding: proceed });
    }
    if status.deadline_reached {
        let open = status.sessions.map_or("an unknown number of".to_string(), |n| n.to_string());
        if proceed {
            status.phase = NodePhase::Drained;
            status.next_probe_at = None;
            status.message = Some(format!("drained at the deadline with {open} sessions still open"));
            if !reached_now {
                // A held drain, ended by force: its deadline was reported when it passed.
                events.push(DrainEvent::Completed { node: node.name.into() });
            }
        } else {
            status.message = Some(format!(
                "deadline passed with {open} sessions open; holding (drain.onDeadline: Hold) until they end"
            ));
        }
    }
}

/// Probe again after `interval * 2^(failures-1)`, at most [`MAX_PROBE_BACKOFF`] (or the interval
/// itself, if that is longer).
pub fn probe_backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(16);
    let cap = MAX_PROBE_BACKOFF.as_millis().max(interval.as_millis());
    Duration::from_millis(interval.as_millis().saturating_mul(factor).min(cap))
}

/// `now + duration`, saturating at the last representable instant: the schema accepts any
/// number of hours, and an overflowing timeout or interval must not panic the operator.
fn later(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_add(duration.std()).unwrap_or(Timestamp::MAX)
}

fn clear_drain(status: &mut NodeStatus) {
    status.drain_started_at = None;
    status.drain_deadline = None;
    status.deadline_reached = false;
    status.next_probe_at = None;
    status.zero_session_probes = 0;
    status.probe_failures = 0;
    status.probe_error = None;
    status.sessions = None;
    status.sessions_observed_at = None;
}

/// Nodes asked to drain that still serve after a step: their drain was refused (the only way
/// a requested node stays Serving).
pub fn refused(request: &DrainRequest, statuses: &[NodeStatus]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| request.nodes.contains(&s.name) && s.phase == NodePhase::Serving)
        .map(|s| s.name.clone())
        .collect()
}

/// Grid topology: the master runs the registry and Glacier2, the grid's only way in, so it
/// never leaves service. A request to drain it is dropped and reported.
pub fn keep_grid_master(request: &mut DrainRequest, master: &str) {
    if request.nodes.remove(master) {
        request.problems.push(format!(
            "{DRAIN_ANNOTATION}: '{master}' is the grid master (registry and Glacier2, the grid's only entry) and cannot be drained; drain its workers"
        ));
    }
}

/// Grid topology: where OMERO's configRedirector must send new sessions while any node is out
/// of service: the master when it serves, else the first serving node. `None` when no node is
/// out of service (nothing to steer) or none serves (nowhere to steer to).
pub fn redirect_target<'a>(nodes: &'a [NodeStatus], master: &str) -> Option<&'a NodeStatus> {
    if !nodes.iter().any(|n| n.phase.is_out_of_service()) {
        return None;
    }
    let serving = |n: &&NodeStatus| n.phase == NodePhase::Serving;
    nodes.iter().filter(serving).find(|n| n.name == master).or_else(|| nodes.iter().find(serving))
}
