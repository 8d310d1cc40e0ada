//! When decisions meet: a drain request arriving together with a rollout (one edit), with a
//! queued rollout at the end of a pause, or with a cordon. Through the port double playing a
//! running cluster (`support::sim`), on tokio's paused clock, every reconcile is watched: at
//! least one node serves throughout, and the operator's own departures (rollout picks and
//! moves) never take more than `maxUnavailable` out beside the requested drain.

mod support;

use std::{sync::Arc, time::Duration};

use omero_operator::{
    api::{DrainReason, NodePhase},
    controller::Context,
    request::{DRAIN_ANNOTATION, PAUSE_ANNOTATION},
};
use support::{sim::Sim, *};

type SimCtx = Arc<Context<FakeCluster, Sim>>;

/// `rw` and `ro-1`, both serving, `maxUnavailable: 1`.
const TWO_NODES: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m, maxUnavailable: 1}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-1
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
"#;

/// Both nodes serving on two Kubernetes nodes, with sessions of 2 and 5 minutes each.
async fn running() -> (Sim, SimCtx) {
    let fake = FakeCluster::new(cluster_from_yaml(TWO_NODES));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let sim = Sim::new(&fake, Duration::from_secs(90)).with_kube_nodes(&["k1", "k2"]);
    let ctx = sim.context();
    watch(&sim, &ctx, 200, |s| s.serving() == 2).await;
    for node in ["rw", "ro-1"] {
        for minutes in [2, 5] {
            sim.open_sessions(node, 1, Duration::from_secs(60 * minutes));
        }
    }
    (sim, ctx)
}

/// What was seen over a run.
#[derive(Debug)]
struct Seen {
    /// Fewest pods the entry Service could send new sessions to.
    fewest_serving: usize,
    /// Most nodes out of service at once for the operator's own reasons (not a requested drain).
    most_out_automatically: usize,
}

/// Reconciles (after each requeue, at least every 5 s), playing the kubelet, for `steps`
/// reconciles or until `done`.
async fn watch(sim: &Sim, ctx: &SimCtx, steps: usize, done: impl Fn(&Sim) -> bool) -> Seen {
    let mut seen = Seen { fewest_serving: usize::MAX, most_out_automatically: 0 };
    for _ in 0..steps {
        sim.kubelet();
        let requeue = reconcile_once(&sim.fake, ctx).await.expect("a reconcile");
        seen.fewest_serving = seen.fewest_serving.min(sim.serving());
        let automatic = sim
            .fake
            .status()
            .nodes
            .iter()
            .filter(|n| n.phase != NodePhase::Serving && n.drain_reason != Some(DrainReason::Requested))
            .count();
        seen.most_out_automatically = seen.most_out_automatically.max(automatic);
        if done(sim) {
            break;
        }
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
    }
    seen
}

fn phase(sim: &Sim, node: &str) -> NodePhase {
    sim.fake.status().node(node).unwrap().phase
}

/// `rw` drained on request (a person asked, so it goes first), `ro-1` still serving, its
/// rollout waiting rather than taking the last serving node.
fn settled(sim: &Sim) {
    assert_eq!(phase(sim, "rw"), NodePhase::Drained, "{:#?}", sim.fake.status());
    assert_eq!(phase(sim, "ro-1"), NodePhase::Serving, "{:#?}", sim.fake.status());
    let rollout = sim.fake.status().rollout.unwrap();
    assert_eq!(rollout.pending, ["ro-1"], "{rollout:?}");
    assert!(rollout.waiting.is_some(), "says why ro-1 waits: {rollout:?}");
}

#[tokio::test(start_paused = true)]
async fn one_edit_with_a_new_image_and_a_drain_of_rw_keeps_a_node_serving() {
    let (sim, ctx) = running().await;
    sim.fake.edit(|c| {
        c.spec.image = "openmicroscopy/omero-server:5.6.17".into();
        c.metadata.annotations.get_or_insert_default().insert(DRAIN_ANNOTATION.into(), "rw".into());
    });
    let seen = watch(&sim, &ctx, 600, |_| false).await;
    assert!(seen.fewest_serving >= 1, "{seen:?}");
    assert!(seen.most_out_automatically <= 1, "{seen:?}");
    settled(&sim);
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_ends_with_a_drain_and_a_new_image_queued_keeps_a_node_serving() {
    let (sim, ctx) = running().await;
    sim.fake.set_annotation(PAUSE_ANNOTATION, Some("true"));
    watch(&sim, &ctx, 5, |_| false).await;
    sim.fake.edit(|c| {
        c.spec.image = "openmicroscopy/omero-server:5.6.17".into();
        c.metadata.annotations.get_or_insert_default().insert(DRAIN_ANNOTATION.into(), "rw".into());
    });
    let paused = watch(&sim, &ctx, 20, |_| false).await;
    assert_eq!(paused.fewest_serving, 2, "nothing moves while paused: {paused:?}");
    sim.fake.set_annotation(PAUSE_ANNOTATION, None);
    let seen = watch(&sim, &ctx, 600, |_| false).await;
    assert!(seen.fewest_serving >= 1, "{seen:?}");
    assert!(seen.most_out_automatically <= 1, "{seen:?}");
    settled(&sim);
}

#[tokio::test(start_paused = true)]
async fn a_cordon_and_a_drain_of_the_other_node_keep_a_node_serving() {
    let (sim, ctx) = running().await;
    let host = sim.host_of("ro-1").unwrap();
    if sim.host_of("rw").as_deref() == Some(host.as_str()) {
        // Both on one Kubernetes node: the cordon alone would move both, one at a time.
        panic!("the simulated scheduler placed both nodes on {host}; this test needs them apart");
    }
    sim.cordon(&host, true);
    sim.fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    let seen = watch(&sim, &ctx, 600, |_| false).await;
    assert!(seen.fewest_serving >= 1, "{seen:?}");
    assert!(seen.most_out_automatically <= 1, "{seen:?}");
    assert_eq!(phase(&sim, "rw"), NodePhase::Drained);
    assert_eq!(
        phase(&sim, "ro-1"),
        NodePhase::Serving,
        "it waits on its cordoned node: {:#?}",
        sim.fake.status()
    );
    assert_eq!(sim.host_of("ro-1").as_deref(), Some(host.as_str()), "not moved: it is the last serving node");
}

/// The only node, on a cordoned Kubernetes node, asked to drain without force: refused once
/// (one `DrainRefused` over 20 reconciles), the refusal first in its status message (what
/// `kubectl omero drain --wait` reads to exit 1), the maintenance wait after it (one Event).
#[tokio::test(start_paused = true)]
async fn a_refused_drain_of_the_last_node_on_a_cordoned_host_is_said_once_and_stays_in_status() {
    let one_node = TWO_NODES.split("  - name: ro-1").next().unwrap();
    let fake = FakeCluster::new(cluster_from_yaml(one_node));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let sim = Sim::new(&fake, Duration::from_secs(90)).with_kube_nodes(&["k1", "k2"]);
    let ctx = sim.context();
    watch(&sim, &ctx, 200, |s| s.serving() == 1).await;
    sim.fake.state().events.clear();
    sim.cordon(&sim.host_of("rw").unwrap(), true);
    sim.fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    let count = std::cell::Cell::new(0);
    let seen = watch(&sim, &ctx, 20, |_| {
        count.set(count.get() + 1);
        false
    })
    .await;
    assert_eq!(count.get(), 20);
    assert_eq!(seen.fewest_serving, 1);
    let reasons = sim.fake.event_reasons();
    assert_eq!(reasons.iter().filter(|r| *r == "DrainRefused").count(), 1, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "MaintenanceWaiting").count(), 1, "{reasons:?}");
    let message = sim.fake.status().node("rw").unwrap().message.clone().unwrap();
    assert!(message.starts_with("drain refused: it is the last serving node"), "{message}");
    assert!(message.contains("waits on OMERO node rw"), "{message}");
}
