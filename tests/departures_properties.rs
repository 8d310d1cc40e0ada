//! Property: whatever arrives together (requested drains, forced or not, cordoned Kubernetes
//! nodes, out-of-date nodes, nodes already out), the departures the real planners decide
//! (`departures::decide`: requested drains, then maintenance moves, then rollout picks) and the
//! lifecycle step that carries them out leave at least one node serving, unless a person
//! consented (`allow-downtime`) or forced a drain; and the operator's own departures never take
//! more than `maxUnavailable` out beside what a person asked for. Prints how many generated
//! cases reached the interesting state (a requested drain meeting a planner's possible pick).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicUsize, Ordering},
};

use k8s_openapi::jiff::Timestamp;
use omero_operator::{
    api::{DrainReason, Duration, NodePhase, NodeStatus, OnDeadline},
    departures::{self, Requests},
    lifecycle::{self, NodeInput, PodObservation, Policy, ServerContainer},
    maintenance::Placement,
    rollout::{Limits, NodeView, Role},
};
use proptest::prelude::*;

/// One node as generated.
#[derive(Clone, Debug)]
struct Node {
    phase: NodePhase,
    /// Why it is out, when it is.
    reason: DrainReason,
    out_of_date: bool,
    /// On the cordoned Kubernetes node `k1` (else `k2`).
    cordoned: bool,
    drain_requested: bool,
    forced: bool,
}

fn node() -> impl Strategy<Value = Node> {
    let phase = prop_oneof![
        6 => Just(NodePhase::Serving),
        1 => Just(NodePhase::Draining),
        1 => Just(NodePhase::Drained),
        1 => Just(NodePhase::Restarting),
        1 => Just(NodePhase::Failed),
    ];
    let reason =
        prop_oneof![Just(DrainReason::Requested), Just(DrainReason::Rollout), Just(DrainReason::Maintenance)];
    (phase, reason, any::<bool>(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.15)).prop_map(
        |(phase, reason, out_of_date, cordoned, drain_requested, forced)| Node {
            phase,
            reason,
            out_of_date,
            cordoned,
            drain_requested,
            forced: forced && drain_requested,
        },
    )
}

#[derive(Clone, Debug)]
struct Case {
    nodes: Vec<Node>,
    max_unavailable: u32,
    allow_downtime: bool,
    force_all: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (proptest::collection::vec(node(), 1..5), 1u32..3, prop::bool::weighted(0.1), prop::bool::weighted(0.05))
        .prop_map(|(nodes, max_unavailable, allow_downtime, force_all)| Case {
            nodes,
            max_unavailable,
            allow_downtime,
            force_all,
        })
}

fn name(i: usize) -> String {
    if i == 0 { "rw".into() } else { format!("ro-{i}") }
}

/// Checks one case; whether it reached the interesting state.
fn check(case: &Case) -> Result<bool, TestCaseError> {
    let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
    let names: Vec<String> = (0..case.nodes.len()).map(name).collect();
    let statuses: Vec<NodeStatus> = case
        .nodes
        .iter()
        .zip(&names)
        .map(|(n, name)| NodeStatus {
            name: name.clone(),
            phase: n.phase,
            ready: n.phase == NodePhase::Serving,
            routable: n.phase == NodePhase::Serving,
            drain_reason: (n.phase != NodePhase::Serving && n.phase != NodePhase::Failed).then_some(n.reason),
            moving_off: (n.phase.is_out_of_service() && n.reason == DrainReason::Maintenance && n.cordoned)
                .then(|| "k1".to_string()),
            drain_started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            drain_deadline: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-02T13:00:00Z".parse().unwrap(),
            )),
            deployment_revision: Some("old".into()),
            target_revision: Some(if n.out_of_date { "new".into() } else { "old".into() }),
            revision: Some("old".into()),
            ..NodeStatus::default()
        })
        .collect();
    let pods: Vec<PodObservation> = case
        .nodes
        .iter()
        .zip(&names)
        .map(|(n, name)| PodObservation {
            name: format!("omero-{name}-pod"),
            ip: Some("127.0.0.2".into()),
            ready: matches!(n.phase, NodePhase::Serving | NodePhase::Draining),
            routable: n.phase == NodePhase::Serving,
            revision: Some("old".into()),
            created: Some(now),
            running: true,
            server: Some(ServerContainer { id: Some("c1".into()), restarts: 0, started: true }),
            uid: Some(format!("uid-{name}")),
            kube_node: Some(if n.cordoned { "k1".into() } else { "k2".into() }),
            ..PodObservation::default()
        })
        .collect();
    let views: Vec<NodeView> = case
        .nodes
        .iter()
        .zip(&statuses)
        .enumerate()
        .map(|(i, (n, s))| NodeView {
            name: s.name.clone(),
            role: if i == 0 { Role::ReadWrite } else { Role::Replica },
            phase: s.phase,
            ready: pods[i].ready,
            drain_reason: s.drain_reason,
            out_of_date: n.out_of_date,
        })
        .collect();
    let placements: Vec<Placement> = views
        .iter()
        .zip(&statuses)
        .zip(&pods)
        .map(|((view, s), pod)| Placement {
            view: view.clone(),
            kube_node: pod.kube_node.clone(),
            moving_off: s.moving_off.clone(),
        })
        .collect();
    let hosts = BTreeMap::from([("k1".to_string(), Some("cordoned".to_string())), ("k2".to_string(), None)]);
    let drain: BTreeSet<String> =
        case.nodes.iter().zip(&names).filter(|(n, _)| n.drain_requested).map(|(_, m)| m.clone()).collect();
    let force_nodes: BTreeSet<String> =
        case.nodes.iter().zip(&names).filter(|(n, _)| n.forced).map(|(_, m)| m.clone()).collect();
    let limits =
        Limits { max_unavailable: case.max_unavailable, allow_downtime: case.allow_downtime, paused: false };
    let decided = departures::decide(
        &placements,
        &hosts,
        Requests { drain: &drain, force: case.force_all, force_nodes: &force_nodes },
        &limits,
    );

    let serving_before = views.iter().filter(|v| v.phase == NodePhase::Serving && v.ready).count();
    // A requested drain of a serving node, beside a serving node a planner could pick.
    let requested_serving = views.iter().any(|v| drain.contains(&v.name) && v.phase == NodePhase::Serving);
    let pickable = views.iter().zip(&case.nodes).any(|(v, n)| {
        !drain.contains(&v.name) && v.phase == NodePhase::Serving && (n.out_of_date || n.cordoned)
    });

    let inputs: Vec<NodeInput<'_>> = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| NodeInput {
            name: &names[i],
            previous: Some(s),
            pod: Some(&pods[i]),
            drain_requested: drain.contains(&names[i]),
            probe: None,
            probe_sample: None,
            probe_interval: Duration::from_secs(15),
            serving_probe_interval: None,
            target_revision: s.target_revision.as_deref(),
            deployment_exists: true,
            deployment_revision: Some("old"),
            selected: decided.rollout.selected.contains(&names[i]),
            leaving: false,
            force: force_nodes.contains(&names[i]),
            maintenance: decided.moves.moves.get(&names[i]).map(String::as_str),
            power: omero_operator::stopping::Power::Run,
        })
        .collect();
    let policy = Policy {
        timeout: Duration::from_secs(3600),
        on_deadline: OnDeadline::Proceed,
        force: case.force_all,
        ready_timeout: Duration::from_secs(2400),
        paused: false,
    };
    let decisions = lifecycle::step(&inputs, &policy, now);
    let serving_after =
        decisions.iter().filter(|d| d.status.phase == NodePhase::Serving && d.status.ready).count();
    let consent = case.allow_downtime || case.force_all || !force_nodes.is_empty();
    if serving_before >= 1 && !consent {
        prop_assert!(serving_after >= 1, "no node serves after {:?}: {:?}", decided, decisions);
    }
    // The operator's own departures fit maxUnavailable, counting everything already out.
    let out_before = serving_before.abs_diff(views.len());
    let automatic = decided.moves.started.len() + decided.rollout.selected.len();
    if automatic > 0 {
        let requested_now = decided.drains_started.len();
        prop_assert!(
            out_before + requested_now + automatic <= case.max_unavailable as usize,
            "{automatic} automatic departures with {out_before} out and {requested_now} requested: {decided:?}"
        );
    }
    Ok(requested_serving && pickable)
}

/// 4,096 generated cases (a failure prints the minimal one); how many were interesting.
#[test]
fn at_least_one_node_serves_whatever_arrives_together() {
    let config = ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() };
    let (cases, interesting) = (AtomicUsize::new(0), AtomicUsize::new(0));
    proptest::test_runner::TestRunner::new(config)
        .run(&case(), |c| {
            cases.fetch_add(1, Ordering::Relaxed);
            if check(&c)? {
                interesting.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (cases, interesting) = (cases.into_inner(), interesting.into_inner());
    println!(
        "departures property: {interesting} of {cases} generated cases had a requested drain meeting a possible \
         planner pick"
    );
    assert!(interesting > cases / 20, "too few interesting cases: {interesting} of {cases}");
}
