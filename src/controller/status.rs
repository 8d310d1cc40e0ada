//! The cluster's next status and the Events its changes deserve. Pure.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use super::port::{Event, EventType, Related};
use crate::{
    api::{
        DrainReason, NodePhase, NodeStatus, ObjectProblem, ObjectProblemReason, OmeroClusterStatus,
        RolloutStatus, ValidationError, conditions,
    },
    lifecycle::NodeEvent,
};

/// Everything the next status is made from.
#[derive(Clone, Debug, Default)]
pub struct Assessment {
    pub generation: Option<i64>,
    /// Node statuses in spec order.
    pub nodes: Vec<NodeStatus>,
    /// Set when the spec is invalid (then nothing was changed).
    pub invalid: Vec<ValidationError>,
    /// Bad entries of the drain annotations.
    pub drain_problems: Vec<String>,
    /// Nodes whose requested drain was refused.
    pub refused: Vec<String>,
    /// Grid topology: where new sessions are sent, or why that could not be set.
    pub redirect: Option<Result<String, String>>,
    /// Objects the operator leaves alone: another owner holds them, or an immutable field.
    pub object_problems: Vec<ObjectProblem>,
    /// The rollout's state (None for an invalid spec: the old one is kept).
    pub rollout: Option<RolloutStatus>,
    /// The request annotations read (`status.observedRequests`).
    pub requests: std::collections::BTreeMap<String, String>,
    /// The spec stops the cluster (`spec.stopped`).
    pub stopped: bool,
    /// The read-only pool and the cluster's name (its pods' selector), when the spec has one.
    pub read_only_pool: Option<(crate::api::ReadOnlyPoolSpec, String)>,
}

pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_NODE_FAILED: &str = "NodeFailed";
pub const REASON_DRAIN_REFUSED: &str = "DrainRefused";
pub const REASON_INVALID_DRAIN_REQUEST: &str = "InvalidDrainRequest";
pub const REASON_PROBE_FAILING: &str = "SessionProbeFailing";
pub const REASON_REDIRECT_FAILING: &str = "RedirectFailing";
/// Ready's and Progressing's reason once every node is stopped (`spec.stopped`).
pub const REASON_STOPPED: &str = "Stopped";

pub fn next_status(old: &OmeroClusterStatus, a: &Assessment, now: Timestamp) -> OmeroClusterStatus {
    // Counts are of the spec's nodes; a node leaving the spec shows in `nodes` until it is gone.
    let count =
        |f: &dyn Fn(&NodeStatus) -> bool| a.nodes.iter().filter(|n| !n.leaving && f(n)).count() as i32;
    let node_count = count(&|_| true);
    let ready_nodes = count(&|n| n.ready);
    let serving_nodes = count(&|n| n.phase == NodePhase::Serving);
    let draining_nodes = count(&|n| n.phase == NodePhase::Draining);

    let mut problems: Vec<(&str, String)> = Vec::new();
    if !a.invalid.is_empty() {
        let list: Vec<String> = a.invalid.iter().map(ToString::to_string).collect();
        problems.push((REASON_INVALID_SPEC, format!("invalid spec, nothing changed: {}", list.join("; "))));
    }
    for n in a.nodes.iter().filter(|n| n.phase == NodePhase::Failed) {
        problems.push((
            REASON_NODE_FAILED,
            format!("node {} failed: {}", n.name, n.message.as_deref().unwrap_or("unknown")),
        ));
    }
    for name in &a.refused {
        let why =
            a.nodes.iter().find(|n| &n.name == name).and_then(|n| n.message.clone()).unwrap_or_default();
        problems.push((REASON_DRAIN_REFUSED, format!("node {name}: {why}")));
    }
    for p in &a.drain_problems {
        problems.push((REASON_INVALID_DRAIN_REQUEST, p.clone()));
    }
    for n in a.nodes.iter().filter(|n| n.probe_error.is_some()) {
        problems.push((
            REASON_PROBE_FAILING,
            format!("node {} session probe: {}", n.name, n.probe_error.as_deref().unwrap_or_default()),
        ));
    }

    for p in &a.object_problems {
        problems.push((p.reason.as_str(), p.message.clone()));
    }
    if let Some(Err(e)) = &a.redirect {
        problems.push((
            REASON_REDIRECT_FAILING,
            format!("new sessions cannot be pointed at a serving node (omero.cluster.redirect): {e}"),
        ));
    }

    let mut c = Conditions { old: &old.conditions, new: Vec::new(), generation: a.generation, now };
    match problems.first() {
        Some((reason, _)) => {
            let message: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            c.set(conditions::DEGRADED, true, reason, &message.join("; "));
        }
        None => c.set(conditions::DEGRADED, false, "AsExpected", "no problems"),
    }
    let summary = format!("{ready_nodes} of {node_count} nodes ready, {serving_nodes} serving");
    let stopped_nodes = count(&|n| n.phase == NodePhase::Stopped);
    if node_count > 0 && stopped_nodes == node_count {
        c.set(
            conditions::READY,
            false,
            REASON_STOPPED,
            "the cluster is stopped: every node's Deployment is scaled to zero (spec.stopped)",
        );
    } else if serving_nodes == 0 {
        c.set(
            conditions::READY,
            false,
            "NoServingNode",
            &format!("{summary}: new sessions have nowhere to go"),
        );
    } else if ready_nodes < node_count {
        c.set(conditions::READY, false, "NodesNotReady", &summary);
    } else {
        c.set(conditions::READY, true, "NodesReady", &summary);
    }
    let starting: Vec<&str> = a
        .nodes
        .iter()
        .filter(|n| matches!(n.phase, NodePhase::Pending | NodePhase::Starting))
        .map(|n| n.name.as_str())
        .collect();
    let rollout = if a.invalid.is_empty() { a.rollout.clone() } else { old.rollout.clone() };
    let stopped: Vec<&str> =
        a.nodes.iter().filter(|n| n.phase == NodePhase::Stopped).map(|n| n.name.as_str()).collect();
    match progress(&a.nodes, rollout.as_ref()) {
        _ if a.stopped && stopped_nodes < node_count => {
            let left: Vec<String> = a
                .nodes
                .iter()
                .filter(|n| !n.leaving && n.phase != NodePhase::Stopped)
                .map(|n| match n.phase {
                    NodePhase::Draining => format!(
                        "{} draining ({})",
                        n.name,
                        n.sessions.map_or("count unknown".to_string(), |s| format!("{s} sessions left"))
                    ),
                    phase => format!("{} {phase:?}", n.name),
                })
                .collect();
            c.set(
                conditions::PROGRESSING,
                true,
                "Stopping",
                &format!("stopping ({stopped_nodes} of {node_count} stopped): {}", left.join(", ")),
            )
        }
        _ if a.stopped => c.set(conditions::PROGRESSING, false, REASON_STOPPED, "every node is stopped"),
        Some((reason, message)) => c.set(conditions::PROGRESSING, true, reason, &message),
        None if !stopped.is_empty() => c.set(
            conditions::PROGRESSING,
            true,
            "Starting",
            &format!("starting: {} still stopped, waiting for their turn", stopped.join(", ")),
        ),
        None if !starting.is_empty() => c.set(
            conditions::PROGRESSING,
            true,
            "NodesStarting",
            &format!("starting {}", starting.join(", ")),
        ),
        None => c.set(conditions::PROGRESSING, false, "Stable", "nothing in progress"),
    }

    // kstatus: Reconciling says what Progressing says; Stalled holds while a problem that only
    // a person can end (a spec or object to fix, a failed node, consent to give) stands.
    let progressing = c.new.iter().find(|x| x.type_ == conditions::PROGRESSING).cloned();
    match progressing.filter(|p| p.status == "True") {
        Some(p) => c.set(conditions::RECONCILING, true, &p.reason, &p.message),
        None => c.set(conditions::RECONCILING, false, "Reconciled", "nothing in progress"),
    }
    let stalling: Vec<&(&str, String)> = problems.iter().filter(|(reason, _)| stalls(reason)).collect();
    let consent = a.rollout.as_ref().filter(|r| r.waiting_for_consent).and_then(|r| r.waiting.clone());
    match (stalling.first(), consent) {
        (Some((reason, _)), _) => {
            let message: Vec<&str> = stalling.iter().map(|(_, m)| m.as_str()).collect();
            c.set(conditions::STALLED, true, reason, &message.join("; "))
        }
        (None, Some(waiting)) => c.set(conditions::STALLED, true, "WaitingForConsent", &waiting),
        (None, None) => c.set(conditions::STALLED, false, "NotStalled", "nothing needs a person to act"),
    }

    OmeroClusterStatus {
        observed_generation: a.generation,
        conditions: c.new,
        nodes: a.nodes.clone(),
        node_count,
        ready_nodes,
        serving_nodes,
        draining_nodes,
        rollout,
        redirect_node: a.redirect.clone().and_then(Result::ok),
        redirect_error: a.redirect.clone().and_then(Result::err),
        // An invalid spec changes nothing, so what was blocked stays as it was.
        object_problems: if a.invalid.is_empty() {
            a.object_problems.clone()
        } else {
            old.object_problems.clone()
        },
        observed_requests: a.requests.clone(),
        read_only_pool: if a.invalid.is_empty() {
            a.read_only_pool.as_ref().map(|(pool, name)| crate::pool::status(pool, name, &a.nodes))
        } else {
            old.read_only_pool.clone()
        },
    }
}

/// Whether a Degraded reason holds the cluster back until a person acts: the spec, an object
/// in the way or a failed node. The others (a failing probe or redirect, a refused drain
/// request) leave the rest going, or clear by themselves.
fn stalls(reason: &str) -> bool {
    [
        REASON_INVALID_SPEC,
        REASON_NODE_FAILED,
        ObjectProblemReason::NotOwned.as_str(),
        ObjectProblemReason::ImmutableField.as_str(),
        ObjectProblemReason::Refused.as_str(),
        ObjectProblemReason::Forbidden.as_str(),
    ]
    .contains(&reason)
}

/// What is moving, in words a person reads: e.g. "rolling out: restarting ro-2 (2 of 3 up to
/// date): waiting for sessions: 4 left, deadline 2026-11-30T14:05:00Z".
fn progress(nodes: &[NodeStatus], rollout: Option<&RolloutStatus>) -> Option<(&'static str, String)> {
    let total = nodes.iter().filter(|n| !n.leaving).count();
    let steps: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let what = match (n.phase, n.drain_reason) {
                (NodePhase::Draining, reason) => {
                    let why = match reason {
                        Some(DrainReason::Rollout) => "to restart it",
                        Some(DrainReason::Removal) => "to remove it",
                        Some(DrainReason::Maintenance) => "to move it off its Kubernetes node",
                        Some(DrainReason::Stop) => "to stop it",
                        _ => "as requested",
                    };
                    let sessions = n.sessions.map_or("count unknown".to_string(), |s| format!("{s} left"));
                    let deadline =
                        n.drain_deadline.as_ref().map_or(String::new(), |d| format!(", deadline {}", d.0));
                    format!("draining {} {why}: waiting for sessions: {sessions}{deadline}", n.name)
                }
                (NodePhase::Restarting, _) if n.moving_off.is_some() => {
                    format!(
                        "moving {}: {}",
                        n.name,
                        n.message.as_deref().unwrap_or("waiting for the new pod")
                    )
                }
                (NodePhase::Restarting, _) => format!(
                    "restarting {}: {}",
                    n.name,
                    n.message.as_deref().unwrap_or("waiting for the new pod to be ready")
                ),
                (NodePhase::Drained, Some(DrainReason::Removal)) => format!("removing {}", n.name),
                _ => return None,
            };
            Some(what)
        })
        .collect();
    let rollout_active = rollout.is_some_and(|r| !r.pending.is_empty());
    let up_to_date = rollout.map_or(0, |r| r.up_to_date_nodes);
    if !steps.is_empty() {
        let reason = if rollout_active { "RollingOut" } else { "Draining" };
        let prefix = if rollout_active {
            format!("rolling out ({up_to_date} of {total} up to date): ")
        } else {
            String::new()
        };
        return Some((reason, format!("{prefix}{}", steps.join("; "))));
    }
    let rollout = rollout?;
    if rollout.paused && !rollout.pending.is_empty() {
        return Some((
            "Paused",
            format!("paused with {} waiting: {}", rollout.pending.len(), rollout.pending.join(", ")),
        ));
    }
    rollout.waiting.as_ref().map(|w| {
        ("RolloutWaiting", format!("rolling out ({up_to_date} of {total} up to date): waiting: {w}"))
    })
}

struct Conditions<'a> {
    old: &'a [Condition],
    new: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
}

impl Conditions<'_> {
    /// Keeps the old transition time unless the status flips.
    fn set(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        let status = if value { "True" } else { "False" };
        let last_transition_time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        self.new.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }
}

/// Events for what changed between two statuses (phases, spec validity, drain requests).
pub fn transition_events(
    old: &OmeroClusterStatus,
    new: &OmeroClusterStatus,
    drain_problems: &[String],
) -> Vec<Event> {
    let mut events = Vec::new();
    let degraded = |s: &OmeroClusterStatus| {
        s.condition(conditions::DEGRADED)
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let (was, is) = (degraded(old), degraded(new));
    let invalid = |d: &Option<(String, String)>| {
        d.as_ref().filter(|(r, _)| r == REASON_INVALID_SPEC).map(|(_, m)| m.clone())
    };
    match (invalid(&was), invalid(&is)) {
        (was, Some(message)) if was.as_ref() != Some(&message) => {
            events.push(event(EventType::Warning, REASON_INVALID_SPEC, "Validate", message))
        }
        (Some(_), None) => {
            events.push(event(EventType::Normal, "SpecValid", "Validate", "the spec is valid again".into()))
        }
        _ => {}
    }
    // A bad drain entry is announced once: when the old Degraded message did not carry it yet.
    let old_message = was.as_ref().map(|(_, m)| m.as_str()).unwrap_or_default();
    let fresh: Vec<&str> =
        drain_problems.iter().filter(|p| !old_message.contains(p.as_str())).map(String::as_str).collect();
    if !fresh.is_empty() {
        events.push(event(EventType::Warning, REASON_INVALID_DRAIN_REQUEST, "Drain", fresh.join("; ")));
    }
    // One Warning per object problem, when it first appears.
    for p in new.object_problems.iter().filter(|p| !old.object_problems.contains(p)) {
        events.push(Event {
            related: Some(Related::Object { kind: p.kind.clone(), name: p.name.clone() }),
            ..event(EventType::Warning, p.reason.as_str(), "Apply", p.message.clone())
        });
    }
    let waiting = |s: &OmeroClusterStatus| s.rollout.as_ref().and_then(|r| r.waiting.clone());
    if let Some(why) = waiting(new)
        && waiting(old).as_ref() != Some(&why)
    {
        events.push(event(EventType::Warning, "RolloutWaiting", "Rollout", why));
    }
    let pending = |s: &OmeroClusterStatus| s.rollout.as_ref().is_some_and(|r| !r.pending.is_empty());
    if pending(old) && !pending(new) && new.rollout.is_some() {
        events.push(event(
            EventType::Normal,
            "RolloutCompleted",
            "Rollout",
            format!(
                "every node runs its target revision ({} nodes)",
                new.rollout.as_ref().map_or(0, |r| r.up_to_date_nodes)
            ),
        ));
    }
    if let Some(target) = &new.redirect_node
        && old.redirect_node.as_ref() != Some(target)
    {
        events.push(event(
            EventType::Normal,
            "RedirectUpdated",
            "Redirect",
            format!("new sessions go to node {target} (omero.cluster.redirect)"),
        ));
    }
    for gone in old.nodes.iter().filter(|n| n.leaving && new.node(&n.name).is_none()) {
        events.push(
            event(
                EventType::Normal,
                "NodeRemoved",
                "Delete",
                format!("node {} left the spec: drained, its Deployment and Service deleted", gone.name),
            )
            .about_node(&gone.name),
        );
    }
    for node in &new.nodes {
        let before = old.node(&node.name).map(|n| n.phase);
        if before == Some(node.phase) {
            continue;
        }
        match node.phase {
            NodePhase::Serving if before.is_none_or(|p| !p.is_out_of_service()) => events.push(
                event(
                    EventType::Normal,
                    "NodeServing",
                    "Serve",
                    format!("node {} is ready and receives new sessions", node.name),
                )
                .about_node(&node.name),
            ),
            // A failed restart has its own Event (NodeRestartFailed).
            NodePhase::Failed if before != Some(NodePhase::Restarting) => events.push(
                event(
                    EventType::Warning,
                    REASON_NODE_FAILED,
                    "Start",
                    format!("node {}: {}", node.name, node.message.as_deref().unwrap_or("failed")),
                )
                .about_node(&node.name),
            ),
            _ => {}
        }
    }
    events
}

/// The Event for a node's transition.
pub fn node_event(e: &NodeEvent) -> Event {
    let node = match e {
        NodeEvent::DrainStarted { node, .. }
        | NodeEvent::DrainCompleted { node }
        | NodeEvent::DeadlineReached { node, .. }
        | NodeEvent::DrainRefused { node, .. }
        | NodeEvent::Undrained { node }
        | NodeEvent::Restarting { node, .. }
        | NodeEvent::Restarted { node, .. }
        | NodeEvent::RestartFailed { node, .. }
        | NodeEvent::MovingOff { node, .. }
        | NodeEvent::PodReplaced { node, .. }
        | NodeEvent::Moved { node, .. }
        | NodeEvent::Stopped { node }
        | NodeEvent::Starting { node } => node,
    };
    node_event_text(e).about_node(node)
}

fn node_event_text(e: &NodeEvent) -> Event {
    match e {
        NodeEvent::DrainStarted { node, deadline, reason } => {
            let why = match reason {
                DrainReason::Requested => "as requested",
                DrainReason::Rollout => "to restart it with a new revision",
                DrainReason::Removal => "before removing it (it left the spec)",
                DrainReason::Maintenance => "to move it off its Kubernetes node for maintenance",
                DrainReason::Stop => "to stop it with its cluster (spec.stopped)",
            };
            event(
                EventType::Normal,
                "DrainStarted",
                "Drain",
                format!(
                    "node {node} no longer receives new sessions ({why}); waiting for its sessions to end, at the latest until {deadline}"
                ),
            )
        }
        NodeEvent::DrainCompleted { node } => event(
            EventType::Normal,
            "DrainCompleted",
            "Drain",
            format!("node {node} is drained: no open sessions"),
        ),
        NodeEvent::DeadlineReached { node, sessions, proceeding } => {
            let open = sessions.map_or("an unknown number of".to_string(), |n| n.to_string());
            let then =
                if *proceeding { "counted as drained" } else { "holding until they end (onDeadline: Hold)" };
            event(
                EventType::Warning,
                "DrainDeadlineReached",
                "Drain",
                format!("node {node} reached its drain deadline with {open} sessions still open; {then}"),
            )
        }
        NodeEvent::DrainRefused { node, reason } => event(
            EventType::Warning,
            REASON_DRAIN_REFUSED,
            "Drain",
            format!("not draining node {node}: {reason}"),
        ),
        NodeEvent::Undrained { node } => event(
            EventType::Normal,
            "Undrained",
            "Undrain",
            format!("node {node} is back in service (or will be once its pod is ready)"),
        ),
        NodeEvent::Restarting { node, revision } => event(
            EventType::Normal,
            "NodeRestarting",
            "Restart",
            format!("node {node} gets revision {revision}: its pod is replaced"),
        ),
        NodeEvent::Restarted { node, revision } => event(
            EventType::Normal,
            "NodeRestarted",
            "Restart",
            format!("node {node} runs revision {revision}, is ready and answers its session probe"),
        ),
        NodeEvent::RestartFailed { node, reason } => event(
            EventType::Warning,
            "NodeRestartFailed",
            "Restart",
            format!("node {node}: {reason}; the rollout stops until it is ready or the spec changes"),
        ),
        NodeEvent::MovingOff { node, kube_node } => event(
            EventType::Normal,
            "MovingOffNode",
            "Drain",
            format!(
                "node {node} is moving off node {kube_node} for maintenance: drained first, then its pod is \
                 deleted and scheduled elsewhere"
            ),
        ),
        NodeEvent::PodReplaced { node, kube_node, pod } => event(
            EventType::Normal,
            "PodReplaced",
            "Move",
            format!("node {node} is drained: deleting its pod {pod} on node {kube_node} (maintenance)"),
        ),
        NodeEvent::Moved { node, kube_node } => event(
            EventType::Normal,
            "NodeMoved",
            "Move",
            format!(
                "node {node} moved off node {kube_node}: its new pod is ready, answers its session probe and \
                 serves"
            ),
        ),
        NodeEvent::Stopped { node } => event(
            EventType::Normal,
            "NodeStopped",
            "Stop",
            format!("node {node} is drained and stopped: its Deployment is scaled to zero (spec.stopped)"),
        ),
        NodeEvent::Starting { node } => event(
            EventType::Normal,
            "NodeStarting",
            "Start",
            format!("node {node} starts again: its Deployment is scaled up (spec.stopped is false)"),
        ),
    }
}

pub fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event { type_, reason: reason.into(), action: action.into(), note, related: None }
}

impl Event {
    /// The same Event, about `node`.
    fn about_node(self, node: &str) -> Self {
        Self { related: Some(Related::Node(node.into())), ..self }
    }
}

/// Shows each maintenance wait on the node's status (a serving node has no message of its own)
/// and returns a Warning Event for each wait not shown already: which Kubernetes node waits on
/// which OMERO node, and how to allow it.
pub fn maintenance_waits(
    old: &OmeroClusterStatus,
    statuses: &mut [NodeStatus],
    waits: &[crate::maintenance::Wait],
) -> Vec<Event> {
    let mut events = Vec::new();
    for wait in waits {
        let Some(status) = statuses.iter_mut().find(|s| s.name == wait.node) else { continue };
        if status.phase != NodePhase::Serving {
            continue;
        }
        let message = wait.message();
        let announced =
            old.node(&wait.node).and_then(|s| s.message.as_deref()).is_some_and(|m| m.contains(&message));
        if !announced {
            events.push(
                event(EventType::Warning, "MaintenanceWaiting", "Drain", message.clone())
                    .about_node(&wait.node),
            );
        }
        // A refused drain's message stays first, so whoever asked (`kubectl omero drain --wait`)
        // reads the refusal; the wait follows it.
        status.message = Some(match status.message.take() {
            Some(refused) if refused.starts_with(crate::lifecycle::DRAIN_REFUSED) => {
                format!("{refused}; {message}")
            }
            _ => message,
        });
    }
    events
}
