//! Taking a node out of service and ending its drain: at zero sessions (confirmed), at its
//! deadline per `onDeadline`, or when the request is withdrawn.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn start_drain(
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
    // The serving count is where the drain starts from (this reconcile's, if the node was
    // counted while still routable): a first drain probe that finds the same count changes
    // nothing recorded. It is no confirmation of a zero: only probes after the drain began are.
    let (mut sessions, mut since) = (status.sessions, status.sessions_since.clone());
    if let Some(ProbeOutcome::Count(n)) = &node.probe {
        let count = Some(i64::try_from(*n).unwrap_or(i64::MAX));
        if count != sessions || since.is_none() {
            (sessions, since) = (count, Some(Time(now)));
        }
    }
    clear_drain(status);
    (status.sessions, status.sessions_since) = (sessions, since);
    status.phase = NodePhase::Draining;
    status.drain_reason = Some(reason);
    status.drained_server = node.pod.map(PodObservation::server_identity);
    status.drain_started_at = Some(Time(now));
    status.drain_deadline = Some(Time(deadline));
    status.next_probe_at = Some(Time(now));
    status.message = Some(draining_message(status.sessions));
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

pub(super) fn continue_drain(
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
            let count = Some(i64::try_from(*n).unwrap_or(i64::MAX));
            if status.sessions != count || status.sessions_since.is_none() {
                status.sessions_since = Some(Time(now));
            }
            status.sessions = count;
            status.probe_error = None;
            status.probe_failures = 0;
            status.next_probe_at = Some(Time(later(now, node.probe_interval)));
            if !repeated {
                status.zero_session_probes = if *n == 0 { status.zero_session_probes + 1 } else { 0 };
                status.probe_sample = node.probe_sample.clone();
            }
            status.message = Some(draining_message(status.sessions));
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
            // No count of failures here: each would be one more status write.
            status.message = Some(format!(
                "draining: session probe failing; last good count {}",
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

/// A draining node's message: the count is in it, never the probes that found it (each would
/// be a status write).
fn draining_message(sessions: Option<i64>) -> String {
    match sessions {
        Some(n) => format!("draining: no new sessions; {n} open"),
        None => "draining: no new sessions; waiting for open sessions to end".into(),
    }
}

pub(super) fn clear_drain(status: &mut NodeStatus) {
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
    status.sessions_since = None;
    status.probe_sample = None;
    status.moving_off = None;
    status.replaced_pod = None;
}
