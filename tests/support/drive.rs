//! The reconcile loop as the controller runs it over a simulated cluster (`sim`), with the
//! ways a real one goes wrong: a killed operator, stale reads, lagging caches.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use omero_operator::controller::{Context, port::Children};

use super::{FakeCluster, sim::Sim};

pub type SimCtx = Arc<Context<FakeCluster, Sim>>;

/// How a run went.
#[derive(Debug, Default)]
pub struct Run {
    /// Fewest pods the entry Service could send new sessions to, at any step.
    pub fewest_serving: usize,
    pub steps: usize,
    pub elapsed: Duration,
    /// Times the operator was killed and restarted.
    pub kills: usize,
}

#[derive(Clone, Copy, PartialEq)]
pub enum StepMode {
    Plain,
    /// Every other reconcile starts from the cluster as it was before the operator's own last
    /// status write, as a lagging watch cache hands it out.
    Stale,
    /// The Deployments, Services and Pods a reconcile reads are those of one step earlier: the
    /// watch caches lag behind the API server (and behind the operator's own writes).
    LaggingCache,
}

/// Reconciles as the controller would (after each requeue, and at least every 5 s, as watch
/// events of pods would trigger), playing the kubelet and new client sessions between them,
/// until `done`. A reconcile that fails because the operator was killed restarts it: a new
/// context, from what the API server holds.
pub async fn drive(
    sim: &Sim,
    ctx: &mut SimCtx,
    max_steps: usize,
    mode: StepMode,
    done: impl Fn(&Sim) -> bool,
) -> Run {
    let start = tokio::time::Instant::now();
    let mut run = Run { fewest_serving: usize::MAX, ..Run::default() };
    let mut earlier: Option<Children> = None;
    for step in 0..max_steps {
        sim.kubelet();
        sim.new_session(sim.session_length);
        if mode == StepMode::LaggingCache {
            let mut state = sim.fake.state();
            let now = Children {
                deployments: state.deployments.values().cloned().collect(),
                services: state.services.values().cloned().collect(),
                config_maps: state.config_maps.values().cloned().collect(),
                budgets: state.budgets.values().cloned().collect(),
                pods: state.pods.values().cloned().collect(),
                kube_nodes: state.kube_nodes.as_ref().map(|n| n.values().cloned().collect()),
            };
            let lagging = earlier.replace(now.clone()).unwrap_or(now);
            state.cache = Some(lagging);
        }
        let cluster = {
            let state = sim.fake.state();
            match (mode, step % 2, state.history.last()) {
                (StepMode::Stale, 1, Some(older)) => older.clone(),
                _ => state.cluster.clone().unwrap(),
            }
        };
        let mut killed = false;
        let requeue = match omero_operator::controller::reconcile(Arc::new(cluster), ctx.clone()).await {
            Ok(requeue) => requeue,
            Err(error) => {
                let mut state = sim.fake.state();
                assert!(state.crashed, "only a killed operator fails here: {error}");
                state.crashed = false;
                state.crash_after = None;
                drop(state);
                run.kills += 1;
                killed = true;
                *ctx = sim.context();
                Duration::ZERO
            }
        };
        run.steps = step + 1;
        run.fewest_serving = run.fewest_serving.min(sim.serving());
        if !killed && done(sim) {
            run.elapsed = start.elapsed();
            sim.fake.state().cache = None;
            return run;
        }
        tokio::time::advance(requeue.clamp(Duration::from_millis(250), Duration::from_secs(5))).await;
    }
    panic!("not done after {max_steps} steps; status: {:#?}", sim.fake.status());
}

/// Events by (reason, node), for comparing runs.
pub fn event_counts(fake: &FakeCluster) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for key in event_counts_in_order(fake) {
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The nodes each Event of `reason` was about, in the order they were published.
pub fn nodes_in_events(fake: &FakeCluster, reason: &str) -> Vec<String> {
    event_counts_in_order(fake).into_iter().filter(|(r, _)| r == reason).map(|(_, node)| node).collect()
}

/// Each Event's reason and the node its note names, in the order they were published.
pub fn event_counts_in_order(fake: &FakeCluster) -> Vec<(String, String)> {
    fake.state()
        .events
        .iter()
        .map(|e| {
            let node = e
                .note
                .split("node ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("")
                .to_string();
            (e.reason.clone(), node.trim_end_matches(':').to_string())
        })
        .collect()
}
