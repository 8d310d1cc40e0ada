//! The node lifecycle: `(node statuses, observations, now) -> (next statuses, actions)`.
//!
//! A node serves; leaves service (a drain: asked for, a rollout's, or its removal's); is
//! drained when its sessions end (or at the deadline); gets its new pod template once drained
//! (Restarting); waits until the new pod is ready and its session probe answers; then serves
//! again (or stays drained, if that was asked for). A node that is not serving has nothing to
//! protect and gets its new template at once.
//!
//! Pure: no I/O, no clock. The controller observes pods and runs session probes, calls
//! [`step`], records the result in the OmeroCluster's status, and only then carries out the
//! label patches and Deployment writes the statuses call for, so a restarted operator resumes
//! where it stood and a stale read never acts twice.

use std::collections::BTreeSet;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::{DrainReason, Duration, NodePhase, NodeStatus, OnDeadline},
    request::FORCE_ANNOTATION,
};

/// How a refused drain's message starts: status keeps it first while the request stands, and
/// `kubectl omero drain --wait` reads it to end with the refusal.
pub const DRAIN_REFUSED: &str = "drain refused";

/// Zero-session probes in a row that end a drain: one zero may be a race with a client that
/// connected just before the node stopped being routable.
pub const ZERO_CONFIRMATIONS: u32 = 2;
/// Longest wait between probes of a failing probe.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(300);

/// The OMERO server container of a node's pod, as its container status reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerContainer {
    pub id: Option<String>,
    pub restarts: i32,
    /// Its startup probe has passed: the server came up in this container.
    pub started: bool,
}

/// What the controller saw of a node's pod. Only the OMERO server container decides whether
/// a node serves: a sidecar's failure never does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObservation {
    pub name: String,
    pub ip: Option<String>,
    /// The pod's Ready condition, and it is not terminating.
    pub ready: bool,
    /// Carries `omero.openmicroscopy.org/routable=true`.
    pub routable: bool,
    pub image: Option<String>,
    /// Why the OMERO server container cannot run, when it cannot (crash loop, image pull ...).
    pub failure: Option<String>,
    /// The pod's revision annotation.
    pub revision: Option<String>,
    pub created: Option<Timestamp>,
    /// Phase Running and not terminating.
    pub running: bool,
    pub server: Option<ServerContainer>,
    /// The pod's uid: a precondition when the operator deletes it to move the node.
    pub uid: Option<String>,
    /// The Kubernetes node it is bound to (`spec.nodeName`).
    pub kube_node: Option<String>,
}

impl PodObservation {
    /// Names this pod's OMERO server process: a new pod, a new container or a restart of it
    /// means the sessions it held are gone.
    pub fn server_identity(&self) -> String {
        let (id, restarts) =
            self.server.as_ref().map_or(("", 0), |s| (s.id.as_deref().unwrap_or_default(), s.restarts));
        format!("{}/{id}/{restarts}", self.name)
    }
}

/// Whether a node's OMERO server can hold sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Nothing to protect: no pod, a pod that is not running, a server container that cannot
    /// run, or one never ready for longer than the start-up allowance. Says why.
    NotServing(String),
    /// The server container runs and has not come up yet, within the allowance.
    Starting,
    /// The server came up in this container; it may be briefly unready (a blip), but it may
    /// hold sessions.
    Running,
}

/// Decides [`Serving`] from the OMERO server container alone.
pub fn serving_state(pod: Option<&PodObservation>, now: Timestamp, allowance: Duration) -> Serving {
    let Some(pod) = pod else {
        return Serving::NotServing("the node has no pod".into());
    };
    if let Some(failure) = &pod.failure {
        return Serving::NotServing(failure.clone());
    }
    if !pod.running {
        return Serving::NotServing("its pod is not running (pending, terminating or ended)".into());
    }
    if pod.ready || pod.server.as_ref().is_some_and(|s| s.started) {
        return Serving::Running;
    }
    match pod.created {
        Some(created) if later(created, allowance) <= now => Serving::NotServing(format!(
            "its server was never ready in the {allowance} since its pod was created"
        )),
        _ => Serving::Starting,
    }
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
    /// Which sample of its source the probe read, when the source refreshes on its own
    /// schedule (an exporter): a zero counts towards the end of a drain only from a sample
    /// newer than the last one. `None`: read live, always new.
    pub probe_sample: Option<String>,
    pub probe_interval: Duration,
    /// How often to count the node's sessions while it serves (`sessionProbe.servingInterval`);
    /// `None`: only while it drains or restarts.
    pub serving_probe_interval: Option<Duration>,
    /// The revision the spec asks for; `None` for a node that left the spec.
    pub target_revision: Option<&'a str>,
    /// The node's Deployment exists (the cluster's own).
    pub deployment_exists: bool,
    /// The revision the node's Deployment carries.
    pub deployment_revision: Option<&'a str>,
    /// The rollout planner chose this node to leave service now, to restart or to be removed.
    pub selected: bool,
    /// The node left the spec.
    pub leaving: bool,
    /// This node's drain is forced (`drain-force` naming it), as [`Policy::force`] is for all.
    pub force: bool,
    /// The maintenance planner (`crate::maintenance`) moves this node off this Kubernetes
    /// node: it leaves service, and once drained its pod is deleted so that a new one is
    /// scheduled elsewhere.
    pub maintenance: Option<&'a str>,
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub timeout: Duration,
    pub on_deadline: OnDeadline,
    pub force: bool,
    /// How long a restarted node may take to be ready; also the start-up allowance.
    pub ready_timeout: Duration,
    /// Keep every phase: only observations are refreshed.
    pub paused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    DrainStarted {
        node: String,
        deadline: Timestamp,
        reason: DrainReason,
    },
    DrainCompleted {
        node: String,
    },
    DeadlineReached {
        node: String,
        sessions: Option<u64>,
        proceeding: bool,
    },
    DrainRefused {
        node: String,
        reason: String,
    },
    Undrained {
        node: String,
    },
    Restarting {
        node: String,
        revision: String,
    },
    Restarted {
        node: String,
        revision: String,
    },
    RestartFailed {
        node: String,
        reason: String,
    },
    /// A maintenance drain began: the node moves off this Kubernetes node once drained.
    MovingOff {
        node: String,
        kube_node: String,
    },
    /// Drained for maintenance: its pod is deleted now (a new one is scheduled elsewhere).
    PodReplaced {
        node: String,
        kube_node: String,
        pod: String,
    },
    /// Back in service after a maintenance move, on a new pod.
    Moved {
        node: String,
        kube_node: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: NodeStatus,
    /// Set the pod's routable label to this value.
    pub set_routable: Option<bool>,
    pub events: Vec<NodeEvent>,
}

/// Whether the controller should probe this node's sessions now: a draining node at its
/// probe time, and a restarted node whose new pod is ready (its probe must answer before it
/// serves again).
pub fn probe_due(previous: Option<&NodeStatus>, pod: Option<&PodObservation>, now: Timestamp) -> bool {
    let Some(s) = previous else { return false };
    let due = s.next_probe_at.as_ref().is_none_or(|t| t.0 <= now);
    match s.phase {
        NodePhase::Draining => due,
        // The new pod: not the one a maintenance move deleted (a lagging cache may still show it).
        NodePhase::Restarting => {
            due && pod.is_some_and(|p| {
                p.ready && p.revision == s.deployment_revision && s.replaced_pod.as_ref() != Some(&p.name)
            })
        }
        _ => false,
    }
}

/// Whether the controller should count a serving node's sessions now, at the slower serving
/// interval: so status shows where people are before an admin chooses what to drain.
pub fn serving_probe_due(
    previous: Option<&NodeStatus>,
    pod: Option<&PodObservation>,
    interval: Option<Duration>,
    now: Timestamp,
) -> bool {
    let (Some(s), Some(_)) = (previous, interval) else { return false };
    s.phase == NodePhase::Serving
        && pod.is_some_and(|p| p.ready && p.failure.is_none())
        && s.next_probe_at.as_ref().is_none_or(|t| t.0 <= now)
}

/// The earliest time a node needs looking at again without any watch event: a draining
/// node's next probe or deadline, a restarting node's next probe or ready timeout, a serving
/// node's next count.
pub fn next_wakeup(statuses: &[NodeStatus], ready_timeout: Duration) -> Option<Timestamp> {
    statuses
        .iter()
        .flat_map(|s| match s.phase {
            NodePhase::Draining => {
                let deadline = if s.deadline_reached { None } else { s.drain_deadline.as_ref().map(|t| t.0) };
                [s.next_probe_at.as_ref().map(|t| t.0), deadline]
            }
            NodePhase::Restarting => [
                s.next_probe_at.as_ref().map(|t| t.0),
                s.restart_started_at.as_ref().map(|t| later(t.0, ready_timeout)),
            ],
            NodePhase::Serving => [s.next_probe_at.as_ref().map(|t| t.0), None],
            _ => [None, None],
        })
        .flatten()
        .min()
}

/// One step for every node of the cluster, in the order given (spec order, then leaving
/// nodes). Cluster-wide rules (the last serving node) need all nodes at once.
pub fn step(nodes: &[NodeInput<'_>], policy: &Policy, now: Timestamp) -> Vec<Decision> {
    if policy.paused {
        return nodes.iter().map(|node| observe_only(node, policy, now)).collect();
    }
    // Nodes that will serve new sessions unless this step takes them out. The planners'
    // picks (rollout, maintenance) leave first, whatever their place in the list: a requested
    // drain is checked against the world they leave (`crate::departures` decided the picks
    // with the requested drains already out, so this only refuses what would empty the cluster).
    let planned = |n: &NodeInput<'_>| would_serve(n) && (n.selected || n.maintenance.is_some());
    let mut serving = nodes.iter().filter(|n| would_serve(n) && !planned(n)).count();
    nodes
        .iter()
        .map(|node| {
            let decision = step_node(node, policy, now, serving);
            if would_serve(node) && !planned(node) && decision.status.phase != NodePhase::Serving {
                serving -= 1;
            }
            decision
        })
        .collect()
}

/// Serving now (ready), or back in service after this step because its requested drain was
/// withdrawn.
fn would_serve(node: &NodeInput<'_>) -> bool {
    let previous = node.previous;
    let phase = previous.map(|s| s.phase).unwrap_or_default();
    let ready = node.pod.is_some_and(|p| p.ready && p.failure.is_none());
    let reason = previous.and_then(|s| s.drain_reason);
    let withdrawn = phase.is_out_of_service()
        && reason == Some(DrainReason::Requested)
        && !node.drain_requested
        && !node.leaving
        && node.maintenance.is_none();
    // A maintenance move cancelled (uncordoned) before its drain ended.
    let cancelled = phase == NodePhase::Draining
        && reason == Some(DrainReason::Maintenance)
        && node.maintenance.is_none()
        && !node.drain_requested
        && !node.leaving;
    // Out of date and out already, it goes on as a rollout instead (see `wanted_out`).
    let stays_out = matches!(phase, NodePhase::Draining | NodePhase::Drained)
        && previous.is_some_and(|p| out_of_date(&observed(node, p)));
    let withdrawn = (withdrawn || cancelled) && !stays_out;
    ready && (!phase.is_out_of_service() || withdrawn)
}

/// The status with what was observed this time, phases untouched.
fn observed(node: &NodeInput<'_>, previous: &NodeStatus) -> NodeStatus {
    let revision = node.pod.and_then(|p| p.revision.clone());
    let target_revision = node.target_revision.map(str::to_string);
    NodeStatus {
        name: node.name.into(),
        ready: node.pod.is_some_and(|p| p.ready),
        routable: node.pod.is_some_and(|p| p.routable),
        image: node.pod.and_then(|p| p.image.clone()),
        pod: node.pod.map(|p| p.name.clone()),
        up_to_date: revision.is_some() && revision == target_revision,
        revision,
        target_revision,
        leaving: node.leaving,
        // What the Deployment carries, when nothing was recorded yet (a status written by an
        // operator that did not record revisions).
        deployment_revision: previous
            .deployment_revision
            .clone()
            .or_else(|| node.deployment_revision.map(str::to_string)),
        ..previous.clone()
    }
}

fn observe_only(node: &NodeInput<'_>, policy: &Policy, now: Timestamp) -> Decision {
    let previous =
        node.previous.cloned().unwrap_or_else(|| NodeStatus { name: node.name.into(), ..Default::default() });
    let mut status = observed(node, &previous);
    if node.previous.is_none() {
        status.phase =
            service_phase(&serving_state(node.pod, now, policy.ready_timeout), node.pod, &previous);
    }
    if status.phase == NodePhase::Serving {
        count_while_serving(node, &previous, now, &mut status);
    }
    Decision { status, set_routable: None, events: Vec::new() }
}

/// Why the node must be out of service now, if it must.
fn wanted_out(
    node: &NodeInput<'_>,
    previous: &NodeStatus,
    status: &NodeStatus,
    state: &Serving,
) -> Option<DrainReason> {
    let continuing = |reason| previous.phase.is_out_of_service() && previous.drain_reason == Some(reason);
    if node.leaving {
        let go = node.selected || continuing(DrainReason::Removal) || !matches!(state, Serving::Running);
        return go.then_some(DrainReason::Removal);
    }
    if node.drain_requested {
        return Some(DrainReason::Requested);
    }
    if node.maintenance.is_some() {
        return Some(DrainReason::Maintenance);
    }
    // A node already out of service (its requested drain just withdrawn) goes on as a rollout
    // while it is out: it takes no more of the budget.
    let drained = matches!(previous.phase, NodePhase::Draining | NodePhase::Drained);
    (out_of_date(status) && (node.selected || continuing(DrainReason::Rollout) || drained))
        .then_some(DrainReason::Rollout)
}

/// The spec asks for a revision the node's Deployment has not been given.
pub fn out_of_date(status: &NodeStatus) -> bool {
    status.target_revision.is_some() && status.deployment_revision != status.target_revision
}

fn step_node(node: &NodeInput<'_>, policy: &Policy, now: Timestamp, serving: usize) -> Decision {
    let previous =
        node.previous.cloned().unwrap_or_else(|| NodeStatus { name: node.name.into(), ..Default::default() });
    let mut status = observed(node, &previous);
    let state = serving_state(node.pod, now, policy.ready_timeout);
    let mut events = Vec::new();

    if previous.phase == NodePhase::Restarting {
        continue_restart(node, policy, now, &state, &mut status, &mut events);
    } else {
        match wanted_out(node, &previous, &status, &state) {
            None => {
                if previous.phase.is_out_of_service() {
                    events.push(NodeEvent::Undrained { node: node.name.into() });
                }
                clear_drain(&mut status);
                status.phase = service_phase(&state, node.pod, &previous);
                status.message = match &state {
                    Serving::NotServing(why) => Some(why.clone()),
                    _ if status.phase == NodePhase::Failed => previous.message.clone(),
                    _ => None,
                };
                if status.phase == NodePhase::Serving {
                    count_while_serving(node, &previous, now, &mut status);
                }
            }
            Some(reason) => match previous.phase {
                NodePhase::Draining => {
                    status.drain_reason = Some(reason);
                    continue_drain(node, policy, now, &state, &mut status, &mut events)
                }
                NodePhase::Drained => status.drain_reason = Some(reason),
                _ => start_drain(node, reason, policy, now, &state, serving, &mut status, &mut events),
            },
        }
    }
    move_off(node, now, &mut status, &mut events);
    release(node, now, &state, &mut status, &mut events);
    let set_routable = routable_patch(&mut status);
    Decision { status, set_routable, events }
}

/// A node drained for maintenance moves: its pod (on the cordoned Kubernetes node) is to be
/// deleted, so the Deployment's new pod is scheduled elsewhere; recorded here (the pod's name)
/// before the controller deletes it. Then it waits, as a restart does, for the new pod to be
/// ready and its probe to answer.
fn move_off(node: &NodeInput<'_>, now: Timestamp, status: &mut NodeStatus, events: &mut Vec<NodeEvent>) {
    if status.phase != NodePhase::Drained || status.drain_reason != Some(DrainReason::Maintenance) {
        return;
    }
    let kube_node =
        status.moving_off.clone().or_else(|| node.maintenance.map(str::to_string)).unwrap_or_default();
    // The pod still on the Kubernetes node being vacated; none: a new one comes anyway.
    let pod = node.pod.filter(|p| p.kube_node.as_deref() == Some(kube_node.as_str())).map(|p| p.name.clone());
    status.phase = NodePhase::Restarting;
    status.moving_off = Some(kube_node.clone());
    status.replaced_pod.clone_from(&pod);
    status.restart_started_at = Some(Time(now));
    status.next_probe_at = None;
    status.zero_session_probes = 0;
    status.probe_failures = 0;
    status.probe_error = None;
    status.message = Some(format!(
        "moving off node {kube_node} for maintenance: drained; {}waiting for its new pod elsewhere",
        pod.as_ref().map_or(String::new(), |p| format!("pod {p} deleted; "))
    ));
    if let Some(pod) = pod {
        events.push(NodeEvent::PodReplaced { node: node.name.into(), kube_node, pod });
    }
}

/// Gives the node's Deployment its target revision once the node has nothing to protect:
/// no Deployment yet, a server that is not serving, or drained (or already restarting).
fn release(
    node: &NodeInput<'_>,
    now: Timestamp,
    state: &Serving,
    status: &mut NodeStatus,
    events: &mut Vec<NodeEvent>,
) {
    let Some(target) = status.target_revision.clone() else { return };
    if status.deployment_revision.as_ref() == Some(&target) {
        return;
    }
    if !node.deployment_exists {
        // Created: nothing ran before.
        status.deployment_revision = Some(target);
        return;
    }
    let free = matches!(state, Serving::NotServing(_))
        || matches!(status.phase, NodePhase::Drained | NodePhase::Restarting);
    if !free {
        return;
    }
    status.deployment_revision = Some(target.clone());
    status.phase = NodePhase::Restarting;
    status.restart_started_at = Some(Time(now));
    status.next_probe_at = None;
    status.zero_session_probes = 0;
    status.probe_failures = 0;
    status.probe_error = None;
    status.message = Some(format!("restarting with revision {target}: waiting for the new pod to be ready"));
    events.push(NodeEvent::Restarting { node: node.name.into(), revision: target });
}

fn continue_restart(
    node: &NodeInput<'_>,
    policy: &Policy,
    now: Timestamp,
    state: &Serving,
    status: &mut NodeStatus,
    events: &mut Vec<NodeEvent>,
) {
    let want = status.deployment_revision.clone().unwrap_or_default();
    // A move waits for a pod other than the one it deleted.
    let new_pod = node.pod.filter(|p| {
        p.revision.as_deref() == Some(want.as_str()) && status.replaced_pod.as_ref() != Some(&p.name)
    });
    if let (Some(pod), Serving::NotServing(why)) = (new_pod, state)
        && pod.failure.is_some()
    {
        return fail_restart(
            node,
            status,
            events,
            format!("its new pod (revision {want}) cannot run: {why}"),
        );
    }
    if new_pod.is_some_and(|p| p.ready) {
        match &node.probe {
            Some(ProbeOutcome::Count(_) | ProbeOutcome::NoProbe) => {
                events.push(match status.moving_off.clone() {
                    Some(kube_node) => NodeEvent::Moved { node: node.name.into(), kube_node },
                    None => NodeEvent::Restarted { node: node.name.into(), revision: want },
                });
                status.restart_started_at = None;
                let stay_out = node.drain_requested || node.leaving;
                clear_drain(status);
                if stay_out {
                    status.phase = NodePhase::Drained;
                    status.drain_reason =
                        Some(if node.leaving { DrainReason::Removal } else { DrainReason::Requested });
                    status.message = Some("restarted; stays drained as requested".into());
                } else {
                    status.phase = NodePhase::Serving;
                    status.message = None;
                }
                return;
            }
            Some(ProbeOutcome::Failed(error)) => {
                status.probe_failures += 1;
                status.probe_error = Some(error.clone());
                status.next_probe_at =
                    Some(Time(later(now, probe_backoff(node.probe_interval, status.probe_failures))));
                status.message = Some(format!(
                    "restarted with revision {want}: ready, but its session probe fails ({} in a row)",
                    status.probe_failures
                ));
            }
            None => {
                status.message =
                    Some(format!("restarted with revision {want}: ready; waiting for its session probe"));
            }
        }
    } else if let Some(kube_node) = &status.moving_off {
        status.message =
            Some(format!("moving off node {kube_node} for maintenance: waiting for the new pod to be ready"));
    } else {
        status.message =
            Some(format!("restarting with revision {want}: waiting for the new pod to be ready"));
    }
    let started = status.restart_started_at.as_ref().map_or(now, |t| t.0);
    if later(started, policy.ready_timeout) <= now {
        fail_restart(
            node,
            status,
            events,
            format!("not ready with revision {want} within {} of its restart", policy.ready_timeout),
        );
    }
}

fn fail_restart(node: &NodeInput<'_>, status: &mut NodeStatus, events: &mut Vec<NodeEvent>, reason: String) {
    clear_drain(status);
    status.phase = NodePhase::Failed;
    status.restart_started_at = None;
    status.message =
        Some(format!("{reason}; the rollout stops here until the node is ready or the spec changes"));
    events.push(NodeEvent::RestartFailed { node: node.name.into(), reason });
}

/// The label patch that makes the pod's routable label match its phase: on for a serving node,
/// off for a node out of service. Other phases leave the label alone: a pod that is not ready
/// gets no traffic from the Service anyway. The status reports the label as it will be once
/// the patch is made.
fn routable_patch(status: &mut NodeStatus) -> Option<bool> {
    let patch = if status.pod.is_none() {
        None
    } else if status.phase == NodePhase::Serving && status.ready && !status.routable {
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

/// The phase of a node in service. A node whose restart failed stays Failed until its server
/// runs again.
/// Not serving is Pending while there is no pod or it does not run yet (and has no failure),
/// Failed otherwise (a failing server container, or never ready within the allowance).
fn service_phase(state: &Serving, pod: Option<&PodObservation>, previous: &NodeStatus) -> NodePhase {
    match state {
        Serving::Running => NodePhase::Serving,
        _ if previous.phase == NodePhase::Failed => NodePhase::Failed,
        Serving::Starting => NodePhase::Starting,
        Serving::NotServing(_) if pod.is_none_or(|p| !p.running && p.failure.is_none()) => NodePhase::Pending,
        Serving::NotServing(_) => NodePhase::Failed,
    }
}

#[allow(clippy::too_many_arguments)]
fn start_drain(
    node: &NodeInput<'_>,
    reason: DrainReason,
    policy: &Policy,
    now: Timestamp,
    state: &Serving,
    serving: usize,
    status: &mut NodeStatus,
    events: &mut Vec<NodeEvent>,
) {
    if let Serving::NotServing(why) = state {
        // Nothing can hold a session on a server that is not serving.
        clear_drain(status);
        status.phase = NodePhase::Drained;
        status.drain_reason = Some(reason);
        status.drain_started_at = Some(Time(now));
        status.message = Some(format!("drained at once: {why}"));
        if reason == DrainReason::Maintenance {
            status.moving_off = node.maintenance.map(str::to_string);
        }
        events.push(NodeEvent::DrainCompleted { node: node.name.into() });
        return;
    }
    // Rollouts and removals were checked by the planner; a requested drain is checked here.
    if reason == DrainReason::Requested && would_serve(node) && serving <= 1 && !(policy.force || node.force)
    {
        let why = format!(
            "it is the last serving node: new sessions would have nowhere to go; add \
             {FORCE_ANNOTATION}: \"{}\" (kubectl omero drain --force) to drain it anyway",
            node.name
        );
        status.phase = NodePhase::Serving;
        let refused = format!("{DRAIN_REFUSED}: {why}");
        // Announced once: the message stays while the request does (other notes may follow it).
        if !status.message.as_deref().is_some_and(|m| m.starts_with(&refused)) {
            events.push(NodeEvent::DrainRefused { node: node.name.into(), reason: why });
        }
        status.message = Some(refused);
        return;
    }
    let deadline = later(now, policy.timeout);
    clear_drain(status);
    status.phase = NodePhase::Draining;
    status.drain_reason = Some(reason);
    status.drained_server = node.pod.map(PodObservation::server_identity);
    status.drain_started_at = Some(Time(now));
    status.drain_deadline = Some(Time(deadline));
    status.next_probe_at = Some(Time(now));
    status.message = Some("draining: no new sessions; waiting for open sessions to end".into());
    events.push(NodeEvent::DrainStarted { node: node.name.into(), deadline, reason });
    if let (DrainReason::Maintenance, Some(kube_node)) = (reason, node.maintenance) {
        status.moving_off = Some(kube_node.into());
        status.message = Some(format!(
            "moving off node {kube_node} for maintenance: draining, no new sessions; waiting for open \
             sessions to end"
        ));
        events.push(NodeEvent::MovingOff { node: node.name.into(), kube_node: kube_node.into() });
    }
}

fn continue_drain(
    node: &NodeInput<'_>,
    policy: &Policy,
    now: Timestamp,
    state: &Serving,
    status: &mut NodeStatus,
    events: &mut Vec<NodeEvent>,
) {
    status.phase = NodePhase::Draining;
    let gone = match state {
        Serving::NotServing(why) => Some(format!("drained: {why}, so it holds no sessions")),
        _ => {
            let now_server = node.pod.map(PodObservation::server_identity);
            (status.drained_server.is_some() && now_server != status.drained_server).then(|| {
                "drained: its server restarted since the drain began, so its sessions are gone".to_string()
            })
        }
    };
    if let Some(message) = gone {
        status.phase = NodePhase::Drained;
        status.next_probe_at = None;
        status.message = Some(message);
        events.push(NodeEvent::DrainCompleted { node: node.name.into() });
        return;
    }
    // A server that runs but is briefly not ready still holds its sessions: keep probing.
    match &node.probe {
        Some(ProbeOutcome::Count(n)) => {
            // Two probes that read the same exporter sample are one observation, not two.
            let repeated = node.probe_sample.is_some() && node.probe_sample == status.probe_sample;
            status.sessions = Some(i64::try_from(*n).unwrap_or(i64::MAX));
            status.probe_error = None;
            status.probe_failures = 0;
            status.next_probe_at = Some(Time(later(now, node.probe_interval)));
            if repeated {
                status.message =
                    Some(format!("draining: {n} open sessions (the same sample as the last probe)"));
            } else {
                status.sessions_observed_at = Some(Time(now));
                status.zero_session_probes = if *n == 0 { status.zero_session_probes + 1 } else { 0 };
                status.probe_sample = node.probe_sample.clone();
                status.message = Some(format!("draining: {n} open sessions"));
            }
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
        events.push(NodeEvent::DrainCompleted { node: node.name.into() });
        return;
    }
    let deadline = status.drain_deadline.as_ref().map(|t| t.0);
    let proceed = policy.on_deadline == OnDeadline::Proceed || policy.force || node.force;
    let reached_now = deadline.is_some_and(|d| d <= now) && !status.deadline_reached;
    if reached_now {
        status.deadline_reached = true;
        let sessions = status.sessions.and_then(|n| u64::try_from(n).ok());
        events.push(NodeEvent::DeadlineReached { node: node.name.into(), sessions, proceeding: proceed });
    }
    if status.deadline_reached {
        let open = status.sessions.map_or("an unknown number of".to_string(), |n| n.to_string());
        if proceed {
            status.phase = NodePhase::Drained;
            status.next_probe_at = None;
            status.message = Some(format!("drained at the deadline with {open} sessions still open"));
            if !reached_now {
                // A held drain, ended by force: its deadline was reported when it passed.
                events.push(NodeEvent::DrainCompleted { node: node.name.into() });
            }
        } else {
            status.message = Some(format!(
                "deadline passed with {open} sessions open; holding (drain.onDeadline: Hold) until they end"
            ));
        }
    }
}

/// A serving node's session count: the last one kept between probes (a drain starts its own),
/// a new one recorded when this reconcile probed. A failure is kept in `probeError` and retried
/// with backoff; it never changes the phase: the node serves whatever its probe says.
fn count_while_serving(node: &NodeInput<'_>, previous: &NodeStatus, now: Timestamp, status: &mut NodeStatus) {
    let Some(interval) = node.serving_probe_interval else { return };
    if previous.phase == NodePhase::Serving {
        status.sessions = previous.sessions;
        status.sessions_observed_at = previous.sessions_observed_at.clone();
        status.probe_sample = previous.probe_sample.clone();
        status.probe_failures = previous.probe_failures;
        status.probe_error = previous.probe_error.clone();
        status.next_probe_at = previous.next_probe_at.clone();
    }
    match &node.probe {
        Some(ProbeOutcome::Count(n)) => {
            status.sessions = Some(i64::try_from(*n).unwrap_or(i64::MAX));
            // The same exporter sample again is not a newer count.
            if node.probe_sample.is_none() || node.probe_sample != status.probe_sample {
                status.sessions_observed_at = Some(Time(now));
                status.probe_sample = node.probe_sample.clone();
            }
            status.probe_failures = 0;
            status.probe_error = None;
            status.next_probe_at = Some(Time(later(now, interval)));
        }
        Some(ProbeOutcome::Failed(error)) => {
            status.probe_failures += 1;
            status.probe_error = Some(error.clone());
            status.next_probe_at = Some(Time(later(now, probe_backoff(interval, status.probe_failures))));
        }
        Some(ProbeOutcome::NoProbe) => status.next_probe_at = None,
        None => {}
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
    status.drain_reason = None;
    status.drained_server = None;
    status.drain_started_at = None;
    status.drain_deadline = None;
    status.deadline_reached = false;
    status.next_probe_at = None;
    status.zero_session_probes = 0;
    status.probe_failures = 0;
    status.probe_error = None;
    status.sessions = None;
    status.sessions_observed_at = None;
    status.probe_sample = None;
    status.moving_off = None;
    status.replaced_pod = None;
}

/// Nodes asked to drain that still serve after a step: their drain was refused (the only way
/// a requested node stays Serving).
pub fn refused(drain: &BTreeSet<String>, statuses: &[NodeStatus]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| drain.contains(&s.name) && s.phase == NodePhase::Serving && !s.leaving)
        .map(|s| s.name.clone())
        .collect()
}

/// Grid topology: where OMERO's configRedirector sends new sessions, always (the operator owns
/// `omero.cluster.redirect` for the cluster's whole life: OMERO itself only ever clears it, and a
/// Blitz cannot start while it is NULL): the master when it serves, else the first serving node.
/// Serving means in service and ready now: a node row in OMERO's table whose `down` is NULL
/// is no proof that its JVM lives. `None` when no node serves (nowhere to steer to).
pub fn redirect_target<'a>(nodes: &'a [NodeStatus], master: &str) -> Option<&'a NodeStatus> {
    let serving = |n: &&NodeStatus| n.phase == NodePhase::Serving && n.ready && !n.leaving;
    nodes.iter().filter(serving).find(|n| n.name == master).or_else(|| nodes.iter().find(serving))
}
