//! Giving a drained node its new pod template (the release), waiting for the new pod to be
//! ready and counted, and moving a drained pod off a Kubernetes node under maintenance.

use super::*;

/// A node drained for maintenance moves: its pod (on the cordoned Kubernetes node) is to be
/// deleted, so the Deployment's new pod is scheduled elsewhere; recorded here (the pod's name)
/// before the controller deletes it. Then it waits, as a restart does, for the new pod to be
/// ready and its probe to answer.
pub(super) fn move_off(
    node: &NodeInput<'_>,
    now: Timestamp,
    status: &mut NodeStatus,
    events: &mut Vec<NodeEvent>,
) {
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
pub(super) fn release(
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

pub(super) fn continue_restart(
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
                status.message =
                    Some(format!("restarted with revision {want}: ready, but its session probe fails"));
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
