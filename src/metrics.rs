//! The operator's Prometheus metrics (served at `/metrics` by `crate::http`).
//!
//! Per-node and rollout figures are derived from the status a reconcile recorded (old -> next),
//! in one hook after the status write ([`Metrics::observe_status`]): the status is the
//! operator's single source of truth, so the metrics never say something it does not. Counters
//! of transitions (drains started and finished, probe failures) count what changed between the
//! two statuses; gauges are replaced whole for the cluster.
//!
//! Every metric and its labels is listed in [`METRICS`]; the README's table repeats that list
//! and a test checks both against what a reconcile produces.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, RwLock, atomic::AtomicI64},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::api::{DrainReason, NodePhase, NodeStatus, OmeroClusterStatus, conditions};

/// Every metric the operator exports, as it appears in `/metrics` (counters with their
/// `_total`, histograms by their base name), with its labels. The README lists the same.
pub const METRICS: &[(&str, &[&str])] = &[
    ("omero_operator_reconciles_total", &["result"]),
    ("omero_operator_reconcile_duration_seconds", &[]),
    ("omero_operator_node_sessions", &["namespace", "omerocluster", "node"]),
    ("omero_operator_node_phase", &["namespace", "omerocluster", "node", "phase"]),
    ("omero_operator_drains_started_total", &["namespace", "omerocluster", "reason"]),
    ("omero_operator_drains_finished_total", &["namespace", "omerocluster", "reason", "outcome"]),
    ("omero_operator_drain_duration_seconds", &["reason", "outcome"]),
    ("omero_operator_rollout_nodes", &["namespace", "omerocluster"]),
    ("omero_operator_rollout_up_to_date_nodes", &["namespace", "omerocluster"]),
    ("omero_operator_rollout_pending_nodes", &["namespace", "omerocluster"]),
    ("omero_operator_session_probe_failures_total", &["namespace", "omerocluster", "node"]),
    ("omero_operator_leader", &[]),
    ("omero_operator_cluster_condition", &["namespace", "omerocluster", "condition", "status"]),
    ("omero_operator_node_drain_deadline_timestamp_seconds", &["namespace", "omerocluster", "node"]),
    ("omero_operator_node_sessions_since_timestamp_seconds", &["namespace", "omerocluster", "node"]),
    ("omero_operator_build_info", &["version"]),
    ("omero_operator_api_requests_total", &["verb", "code"]),
    ("omero_operator_pool_sessions", &["namespace", "omerocluster"]),
    ("omero_operator_pool_nodes", &["namespace", "omerocluster", "state"]),
];

/// The metrics of [`METRICS`] that are histograms: exported as `_bucket` (with `le`), `_sum`
/// and `_count` series (what the chart's dashboard reads).
pub const HISTOGRAMS: &[&str] =
    &["omero_operator_reconcile_duration_seconds", "omero_operator_drain_duration_seconds"];

/// The conditions `cluster_condition` reports, each as true, false or unknown.
const CONDITIONS: [&str; 5] = [
    conditions::READY,
    conditions::PROGRESSING,
    conditions::DEGRADED,
    conditions::RECONCILING,
    conditions::STALLED,
];
const CONDITION_STATUSES: [&str; 3] = ["true", "false", "unknown"];

/// Every phase a node can be in, for the one-hot `node_phase` gauge.
const PHASES: [NodePhase; 8] = [
    NodePhase::Pending,
    NodePhase::Starting,
    NodePhase::Serving,
    NodePhase::Draining,
    NodePhase::Drained,
    NodePhase::Restarting,
    NodePhase::Failed,
    NodePhase::Stopped,
];
/// [`PHASES`] as `node_phase`'s `phase` label spells them.
const PHASE_NAMES: [&str; PHASES.len()] = {
    let mut names = [""; PHASES.len()];
    let mut i = 0;
    while i < PHASES.len() {
        names[i] = PHASES[i].as_str();
        i += 1;
    }
    names
};

/// A one-hot gauge: for each key, a series for every value of a fixed vocabulary, 1 for the
/// key's current value and 0 for the others. It prints what a `Family<_, Gauge>` with a series
/// per value prints, but holds one entry per key: a node's phase is one entry, not eight. With
/// 600 clusters that is 1,800 entries for `node_phase` instead of 14,400, and 3,000 for
/// `cluster_condition` instead of 9,000 (some 2 MB of series, about 100 bytes each).
#[derive(Clone)]
struct OneHot<K, L> {
    values: &'static [&'static str],
    current: Arc<RwLock<HashMap<K, &'static str>>>,
    /// A series' labels: the key's, and the value's.
    labels: fn(&K, &'static str) -> L,
}

impl<K, L> OneHot<K, L>
where
    K: std::hash::Hash + Eq,
{
    fn new(values: &'static [&'static str], labels: fn(&K, &'static str) -> L) -> Self {
        Self { values, current: Arc::default(), labels }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<K, &'static str>> {
        self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, &'static str>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `value` the key's current one (0 for every value when it is none of the vocabulary).
    fn set(&self, key: K, value: &'static str) {
        self.write().insert(key, value);
    }

    fn remove(&self, key: &K) {
        self.write().remove(key);
    }
}

impl<K, L> std::fmt::Debug for OneHot<K, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneHot").field("values", &self.values).finish_non_exhaustive()
    }
}

impl<K, L> EncodeMetric for OneHot<K, L>
where
    K: std::hash::Hash + Eq,
    L: EncodeLabelSet,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (key, current) in self.read().iter() {
            for value in self.values {
                let labels = (self.labels)(key, value);
                encoder.encode_family(&labels)?.encode_gauge(&i64::from(value == current))?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// A label value every series of one cluster repeats (its namespace, its name, a node's name):
/// one allocation that they all share. 600 clusters hold about 30,000 series; with a `String`
/// per label each, their labels alone took about 5 MB (heaptrack).
type Shared = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ClusterLabels {
    namespace: Shared,
    omerocluster: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct NodeLabels {
    namespace: Shared,
    omerocluster: Shared,
    node: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PhaseLabels {
    namespace: Shared,
    omerocluster: Shared,
    node: Shared,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PoolNodeLabels {
    namespace: Shared,
    omerocluster: Shared,
    /// `existing`, `serving` or `leaving` (see [`POOL_NODE_STATES`]).
    state: &'static str,
}

/// The states `pool_nodes` counts the read-only pool's nodes in.
const POOL_NODE_STATES: [&str; 3] = ["existing", "serving", "leaving"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ConditionLabels {
    namespace: Shared,
    omerocluster: Shared,
    condition: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    verb: String,
    code: String,
}

/// The operator's API requests, by verb and answer: a handle the client's counting layer
/// (`crate::api_client::CountRequestsLayer`) holds, sharing the registry's series.
#[derive(Clone, Debug, Default)]
pub struct ApiRequests(Family<ApiRequestLabels, Counter>);

impl ApiRequests {
    /// Counts one request: its verb (`get`, `list`, `watch`, `create`, `patch`, `update`,
    /// `delete`, `deletecollection`) and the status code answered, or `error` when none was.
    pub fn count(&self, verb: &str, code: &str) {
        self.0.get_or_create(&ApiRequestLabels { verb: verb.into(), code: code.into() }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrainLabels {
    namespace: Shared,
    omerocluster: Shared,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrainEndLabels {
    namespace: Shared,
    omerocluster: Shared,
    reason: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrainDurationLabels {
    reason: &'static str,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn drain_histogram() -> Histogram {
    // 10 s to about 11 h: drains wait for people to finish their work.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(10.0, 2.0, 13))
}

/// The registry and the metric families the operator updates.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    node_sessions: Family<NodeLabels, Gauge>,
    node_phase: OneHot<NodeLabels, PhaseLabels>,
    drains_started: Family<DrainLabels, Counter>,
    drains_finished: Family<DrainEndLabels, Counter>,
    drain_duration: HistogramFamily<DrainDurationLabels>,
    rollout_nodes: Family<ClusterLabels, Gauge>,
    rollout_up_to_date: Family<ClusterLabels, Gauge>,
    rollout_pending: Family<ClusterLabels, Gauge>,
    probe_failures: Family<NodeLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    cluster_condition: OneHot<(ClusterLabels, &'static str), ConditionLabels>,
    drain_deadline: Family<NodeLabels, Gauge>,
    sessions_since: Family<NodeLabels, Gauge>,
    pool_sessions: Family<ClusterLabels, Gauge>,
    pool_nodes: Family<PoolNodeLabels, Gauge>,
    api_requests: ApiRequests,
    /// The nodes each cluster's gauges were last set for, so a node that left is removed.
    nodes_of: Mutex<BTreeMap<ClusterLabels, BTreeSet<Shared>>>,
}

/// A reconcile's outcome, for `reconciles_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    Success,
    Error,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("omero_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of an OmeroCluster, by result (success, error)",
            reconciles.clone(),
        );
        let reconcile_duration =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, session probes and API writes included",
            reconcile_duration.clone(),
        );
        let node_sessions = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "node_sessions",
            "Open sessions of a node at its last successful session probe",
            node_sessions.clone(),
        );
        let node_phase = OneHot::new(&PHASE_NAMES, phase_labels);
        registry.register(
            "node_phase",
            "1 for the node's phase, 0 for every other phase",
            node_phase.clone(),
        );
        let drains_started = Family::<DrainLabels, Counter>::default();
        registry.register(
            "drains_started",
            "Drains started, by why (Requested, Rollout, Removal)",
            drains_started.clone(),
        );
        let drains_finished = Family::<DrainEndLabels, Counter>::default();
        registry.register(
            "drains_finished",
            "Drains that reached Drained, by why and how (sessions_ended, deadline)",
            drains_finished.clone(),
        );
        let drain_duration: HistogramFamily<DrainDurationLabels> =
            Family::new_with_constructor(drain_histogram);
        registry.register(
            "drain_duration_seconds",
            "Time from a drain's start to the node being Drained",
            drain_duration.clone(),
        );
        let rollout_nodes = Family::<ClusterLabels, Gauge>::default();
        registry.register("rollout_nodes", "Nodes of the cluster's spec", rollout_nodes.clone());
        let rollout_up_to_date = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "rollout_up_to_date_nodes",
            "Nodes whose pod runs the spec's revision",
            rollout_up_to_date.clone(),
        );
        let rollout_pending = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "rollout_pending_nodes",
            "Nodes the rollout still has to restart",
            rollout_pending.clone(),
        );
        let probe_failures = Family::<NodeLabels, Counter>::default();
        registry.register("session_probe_failures", "Session probes that failed", probe_failures.clone());
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this replica holds the leader lease and acts", leader.clone());
        let cluster_condition = OneHot::new(&CONDITION_STATUSES, condition_labels);
        registry.register(
            "cluster_condition",
            "1 for each condition's status (true, false, unknown), 0 for the others: Ready, Progressing, \
             Degraded, Reconciling, Stalled",
            cluster_condition.clone(),
        );
        let drain_deadline = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "node_drain_deadline_timestamp_seconds",
            "When a draining node's drain deadline falls (Unix time), while it drains",
            drain_deadline.clone(),
        );
        let sessions_since = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "node_sessions_since_timestamp_seconds",
            "Since when (Unix time) every probe has counted the node's current number of sessions",
            sessions_since.clone(),
        );
        let pool_sessions = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "pool_sessions",
            "Open sessions on the read-only pool's nodes, as their probes last counted them: the load \
             signal for scaling the pool (e.g. KEDA's Prometheus scaler, sessions per node)",
            pool_sessions.clone(),
        );
        let pool_nodes = Family::<PoolNodeLabels, Gauge>::default();
        registry.register(
            "pool_nodes",
            "The read-only pool's nodes: existing (the scale subresource's status replicas, draining-out \
             ones included), serving, leaving (scaled down, waiting for their sessions to end)",
            pool_nodes.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register("build_info", "1, labelled with the operator's version", build_info.clone());
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        let api_requests = ApiRequests::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API by the operator's client (the leader election's aside), \
             by verb and status code (error: no answer)",
            api_requests.0.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            node_sessions,
            node_phase,
            drains_started,
            drains_finished,
            drain_duration,
            rollout_nodes,
            rollout_up_to_date,
            rollout_pending,
            probe_failures,
            leader,
            cluster_condition,
            drain_deadline,
            sessions_since,
            pool_sessions,
            pool_nodes,
            api_requests,
            nodes_of: Mutex::default(),
        }
    }

    /// What the API client's counting layer counts into.
    pub fn api_requests(&self) -> ApiRequests {
        self.api_requests.clone()
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn reconciled(&self, result: ReconcileResult, took: Duration) {
        let result = match result {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
        };
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The hook after a reconcile recorded `next` over `old`: gauges from `next`, counters of
    /// what changed between them.
    pub fn observe_status(
        &self,
        namespace: &str,
        cluster: &str,
        old: &OmeroClusterStatus,
        next: &OmeroClusterStatus,
        now: Timestamp,
    ) {
        let mut nodes_of = self.nodes_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The label values this cluster's series already share, if it has any.
        let key = ClusterLabels { namespace: namespace.into(), omerocluster: cluster.into() };
        let (key, known) = match nodes_of.remove_entry(&key) {
            Some((key, known)) => (key, known),
            None => (key, BTreeSet::new()),
        };
        let node_key = |node: &Shared| NodeLabels {
            namespace: key.namespace.clone(),
            omerocluster: key.omerocluster.clone(),
            node: node.clone(),
        };
        let nodes: Vec<(&NodeStatus, Shared)> = next
            .nodes
            .iter()
            .map(|n| (n, known.get(n.name.as_str()).cloned().unwrap_or_else(|| n.name.as_str().into())))
            .collect();
        let now_present: BTreeSet<Shared> = nodes.iter().map(|(_, name)| name.clone()).collect();
        for gone in known.iter().filter(|n| !now_present.contains(*n)) {
            self.forget_node(&node_key(gone));
        }
        for (node, name) in &nodes {
            let labels = node_key(name);
            match node.sessions {
                Some(sessions) => {
                    self.node_sessions.get_or_create(&labels).set(sessions);
                }
                None => {
                    self.node_sessions.remove(&labels);
                }
            }
            self.node_phase.set(labels.clone(), node.phase.as_str());
            let deadline = node.drain_deadline.as_ref().filter(|_| node.phase == NodePhase::Draining);
            set_or_remove(&self.drain_deadline, &labels, deadline.map(|t| t.0.as_second()));
            set_or_remove(
                &self.sessions_since,
                &labels,
                node.sessions_since.as_ref().map(|t| t.0.as_second()),
            );
            self.count_transitions(&key, &labels, old.node(&node.name), node, now);
        }
        let rollout = next.rollout.as_ref();
        let serving_spec = next.nodes.iter().filter(|n| !n.leaving).count();
        self.rollout_nodes.get_or_create(&key).set(i64::try_from(serving_spec).unwrap_or(i64::MAX));
        self.rollout_up_to_date.get_or_create(&key).set(rollout.map_or(0, |r| i64::from(r.up_to_date_nodes)));
        self.rollout_pending
            .get_or_create(&key)
            .set(rollout.map_or(0, |r| i64::try_from(r.pending.len()).unwrap_or(i64::MAX)));
        self.observe_pool(&key, next.read_only_pool.as_ref());
        for condition in CONDITIONS {
            let status = match next.condition(condition).map(|c| c.status.as_str()) {
                Some("True") => "true",
                Some("False") => "false",
                Some("Unknown") | None => "unknown",
                // Not a condition status: 0 for all three.
                Some(_) => "",
            };
            self.cluster_condition.set((key.clone(), condition), status);
        }
        nodes_of.insert(key, now_present);
    }

    /// The pool's gauges, or none without a pool.
    fn observe_pool(&self, key: &ClusterLabels, pool: Option<&crate::api::ReadOnlyPoolStatus>) {
        let Some(pool) = pool else {
            self.forget_pool(key);
            return;
        };
        match pool.sessions {
            Some(sessions) => {
                self.pool_sessions.get_or_create(key).set(sessions);
            }
            None => {
                self.pool_sessions.remove(key);
            }
        }
        let leaving = i32::try_from(pool.leaving.len()).unwrap_or(i32::MAX);
        for (state, count) in
            POOL_NODE_STATES.into_iter().zip([pool.replicas, pool.serving_replicas, leaving])
        {
            self.pool_nodes.get_or_create(&pool_node_labels(key, state)).set(i64::from(count));
        }
    }

    fn forget_pool(&self, key: &ClusterLabels) {
        self.pool_sessions.remove(key);
        for state in POOL_NODE_STATES {
            self.pool_nodes.remove(&pool_node_labels(key, state));
        }
    }

    /// Removes every series of a cluster that no longer exists.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let key = ClusterLabels { namespace: namespace.into(), omerocluster: cluster.into() };
        let mut nodes_of = self.nodes_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for node in nodes_of.remove(&key).into_iter().flatten() {
            self.forget_node(&NodeLabels {
                namespace: key.namespace.clone(),
                omerocluster: key.omerocluster.clone(),
                node,
            });
        }
        self.rollout_nodes.remove(&key);
        self.rollout_up_to_date.remove(&key);
        self.rollout_pending.remove(&key);
        self.forget_pool(&key);
        for condition in CONDITIONS {
            self.cluster_condition.remove(&(key.clone(), condition));
        }
        for reason in DRAIN_REASONS.map(drain_reason) {
            let (namespace, omerocluster) = (key.namespace.clone(), key.omerocluster.clone());
            self.drains_started.remove(&DrainLabels { namespace, omerocluster, reason });
            for outcome in DRAIN_OUTCOMES {
                let (namespace, omerocluster) = (key.namespace.clone(), key.omerocluster.clone());
                self.drains_finished.remove(&DrainEndLabels { namespace, omerocluster, reason, outcome });
            }
        }
    }

    /// The clusters whose series are held, as (namespace, name).
    pub fn clusters(&self) -> Vec<(String, String)> {
        let nodes_of = self.nodes_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes_of.keys().map(|k| (k.namespace.to_string(), k.omerocluster.to_string())).collect()
    }

    fn forget_node(&self, labels: &NodeLabels) {
        self.node_sessions.remove(labels);
        self.drain_deadline.remove(labels);
        self.sessions_since.remove(labels);
        self.probe_failures.remove(labels);
        self.node_phase.remove(labels);
    }

    fn count_transitions(
        &self,
        cluster: &ClusterLabels,
        labels: &NodeLabels,
        old: Option<&NodeStatus>,
        next: &NodeStatus,
        now: Timestamp,
    ) {
        let reason = next.drain_reason.map_or("Requested", drain_reason);
        let started = next.drain_started_at.as_ref().map(|t| t.0);
        if started.is_some() && started != old.and_then(|o| o.drain_started_at.as_ref()).map(|t| t.0) {
            self.drains_started
                .get_or_create(&DrainLabels {
                    namespace: cluster.namespace.clone(),
                    omerocluster: cluster.omerocluster.clone(),
                    reason,
                })
                .inc();
        }
        let was_drained = old.is_some_and(|o| o.phase == NodePhase::Drained);
        // A drain for the cluster's stop ends in Stopped, in the same step as it is drained.
        let stopped_now = next.phase == NodePhase::Stopped
            && next.drain_reason == Some(DrainReason::Stop)
            && old.is_some_and(|o| o.phase == NodePhase::Draining);
        if (next.phase == NodePhase::Drained && !was_drained) || stopped_now {
            let [sessions_ended, deadline] = DRAIN_OUTCOMES;
            let outcome = if next.deadline_reached { deadline } else { sessions_ended };
            self.drains_finished
                .get_or_create(&DrainEndLabels {
                    namespace: cluster.namespace.clone(),
                    omerocluster: cluster.omerocluster.clone(),
                    reason,
                    outcome,
                })
                .inc();
            if let Some(started) = started {
                let took = now.duration_since(started).as_secs_f64().max(0.0);
                self.drain_duration.get_or_create(&DrainDurationLabels { reason, outcome }).observe(took);
            }
        }
        // Consecutive failures in status: a rise is that many new failures; a fall to a
        // non-zero count is a reset followed by new ones.
        let before = old.map_or(0, |o| o.probe_failures);
        let new_failures = match next.probe_failures {
            n if n > before => n - before,
            n if n < before => n,
            _ => 0,
        };
        if new_failures > 0 {
            self.probe_failures.get_or_create(labels).inc_by(u64::from(new_failures));
        }
    }
}

fn pool_node_labels(cluster: &ClusterLabels, state: &'static str) -> PoolNodeLabels {
    PoolNodeLabels { namespace: cluster.namespace.clone(), omerocluster: cluster.omerocluster.clone(), state }
}

fn condition_labels(
    (cluster, condition): &(ClusterLabels, &'static str),
    status: &'static str,
) -> ConditionLabels {
    ConditionLabels {
        namespace: cluster.namespace.clone(),
        omerocluster: cluster.omerocluster.clone(),
        condition,
        status,
    }
}

/// Sets a node's gauge to `value`, or removes the series when there is none.
fn set_or_remove(family: &Family<NodeLabels, Gauge>, labels: &NodeLabels, value: Option<i64>) {
    match value {
        Some(value) => {
            family.get_or_create(labels).set(value);
        }
        None => {
            family.remove(labels);
        }
    }
}

fn phase_labels(node: &NodeLabels, phase: &'static str) -> PhaseLabels {
    PhaseLabels {
        namespace: node.namespace.clone(),
        omerocluster: node.omerocluster.clone(),
        node: node.node.clone(),
        phase,
    }
}

/// Every reason a drain has, for removing a deleted cluster's drain counters.
const DRAIN_REASONS: [DrainReason; 5] = [
    DrainReason::Requested,
    DrainReason::Rollout,
    DrainReason::Removal,
    DrainReason::Maintenance,
    DrainReason::Stop,
];

/// How a drain ends: its sessions ended, or its deadline came first.
const DRAIN_OUTCOMES: [&str; 2] = ["sessions_ended", "deadline"];

fn drain_reason(reason: DrainReason) -> &'static str {
    match reason {
        DrainReason::Requested => "Requested",
        DrainReason::Rollout => "Rollout",
        DrainReason::Removal => "Removal",
        DrainReason::Maintenance => "Maintenance",
        DrainReason::Stop => "Stop",
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::RolloutStatus;

    fn node(name: &str, phase: NodePhase) -> NodeStatus {
        NodeStatus { name: name.into(), phase, ..NodeStatus::default() }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn phases_are_named_as_the_api_spells_them() {
        for phase in PHASES {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    /// Every series of a cluster shares one copy of each of its label values.
    #[test]
    fn a_clusters_series_share_their_label_values() {
        let metrics = Metrics::new();
        let status = OmeroClusterStatus {
            nodes: vec![node("rw", NodePhase::Serving), node("ro", NodePhase::Serving)],
            ..Default::default()
        };
        let now = at("2026-01-01T00:00:00Z");
        metrics.observe_status("ns", "omero", &OmeroClusterStatus::default(), &status, now);
        metrics.observe_status("ns", "omero", &status, &status, now);
        let key = ClusterLabels { namespace: "ns".into(), omerocluster: "omero".into() };
        let (held, nodes) = {
            let nodes_of = metrics.nodes_of.lock().unwrap();
            let (k, n) = nodes_of.get_key_value(&key).unwrap();
            (k.clone(), n.clone())
        };
        let rw = nodes.get("rw").unwrap().clone();
        // The phase series' key holds the same copies of the cluster's and the node's names.
        let phases = metrics.node_phase.read();
        let (series, phase) = phases
            .get_key_value(&NodeLabels {
                namespace: "ns".into(),
                omerocluster: "omero".into(),
                node: "rw".into(),
            })
            .unwrap();
        assert_eq!(*phase, "Serving");
        assert!(Arc::ptr_eq(&series.node, &rw));
        assert!(Arc::ptr_eq(&series.omerocluster, &held.omerocluster));
        assert!(Arc::ptr_eq(&series.namespace, &held.namespace));
        // And so do the conditions' keys.
        let conditions = metrics.cluster_condition.read();
        for ((cluster, _), _) in conditions.iter() {
            assert!(Arc::ptr_eq(&cluster.omerocluster, &held.omerocluster));
        }
        assert_eq!(conditions.len(), CONDITIONS.len());
    }

    /// A one-hot gauge prints a series for every value, 1 for the current one only; a key that
    /// goes takes all its series with it.
    #[test]
    fn a_one_hot_gauge_prints_every_value_once_per_key() {
        let metrics = Metrics::new();
        let status =
            OmeroClusterStatus { nodes: vec![node("ro", NodePhase::Draining)], ..Default::default() };
        let now = at("2026-01-01T00:00:00Z");
        metrics.observe_status("ns", "omero", &OmeroClusterStatus::default(), &status, now);
        let text = metrics.encode();
        let phase_lines: Vec<&str> =
            text.lines().filter(|l| l.starts_with("omero_operator_node_phase{")).collect();
        assert_eq!(phase_lines.len(), PHASES.len(), "{text}");
        for phase in PHASE_NAMES {
            let value = if phase == "Draining" { 1 } else { 0 };
            let line = format!(
                "omero_operator_node_phase{{namespace=\"ns\",omerocluster=\"omero\",node=\"ro\",phase=\"{phase}\"}} {value}"
            );
            assert!(phase_lines.contains(&line.as_str()), "{line} not in {text}");
        }
        let condition_lines =
            text.lines().filter(|l| l.starts_with("omero_operator_cluster_condition{")).count();
        assert_eq!(condition_lines, CONDITIONS.len() * CONDITION_STATUSES.len(), "{text}");
        assert!(text.contains(
            "omero_operator_cluster_condition{namespace=\"ns\",omerocluster=\"omero\",condition=\"Ready\",status=\"unknown\"} 1"
        ));
        metrics.forget_cluster("ns", "omero");
        let text = metrics.encode();
        assert!(!text.contains("omero_operator_node_phase{"), "{text}");
        assert!(!text.contains("omero_operator_cluster_condition{"), "{text}");
    }

    #[test]
    fn a_drain_is_counted_once_when_it_starts_and_once_when_it_ends() {
        let metrics = Metrics::new();
        let serving =
            OmeroClusterStatus { nodes: vec![node("ro", NodePhase::Serving)], ..Default::default() };
        let mut draining = serving.clone();
        draining.nodes[0].phase = NodePhase::Draining;
        draining.nodes[0].drain_started_at = Some(Time(at("2026-01-01T00:00:00Z")));
        draining.nodes[0].drain_reason = Some(DrainReason::Rollout);
        draining.nodes[0].sessions = Some(3);
        let mut drained = draining.clone();
        drained.nodes[0].phase = NodePhase::Drained;
        drained.nodes[0].sessions = Some(0);
        let now = at("2026-01-01T00:10:00Z");
        metrics.observe_status("ns", "omero", &serving, &draining, now);
        metrics.observe_status("ns", "omero", &draining, &draining, now);
        metrics.observe_status("ns", "omero", &draining, &drained, now);
        metrics.observe_status("ns", "omero", &drained, &drained, now);
        let text = metrics.encode();
        assert!(
            text.contains("omero_operator_drains_started_total{namespace=\"ns\",omerocluster=\"omero\",reason=\"Rollout\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "omero_operator_drains_finished_total{namespace=\"ns\",omerocluster=\"omero\",reason=\"Rollout\",outcome=\"sessions_ended\"} 1\n"
        ));
        assert!(text.contains("omero_operator_drain_duration_seconds_sum{reason=\"Rollout\",outcome=\"sessions_ended\"} 600.0\n"), "{text}");
        let histograms: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram")).collect();
        assert_eq!(histograms, HISTOGRAMS, "HISTOGRAMS lists every histogram");
        assert!(text.contains(
            "omero_operator_node_sessions{namespace=\"ns\",omerocluster=\"omero\",node=\"ro\"} 0\n"
        ));
        assert!(text.contains(
            "omero_operator_node_phase{namespace=\"ns\",omerocluster=\"omero\",node=\"ro\",phase=\"Drained\"} 1\n"
        ));
        assert!(text.contains(
            "omero_operator_node_phase{namespace=\"ns\",omerocluster=\"omero\",node=\"ro\",phase=\"Serving\"} 0\n"
        ));
    }

    #[test]
    fn a_drain_for_the_stop_finishes_when_the_node_is_stopped() {
        let metrics = Metrics::new();
        let mut draining =
            OmeroClusterStatus { nodes: vec![node("rw", NodePhase::Draining)], ..Default::default() };
        draining.nodes[0].drain_reason = Some(DrainReason::Stop);
        draining.nodes[0].drain_started_at = Some(Time(at("2026-01-01T00:00:00Z")));
        draining.nodes[0].drain_deadline = Some(Time(at("2026-01-01T01:00:00Z")));
        let mut stopped = draining.clone();
        stopped.nodes[0].phase = NodePhase::Stopped;
        let now = at("2026-01-01T00:05:00Z");
        metrics.observe_status("ns", "c", &OmeroClusterStatus::default(), &draining, now);
        let text = metrics.encode();
        assert!(text.contains("omero_operator_node_drain_deadline_timestamp_seconds{namespace=\"ns\",omerocluster=\"c\",node=\"rw\"} 1767229200\n"), "{text}");
        metrics.observe_status("ns", "c", &draining, &stopped, now);
        metrics.observe_status("ns", "c", &stopped, &stopped, now);
        let text = metrics.encode();
        assert!(text.contains(
            "omero_operator_drains_finished_total{namespace=\"ns\",omerocluster=\"c\",reason=\"Stop\",outcome=\"sessions_ended\"} 1\n"
        ), "{text}");
        assert!(!text.contains("drain_deadline_timestamp_seconds{"), "{text}");
    }

    #[test]
    fn probe_failures_count_each_new_failure() {
        let metrics = Metrics::new();
        let mut a = OmeroClusterStatus { nodes: vec![node("rw", NodePhase::Draining)], ..Default::default() };
        let mut b = a.clone();
        b.nodes[0].probe_failures = 2;
        let now = at("2026-01-01T00:00:00Z");
        metrics.observe_status("ns", "c", &a, &b, now);
        a = b.clone();
        b.nodes[0].probe_failures = 1; // reset by a success, then one more failure
        metrics.observe_status("ns", "c", &a, &b, now);
        metrics.observe_status("ns", "c", &b, &b, now);
        let text = metrics.encode();
        assert!(
            text.contains(
                "omero_operator_session_probe_failures_total{namespace=\"ns\",omerocluster=\"c\",node=\"rw\"} 3\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_node_or_cluster_that_left_leaves_no_series() {
        let metrics = Metrics::new();
        let two = OmeroClusterStatus {
            nodes: vec![node("a", NodePhase::Serving), node("b", NodePhase::Serving)],
            rollout: Some(RolloutStatus { up_to_date_nodes: 2, ..Default::default() }),
            ..Default::default()
        };
        let mut one = two.clone();
        one.nodes.pop();
        // b drained before it left: the cluster has drain counters too.
        let mut draining = two.clone();
        draining.nodes[1].phase = NodePhase::Draining;
        draining.nodes[1].drain_reason = Some(DrainReason::Removal);
        draining.nodes[1].drain_started_at = Some(Time(at("2025-12-31T23:50:00Z")));
        let mut drained = draining.clone();
        drained.nodes[1].phase = NodePhase::Drained;
        let now = at("2026-01-01T00:00:00Z");
        metrics.observe_status("ns", "c", &OmeroClusterStatus::default(), &two, now);
        assert!(metrics.encode().contains("node=\"b\""));
        metrics.observe_status("ns", "c", &two, &draining, now);
        metrics.observe_status("ns", "c", &draining, &drained, now);
        let text = metrics.encode();
        assert!(text.contains("omero_operator_drains_started_total{namespace=\"ns\",omerocluster=\"c\",reason=\"Removal\"} 1\n"), "{text}");
        assert!(text.contains("omero_operator_drains_finished_total{namespace=\"ns\",omerocluster=\"c\",reason=\"Removal\",outcome=\"sessions_ended\"} 1\n"), "{text}");
        metrics.observe_status("ns", "c", &drained, &one, now);
        let text = metrics.encode();
        assert!(!text.contains("node=\"b\""), "{text}");
        assert!(
            text.contains("omero_operator_rollout_nodes{namespace=\"ns\",omerocluster=\"c\"} 1\n"),
            "{text}"
        );
        assert_eq!(metrics.clusters(), [("ns".to_string(), "c".to_string())]);
        metrics.forget_cluster("ns", "c");
        let text = metrics.encode();
        assert!(!text.contains("omerocluster=\"c\""), "{text}");
    }
}
