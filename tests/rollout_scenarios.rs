//! Rollouts and restarts through the port double playing a running cluster (the Deployment
//! controller, the kubelet and OMERO's sessions, `support::sim`), on tokio's paused clock:
//! node by node, each drained first, none twice, never the last serving one, and the same
//! outcome when the operator is killed after any port call or reads a stale cluster.

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use omero_operator::{
    api::{NodePhase, conditions},
    request::{ALLOW_DOWNTIME_ANNOTATION, PAUSE_ANNOTATION, RESTART_ANNOTATION},
};
use support::{
    drive::{Run, SimCtx, StepMode, drive, event_counts, nodes_in_events},
    sim::Sim,
    *,
};

fn cluster_yaml(replicas: usize) -> String {
    let mut yaml = String::from(
        r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
"#,
    );
    for i in 1..=replicas {
        yaml.push_str(&format!(
            "  - name: ro-{i}\n    readOnly: {{db: true, repo: true}}\n    sessionProbe: {{type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}}\n"
        ));
    }
    yaml
}

/// A running cluster: every node up, routable, with sessions of 2, 5 and 8 minutes each, and
/// new 3-minute sessions arriving every 5 s.
async fn running(yaml: &str) -> (Sim, SimCtx) {
    running_with(yaml, &[2, 5, 8], Duration::from_secs(180)).await
}

async fn running_with(yaml: &str, minutes: &[u64], arrivals: Duration) -> (Sim, SimCtx) {
    let fake = FakeCluster::new(cluster_from_yaml(yaml));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let mut sim = Sim::new(&fake, Duration::from_secs(90));
    sim.session_length = arrivals;
    let ctx = sim.context();
    let nodes = fake.cluster().spec.nodes.len();
    drive(&sim, &mut ctx.clone(), 200, StepMode::Plain, |s| s.serving() == nodes).await;
    for node in fake.cluster().spec.nodes.iter().map(|n| n.name.clone()) {
        for &minutes in minutes {
            sim.open_sessions(&node, 1, Duration::from_secs(60 * minutes));
        }
    }
    fake.take_writes();
    fake.state().events.clear();
    (sim, ctx)
}

/// Every node of the spec serves the spec's current revision, routable and ready (and the
/// restart asked for, if any, is in every Deployment).
fn rolled_out(sim: &Sim) -> bool {
    let cluster = sim.fake.cluster();
    let status = sim.fake.status();
    let nodes = cluster.spec.nodes.len();
    let token = cluster.metadata.annotations.as_ref().and_then(|a| a.get(RESTART_ANNOTATION)).cloned();
    let restarted = token.is_none_or(|t| {
        sim.fake
            .state()
            .deployments
            .values()
            .all(|d| omero_operator::render::restart_token_of(d) == Some(t.as_str()))
    });
    restarted
        && status.observed_generation == cluster.metadata.generation
        && status.nodes.len() == nodes
        && status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.up_to_date && n.routable && n.ready)
        && status.rollout.as_ref().is_some_and(|r| r.pending.is_empty())
        && sim.serving() == nodes
}

/// The order nodes were restarted in (from the NodeRestarting Events).
fn restart_order(fake: &FakeCluster) -> Vec<String> {
    fake.state()
        .events
        .iter()
        .filter(|e| e.reason == "NodeRestarting")
        .map(|e| e.note.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

fn restarts(sim: &Sim) -> BTreeMap<String, u32> {
    sim.world().restarts.clone()
}

async fn rolling_restart(replicas: usize) -> (Sim, Run) {
    let (sim, mut ctx) = running(&cluster_yaml(replicas)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("2026-11-30T10:00:00Z"));
    let run = drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    (sim, run)
}

#[tokio::test(start_paused = true)]
async fn progress_reads_as_a_sentence() {
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("t1"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| {
        s.fake.status().node("ro-2").is_some_and(|n| n.phase == NodePhase::Draining && n.sessions.is_some())
    })
    .await;
    let status = sim.fake.status();
    let progressing = status.condition(conditions::PROGRESSING).unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "RollingOut"));
    assert!(
        progressing.message.starts_with(
            "rolling out (1 of 3 up to date): draining ro-2 to restart it: waiting for sessions: "
        ),
        "{}",
        progressing.message
    );
    assert!(progressing.message.contains(" left, deadline 2026-11-25T"), "{}", progressing.message);
    let rollout = status.rollout.unwrap();
    assert_eq!(rollout.pending, ["ro-2", "rw"]);
    assert_eq!(rollout.up_to_date_nodes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_restart_of_3_nodes_goes_node_by_node_read_only_first_and_kills_no_session() {
    let (sim, run) = rolling_restart(2).await;
    assert_eq!(restart_order(&sim.fake), ["ro-1", "ro-2", "rw"]);
    assert_eq!(restarts(&sim), BTreeMap::from([("ro-1".into(), 1), ("ro-2".into(), 1), ("rw".into(), 1)]));
    assert_eq!(sim.world().killed, 0, "no session killed");
    assert!(run.fewest_serving >= 2, "never fewer than N-1 serving: {run:?}");
    let reasons = sim.fake.event_reasons();
    for reason in ["DrainStarted", "DrainCompleted", "NodeRestarting", "NodeRestarted"] {
        assert_eq!(reasons.iter().filter(|r| *r == reason).count(), 3, "{reason}: {reasons:?}");
    }
    assert_eq!(reasons.iter().filter(|r| *r == "RolloutCompleted").count(), 1, "{reasons:?}");
    let status = sim.fake.status();
    assert_eq!(status.condition(conditions::PROGRESSING).unwrap().status, "False");
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.revision == n.target_revision && n.deployment_revision == n.target_revision)
    );

    // The same token again restarts nothing; removing it restarts nothing.
    let ctx = sim.context();
    for _ in 0..5 {
        sim.kubelet();
        reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    sim.fake.set_annotation(RESTART_ANNOTATION, None);
    for _ in 0..5 {
        sim.kubelet();
        reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(restarts(&sim).values().sum::<u32>(), 3, "carried out once");

    // A new token asks again: every node once more, in the same order.
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("2026-11-30T11:00:00Z"));
    let mut ctx = sim.context();
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restarts(&sim), BTreeMap::from([("ro-1".into(), 2), ("ro-2".into(), 2), ("rw".into(), 2)]));
    assert_eq!(restart_order(&sim.fake), ["ro-1", "ro-2", "rw", "ro-1", "ro-2", "rw"]);
    assert_eq!(sim.world().killed, 0);
}

/// The issue's measure, printed: `cargo test --test rollout_scenarios -- --nocapture`.
#[tokio::test(start_paused = true)]
async fn a_rolling_restart_of_5_nodes_measured() {
    let (sim, run) = rolling_restart(4).await;
    assert_eq!(restart_order(&sim.fake), ["ro-1", "ro-2", "ro-3", "ro-4", "rw"]);
    assert!(restarts(&sim).values().all(|n| *n == 1) && restarts(&sim).len() == 5, "{:?}", restarts(&sim));
    let killed = sim.world().killed;
    let writes = sim.fake.writes();
    let by_kind = |f: &dyn Fn(&Write) -> bool| writes.iter().filter(|w| f(w)).count();
    println!(
        "rolling restart of 5 nodes: sessions killed {killed}; fewest serving {}; API writes {} \
         (status {}, deployment applies {}, label patches {}, events {}); {} reconciles; {:?} on the paused clock",
        run.fewest_serving,
        writes.len(),
        by_kind(&|w| matches!(w, Write::Status)),
        by_kind(&|w| matches!(w, Write::ApplyDeployment(_))),
        by_kind(&|w| matches!(w, Write::Label { .. })),
        by_kind(&|w| matches!(w, Write::Event(_))),
        run.steps,
        run.elapsed,
    );
    assert_eq!(killed, 0);
    assert!(run.fewest_serving >= 4, "{run:?}");
    assert_eq!(by_kind(&|w| matches!(w, Write::ApplyDeployment(_))), 5, "one apply per node");
}

#[tokio::test(start_paused = true)]
async fn an_image_change_rolls_out_the_same_way() {
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    // The change reaches no serving node at once.
    reconcile_once(&sim.fake, &ctx).await.unwrap();
    assert!(!sim.fake.writes().iter().any(|w| matches!(w, Write::ApplyDeployment(_))));
    let run = drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restart_order(&sim.fake), ["ro-1", "ro-2", "rw"]);
    assert_eq!(sim.world().killed, 0);
    assert!(run.fewest_serving >= 2, "{run:?}");
    let state = sim.fake.state();
    assert!(state.pods.values().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
        == Some("openmicroscopy/omero-server:5.6.17")));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_becomes_ready_stops_the_rollout_and_a_fixed_spec_resumes_it() {
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.edit(|c| c.spec.drain.get_or_insert_default().ready_timeout = Some("10m".parse().unwrap()));
    drive(&sim, &mut ctx, 50, StepMode::Plain, rolled_out).await;
    sim.fake.state().events.clear();
    // A bad image: its pods never become ready.
    let broken = Sim { ready_after: Duration::from_secs(1_000_000), ..sim.clone() };
    broken.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:broken".into());
    drive(&broken, &mut ctx, 2_000, StepMode::Plain, |s| {
        s.fake.status().node("ro-1").is_some_and(|n| n.phase == NodePhase::Failed)
    })
    .await;
    // Nothing else moves; the others keep serving.
    for _ in 0..40 {
        broken.kubelet();
        reconcile_once(&broken.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    let status = sim.fake.status();
    assert_eq!(status.node("ro-2").unwrap().phase, NodePhase::Serving);
    assert_eq!(status.node("rw").unwrap().phase, NodePhase::Serving);
    assert_eq!(restart_order(&sim.fake), ["ro-1"]);
    assert_eq!(sim.serving(), 2);
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("ro-1"), "{}", degraded.message);
    assert!(sim.fake.event_reasons().contains(&"NodeRestartFailed".to_string()));
    assert!(status.rollout.as_ref().unwrap().waiting.as_deref().unwrap().contains("ro-1 has failed"));

    // A corrected spec: the failed node gets it at once, and the rollout goes on.
    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(sim.world().killed, 0);
}

#[tokio::test(start_paused = true)]
async fn pause_stops_every_change_and_resume_goes_on_where_it_stopped() {
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("t1"));
    drive(&sim, &mut ctx, 2_000, StepMode::Plain, |s| {
        s.fake.status().node("ro-1").is_some_and(|n| n.phase == NodePhase::Draining)
    })
    .await;
    sim.fake.set_annotation(PAUSE_ANNOTATION, Some("true"));
    sim.fake.take_writes();
    for _ in 0..200 {
        sim.kubelet();
        reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    let writes = sim.fake.take_writes();
    assert!(
        writes.iter().all(|w| matches!(w, Write::Status | Write::Event(_))),
        "only status while paused: {writes:?}"
    );
    let status = sim.fake.status();
    assert_eq!(status.node("ro-1").unwrap().phase, NodePhase::Draining, "no drain step while paused");
    assert_eq!(status.condition(conditions::PROGRESSING).unwrap().reason, "RollingOut");
    assert!(status.rollout.as_ref().unwrap().paused);

    sim.fake.set_annotation(PAUSE_ANNOTATION, None);
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restarts(&sim).values().sum::<u32>(), 3);
    assert_eq!(sim.world().killed, 0);
}

/// `kubectl omero restart ro-2` while a restart of every node is under way (ro-1 draining for
/// it) writes `"t1;ro-2@t2"`: the nodes still to do keep their restart, ro-1 is not undrained,
/// and every node restarts exactly once.
#[tokio::test(start_paused = true)]
async fn a_restart_of_one_node_during_a_restart_of_all_keeps_the_others() {
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("t1"));
    drive(&sim, &mut ctx, 2_000, StepMode::Plain, |s| {
        s.fake.status().node("ro-1").is_some_and(|n| n.phase == NodePhase::Draining)
    })
    .await;
    let value = omero_operator::request::add_restart(Some("t1"), &["ro-2".to_string()], "t2");
    sim.fake.set_annotation(RESTART_ANNOTATION, Some(&value));
    reconcile_once(&sim.fake, &ctx).await.unwrap();
    assert_eq!(
        sim.fake.status().node("ro-1").unwrap().phase,
        NodePhase::Draining,
        "ro-1 still drains for t1"
    );
    let done = |s: &Sim| {
        let state = s.fake.state();
        let token = |node: &str| {
            omero_operator::render::restart_token_of(&state.deployments[&format!("omero-{node}")])
                .map(String::from)
        };
        token("rw").as_deref() == Some("t1")
            && token("ro-1").as_deref() == Some("t1")
            && token("ro-2").as_deref() == Some("t2")
    };
    let settled = |s: &Sim| {
        let status = s.fake.status();
        status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.up_to_date && n.routable)
            && status.rollout.as_ref().is_some_and(|r| r.pending.is_empty())
            && s.serving() == 3
    };
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| done(s) && settled(s)).await;
    assert_eq!(restarts(&sim), BTreeMap::from([("ro-1".into(), 1), ("ro-2".into(), 1), ("rw".into(), 1)]));
    assert!(!sim.fake.event_reasons().contains(&"Undrained".to_string()), "{:?}", sim.fake.event_reasons());
    assert_eq!(sim.world().killed, 0);
}

/// `kubectl omero restart --allow-downtime` on a single node consents to that restart only: the
/// node restarts (drained first), and a later image change waits for consent again.
#[tokio::test(start_paused = true)]
async fn consent_given_for_a_restart_lapses_when_it_ends() {
    let (sim, mut ctx) = running(&cluster_yaml(0)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("t1"));
    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, Some("t1"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restarts(&sim), BTreeMap::from([("rw".into(), 1)]));
    assert!(sim.fake.status().condition(conditions::DEGRADED).is_none_or(|c| c.status == "False"));

    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    for _ in 0..20 {
        sim.kubelet();
        reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(restarts(&sim), BTreeMap::from([("rw".into(), 1)]), "the image change asks again");
    let progressing = sim.fake.status().condition(conditions::PROGRESSING).cloned().unwrap();
    assert_eq!(progressing.reason, "RolloutWaiting", "{progressing:?}");
    assert!(progressing.message.contains(ALLOW_DOWNTIME_ANNOTATION), "{}", progressing.message);
}

/// The Deployment controller stops a node's old pod before its new one starts, and the old pod
/// lingers as Terminating meanwhile (`support::sim`, as the API server shows it): the node is
/// restarting, not serving, and the old pod is never routable or taken for the new one.
#[tokio::test(start_paused = true)]
async fn a_terminating_pod_beside_a_restart_is_never_taken_for_the_new_one() {
    let (sim, mut ctx) = running(&cluster_yaml(1)).await;
    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    let terminating = |s: &Sim| {
        s.fake.state().pods.values().find(|p| p.metadata.deletion_timestamp.is_some()).map(|p| {
            let node = p.metadata.labels.as_ref().unwrap()[omero_operator::api::keys::NODE_LABEL].clone();
            (node, p.metadata.name.clone().unwrap())
        })
    };
    drive(&sim, &mut ctx, 2_000, StepMode::Plain, |s| terminating(s).is_some()).await;
    let (node, pod) = terminating(&sim).unwrap();
    reconcile_once(&sim.fake, &ctx).await.unwrap();
    let status = sim.fake.status();
    let restarting = status.node(&node).unwrap();
    assert_eq!(restarting.phase, NodePhase::Restarting, "{restarting:?}");
    assert!(!restarting.ready && !restarting.routable, "{restarting:?}");
    let routable = sim.fake.state().pods[&pod]
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(omero_operator::api::keys::ROUTABLE_LABEL).is_some_and(|v| v == "true"));
    assert!(!routable, "the terminating pod {pod} gets no new sessions");
    let run = drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert!(run.fewest_serving >= 1, "{run:?}");
    assert!(restarts(&sim).values().all(|n| *n == 1), "{:?}", restarts(&sim));
}

#[tokio::test(start_paused = true)]
async fn a_single_node_waits_for_consent_and_says_why_once() {
    let yaml = cluster_yaml(0);
    let (sim, mut ctx) = running(&yaml).await;
    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    for _ in 0..20 {
        sim.kubelet();
        reconcile_once(&sim.fake, &ctx).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(restarts(&sim).len(), 0, "nothing restarted");
    let status = sim.fake.status();
    let progressing = status.condition(conditions::PROGRESSING).unwrap();
    assert_eq!(progressing.reason, "RolloutWaiting");
    assert!(
        progressing.message.contains("last serving node")
            && progressing.message.contains(ALLOW_DOWNTIME_ANNOTATION),
        "{}",
        progressing.message
    );
    assert_eq!(sim.fake.event_reasons().iter().filter(|r| *r == "RolloutWaiting").count(), 1);

    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, Some("true"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restarts(&sim), BTreeMap::from([("rw".into(), 1)]));
    assert_eq!(sim.world().killed, 0, "drained first, even with consent");
}

#[tokio::test(start_paused = true)]
async fn a_grid_rollout_restarts_workers_and_the_master_waits_for_consent() {
    let yaml = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  topology: Grid
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m}
  nodes:
  - {name: master, master: true, sessionProbe: {type: Database, interval: 10s}}
  - {name: w1, sessionProbe: {type: Database, interval: 10s}}
  - {name: w2, sessionProbe: {type: Database, interval: 10s}}
"#;
    let (sim, mut ctx) = running(yaml).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("t1"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| {
        let status = s.fake.status();
        status.rollout.as_ref().and_then(|r| r.waiting.as_ref()).is_some_and(|w| w.contains("grid master"))
    })
    .await;
    assert_eq!(restart_order(&sim.fake), ["w1", "w2"]);
    assert!(sim.fake.event_reasons().contains(&"RolloutWaiting".to_string()));
    assert_eq!(sim.fake.node("master").phase, NodePhase::Serving);

    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, Some("true"));
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    assert_eq!(restart_order(&sim.fake), ["w1", "w2", "master"]);

    // A new worker changes the master's node descriptors: the worker is created at once, the
    // master's restart waits for consent again.
    sim.fake.set_annotation(ALLOW_DOWNTIME_ANNOTATION, None);
    sim.fake.state().events.clear();
    sim.fake.edit(|c| {
        let mut w3 = c.spec.nodes[1].clone();
        w3.name = "w3".into();
        c.spec.nodes.push(w3);
    });
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, |s| {
        let status = s.fake.status();
        s.pod_of("w3").is_some()
            && status
                .rollout
                .as_ref()
                .and_then(|r| r.waiting.as_ref())
                .is_some_and(|w| w.contains("grid master"))
    })
    .await;
    let master = sim.fake.node("master");
    assert_eq!(master.phase, NodePhase::Serving);
    assert!(!master.up_to_date, "its new descriptors wait");
    assert_eq!(restarts(&sim).get("master"), Some(&1), "not restarted again without consent");
    assert!(sim.fake.event_reasons().contains(&"RolloutWaiting".to_string()));
}

/// Kill anywhere: the operator stopped after every single port call of a rollout, restarted
/// from what the API server holds, ends as an uninterrupted run does: each node restarted
/// exactly once, none left unroutable, no Event twice (an Event can be lost when the kill falls
/// between a status write and its publication: at most once).
#[tokio::test(start_paused = true)]
async fn killed_after_any_port_call_the_rollout_ends_the_same() {
    // Short sessions keep each of the hundreds of runs short; the rules are the same.
    let yaml = cluster_yaml(2);
    let world = || running_with(&yaml, &[1], Duration::from_secs(20));
    let (baseline_sim, baseline_run) = {
        let (sim, mut ctx) = world().await;
        sim.fake.state().calls = 0;
        sim.fake.set_annotation(RESTART_ANNOTATION, Some("2026-11-30T10:00:00Z"));
        let run = drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
        (sim, run)
    };
    let baseline_events = event_counts(&baseline_sim.fake);
    // Every port call of the uninterrupted rollout is a place to be killed.
    let calls = baseline_sim.fake.state().calls;
    assert!(calls > 20, "{calls} port calls");
    let mut killed_runs = 0;
    for (kill_at, mode) in (1..=calls).flat_map(|k| [(k, StepMode::Plain), (k, StepMode::LaggingCache)]) {
        let (sim, mut ctx) = world().await;
        {
            let mut state = sim.fake.state();
            state.calls = 0;
            state.crash_after = Some(kill_at);
        }
        sim.fake.set_annotation(RESTART_ANNOTATION, Some("2026-11-30T10:00:00Z"));
        let run = drive(&sim, &mut ctx, 5_000, mode, rolled_out).await;
        killed_runs += run.kills;
        // A kill after the run's very last call has nothing left to interrupt.
        assert!(run.kills == 1 || sim.fake.state().calls <= kill_at, "killed after call {kill_at}: {run:?}");
        assert_eq!(
            restarts(&sim),
            BTreeMap::from([("ro-1".into(), 1), ("ro-2".into(), 1), ("rw".into(), 1)]),
            "killed after call {kill_at}"
        );
        assert_eq!(sim.world().killed, 0, "killed after call {kill_at}");
        assert!(run.fewest_serving >= 2, "killed after call {kill_at}: {run:?}");
        for (key, n) in event_counts(&sim.fake) {
            assert!(
                n <= *baseline_events.get(&key).unwrap_or(&0),
                "killed after call {kill_at}: {key:?} published {n} times"
            );
        }
    }
    println!(
        "killed after each of {calls} port calls, with fresh and with lagging caches: {killed_runs} runs interrupted"
    );
    assert!(killed_runs + 10 >= 2 * calls, "{killed_runs} of {} runs interrupted", 2 * calls);
    assert!(baseline_run.fewest_serving >= 2);
}

/// A 3-node rolling restart driven in `mode` ends as the uninterrupted run does: each node
/// restarted once, no session killed, never fewer than N-1 serving, exactly the same Events.
async fn ends_as_the_baseline(mode: StepMode) -> Sim {
    let (baseline_sim, _) = rolling_restart(2).await;
    let baseline_events = event_counts(&baseline_sim.fake);
    let (sim, mut ctx) = running(&cluster_yaml(2)).await;
    sim.fake.set_annotation(RESTART_ANNOTATION, Some("2026-11-30T10:00:00Z"));
    let run = drive(&sim, &mut ctx, 10_000, mode, rolled_out).await;
    assert_eq!(restarts(&sim), BTreeMap::from([("ro-1".into(), 1), ("ro-2".into(), 1), ("rw".into(), 1)]));
    assert_eq!(sim.world().killed, 0);
    assert!(run.fewest_serving >= 2, "{run:?}");
    assert_eq!(event_counts(&sim.fake), baseline_events, "one Event per transition");
    sim
}

/// Lagging caches: every reconcile reads the Deployments, Services and Pods of one step earlier.
#[tokio::test(start_paused = true)]
async fn lagging_caches_change_nothing_in_the_outcome() {
    ends_as_the_baseline(StepMode::LaggingCache).await;
}

/// Stale reads: every other reconcile starts from the cluster as it was before the operator's
/// own last status write; those are refused at the status write.
#[tokio::test(start_paused = true)]
async fn stale_reads_change_nothing_in_the_outcome() {
    let sim = ends_as_the_baseline(StepMode::Stale).await;
    assert!(sim.fake.state().stale_writes > 0, "the stale copies were refused at the status write");
}

/// Writes of a rollout, by kind.
fn writes_by_kind(writes: &[Write]) -> String {
    let count = |f: &dyn Fn(&Write) -> bool| writes.iter().filter(|w| f(w)).count();
    format!(
        "{} (status {}, Deployment {}, budget {}, label {}, Event {})",
        writes.len(),
        count(&|w| matches!(w, Write::Status)),
        count(&|w| matches!(w, Write::ApplyDeployment(_))),
        count(&|w| matches!(w, Write::ApplyBudget(_))),
        count(&|w| matches!(w, Write::Label { .. })),
        count(&|w| matches!(w, Write::Event(_))),
    )
}

/// A rollout writes the transitions a reader needs, not every probe: a new image on a 3-node
/// cluster with no open sessions (each node drains at its second zero count, restarts and
/// serves again) takes at most 30 writes to objects and status. Printed with `-- --nocapture`, with the same
/// rollout under load (sessions ending on their own, new ones arriving), where every changed
/// count of a draining or serving node is one more status write.
#[tokio::test(start_paused = true)]
async fn an_image_rollout_of_3_nodes_writes_its_transitions_not_its_probes() {
    let (sim, mut ctx) = running_with(&cluster_yaml(2), &[], Duration::ZERO).await;
    sim.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    drive(&sim, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    let idle = sim.fake.take_writes();
    println!("image rollout of 3 idle nodes: API writes {}", writes_by_kind(&idle));
    assert_eq!(sim.world().killed, 0);
    assert_eq!(restarts(&sim).values().sum::<u32>(), 3, "{:?}", restarts(&sim));
    // The writes to objects and status; Events, one per operation (a drain begun and ended,
    // a restart begun and ended, the rollout done), are announcements counted beside them.
    let writes = idle.iter().filter(|w| !matches!(w, Write::Event(_))).count();
    assert!(writes <= 30, "{}", writes_by_kind(&idle));

    let (busy, mut ctx) = running(&cluster_yaml(2)).await;
    busy.fake.edit(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into());
    let run = drive(&busy, &mut ctx, 5_000, StepMode::Plain, rolled_out).await;
    let writes = busy.fake.take_writes();
    println!(
        "image rollout of 3 busy nodes: API writes {}; {:?} on the paused clock",
        writes_by_kind(&writes),
        run.elapsed
    );
    assert_eq!(busy.world().killed, 0);
}

/// Every node of the spec is recorded Stopped, its Deployment at zero replicas and no pod left.
fn stopped(sim: &Sim) -> bool {
    let status = sim.fake.status();
    let state = sim.fake.state();
    status.nodes.iter().all(|n| n.phase == NodePhase::Stopped)
        && state.deployments.values().all(|d| d.spec.as_ref().unwrap().replicas == Some(0))
        && state.pods.all().next().is_none()
}

/// `spec.stopped: true` is a downtime asked for: every node leaves service at once (no new
/// session anywhere from the first reconcile, the last serving node included), each is scaled
/// to zero only once its own sessions have ended, and nothing else goes. `false` starts the
/// read-only nodes first and the read-write node once they serve. With stale reads and with
/// lagging caches the outcome is the same.
#[tokio::test(start_paused = true)]
async fn a_stopped_cluster_drains_every_node_at_once_scales_each_to_zero_once_drained_and_starts_read_write_last()
 {
    for mode in [StepMode::Plain, StepMode::Stale, StepMode::LaggingCache] {
        let (sim, mut ctx) = running(&cluster_yaml(2)).await;
        let objects = |sim: &Sim| {
            let state = sim.fake.state();
            (state.services.len(), state.budgets.len(), state.config_maps.len())
        };
        let before = objects(&sim);
        sim.fake.edit(|c| c.spec.stopped = true);
        omero_operator::controller::reconcile(Arc::new(sim.fake.cluster()), ctx.clone()).await.unwrap();
        sim.kubelet();
        assert_eq!(sim.serving(), 0, "no new session anywhere once the stop is recorded");
        let status = sim.fake.status();
        assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Draining), "{:#?}", status.nodes);
        assert_eq!(status.condition(conditions::PROGRESSING).unwrap().reason, "Stopping");

        let run = drive(&sim, &mut ctx, 5_000, mode, stopped).await;
        assert_eq!(sim.world().killed, 0, "a node is scaled to zero only once its sessions ended");
        // Sessions of 2, 5 and 8 minutes, and the 3-minute ones that arrived before the stop:
        // the stop takes as long as the longest, not the drain deadline (30 minutes).
        assert!(run.elapsed < Duration::from_secs(9 * 60), "{:?}", run.elapsed);
        assert_eq!(objects(&sim), before, "Services, budgets and the counter's ConfigMap are kept");
        let status = sim.fake.status();
        let ready = status.condition(conditions::READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Stopped"));
        assert_eq!(status.condition(conditions::PROGRESSING).unwrap().status, "False");
        let mut stopped_nodes = nodes_in_events(&sim.fake, "NodeStopped");
        stopped_nodes.sort();
        assert_eq!(stopped_nodes, ["ro-1", "ro-2", "rw"], "one NodeStopped per node");

        // Started again: read-only nodes first, the read-write node once they serve.
        sim.fake.state().events.clear();
        sim.fake.edit(|c| c.spec.stopped = false);
        drive(&sim, &mut ctx, 5_000, mode, |s| s.serving() == 3).await;
        assert_eq!(nodes_in_events(&sim.fake, "NodeStarting").last().map(String::as_str), Some("rw"));
        let status = sim.fake.status();
        assert!(
            status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable),
            "{:#?}",
            status.nodes
        );
        assert_eq!(status.condition(conditions::READY).unwrap().status, "True");
        // The read-write node's pod was made only once both read-only nodes' pods were ready
        // (a pod is ready `ready_after` after it is made).
        let created = |node: &str| {
            let pod = sim.pod_of(node).unwrap();
            let state = sim.fake.state();
            let pod = state.pods.all().find(|(_, name, _)| *name == pod).unwrap().2.clone();
            pod.metadata.creation_timestamp.unwrap().0
        };
        let read_only_ready = created("ro-1").max(created("ro-2")) + sim.ready_after;
        assert!(created("rw") >= read_only_ready, "rw {} before ro ready {read_only_ready}", created("rw"));
        assert_eq!(sim.world().killed, 0);
    }
}

/// Killed after any one port call of a stop (the record of a node Stopped written, its
/// Deployment not yet scaled down, or any other point), the restarted operator ends the stop
/// the same: every node stopped, no session killed, no NodeStopped twice.
#[tokio::test(start_paused = true)]
async fn a_stop_killed_anywhere_ends_the_same() {
    let mut interrupted = 0;
    for kill_at in 1..=45 {
        let (sim, mut ctx) = running(&cluster_yaml(2)).await;
        sim.fake.edit(|c| c.spec.stopped = true);
        {
            let mut state = sim.fake.state();
            state.calls = 0;
            state.crash_after = Some(kill_at);
        }
        let run = drive(&sim, &mut ctx, 5_000, StepMode::Plain, stopped).await;
        interrupted += run.kills;
        assert_eq!(sim.world().killed, 0, "killed after call {kill_at}");
        for (key, n) in event_counts(&sim.fake).into_iter().filter(|((r, _), _)| r == "NodeStopped") {
            assert_eq!(n, 1, "killed after call {kill_at}: {key:?}");
        }
    }
    assert!(interrupted >= 40, "{interrupted} of 45 runs interrupted");
}
