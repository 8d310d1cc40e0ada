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
//!
//! Here: the types, [`step`] and the cluster-wide rules (the last serving node, a withdrawn
//! request); `drain` takes a node out of service and ends its drain; `restart` releases the
//! new template to a drained node and brings it back; `probing` says when sessions are counted.

use std::collections::BTreeSet;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::{DrainReason, Duration, NodePhase, NodeStatus, OnDeadline},
    request::FORCE_ANNOTATION,
};

mod drain;
mod probing;
mod restart;
mod stop;

use drain::{clear_drain, continue_drain, start_drain};
use probing::count_while_serving;
pub use probing::{
    MAX_PROBE_BACKOFF, ZERO_CONFIRMATIONS, next_wakeup, probe_backoff, probe_due, serving_probe_due,
};
use restart::{continue_restart, move_off, release};
use stop::{stop_when_drained, while_stopped};

use crate::stopping::Power;

/// How a refused drain's message starts: status keeps it first while the request stands, and
/// `kubectl omero drain --wait` reads it to end with the refusal.
pub const DRAIN_REFUSED: &str = "drain refused";

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
    /// The node has no probe (`sessionProbe.type: None`): only the deadline ends its drain.
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
    /// What the node does about the cluster's `spec.stopped` (see [`crate::stopping`]).
    pub power: Power,
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
    /// Drained for the cluster's stop: its Deployment is scaled to zero now.
    Stopped {
        node: String,
    },
    /// The cluster is no longer stopped and it is this node's turn: its Deployment is scaled
    /// up again.
    Starting {
        node: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: NodeStatus,
    /// Set the pod's routable label to this value.
    pub set_routable: Option<bool>,
    pub events: Vec<NodeEvent>,
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
    if node.power == Power::Stop {
        return Some(DrainReason::Stop);
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

    if previous.phase == NodePhase::Stopped {
        while_stopped(node, &mut status, &mut events);
        return Decision { status, set_routable: None, events };
    }
    if previous.phase == NodePhase::Restarting && node.power != Power::Stop {
        continue_restart(node, policy, now, &state, &mut status, &mut events);
    } else if previous.phase == NodePhase::Restarting {
        // Stopping: nothing to protect, see `stop_when_drained`.
        status.phase = NodePhase::Restarting;
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
    stop_when_drained(node, &mut status, &mut events);
    move_off(node, now, &mut status, &mut events);
    if status.phase != NodePhase::Stopped {
        release(node, now, &state, &mut status, &mut events);
    }
    if status.phase == NodePhase::Restarting {
        // A restarting node is ready once its new pod is: the old pod's readiness, ending
        // with it, is not the node's (and recording it would be one more status write).
        status.ready = node.pod.is_some_and(|p| {
            p.ready
                && p.revision == status.deployment_revision
                && status.replaced_pod.as_ref() != Some(&p.name)
        });
    }
    let set_routable = routable_patch(&mut status);
    Decision { status, set_routable, events }
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

/// `now + duration`, saturating at the last representable instant: the schema accepts any
/// number of hours, and an overflowing timeout or interval must not panic the operator.
fn later(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_add(duration.std()).unwrap_or(Timestamp::MAX)
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
