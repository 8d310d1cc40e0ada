//! Which nodes leave service in this reconcile, decided together. Pure.
//!
//! Four things take a node out of service: a drain a person asked for, a removal from the spec
//! (a node taken out of `nodes`, or a read-only pool scaled down), a move off a Kubernetes
//! node under maintenance, and a rollout's pick (a new revision). Each
//! used to be checked against the world as it was before this reconcile, so one edit that asked
//! for two of them (a new image and `drain: rw` on a 2-node cluster) could take every node out
//! at once. Here they are decided in one fixed order, each seeing the ones before it as out of
//! service:
//!
//! 1. **Requested drains**, in spec order: a person named the node. Admitted while at least one
//!    other node still serves after it, or when forced (`drain-force`); otherwise refused with
//!    the reason. They are exempt from `drain.maxUnavailable`, which bounds the operator's own
//!    automatic work, not a person's explicit request; but they count as out of service for
//!    everything decided after them.
//! 2. **Removals**, in order: a person (or an autoscaler) took the node out of the spec, so
//!    every leaving node stops taking new sessions at once, like a requested drain and exempt
//!    from `drain.maxUnavailable` (a scale-down from 8 to 2 drains six nodes together, not one
//!    session lifetime after another); but never the last serving node without consent
//!    (`allow-downtime`), since nothing would take new sessions until the spec's others serve.
//! 3. **Maintenance moves** ([`crate::maintenance`]), with the drains and removals out.
//! 4. **Rollout picks** ([`crate::rollout`]), with all of those out.
//!
//! So after every departure decided here, at least one node serves unless a person consented
//! (`allow-downtime`) or forced a drain, and the automatic departures never take more than
//! `maxUnavailable` out counting everything already out.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api::{DrainReason, NodePhase},
    maintenance::{self, Placement},
    rollout::{self, Limits, Role},
};

/// The drains people asked for.
#[derive(Clone, Copy, Debug)]
pub struct Requests<'a> {
    /// Nodes named in the drain annotation.
    pub drain: &'a BTreeSet<String>,
    /// Drains forced for every node.
    pub force: bool,
    /// Drains forced for these nodes.
    pub force_nodes: &'a BTreeSet<String>,
}

impl Requests<'_> {
    fn forced(&self, node: &str) -> bool {
        self.force || self.force_nodes.contains(node)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Departures {
    /// Requested drains of serving nodes admitted now. A requested drain not admitted would
    /// take the last serving node: the lifecycle refuses it, saying so in status and an Event.
    pub drains_started: BTreeSet<String>,
    /// Serving nodes that left the spec, taken out of service now to be removed. One that
    /// would be the last serving node stays until consent: the rollout planner says so.
    pub removals_started: BTreeSet<String>,
    /// The maintenance planner's decision, made with the requested drains out.
    pub moves: maintenance::Plan,
    /// The rollout planner's decision, made with the requested drains and the moves out.
    pub rollout: rollout::Plan,
}

impl Departures {
    /// Every node this reconcile takes out of service that served before it.
    pub fn leaving_now(&self) -> BTreeSet<&str> {
        self.drains_started
            .iter()
            .chain(&self.removals_started)
            .chain(&self.moves.started)
            .chain(&self.rollout.selected)
            .map(String::as_str)
            .collect()
    }
}

/// Decides every departure of this reconcile, in the order the module explains. `placements`
/// are every node's view and where its pod runs, in spec order then leaving nodes; `hosts`
/// the Kubernetes nodes under maintenance (see [`maintenance::hosts`]).
pub fn decide(
    placements: &[Placement],
    hosts: &BTreeMap<String, Option<String>>,
    requests: Requests<'_>,
    limits: &Limits,
) -> Departures {
    let serving = |p: &Placement| p.view.phase == NodePhase::Serving && p.view.ready;
    let mut placements: Vec<Placement> = placements.to_vec();
    let mut departures = Departures::default();
    // Paused: phases are kept as they are (the lifecycle only observes), so nothing starts.
    if !limits.paused {
        let mut serving_now = placements.iter().filter(|p| serving(p)).count();
        for placement in placements.iter_mut() {
            let name = placement.view.name.clone();
            if !requests.drain.contains(&name) || !serving(placement) {
                continue;
            }
            if serving_now <= 1 && !requests.forced(&name) {
                continue;
            }
            serving_now -= 1;
            placement.view.taken_out(DrainReason::Requested);
            departures.drains_started.insert(name);
        }
        for placement in placements.iter_mut() {
            if placement.view.role != Role::Leaving || !serving(placement) {
                continue;
            }
            if serving_now <= 1 && !limits.allow_downtime {
                continue;
            }
            serving_now -= 1;
            placement.view.taken_out(DrainReason::Removal);
            departures.removals_started.insert(placement.view.name.clone());
        }
    }
    departures.moves = maintenance::plan_moves(&placements, hosts, limits);
    let views: Vec<rollout::NodeView> = placements.iter().map(|p| p.view.clone()).collect();
    departures.rollout = rollout::plan_restarts(&maintenance::with_moves(&views, &departures.moves), limits);
    departures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::NodeView;

    fn placed(name: &str, role: Role, out_of_date: bool) -> Placement {
        Placement {
            view: NodeView {
                name: name.into(),
                role,
                phase: NodePhase::Serving,
                ready: true,
                drain_reason: None,
                out_of_date,
            },
            kube_node: Some("k1".into()),
            moving_off: None,
        }
    }

    const LIMITS: Limits = Limits { max_unavailable: 1, allow_downtime: false, paused: false };

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_requested_drain_goes_first_and_the_rollout_waits_for_consent_rather_than_empty_the_cluster() {
        // One edit: a new image for both nodes and `drain: rw`.
        let nodes = [placed("rw", Role::ReadWrite, true), placed("ro-1", Role::Replica, true)];
        let drain = BTreeSet::from(["rw".to_string()]);
        let none = BTreeSet::new();
        let requests = Requests { drain: &drain, force: false, force_nodes: &none };
        let d = decide(&nodes, &BTreeMap::new(), requests, &LIMITS);
        assert_eq!(names(&d.drains_started), ["rw"]);
        assert!(d.rollout.selected.is_empty(), "ro-1 is the last serving node: {d:?}");
        assert!(d.rollout.waiting.is_some());
        assert_eq!(d.leaving_now(), BTreeSet::from(["rw"]));
    }

    #[test]
    fn a_cordon_and_a_requested_drain_together_leave_one_node_serving() {
        let nodes = [placed("rw", Role::ReadWrite, false), placed("ro-1", Role::Replica, false)];
        let hosts = BTreeMap::from([("k1".to_string(), Some("cordoned".to_string()))]);
        let drain = BTreeSet::from(["rw".to_string()]);
        let none = BTreeSet::new();
        let d = decide(&nodes, &hosts, Requests { drain: &drain, force: false, force_nodes: &none }, &LIMITS);
        assert_eq!(names(&d.drains_started), ["rw"]);
        assert!(d.moves.started.is_empty(), "{d:?}");
        assert_eq!(d.moves.waiting.len(), 1, "ro-1 waits, and says why: {d:?}");
    }

    #[test]
    fn the_last_serving_node_is_refused_unless_forced_and_a_second_request_sees_the_first() {
        let nodes = [placed("rw", Role::ReadWrite, false), placed("ro-1", Role::Replica, false)];
        let both = BTreeSet::from(["rw".to_string(), "ro-1".to_string()]);
        let none = BTreeSet::new();
        let d = decide(
            &nodes,
            &BTreeMap::new(),
            Requests { drain: &both, force: false, force_nodes: &none },
            &LIMITS,
        );
        // Spec order: rw is admitted, ro-1 would be the last.
        assert_eq!(names(&d.drains_started), ["rw"], "ro-1 would be the last serving node");

        let forced = BTreeSet::from(["ro-1".to_string()]);
        let d = decide(
            &nodes,
            &BTreeMap::new(),
            Requests { drain: &both, force: false, force_nodes: &forced },
            &LIMITS,
        );
        assert_eq!(names(&d.drains_started), ["ro-1", "rw"]);
    }

    #[test]
    fn requested_drains_are_exempt_from_max_unavailable_but_count_for_the_planners() {
        let nodes = [
            placed("rw", Role::ReadWrite, true),
            placed("ro-1", Role::Replica, true),
            placed("ro-2", Role::Replica, true),
        ];
        let drain = BTreeSet::from(["ro-1".to_string(), "ro-2".to_string()]);
        let none = BTreeSet::new();
        let d = decide(
            &nodes,
            &BTreeMap::new(),
            Requests { drain: &drain, force: false, force_nodes: &none },
            &LIMITS,
        );
        assert_eq!(names(&d.drains_started), ["ro-1", "ro-2"], "a person asked for both");
        assert!(d.rollout.selected.is_empty(), "two out already: the rollout waits: {d:?}");
    }

    #[test]
    fn removals_leave_at_once_beyond_max_unavailable_but_never_the_last_serving_node() {
        // A pool scaled from 4 to 1: three nodes left the spec.
        let nodes = [
            placed("ro-0", Role::Replica, false),
            placed("ro-1", Role::Leaving, false),
            placed("ro-2", Role::Leaving, false),
            placed("ro-3", Role::Leaving, false),
        ];
        let none = BTreeSet::new();
        let requests = Requests { drain: &none, force: false, force_nodes: &none };
        let d = decide(&nodes, &BTreeMap::new(), requests, &LIMITS);
        assert_eq!(
            names(&d.removals_started),
            ["ro-1", "ro-2", "ro-3"],
            "maxUnavailable 1 does not hold them"
        );
        assert!(d.rollout.selected.is_empty(), "{d:?}");

        // Only leaving nodes serve: the last of them stays until consent.
        let nodes = [placed("old-1", Role::Leaving, false), placed("old-2", Role::Leaving, false)];
        let d = decide(&nodes, &BTreeMap::new(), requests, &LIMITS);
        assert_eq!(names(&d.removals_started), ["old-1"]);
        // Once old-1 is gone, the planner says what old-2 waits for.
        let d = decide(&nodes[1..], &BTreeMap::new(), requests, &LIMITS);
        assert!(d.removals_started.is_empty() && d.rollout.needs_consent, "{d:?}");
        assert!(d.rollout.waiting.as_deref().is_some_and(|w| w.contains("last serving node")), "{d:?}");
        let d = decide(&nodes, &BTreeMap::new(), requests, &Limits { allow_downtime: true, ..LIMITS });
        assert_eq!(names(&d.removals_started), ["old-1", "old-2"]);
    }

    #[test]
    fn nothing_starts_while_paused() {
        let nodes = [placed("rw", Role::ReadWrite, true), placed("ro-1", Role::Replica, true)];
        let drain = BTreeSet::from(["ro-1".to_string()]);
        let none = BTreeSet::new();
        let paused = Limits { paused: true, ..LIMITS };
        let d = decide(
            &nodes,
            &BTreeMap::new(),
            Requests { drain: &drain, force: false, force_nodes: &none },
            &paused,
        );
        assert!(d.leaving_now().is_empty(), "{d:?}");
    }
}
