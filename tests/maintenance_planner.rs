//! Property tests of the maintenance planner ("which OMERO nodes must move") over random
//! clusters on random Kubernetes nodes: moves start only for serving nodes on a Kubernetes node
//! under maintenance, never beyond `maxUnavailable` (counting every node out of service), never
//! the last serving node nor a grid master without consent, nothing while paused; every serving
//! node on such a Kubernetes node either moves or waits with its reason; a draining move is
//! cancelled exactly when its Kubernetes node is no longer under maintenance; and the rollout
//! planner, given the moves, keeps within the same budget.

use std::collections::BTreeMap;

use omero_operator::{
    api::{DrainReason, NodePhase},
    maintenance::{Placement, plan_moves, with_moves},
    request::ALLOW_DOWNTIME_ANNOTATION,
    rollout::{self, Limits, NodeView, Role},
};
use proptest::prelude::*;

const KUBE_NODES: [&str; 4] = ["k1", "k2", "k3", "gone"];

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

fn node(i: usize, role: Role) -> impl Strategy<Value = Placement> {
    (
        phase(),
        proptest::bool::weighted(0.85),
        proptest::option::of(prop_oneof![
            Just(DrainReason::Requested),
            Just(DrainReason::Rollout),
            Just(DrainReason::Maintenance),
        ]),
        proptest::bool::weighted(0.3),
        proptest::option::of(0..KUBE_NODES.len()),
    )
        .prop_map(move |(phase, ready, reason, out_of_date, host)| {
            let drain_reason = if phase.is_out_of_service() { reason } else { None };
            let kube_node = host.map(|h| KUBE_NODES[h].to_string());
            Placement {
                view: NodeView {
                    name: format!("n{i}"),
                    role,
                    phase,
                    ready,
                    drain_reason,
                    out_of_date: out_of_date && role != Role::Leaving,
                },
                moving_off: (drain_reason == Some(DrainReason::Maintenance))
                    .then(|| kube_node.clone())
                    .flatten(),
                kube_node,
            }
        })
}

/// Nodes (one read-write node or one grid master first), which Kubernetes nodes are under
/// maintenance (`gone` is never seen), and the limits.
fn world() -> impl Strategy<Value = (Vec<Placement>, BTreeMap<String, Option<String>>, Limits)> {
    (
        1usize..=6,
        any::<bool>(),
        0usize..=1,
        proptest::collection::vec(any::<bool>(), 3),
        1u32..=3,
        any::<bool>(),
        proptest::bool::weighted(0.1),
    )
        .prop_flat_map(|(replicas, grid, leaving, cordoned, max_unavailable, allow_downtime, paused)| {
            let first = if grid { Role::GridMaster } else { Role::ReadWrite };
            let mut roles = vec![first];
            roles.extend(std::iter::repeat_n(Role::Replica, replicas - 1));
            roles.extend(std::iter::repeat_n(Role::Leaving, leaving));
            let nodes: Vec<_> = roles.into_iter().enumerate().map(|(i, r)| node(i, r)).collect();
            let hosts: BTreeMap<String, Option<String>> = KUBE_NODES[..3]
                .iter()
                .zip(cordoned)
                .map(|(k, c)| (k.to_string(), c.then(|| "cordoned".to_string())))
                .collect();
            (nodes, Just(hosts), Just(Limits { max_unavailable, allow_downtime, paused }))
        })
}

fn serving(n: &Placement) -> bool {
    n.view.phase == NodePhase::Serving && n.view.ready
}

fn under_maintenance(hosts: &BTreeMap<String, Option<String>>, kube_node: Option<&String>) -> bool {
    kube_node.and_then(|k| hosts.get(k)).is_some_and(Option::is_some)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn the_maintenance_planner_keeps_its_invariants((nodes, hosts, limits) in world()) {
        let p = plan_moves(&nodes, &hosts, &limits);
        let by_name = |name: &str| nodes.iter().find(|n| n.view.name == name).unwrap();

        // Moves start only for serving nodes (not leaving) on a Kubernetes node under maintenance.
        for name in &p.started {
            let n = by_name(name);
            prop_assert!(serving(n), "{name} is not serving");
            prop_assert!(n.view.role != Role::Leaving);
            prop_assert!(under_maintenance(&hosts, n.kube_node.as_ref()), "{name}'s node is not under maintenance");
            prop_assert_eq!(p.moves.get(name), n.kube_node.as_ref(), "it moves off its own node");
        }
        // What goes on: drained moves always, draining moves while their node is under maintenance.
        for n in nodes.iter().filter(|n| n.view.drain_reason == Some(DrainReason::Maintenance)) {
            let vacating = n.moving_off.as_ref().or(n.kube_node.as_ref());
            match n.view.phase {
                NodePhase::Drained => prop_assert!(p.moves.contains_key(&n.view.name)),
                NodePhase::Draining => {
                    let on = under_maintenance(&hosts, vacating);
                    prop_assert_eq!(p.moves.contains_key(&n.view.name), on);
                    prop_assert_eq!(p.cancelled.contains(&n.view.name), !on, "cancelled exactly when uncordoned");
                }
                _ => prop_assert!(!p.moves.contains_key(&n.view.name) && !p.cancelled.contains(&n.view.name)),
            }
        }
        prop_assert!(p.cancelled.iter().all(|c| !p.moves.contains_key(c)));
        prop_assert!(p.moves.keys().all(|m| p.started.contains(m) || by_name(m).view.drain_reason == Some(DrainReason::Maintenance)));

        // Every serving node on a node under maintenance moves or waits, with why.
        for n in nodes.iter().filter(|n| serving(n) && n.view.role != Role::Leaving && under_maintenance(&hosts, n.kube_node.as_ref())) {
            let waits = p.waiting.iter().filter(|w| w.node == n.view.name).count();
            prop_assert_eq!(usize::from(p.started.contains(&n.view.name)) + waits, 1, "{} neither moves nor waits once", n.view.name);
        }
        for w in &p.waiting {
            let prefix = format!("Kubernetes node {} waits on OMERO node {}: ", w.kube_node, w.node);
            prop_assert!(w.message().starts_with(&prefix), "{}", w.message());
            let n = by_name(&w.node);
            if n.view.role == Role::GridMaster && !limits.allow_downtime && !limits.paused {
                prop_assert!(w.why.contains("grid master") && w.why.contains(ALLOW_DOWNTIME_ANNOTATION), "{}", w.why);
            }
        }

        if p.started.is_empty() {
            return Ok(());
        }
        prop_assert!(!limits.paused, "nothing starts while paused");
        let out_before = nodes.iter().filter(|n| !serving(n)).count();
        prop_assert!(out_before + p.started.len() <= limits.max_unavailable as usize, "beyond maxUnavailable");
        let serving_before = nodes.iter().filter(|n| serving(n)).count();
        if !limits.allow_downtime {
            prop_assert!(serving_before > p.started.len(), "the last serving node moved without consent");
            for name in &p.started {
                prop_assert!(by_name(name).view.role != Role::GridMaster, "the grid master moved without consent");
            }
        }
        // Order: a read-write node or grid master moves only if no replica on a node under
        // maintenance waits.
        for name in &p.started {
            let role = by_name(name).view.role;
            for w in &p.waiting {
                prop_assert!(by_name(&w.node).view.role >= role || role == Role::Replica, "{name} went before {}", w.node);
            }
        }

        // The rollout, planned after the moves, stays within the same budget.
        let views: Vec<NodeView> = nodes.iter().map(|n| n.view.clone()).collect();
        let after = with_moves(&views, &p);
        let rollout = rollout::plan_restarts(&after, &limits);
        let out_after = after.iter().filter(|v| !(v.phase == NodePhase::Serving && v.ready)).count();
        // Removals aside: they are exempt from maxUnavailable (see departures).
        let removals_only = rollout.selected.iter().all(|s| by_name(s).view.role == Role::Leaving);
        prop_assert!(removals_only || out_after + rollout.selected.len() <= limits.max_unavailable as usize);
        prop_assert!(rollout.selected.iter().all(|s| !p.started.contains(s)), "a node moves and restarts at once");
    }
}
