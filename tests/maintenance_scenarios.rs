//! Kubernetes node maintenance through the port double playing a running cluster (the
//! scheduler, the Deployment controller, the kubelet, OMERO's sessions and `kubectl drain`
//! with evictions that respect the budgets, `support::sim`), on tokio's paused clock: a cordon
//! drains the OMERO nodes on it, then their pods are deleted and come back elsewhere; moves go
//! one at a time (`maxUnavailable: 1`); the last serving node waits with a clear status; an
//! uncordon cancels a move; without the Node watch the budgets still hold `kubectl drain`.
//!
//! `cargo test --test maintenance_scenarios -- --nocapture` prints the measure.

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use omero_operator::{
    api::{DrainReason, NodePhase, keys},
    controller::{Context, port::Children},
    request::ALLOW_DOWNTIME_ANNOTATION,
};
use support::{sim::Sim, *};

type SimCtx = Arc<Context<FakeCluster, Sim>>;

/// `rw` plus `replicas` read-only nodes, probed every 10 s, drains of at most 30 minutes.
fn cluster_yaml(replicas: usize, extra: &str) -> String {
    let mut yaml = format!(
        r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {{name: omero}}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {{host: db, passwordSecret: {{name: omero-db, key: password}}}}
  repository: {{claimName: omero-data}}
  drain: {{timeout: 30m, maxUnavailable: 1}}
{extra}  nodes:
  - name: rw
    sessionProbe: {{type: Database, interval: 10s}}
"#
    );
    for i in 1..=replicas {
        yaml.push_str(&format!(
            "  - name: ro-{i}\n    readOnly: {{db: true, repo: true}}\n    sessionProbe: {{type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}}\n"
        ));
    }
    yaml
}

/// The cluster up on `kube_nodes`, every OMERO node serving with sessions of 2, 5 and 8
/// minutes; new 3-minute sessions keep arriving.
async fn running(yaml: &str, kube_nodes: &[&str]) -> (Sim, SimCtx) {
    let fake = FakeCluster::new(cluster_from_yaml(yaml));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let sim = Sim::new(&fake, Duration::from_secs(90)).with_kube_nodes(kube_nodes);
    let ctx = sim.context();
    let nodes = fake.cluster().spec.nodes.len();
    run(&sim, &ctx, 200, |s| s.serving() == nodes && all_serving(s)).await;
    for node in fake.cluster().spec.nodes.iter().map(|n| n.name.clone()) {
        for minutes in [2, 5, 8] {
            sim.open_sessions(&node, 1, Duration::from_secs(60 * minutes));
        }
    }
    fake.take_writes();
    fake.state().events.clear();
    (sim, ctx)
}

fn all_serving(sim: &Sim) -> bool {
    let status = sim.fake.status();
    status.nodes.len() == sim.fake.cluster().spec.nodes.len()
        && status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable && n.ready)
}

#[derive(Debug, Default)]
struct Run {
    steps: usize,
    elapsed: Duration,
    /// Most OMERO nodes out of service at once.
    most_out: usize,
}

/// Reconciles as the controller would (after each requeue, at least every 5 s as pod and
/// Node watch events would trigger), playing the kubelet and new sessions between them, until
/// `done`.
async fn run(sim: &Sim, ctx: &SimCtx, max_steps: usize, done: impl Fn(&Sim) -> bool) -> Run {
    run_with(sim, ctx, max_steps, |_| {}, done).await
}

async fn run_with(
    sim: &Sim,
    ctx: &SimCtx,
    max_steps: usize,
    between: impl Fn(&Sim),
    done: impl Fn(&Sim) -> bool,
) -> Run {
    let start = tokio::time::Instant::now();
    let mut run = Run::default();
    for step in 0..max_steps {
        sim.kubelet();
        sim.new_session(sim.session_length);
        between(sim);
        let requeue = reconcile_once(&sim.fake, ctx).await.expect("a reconcile");
        let out = sim.fake.status().nodes.iter().filter(|n| n.phase != NodePhase::Serving).count();
        run.most_out = run.most_out.max(out);
        run.steps = step + 1;
        if done(sim) {
            run.elapsed = start.elapsed();
            return run;
        }
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
    }
    panic!("not done after {max_steps} steps; status: {:#?}", sim.fake.status());
}

/// `n` reconciles, whatever happens.
async fn steps(sim: &Sim, ctx: &SimCtx, n: usize) {
    let count = std::cell::Cell::new(0);
    run(sim, ctx, n, |_| {
        count.set(count.get() + 1);
        count.get() == n
    })
    .await;
}

fn budget_max(sim: &Sim, node: &str) -> Option<IntOrString> {
    let state = sim.fake.state();
    state.budgets.get(&format!("omero-{node}"))?.spec.as_ref()?.max_unavailable.clone()
}

fn pod_deletes(fake: &FakeCluster) -> usize {
    fake.writes().iter().filter(|w| matches!(w, Write::DeletePod(_))).count()
}

#[tokio::test(start_paused = true)]
async fn a_cordon_drains_the_node_then_moves_it_and_it_serves_elsewhere() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-1").unwrap();
    let old_pod = sim.pod_of("ro-1").unwrap();
    assert_eq!(budget_max(&sim, "ro-1"), Some(IntOrString::Int(0)), "serving: no eviction allowed");

    sim.cordon(&host, true);
    run(&sim, &ctx, 50, |s| s.fake.node("ro-1").phase == NodePhase::Draining).await;
    let status = sim.fake.node("ro-1");
    assert_eq!(status.drain_reason, Some(DrainReason::Maintenance));
    assert_eq!(status.moving_off.as_deref(), Some(host.as_str()));
    assert!(
        status.message.as_deref().unwrap().starts_with(&format!("moving off node {host} for maintenance")),
        "{status:?}"
    );
    assert!(!status.routable, "no new sessions while it drains");
    assert_eq!(budget_max(&sim, "ro-1"), Some(IntOrString::Int(0)), "draining: sessions still open");
    let event = sim.fake.state().events.iter().find(|e| e.reason == "MovingOffNode").cloned().unwrap();
    assert!(event.note.contains(&format!("moving off node {host} for maintenance")), "{event:?}");
    assert_eq!(pod_deletes(&sim.fake), 0, "nothing is deleted while sessions are open");

    // Its sessions end on their own; then its pod is deleted and comes back on another node.
    let moved = run(&sim, &ctx, 400, |s| {
        s.fake.node("ro-1").phase == NodePhase::Serving && s.pod_of("ro-1").is_some_and(|p| p != old_pod)
    })
    .await;
    let status = sim.fake.node("ro-1");
    assert!(status.routable && status.ready, "{status:?}");
    assert_eq!(status.moving_off, None);
    assert_ne!(sim.host_of("ro-1").as_deref(), Some(host.as_str()), "not on the cordoned node");
    assert_eq!(sim.world().killed, 0, "no session was killed");
    assert_eq!(pod_deletes(&sim.fake), 1, "{:?}", sim.fake.writes());
    let reasons = sim.fake.event_reasons();
    for reason in ["DrainStarted", "DrainCompleted", "PodReplaced", "NodeMoved"] {
        assert!(reasons.contains(&reason.to_string()), "{reason} missing from {reasons:?}");
    }
    assert_eq!(moved.most_out, 1);
    assert_eq!(budget_max(&sim, "ro-1"), Some(IntOrString::Int(0)), "serving again: closed again");
    // The other nodes were never touched.
    for node in ["rw", "ro-2"] {
        assert_eq!(sim.fake.node(node).phase, NodePhase::Serving);
    }
}

/// Also the measure of the issue: a 3-node Kubernetes cluster, two OMERO pods on the node
/// that is cordoned, sessions that end on their own.
#[tokio::test(start_paused = true)]
async fn two_cordoned_nodes_move_one_at_a_time() {
    // 4 OMERO nodes on 3 Kubernetes nodes: k1 gets two of them.
    let (sim, ctx) = running(&cluster_yaml(3, ""), &["k1", "k2", "k3"]).await;
    let on_k1: Vec<String> = ["rw", "ro-1", "ro-2", "ro-3"]
        .iter()
        .filter(|n| sim.host_of(n).as_deref() == Some("k1"))
        .map(|n| n.to_string())
        .collect();
    assert_eq!(on_k1.len(), 2, "two OMERO pods on k1: {on_k1:?}");
    let old_pods: BTreeMap<String, String> =
        on_k1.iter().map(|n| (n.clone(), sim.pod_of(n).unwrap())).collect();
    let writes_before = sim.fake.writes().len();

    sim.cordon("k1", true);
    let moved = |s: &Sim| {
        on_k1.iter().all(|n| {
            s.fake.node(n).phase == NodePhase::Serving
                && s.pod_of(n).is_some_and(|p| p != old_pods[n])
                && s.host_of(n).is_some_and(|h| h != "k1")
        })
    };
    let run = run(&sim, &ctx, 2000, moved).await;
    assert_eq!(run.most_out, 1, "maxUnavailable 1: one at a time");
    assert!(sim.pods_on("k1").is_empty(), "k1 is empty: {:?}", sim.pods_on("k1"));
    let killed = sim.world().killed;
    assert_eq!(killed, 0);
    // The second waited for the first, and said so.
    let waiting = sim.fake.state().events.iter().filter(|e| e.reason == "MaintenanceWaiting").count();
    assert!(waiting >= 1, "{:?}", sim.fake.event_reasons());

    let writes = &sim.fake.writes()[writes_before..];
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for w in writes {
        let kind = match w {
            Write::Status => "status",
            Write::Label { .. } => "label pod",
            Write::DeletePod(_) => "delete pod",
            Write::ApplyBudget(_) => "apply PodDisruptionBudget",
            Write::Event(_) => "event",
            _ => "other",
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    println!(
        "measure: 3 Kubernetes nodes, OMERO nodes {on_k1:?} on cordoned k1, sessions of 2/5/8 min ending on their own"
    );
    println!("  sessions killed: {killed}");
    println!(
        "  cordon to both moved (paused clock): {:.0} s ({:.1} min), {} reconciles",
        run.elapsed.as_secs_f64(),
        run.elapsed.as_secs_f64() / 60.0,
        run.steps
    );
    println!("  API writes: {} ({by_kind:?})", writes.len());
}

#[tokio::test(start_paused = true)]
async fn the_last_serving_node_waits_with_a_clear_status_until_downtime_is_allowed() {
    let (sim, ctx) = running(&cluster_yaml(0, ""), &["k1", "k2"]).await;
    let host = sim.host_of("rw").unwrap();
    sim.cordon(&host, true);
    steps(&sim, &ctx, 3).await;
    let status = sim.fake.node("rw");
    assert_eq!(status.phase, NodePhase::Serving);
    let message = status.message.clone().unwrap();
    assert!(
        message.starts_with(&format!(
            "Kubernetes node {host} waits on OMERO node rw: it is the last serving node"
        )),
        "{message}"
    );
    assert!(message.contains(ALLOW_DOWNTIME_ANNOTATION), "{message}");
    let waits: Vec<_> =
        sim.fake.state().events.iter().filter(|e| e.reason == "MaintenanceWaiting").cloned().collect();
    assert_eq!(waits.len(), 1, "one Event, not one per reconcile: {waits:?}");
    // `kubectl drain` waits: its evictions are refused while the node serves.
    assert_eq!(sim.kubectl_drain(&host).len(), 1);
    assert_eq!(sim.world().evictions_refused, 1);
    assert_eq!(pod_deletes(&sim.fake), 0);

    // Consent to downtime: it drains, moves, and serves again elsewhere.
    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, Some("true"));
    run(&sim, &ctx, 600, |s| {
        s.fake.node("rw").phase == NodePhase::Serving && s.host_of("rw").is_some_and(|h| h != host)
    })
    .await;
    assert_eq!(sim.world().killed, 0);
}

#[tokio::test(start_paused = true)]
async fn an_uncordon_before_the_drain_ends_cancels_the_move() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-2").unwrap();
    let pod = sim.pod_of("ro-2").unwrap();
    sim.cordon(&host, true);
    run(&sim, &ctx, 50, |s| s.fake.node("ro-2").phase == NodePhase::Draining).await;
    assert!(!sim.fake.node("ro-2").routable);
    sim.cordon(&host, false);
    run(&sim, &ctx, 10, |s| s.fake.node("ro-2").phase == NodePhase::Serving && s.fake.node("ro-2").routable)
        .await;
    let status = sim.fake.node("ro-2");
    assert_eq!((status.drain_reason, status.moving_off.clone(), status.message.clone()), (None, None, None));
    assert_eq!(sim.pod_of("ro-2"), Some(pod), "the same pod: it stays");
    assert_eq!(pod_deletes(&sim.fake), 0);
    assert!(sim.fake.event_reasons().contains(&"Undrained".to_string()));
}

#[tokio::test(start_paused = true)]
async fn kubectl_drain_waits_on_the_budget_until_the_node_is_drained() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-1").unwrap();
    // `kubectl drain` retries every 5 s while the operator drains the node.
    run_with(
        &sim,
        &ctx,
        600,
        |s| {
            s.kubectl_drain(&host);
        },
        |s| s.pods_on(&host).is_empty() && s.fake.node("ro-1").phase == NodePhase::Serving,
    )
    .await;
    let world = sim.world();
    assert!(world.evictions_refused > 0, "refused while the node served or drained");
    assert_eq!(world.killed, 0, "no session killed by the eviction");
    drop(world);
    assert_ne!(sim.host_of("ro-1").as_deref(), Some(host.as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_listed_noschedule_taint_moves_the_node_and_an_unlisted_one_does_not() {
    let extra = "  maintenance: {taintKeys: [example.com/maintenance]}\n";
    let (sim, ctx) = running(&cluster_yaml(2, extra), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-1").unwrap();
    sim.taint(&host, "example.com/other", "NoSchedule");
    steps(&sim, &ctx, 5).await;
    assert_eq!(sim.fake.node("ro-1").phase, NodePhase::Serving, "not a maintenance taint");
    sim.taint(&host, "example.com/maintenance", "NoSchedule");
    run(&sim, &ctx, 5, |s| s.fake.node("ro-1").drain_reason == Some(DrainReason::Maintenance)).await;
}

#[tokio::test(start_paused = true)]
async fn without_the_node_watch_nothing_drains_but_the_budgets_still_hold_evictions() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    sim.fake.state().nodes_unwatched = true;
    let host = sim.host_of("ro-1").unwrap();
    sim.cordon(&host, true);
    steps(&sim, &ctx, 20).await;
    assert_eq!(sim.fake.node("ro-1").phase, NodePhase::Serving);
    assert_eq!(sim.kubectl_drain(&host).len(), 1, "the eviction is refused");
    // Drained on request, its budget opens and `kubectl drain` gets it.
    sim.fake.set_annotation(omero_operator::request::DRAIN_ANNOTATION, Some("ro-1"));
    run_with(
        &sim,
        &ctx,
        600,
        |s| {
            s.kubectl_drain(&host);
        },
        |s| s.pods_on(&host).is_empty(),
    )
    .await;
    assert_eq!(sim.world().killed, 0);
}

/// Killed after any port call of the reconcile that records the move (or a stale read): the
/// restarted operator finds the decision in status and carries it out once. Sessions are never
/// killed and the pod is replaced exactly once.
#[tokio::test(start_paused = true)]
async fn an_operator_killed_at_any_point_of_a_move_moves_the_node_once() {
    for kill_at in 1..=14 {
        let (sim, mut ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
        let host = sim.host_of("ro-1").unwrap();
        let created_before = sim.world().pods_created;
        sim.cordon(&host, true);
        // Up to the reconcile that deletes the pod: the drain runs normally.
        run(&sim, &ctx, 400, |s| {
            s.fake.node("ro-1").phase == NodePhase::Drained || {
                // One reconcile before the drain ends: the next one records and deletes.
                s.fake.remembered_node(&ctx, "ro-1").zero_session_probes == 1
            }
        })
        .await;
        let calls = sim.fake.state().calls;
        sim.fake.state().crash_after = Some(calls + kill_at);
        let mut killed = 0;
        for _ in 0..600 {
            sim.kubelet();
            sim.new_session(sim.session_length);
            let requeue = match reconcile_once(&sim.fake, &ctx).await {
                Ok(requeue) => requeue,
                Err(_) => {
                    let mut state = sim.fake.state();
                    assert!(state.crashed);
                    state.crashed = false;
                    state.crash_after = None;
                    drop(state);
                    killed += 1;
                    ctx = sim.context();
                    Duration::ZERO
                }
            };
            let status = sim.fake.node("ro-1");
            if status.phase == NodePhase::Serving && sim.host_of("ro-1").is_some_and(|h| h != host) {
                break;
            }
            tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
        }
        assert_eq!(killed, 1, "kill_at {kill_at}: the operator was killed once");
        let status = sim.fake.node("ro-1");
        assert_eq!(status.phase, NodePhase::Serving, "kill_at {kill_at}: {status:?}");
        assert_ne!(sim.host_of("ro-1").as_deref(), Some(host.as_str()), "kill_at {kill_at}");
        assert_eq!(sim.world().pods_created - created_before, 1, "kill_at {kill_at}: one new pod, once");
        assert_eq!(sim.world().killed, 0, "kill_at {kill_at}");
    }
}

/// Reads are stale: every reconcile reads the pods, budgets and Nodes of one step earlier (a
/// lagging watch cache, which still shows the deleted pod after the move), and every other one
/// starts from the cluster as it was before the operator's last status write. The move still
/// happens once, kills nothing, and the node serves on its new pod.
#[tokio::test(start_paused = true)]
async fn a_move_with_lagging_caches_and_stale_reads_moves_the_node_once() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-1").unwrap();
    let created_before = sim.world().pods_created;
    sim.cordon(&host, true);
    let mut earlier: Option<Children> = None;
    let mut stale_reads = 0;
    for step in 0..1000 {
        sim.kubelet();
        sim.new_session(sim.session_length);
        let cluster = {
            let mut state = sim.fake.state();
            let now = Children {
                deployments: state.deployments.values().cloned().collect(),
                services: state.services.values().cloned().collect(),
                config_maps: state.config_maps.values().cloned().collect(),
                budgets: state.budgets.values().cloned().collect(),
                pods: state.pods.values().cloned().collect(),
                kube_nodes: state.kube_nodes.as_ref().map(|n| n.values().cloned().collect()),
            };
            state.cache = Some(earlier.replace(now.clone()).unwrap_or(now));
            match (step % 2, state.history.last()) {
                (1, Some(older)) => {
                    stale_reads += 1;
                    older.clone()
                }
                _ => state.cluster.clone().unwrap(),
            }
        };
        let requeue = omero_operator::controller::reconcile(Arc::new(cluster), ctx.clone()).await.unwrap();
        let status = sim.fake.node("ro-1");
        if status.phase == NodePhase::Serving && sim.host_of("ro-1").is_some_and(|h| h != host) {
            break;
        }
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
    }
    sim.fake.state().cache = None;
    assert!(stale_reads > 10 && sim.fake.state().stale_writes > 0, "stale reads were refused");
    let status = sim.fake.node("ro-1");
    assert_eq!(status.phase, NodePhase::Serving, "{status:?}");
    assert_ne!(sim.host_of("ro-1").as_deref(), Some(host.as_str()));
    assert_eq!(sim.world().pods_created - created_before, 1, "one new pod");
    assert_eq!(sim.world().killed, 0);
    // Were the deleted pod shown again by the lagging cache, a repeated delete (uid
    // precondition) would be harmless; in this run the alternating stale reads absorbed it.
    println!("pod deletes sent with lagging caches: {}", pod_deletes(&sim.fake));
    assert!(pod_deletes(&sim.fake) >= 1);
    let reasons = sim.fake.event_reasons();
    for reason in ["MovingOffNode", "PodReplaced", "NodeMoved"] {
        assert_eq!(reasons.iter().filter(|r| *r == reason).count(), 1, "{reason} once: {reasons:?}");
    }
}

/// A move deletes the node's drained pod; it terminates (its Ready condition lagging, as a
/// kubelet reports it until the server has stopped) while its ReplicaSet's replacement starts
/// on another Kubernetes node. All that time the terminating pod is never the node's serving
/// pod, never labelled routable, never deleted twice, and the node serves on the new pod.
#[tokio::test(start_paused = true)]
async fn a_moved_nodes_terminating_pod_is_never_taken_for_its_replacement() {
    let (sim, ctx) = running(&cluster_yaml(2, ""), &["k1", "k2", "k3"]).await;
    let host = sim.host_of("ro-1").unwrap();
    let old = sim.pod_of("ro-1").unwrap();
    sim.cordon(&host, true);
    let (mut terminating, mut beside_its_replacement) = (0, 0);
    for _ in 0..600 {
        sim.kubelet();
        sim.new_session(sim.session_length);
        // What this reconcile reads: the old pod already terminating (the reconcile that deletes
        // it records what it read before, a live pod).
        let read_terminating =
            sim.fake.state().pods.get(&old).is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        let requeue = reconcile_once(&sim.fake, &ctx).await.unwrap();
        let status = sim.fake.node("ro-1");
        if read_terminating {
            let state = sim.fake.state();
            if let Some(pod) = state.pods.get(&old) {
                terminating += 1;
                let labels = pod.metadata.labels.as_ref().unwrap();
                assert!(
                    !labels.contains_key(keys::ROUTABLE_LABEL),
                    "the terminating pod is routable: {status:?}"
                );
                let on_old = status.pod.as_deref() == Some(old.as_str());
                assert!(!(on_old && (status.ready || status.routable)), "taken as ready: {status:?}");
                assert!(!(on_old && status.phase == NodePhase::Serving), "serving on it: {status:?}");
                let replacements = state
                    .pods
                    .values()
                    .filter(|p| p.metadata.name.as_deref() != Some(old.as_str()))
                    .filter(|p| {
                        p.metadata.labels.as_ref().unwrap().get(keys::NODE_LABEL).map(String::as_str)
                            == Some("ro-1")
                    })
                    .count();
                beside_its_replacement += usize::from(replacements == 1);
            }
        }
        if status.phase == NodePhase::Serving && sim.host_of("ro-1").is_some_and(|h| h != host) {
            break;
        }
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
    }
    let status = sim.fake.node("ro-1");
    assert_eq!(status.phase, NodePhase::Serving, "{status:?}");
    assert!(status.pod.as_deref() != Some(old.as_str()) && status.routable && status.ready, "{status:?}");
    assert!(terminating > 0 && beside_its_replacement > 0, "{terminating} {beside_its_replacement}");
    assert!(sim.fake.state().pods.get(&old).is_none(), "gone once stopped");
    assert_eq!(pod_deletes(&sim.fake), 1, "{:?}", sim.fake.writes());
    assert_eq!(sim.world().killed, 0, "drained before it was deleted");
}
