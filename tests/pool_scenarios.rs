//! The read-only pool scaled up and down through the port double playing a running cluster
//! (`support::sim`: the Deployment controller, the kubelet, sessions that end on their own),
//! on tokio's paused clock: nodes named `ro-0..ro-k-1` whatever the sequence of scales, a
//! scale-down only through drains (no session killed, the highest names first), a scale-up
//! that puts draining nodes back in service without a restart, `minReplicas`, the last
//! serving node, and an operator killed anywhere in a scale-down.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use omero_operator::{
    api::{NodePhase, conditions},
    request::{ALLOW_DOWNTIME_ANNOTATION, DRAIN_ANNOTATION},
};
use support::{
    drive::{SimCtx, StepMode, drive, event_counts},
    sim::Sim,
    *,
};

/// A read-write node and a pool of `replicas` counted by the session counter.
fn pool_yaml(replicas: i32) -> String {
    format!(
        r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {{name: omero}}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {{host: db, passwordSecret: {{name: omero-db, key: password}}}}
  repository: {{claimName: omero-data}}
  sessionCounter: {{credentialsSecret: {{name: counter}}}}
  drain: {{timeout: 2h, maxUnavailable: 1}}
  nodes:
  - name: rw
    sessionProbe: {{type: Database, interval: 10s}}
  readOnlyPool:
    replicas: {replicas}
    template:
      sessionProbe: {{type: Counter, interval: 10s}}
"#
    )
}

/// Every node of the spec up and serving.
async fn running(replicas: i32) -> (Sim, SimCtx) {
    let fake = FakeCluster::new(cluster_from_yaml(&pool_yaml(replicas)));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let sim = Sim::new(&fake, Duration::from_secs(90));
    let mut ctx = sim.context();
    let nodes = 1 + replicas as usize;
    drive(&sim, &mut ctx, 400, StepMode::Plain, |s| all_serving(s, nodes)).await;
    fake.take_writes();
    fake.state().events.clear();
    (sim, ctx)
}

fn since(then: k8s_openapi::jiff::Timestamp, now: k8s_openapi::jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).expect("time moves forward")
}

fn scale(sim: &Sim, replicas: i32) {
    sim.fake.edit(|c| c.spec.read_only_pool.as_mut().expect("a pool").replicas = replicas);
}

/// The spec's nodes (the pool's as `ro-<i>`) all serve, nothing else is left: the scale is done.
fn all_serving(sim: &Sim, nodes: usize) -> bool {
    let status = sim.fake.status();
    status.observed_generation == sim.fake.cluster().metadata.generation
        && status.nodes.len() == nodes
        && status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable && n.ready)
        && sim.fake.state().deployments.len() == nodes
        && sim.serving() == nodes
}

/// Names of the pool's nodes that have a Deployment.
fn pool_deployments(sim: &Sim) -> BTreeSet<String> {
    sim.fake
        .state()
        .deployments
        .values()
        .filter_map(|d| d.metadata.name.as_deref()?.strip_prefix("omero-").map(str::to_string))
        .filter(|n| n.starts_with("ro-"))
        .collect()
}

fn pool_index(name: &str) -> usize {
    name.strip_prefix("ro-").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("not a pool name: {name}"))
}

/// Every pool node that exists is `ro-<i>` below the replicas asked for, or one recorded as
/// leaving (scaled down, waiting for its sessions).
fn assert_pool_names(sim: &Sim, replicas: usize, context: &str) {
    let status = sim.fake.status();
    for name in pool_deployments(sim) {
        let index = pool_index(&name);
        let leaving = status.node(&name).is_some_and(|n| n.leaving);
        let recorded_for_fewer = status.read_only_pool.as_ref().is_some_and(|p| p.leaving.contains(&name));
        assert!(
            index < replicas || leaving || recorded_for_fewer || status.node(&name).is_none(),
            "{context}: {name} exists beyond {replicas} replicas and is not leaving: {:#?}",
            status.nodes
        );
    }
    for node in status.nodes.iter().filter(|n| n.name.starts_with("ro-") && !n.leaving) {
        assert!(pool_index(&node.name) < replicas.max(pool_index(&node.name) + 1), "{context}");
    }
}

/// Sessions of 5 to 30 minutes (one per step, in turn) arriving on the serving pods.
fn arrive(sim: &Sim, step: usize) {
    sim.new_session(Duration::from_secs(60 * (5 + 5 * (step as u64 % 6))));
}

/// Pool 2 -> 8 -> 2 with sessions of 5 to 30 minutes arriving and ending on their own: no
/// session killed, the six nodes leave together (not one at a time), the highest names go,
/// and the API writes per node added and removed are printed.
#[tokio::test(start_paused = true)]
async fn a_pool_scaled_2_8_2_kills_no_session_and_removes_through_drains() {
    let (sim, ctx) = running(2).await;
    let started = sim.now();
    scale(&sim, 8);
    let mut step = 0;
    while !all_serving(&sim, 9) {
        sim.kubelet();
        arrive(&sim, step);
        let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
        step += 1;
        assert!(step < 2_000, "never 9 serving: {:#?}", sim.fake.status());
    }
    let up_took = since(started, sim.now());
    let up_writes = sim.fake.take_writes();
    // Half an hour of sessions spread over all nine nodes.
    for _ in 0..360 {
        sim.kubelet();
        arrive(&sim, step);
        let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
        step += 1;
    }
    sim.fake.take_writes();
    let open_on = |node: &str| {
        let pod = sim.pod_of(node).unwrap();
        let now = sim.now();
        sim.world().sessions.get(&pod).map_or(0, |s| s.iter().filter(|end| **end > now).count())
    };
    assert!((2..8).all(|i| open_on(&format!("ro-{i}")) > 0), "every leaving node has sessions");

    let scaled_down = sim.now();
    scale(&sim, 2);
    let mut drain_started: BTreeMap<String, k8s_openapi::jiff::Timestamp> = BTreeMap::new();
    let mut left: BTreeMap<String, Duration> = BTreeMap::new();
    let mut most_draining = 0;
    while !all_serving(&sim, 3) {
        sim.kubelet();
        arrive(&sim, step);
        let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
        let status = sim.fake.status();
        for node in status.nodes.iter().filter(|n| n.leaving) {
            if let Some(at) = &node.drain_started_at {
                drain_started.entry(node.name.clone()).or_insert(at.0);
            }
        }
        most_draining = most_draining.max(status.nodes.iter().filter(|n| n.leaving).count());
        let present = pool_deployments(&sim);
        for name in (2..8).map(|i| format!("ro-{i}")) {
            if !present.contains(&name) && !left.contains_key(&name) {
                left.insert(name, since(scaled_down, sim.now()));
            }
        }
        assert!(sim.serving() >= 3, "ro-0, ro-1 and rw keep serving");
        assert_pool_names(&sim, 2, "scaling down");
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
        step += 1;
        assert!(step < 20_000, "never back to 3: {:#?}", sim.fake.status());
    }
    let down_writes = sim.fake.take_writes();
    assert_eq!(sim.world().killed, 0, "no session killed");
    assert_eq!(most_draining, 6, "the six leave together, not one at a time");
    for (name, at) in &drain_started {
        assert!(since(scaled_down, *at) < Duration::from_secs(10), "{name} drained at once");
    }
    assert_eq!(
        left.keys().cloned().collect::<BTreeSet<_>>(),
        (2..8).map(|i| format!("ro-{i}")).collect(),
        "the highest names left"
    );
    assert_eq!(pool_deployments(&sim), BTreeSet::from(["ro-0".to_string(), "ro-1".to_string()]));
    let pool = sim.fake.status().read_only_pool.expect("pool status");
    assert_eq!((pool.replicas, pool.serving_replicas, pool.leaving.len()), (2, 2, 0));
    assert_eq!(
        pool.selector,
        "omero.openmicroscopy.org/cluster=omero,omero.openmicroscopy.org/pool=read-only"
    );

    let count = |writes: &[Write], f: fn(&Write) -> bool| writes.iter().filter(|w| f(w)).count();
    let non_event = |w: &Write| !matches!(w, Write::Event(_));
    println!(
        "pool 2 -> 8: all 9 serving after {:?}; {} API writes ({:.1} per node added, {} status)",
        up_took,
        count(&up_writes, non_event),
        count(&up_writes, non_event) as f64 / 6.0,
        count(&up_writes, |w| matches!(w, Write::Status)),
    );
    println!(
        "pool 8 -> 2: {} API writes ({:.1} per node removed, {} status); 0 sessions killed; each node left after:",
        count(&down_writes, non_event),
        count(&down_writes, non_event) as f64 / 6.0,
        count(&down_writes, |w| matches!(w, Write::Status)),
    );
    for (name, took) in &left {
        println!("  {name}: {took:?}");
    }
}

/// A scale-up while a scale-down drains: the nodes brought back are the ones still draining,
/// and they serve again without a restart; the one still above the new count goes on leaving.
#[tokio::test(start_paused = true)]
async fn a_scale_up_puts_draining_nodes_back_in_service_without_a_restart() {
    let (sim, mut ctx) = running(4).await;
    for node in ["ro-2", "ro-3"] {
        sim.open_sessions(node, 2, Duration::from_secs(20 * 60));
    }
    scale(&sim, 2);
    drive(&sim, &mut ctx, 200, StepMode::Plain, |s| {
        let status = s.fake.status();
        ["ro-2", "ro-3"]
            .iter()
            .all(|n| status.node(n).is_some_and(|n| n.leaving && n.phase == NodePhase::Draining))
    })
    .await;
    let status = sim.fake.status();
    assert!(["ro-2", "ro-3"].iter().all(|n| !status.node(n).unwrap().routable), "no new sessions at once");
    let pod_before = sim.pod_of("ro-2").unwrap();

    scale(&sim, 3);
    drive(&sim, &mut ctx, 200, StepMode::Plain, |s| {
        s.fake.status().node("ro-2").is_some_and(|n| n.phase == NodePhase::Serving && n.routable)
    })
    .await;
    assert_eq!(sim.pod_of("ro-2").unwrap(), pod_before, "the same pod serves again");
    assert_eq!(sim.world().restarts.get("ro-2"), None, "not restarted");
    let ro3 = sim.fake.status().node("ro-3").cloned().expect("ro-3 still draining out");
    assert!(ro3.leaving && ro3.phase == NodePhase::Draining, "{ro3:#?}");

    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| all_serving(s, 4)).await;
    assert_eq!(sim.world().killed, 0);
    assert_eq!(pool_deployments(&sim), ["ro-0", "ro-1", "ro-2"].into_iter().map(String::from).collect());
}

/// `replicas` below `minReplicas` is refused with the field, and nothing that runs changes.
#[tokio::test(start_paused = true)]
async fn replicas_below_min_replicas_is_refused_and_changes_nothing() {
    let (sim, mut ctx) = running(3).await;
    sim.fake.edit(|c| c.spec.read_only_pool.as_mut().unwrap().min_replicas = Some(2));
    scale(&sim, 1);
    drive(&sim, &mut ctx, 20, StepMode::Plain, |s| {
        s.fake.status().condition(conditions::DEGRADED).is_some_and(|c| c.reason == "InvalidSpec")
    })
    .await;
    let degraded = sim.fake.status().condition(conditions::DEGRADED).cloned().unwrap();
    assert!(
        degraded.message.contains("spec.readOnlyPool.replicas") && degraded.message.contains("minReplicas"),
        "{degraded:?}"
    );
    let writes = sim.fake.take_writes();
    assert!(writes.iter().all(|w| matches!(w, Write::Status | Write::Event(_))), "{writes:?}");
    assert_eq!(sim.serving(), 4);
    assert_eq!(sim.fake.status().read_only_pool.unwrap().replicas, 3, "the pool as it was");
}

/// The pool's last serving node does not leave while nothing else serves, unless a person
/// consents; then it drains and goes.
#[tokio::test(start_paused = true)]
async fn the_last_serving_node_leaves_the_pool_only_with_consent() {
    let (sim, mut ctx) = running(1).await;
    sim.open_sessions("ro-0", 1, Duration::from_secs(10 * 60));
    sim.fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    drive(&sim, &mut ctx, 2_000, StepMode::Plain, |s| {
        s.fake.status().node("rw").is_some_and(|n| n.phase == NodePhase::Drained)
    })
    .await;
    scale(&sim, 0);
    let steps = std::cell::Cell::new(0);
    drive(&sim, &mut ctx, 100, StepMode::Plain, |_| {
        steps.set(steps.get() + 1);
        steps.get() >= 40
    })
    .await;
    let ro0 = sim.fake.status().node("ro-0").cloned().unwrap();
    assert!(ro0.leaving && ro0.phase == NodePhase::Serving && ro0.routable, "kept serving: {ro0:#?}");
    let waiting = sim.fake.status().rollout.and_then(|r| r.waiting).unwrap_or_default();
    assert!(waiting.contains("last serving node"), "{waiting}");

    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, Some("true"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| pool_deployments(s).is_empty()).await;
    assert_eq!(sim.world().killed, 0, "ro-0 drained before it went");
}

/// Killed after any one port call of a scale-down (a removal recorded and not yet acted on,
/// a drain's end recorded and the Deployment not yet deleted, ...), the restarted operator ends
/// it the same: only `ro-0` left, no session killed, one NodeRemoved per node at most.
#[tokio::test(start_paused = true)]
async fn a_scale_down_killed_anywhere_ends_the_same() {
    let world = || async {
        let (sim, ctx) = running(3).await;
        for node in ["ro-1", "ro-2"] {
            sim.open_sessions(node, 1, Duration::from_secs(60));
        }
        (sim, ctx)
    };
    let calls = {
        let (sim, mut ctx) = world().await;
        sim.fake.state().calls = 0;
        scale(&sim, 1);
        drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| all_serving(s, 2)).await;
        let removed = event_counts(&sim.fake);
        assert_eq!(removed.get(&("NodeRemoved".to_string(), "ro-2".to_string())), Some(&1), "{removed:?}");
        sim.fake.state().calls
    };
    assert!(calls > 10, "{calls} port calls");
    let mut interrupted = 0;
    for (kill_at, mode) in (1..=calls).flat_map(|k| [(k, StepMode::Plain), (k, StepMode::LaggingCache)]) {
        let (sim, mut ctx) = world().await;
        {
            let mut state = sim.fake.state();
            state.calls = 0;
            state.crash_after = Some(kill_at);
        }
        scale(&sim, 1);
        let run = drive(&sim, &mut ctx, 5_000, mode, |s| all_serving(s, 2)).await;
        interrupted += run.kills;
        assert_eq!(sim.world().killed, 0, "killed after call {kill_at}");
        assert_eq!(
            pool_deployments(&sim),
            BTreeSet::from(["ro-0".to_string()]),
            "killed after call {kill_at}"
        );
        for (key, n) in event_counts(&sim.fake).into_iter().filter(|((r, _), _)| r == "NodeRemoved") {
            assert_eq!(n, 1, "killed after call {kill_at}: {key:?}");
        }
    }
    println!(
        "a scale-down killed after each of {calls} port calls (fresh and lagging caches): {interrupted} runs interrupted"
    );
    // A lagging-cache run can end in fewer calls than the baseline: its last kills interrupt nothing.
    assert!(interrupted + 10 >= 2 * calls, "{interrupted} of {} runs interrupted", 2 * calls);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..Default::default() })]

    /// For any sequence of scales (each applied after a random number of reconciles, so some
    /// land while an earlier scale-down still drains): every pool node that exists is
    /// `ro-<i>` below the replicas asked for or leaving; the nodes a scale keeps are never
    /// rewritten by it (Deployment, Service, budget); in the end exactly `ro-0..ro-k-1` are
    /// left and no session was killed.
    #[test]
    fn pool_nodes_are_always_a_prefix_and_a_scale_rewrites_no_node_it_keeps(
        scales in proptest::collection::vec((0i32..6, 0usize..60), 1..5),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let (sim, ctx) = running(2).await;
            let mut replicas = 2;
            let mut step = 0;
            for (next, steps) in &scales {
                let kept: BTreeSet<String> = {
                    let status = sim.fake.status();
                    (0..replicas.min(*next))
                        .map(|i| format!("ro-{i}"))
                        .filter(|n| status.node(n).is_some_and(|s| s.phase == NodePhase::Serving && !s.leaving))
                        .collect()
                };
                replicas = *next;
                scale(&sim, replicas);
                sim.fake.take_writes();
                for _ in 0..*steps {
                    sim.kubelet();
                    sim.new_session(Duration::from_secs(60 * (1 + step as u64 % 3)));
                    let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
                    assert_pool_names(&sim, replicas as usize, &format!("after scaling to {replicas}"));
                    tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
                    step += 1;
                }
                for write in sim.fake.take_writes() {
                    let object = match &write {
                        Write::ApplyDeployment(name) | Write::ApplyService(name) | Write::ApplyBudget(name) => name,
                        _ => continue,
                    };
                    let node = object.strip_prefix("omero-").unwrap_or(object);
                    assert!(!kept.contains(node), "scaling to {replicas} rewrote {write:?} of a node it keeps");
                }
            }
            let mut step = 0;
            while !all_serving(&sim, 1 + replicas as usize) {
                sim.kubelet();
                let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
                assert_pool_names(&sim, replicas as usize, "settling");
                tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
                step += 1;
                assert!(step < 10_000, "never settled at {replicas}: {:#?}", sim.fake.status());
            }
            let expected: BTreeSet<String> = (0..replicas).map(|i| format!("ro-{i}")).collect();
            assert_eq!(pool_deployments(&sim), expected);
            assert_eq!(sim.world().killed, 0);
        });
    }
}
