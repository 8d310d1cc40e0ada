//! Property tests of the rollout planner's invariants over random clusters: never more than
//! `maxUnavailable` nodes out of service, never the last serving node, the read-write node and
//! the grid master last, the master only with consent, nothing while paused or after a failure.

use omero_operator::{
    api::{DrainReason, NodePhase},
    request::ALLOW_DOWNTIME_ANNOTATION,
    rollout::{Limits, NodeView, Role, plan_restarts},
};
use proptest::prelude::*;

fn phase() -> impl Strategy<Value = NodePhase> {
    prop_oneof![
        6 => Just(NodePhase::Serving),
        1 => Just(NodePhase::Pending),
        1 => Just(NodePhase::Starting),
        1 => Just(NodePhase::Draining),
        1 => Just(NodePhase::Drained),
        1 => Just(NodePhase::Restarting),
        1 => Just(NodePhase::Failed),
    ]
}

fn node(i: usize, role: Role) -> impl Strategy<Value = NodeView> {
    (
        phase(),
        proptest::bool::weighted(0.85),
        proptest::option::of(prop_oneof![
            Just(DrainReason::Requested),
            Just(DrainReason::Rollout),
            Just(DrainReason::Removal)
        ]),
        proptest::bool::weighted(0.6),
    )
        .prop_map(move |(phase, ready, reason, out_of_date)| NodeView {
            name: format!("n{i}"),
            role,
            phase,
            ready,
            drain_reason: if phase.is_out_of_service() { reason } else { None },
            out_of_date: out_of_date && role != Role::Leaving,
        })
}

/// An independent cluster (at most one read-write node) or a grid (exactly one master), plus
/// nodes leaving the spec.
fn cluster() -> impl Strategy<Value = (Vec<NodeView>, Limits)> {
    (1usize..=6, any::<bool>(), 0usize..=2, 1u32..=3, any::<bool>(), proptest::bool::weighted(0.1))
        .prop_flat_map(|(replicas, grid, leaving, max_unavailable, allow_downtime, paused)| {
            let first = if grid { Role::GridMaster } else { Role::ReadWrite };
            let mut roles = vec![first];
            roles.extend(std::iter::repeat_n(Role::Replica, replicas - 1));
            roles.extend(std::iter::repeat_n(Role::Leaving, leaving));
            let nodes: Vec<_> = roles.into_iter().enumerate().map(|(i, r)| node(i, r)).collect();
            (nodes, Just(Limits { max_unavailable, allow_downtime, paused }))
        })
}

fn serving(n: &NodeView) -> bool {
    n.phase == NodePhase::Serving && n.ready
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_planner_keeps_its_invariants((nodes, limits) in cluster()) {
        let p = plan_restarts(&nodes, &limits);
        let selected: Vec<&NodeView> = nodes.iter().filter(|n| p.selected.contains(&n.name)).collect();

        // Only serving nodes that have something to do are taken out.
        for n in &selected {
            prop_assert_eq!(n.phase, NodePhase::Serving, "{} selected", n.name);
            prop_assert!(n.out_of_date || n.role == Role::Leaving, "{} has nothing to do", n.name);
        }
        if selected.is_empty() {
            return Ok(());
        }
        prop_assert!(!limits.paused, "nothing moves while paused");
        prop_assert!(!nodes.iter().any(|n| n.phase == NodePhase::Failed), "nothing moves after a failure");

        // Never more than maxUnavailable out of service, removals aside (a person took those
        // nodes out of the spec: they are exempt, as requested drains are).
        let unavailable = nodes.iter().filter(|n| !serving(n)).count()
            + selected.iter().filter(|n| serving(n)).count();
        let removals_only = selected.iter().all(|n| n.role == Role::Leaving);
        prop_assert!(removals_only || unavailable <= limits.max_unavailable as usize, "{} out, max {}", unavailable, limits.max_unavailable);

        // Never the last serving node without consent.
        let serving_after = nodes.iter().filter(|n| serving(n) && !p.selected.contains(&n.name)).count();
        prop_assert!(serving_after >= 1 || limits.allow_downtime, "no node would serve");

        // The master only with consent.
        prop_assert!(limits.allow_downtime || !selected.iter().any(|n| n.role == Role::GridMaster));

        // Ranks: nothing is taken while a node of an earlier rank still has work.
        let to_do = |n: &NodeView| {
            n.out_of_date
                || n.role == Role::Leaving
                || (matches!(n.phase, NodePhase::Draining | NodePhase::Drained | NodePhase::Restarting)
                    && matches!(n.drain_reason, Some(DrainReason::Rollout | DrainReason::Removal)))
        };
        for s in &selected {
            let earlier = nodes.iter().find(|n| n.role < s.role && to_do(n));
            prop_assert!(earlier.is_none(), "{} ({:?}) before {:?}", s.name, s.role, earlier);
        }
    }

    #[test]
    fn when_nothing_moves_and_work_remains_the_plan_says_why((nodes, limits) in cluster()) {
        let p = plan_restarts(&nodes, &limits);
        let moving = nodes.iter().any(|n| {
            matches!(n.phase, NodePhase::Draining | NodePhase::Drained | NodePhase::Restarting)
                && matches!(n.drain_reason, Some(DrainReason::Rollout | DrainReason::Removal))
        });
        let candidates = nodes.iter().any(|n| n.phase == NodePhase::Serving && (n.out_of_date || n.role == Role::Leaving));
        if p.selected.is_empty() && !moving && candidates {
            prop_assert!(p.waiting.is_some(), "{:?}", p);
        }
        if !p.selected.is_empty() {
            prop_assert!(p.waiting.is_none());
        }
        // A wait for consent is one consent ends: with it, the same cluster no longer waits on
        // consent; it moves, or waits on something else it names.
        if p.needs_consent {
            prop_assert!(p.waiting.is_some() && !limits.allow_downtime, "{:?}", p);
            let consented = plan_restarts(&nodes, &Limits { allow_downtime: true, ..limits });
            let still_asks = consented.waiting.as_deref().is_some_and(|w| w.contains(ALLOW_DOWNTIME_ANNOTATION));
            prop_assert!(!still_asks, "{:?}", consented);
            prop_assert!(!consented.selected.is_empty() || consented.waiting.is_some(), "{:?}", consented);
        }
    }
}
