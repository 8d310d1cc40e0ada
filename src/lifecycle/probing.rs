//! When and how a node's sessions are counted: due probes, the back-off of a failing probe,
//! the count of a serving node, and when a node needs looking at again.

use super::*;

/// Zero-session probes in a row that end a drain: one zero may be a race with a client that
/// connected just before the node stopped being routable.
pub const ZERO_CONFIRMATIONS: u32 = 2;
/// Longest wait between probes of a failing probe.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(300);

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

/// A serving node's session count: the last one kept between probes (a drain starts its own),
/// a new one recorded when this reconcile probed. A failure is kept in `probeError` and retried
/// with backoff; it never changes the phase: the node serves whatever its probe says.
pub(super) fn count_while_serving(
    node: &NodeInput<'_>,
    previous: &NodeStatus,
    now: Timestamp,
    status: &mut NodeStatus,
) {
    let Some(interval) = node.serving_probe_interval else { return };
    if previous.phase == NodePhase::Serving {
        status.sessions = previous.sessions;
        status.sessions_since = previous.sessions_since.clone();
        status.probe_sample = previous.probe_sample.clone();
        status.probe_failures = previous.probe_failures;
        status.probe_error = previous.probe_error.clone();
        status.next_probe_at = previous.next_probe_at.clone();
    }
    match &node.probe {
        Some(ProbeOutcome::Count(n)) => {
            let count = Some(i64::try_from(*n).unwrap_or(i64::MAX));
            // Only a changed count is news: the same count again writes nothing.
            if status.sessions != count || status.sessions_since.is_none() {
                status.sessions_since = Some(Time(now));
            }
            status.sessions = count;
            status.probe_sample = node.probe_sample.clone();
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
