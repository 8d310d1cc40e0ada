//! The cluster's next status and the Events its changes deserve. Pure.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use super::port::{Event, EventType};
use crate::{
    api::{NodePhase, NodeStatus, ObjectProblem, OmeroClusterStatus, ValidationError, conditions},
    drain::DrainEvent,
};

/// Everything the next status is made from.
#[derive(Debug, Default)]
pub struct Assessment<'a> {
    pub generation: Option<i64>,
    /// Node statuses in spec order.
    pub nodes: Vec<NodeStatus>,
    /// Set when the spec is invalid (then nothing was changed).
    pub invalid: &'a [ValidationError],
    /// Bad entries of the drain annotations.
    pub drain_problems: &'a [String],
    /// Nodes whose requested drain was refused.
    pub refused: Vec<String>,
    /// Grid topology: where new sessions are sent, or why that could not be set.
    pub redirect: Option<Result<String, String>>,
    /// Objects the operator leaves alone: another owner holds them, or an immutable field.
    pub object_problems: Vec<ObjectProblem>,
}

pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_NODE_FAILED: &str = "NodeFailed";
pub const REASON_DRAIN_REFUSED: &str = "DrainRefused";
pub const REASON_INVALID_DRAIN_REQUEST: &str = "InvalidDrainRequest";
pub const REASON_PROBE_FAILING: &str = "SessionProbeFailing";
pub const REASON_REDIRECT_FAILING: &str = "RedirectFailing";

pub fn next_status(old: &OmeroClusterStatus, a: &Assessment<'_>, now: Timestamp) -> OmeroClusterStatus {
    let count = |f: &dyn Fn(&NodeStatus) -> bool| a.nodes.iter().filter(|n| f(n)).count() as i32;
    let node_count = a.nodes.len() as i32;
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
    for p in a.drain_problems {
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
            format!("new sessions cannot be steered away from draining nodes: {e}"),
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
    if serving_nodes == 0 {
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
        .filter(|n| matches!(n.phase, NodePhase::Pending | NodePhase::Starting | NodePhase::Restarting))
        .map(|n| n.name.as_str())
        .collect();
    let draining: Vec<&str> =
        a.nodes.iter().filter(|n| n.phase == NodePhase::Draining).map(|n| n.name.as_str()).collect();
    if !draining.is_empty() {
        c.set(conditions::PROGRESSING, true, "Draining", &format!("draining {}", draining.join(", ")));
    } else if !starting.is_empty() {
        c.set(conditions::PROGRESSING, true, "NodesStarting", &format!("starting {}", starting.join(", ")));
    } else {
        c.set(conditions::PROGRESSING, false, "Stable", "nothing in progress");
    }

    OmeroClusterStatus {
        observed_generation: a.generation,
        conditions: c.new,
        nodes: a.nodes.clone(),
        node_count,
        ready_nodes,
        serving_nodes,
        draining_nodes,
        redirect_node: a.redirect.clone().and_then(Result::ok),
        redirect_error: a.redirect.clone().and_then(Result::err),
        // An invalid spec changes nothing, so what was blocked stays as it was.
        object_problems: if a.invalid.is_empty() {
            a.object_problems.clone()
        } else {
            old.object_problems.clone()
        },
    }
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
        events.push(event(EventType::Warning, p.reason.as_str(), "Apply", p.message.clone()));
    }
    if let Some(target) = &new.redirect_node
        && old.redirect_node.as_ref() != Some(target)
    {
        events.push(event(
            EventType::Normal,
            "RedirectUpdated",
            "Redirect",
            format!(
                "new sessions go to node {target} (omero.cluster.redirect) while nodes are out of service"
            ),
        ));
    }
    for node in &new.nodes {
        let before = old.node(&node.name).map(|n| n.phase);
        if before == Some(node.phase) {
            continue;
        }
        match node.phase {
            NodePhase::Serving if before.is_none_or(|p| !p.is_out_of_service()) => events.push(event(
                EventType::Normal,
                "NodeServing",
                "Serve",
                format!("node {} is ready and receives new sessions", node.name),
            )),
            NodePhase::Failed => events.push(event(
                EventType::Warning,
                REASON_NODE_FAILED,
                "Start",
                format!("node {}: {}", node.name, node.message.as_deref().unwrap_or("failed")),
            )),
            _ => {}
        }
    }
    events
}

/// The Event for a drain transition.
pub fn drain_event(e: &DrainEvent) -> Event {
    match e {
        DrainEvent::Started { node, deadline } => event(
            EventType::Normal,
            "DrainStarted",
            "Drain",
            format!(
                "node {node} no longer receives new sessions; waiting for its sessions to end, at the latest until {deadline}"
            ),
        ),
        DrainEvent::Completed { node } => event(
            EventType::Normal,
            "DrainCompleted",
            "Drain",
            format!("node {node} is drained: no open sessions"),
        ),
        DrainEvent::DeadlineReached { node, sessions, proceeding } => {
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
        DrainEvent::Refused { node, reason } => event(
            EventType::Warning,
            REASON_DRAIN_REFUSED,
            "Drain",
            format!("not draining node {node}: {reason}"),
        ),
        DrainEvent::Undrained { node } => event(
            EventType::Normal,
            "Undrained",
            "Undrain",
            format!("node {node} is back in service (or will be once its pod is ready)"),
        ),
    }
}

pub fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event { type_, reason: reason.into(), action: action.into(), note }
}
