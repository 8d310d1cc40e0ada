//! A node stopped with its cluster (`spec.stopped`, see [`crate::stopping`]): drained as any
//! drain, then recorded Stopped (its Deployment is scaled to zero once that is recorded); and
//! started again in its turn.

use super::*;
use crate::stopping::Power;

/// How a stopped node's message starts.
const STOPPED: &str = "stopped (spec.stopped)";

/// The step of a node recorded Stopped: it stays so (the cluster is stopped, or the node waits
/// for its turn to start), or starts. Its Deployment takes any new revision at once: nothing
/// runs to protect.
pub(super) fn while_stopped(node: &NodeInput<'_>, status: &mut NodeStatus, events: &mut Vec<NodeEvent>) {
    if let Some(target) = &status.target_revision {
        status.deployment_revision = Some(target.clone());
    }
    match &node.power {
        Power::Stop => {
            status.phase = NodePhase::Stopped;
            // How its drain ended, recorded when it stopped, stays: rewriting it would be one
            // more status write per node and lose what a reader wants to know.
            if !status.message.as_deref().is_some_and(|m| m.starts_with(STOPPED)) {
                status.message = Some(format!("{STOPPED}: its Deployment is scaled to zero"));
            }
        }
        Power::StayStopped { after } if after.is_empty() => {
            status.phase = NodePhase::Stopped;
            status.message = Some("stopped: it left the spec and is deleted".into());
        }
        Power::StayStopped { after } => {
            status.phase = NodePhase::Stopped;
            status.message = Some(format!("stopped: starts once {} serve (or fail)", after.join(", ")));
        }
        Power::Run => {
            clear_drain(status);
            status.phase = NodePhase::Pending;
            status.message = Some("starting: the cluster is no longer stopped".into());
            events.push(NodeEvent::Starting { node: node.name.into() });
        }
    }
}

/// A node whose drain for the stop has ended is stopped: recorded here, before its Deployment
/// is scaled to zero. A node restarting has nothing to protect (its new pod was never
/// routable) and stops at once.
pub(super) fn stop_when_drained(node: &NodeInput<'_>, status: &mut NodeStatus, events: &mut Vec<NodeEvent>) {
    if node.power != Power::Stop || node.leaving {
        return;
    }
    let drained = status.phase == NodePhase::Drained && status.drain_reason == Some(DrainReason::Stop);
    if !(drained || status.phase == NodePhase::Restarting) {
        return;
    }
    let message = match &status.message {
        Some(how) if drained => format!("{STOPPED} once {how}"),
        _ => STOPPED.to_string(),
    };
    // How the drain went (its reason, start, deadline, whether the deadline ended it) stays
    // until the node starts again; what only a running pod has goes now.
    let kept = drained.then(|| {
        (
            status.drain_reason,
            status.drain_started_at.clone(),
            status.drain_deadline.clone(),
            status.deadline_reached,
        )
    });
    clear_drain(status);
    if let Some((reason, started, deadline, reached)) = kept {
        (status.drain_reason, status.drain_started_at, status.drain_deadline, status.deadline_reached) =
            (reason, started, deadline, reached);
    }
    status.restart_started_at = None;
    if let Some(target) = &status.target_revision {
        status.deployment_revision = Some(target.clone());
    }
    status.phase = NodePhase::Stopped;
    status.message = Some(message);
    events.push(NodeEvent::Stopped { node: node.name.into() });
}
