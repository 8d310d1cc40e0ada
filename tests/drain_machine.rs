//! The node lifecycle through its public API: every drain transition and rule, the restart of
//! a node by a rollout, pausing, resumption from a status that went through the API server,
//! and property tests over random histories of requests, pods, probes and time.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration as StdDuration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use omero_operator::{
    api::{DrainReason, Duration, NodePhase, NodeStatus, OnDeadline},
    lifecycle::{
        Decision, MAX_PROBE_BACKOFF, NodeEvent, NodeInput, PodObservation, Policy, ProbeOutcome,
        ServerContainer, Serving, ZERO_CONFIRMATIONS, next_wakeup, probe_backoff, probe_due, redirect_target,
        refused, serving_probe_due, serving_state, step,
    },
    request::{DRAIN_ANNOTATION, FORCE_ANNOTATION, Request, keep_grid_master, parse},
};
use proptest::prelude::*;

const INTERVAL: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(600);
/// How long a pod's server may take to come up (and a restarted node to be ready).
const READY_TIMEOUT: Duration = Duration::from_secs(2400);
/// The revision every node runs unless a test rolls out another one.
const REVISION: &str = "r1";
const SERVER_ID: &str = "containerd://5e1f";
/// 2026-01-01T00:00:00Z: every test time is a whole number of seconds after it, as the API
/// server stores `Time` with second precision.
const BASE: i64 = 1_767_225_600;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(BASE + secs).unwrap()
}

fn time(secs: i64) -> Option<Time> {
    Some(Time(at(secs)))
}

fn secs(t: Timestamp) -> i64 {
    t.as_second() - BASE
}

/// A running pod of revision r1 created at time 0, whose OMERO server came up when it is
/// ready.
fn pod(node: &str, ready: bool, routable: bool) -> PodObservation {
    PodObservation {
        name: format!("omero-{node}-5d8f7"),
        ip: Some("10.0.0.7".into()),
        ready,
        routable,
        image: Some("openmicroscopy/omero-server:5.6".into()),
        revision: Some(REVISION.into()),
        created: Some(at(0)),
        running: true,
        server: Some(ServerContainer { id: Some(SERVER_ID.into()), restarts: 0, started: ready }),
        ..PodObservation::default()
    }
}

/// A pod that replaces the node's previous one: a new name and container, no label yet.
fn new_pod(node: &str, suffix: &str, revision: &str, created: Timestamp, ready: bool) -> PodObservation {
    PodObservation {
        name: format!("omero-{node}-{suffix}"),
        revision: Some(revision.into()),
        created: Some(created),
        server: Some(ServerContainer {
            id: Some(format!("containerd://{suffix}")),
            restarts: 0,
            started: ready,
        }),
        ..pod(node, ready, false)
    }
}

/// A readiness blip: the pod is not ready, its server still runs.
fn blip(pod: &mut Option<PodObservation>) {
    pod.as_mut().unwrap().ready = false;
}

fn server_mut(pod: &mut Option<PodObservation>) -> &mut ServerContainer {
    pod.as_mut().unwrap().server.as_mut().unwrap()
}

fn event_names(decisions: &[Decision]) -> Vec<NodeEvent> {
    decisions.iter().flat_map(|d| d.events.iter().cloned()).collect()
}

fn drain_started(node: &str, deadline: i64) -> NodeEvent {
    NodeEvent::DrainStarted { node: node.into(), deadline: at(deadline), reason: DrainReason::Requested }
}

fn drain_completed(node: &str) -> NodeEvent {
    NodeEvent::DrainCompleted { node: node.into() }
}

fn undrained(node: &str) -> NodeEvent {
    NodeEvent::Undrained { node: node.into() }
}

/// A cluster as the controller sees it between reconciles: the persisted statuses, the pods,
/// the Deployments' revisions, the annotations, the rollout planner's choice. `step` plays one
/// reconcile and carries out the label patches and Deployment writes.
struct Cluster {
    names: Vec<String>,
    statuses: Vec<Option<NodeStatus>>,
    pods: Vec<Option<PodObservation>>,
    requested: BTreeSet<String>,
    /// Chosen by the rollout planner to leave service now.
    selected: BTreeSet<String>,
    /// The revision the spec asks for.
    target: String,
    /// The revision each node's Deployment carries; `None`: no Deployment.
    deployments: Vec<Option<String>>,
    policy: Policy,
    interval: Duration,
    /// `sessionProbe.servingInterval`; `None`: serving nodes are not counted.
    serving_interval: Option<Duration>,
    /// Nodes whose drain is forced (`drain-force` naming them).
    forced: BTreeSet<String>,
    /// Nodes the maintenance planner moves, with the Kubernetes node they leave.
    moving: BTreeMap<String, String>,
    now: Timestamp,
}

impl Cluster {
    /// Fresh pods, ready but not yet labelled, their Deployments up to date, and no status:
    /// the first reconcile.
    fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(ToString::to_string).collect(),
            statuses: vec![None; names.len()],
            pods: names.iter().map(|n| Some(pod(n, true, false))).collect(),
            requested: BTreeSet::new(),
            selected: BTreeSet::new(),
            target: REVISION.into(),
            deployments: vec![Some(REVISION.into()); names.len()],
            policy: Policy {
                timeout: TIMEOUT,
                on_deadline: OnDeadline::Proceed,
                force: false,
                ready_timeout: READY_TIMEOUT,
                paused: false,
            },
            interval: INTERVAL,
            serving_interval: None,
            forced: BTreeSet::new(),
            moving: BTreeMap::new(),
            now: at(0),
        }
    }

    /// Every node ready, labelled and Serving at time 0.
    fn serving(names: &[&str]) -> Self {
        let mut cluster = Self::new(names);
        let decisions = cluster.step(&[]);
        assert!(decisions.iter().all(|d| d.status.phase == NodePhase::Serving), "{decisions:#?}");
        cluster
    }

    /// `main` and `backup` serving; `backup` started draining at time 0.
    fn draining_backup() -> Self {
        let mut cluster = Self::serving(&["main", "backup"]);
        cluster.drain(&["backup"]);
        let decisions = cluster.step(&[]);
        assert_eq!(decisions[1].status.phase, NodePhase::Draining);
        cluster
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }

    fn drain(&mut self, names: &[&str]) {
        self.requested = names.iter().map(ToString::to_string).collect();
    }

    fn advance(&mut self, secs: u64) {
        self.now += StdDuration::from_secs(secs);
    }

    fn advance_to(&mut self, t: Timestamp) {
        assert!(t >= self.now);
        self.now = t;
    }

    fn pod_mut(&mut self, name: &str) -> &mut Option<PodObservation> {
        let i = self.index(name);
        &mut self.pods[i]
    }

    fn status(&self, name: &str) -> &NodeStatus {
        self.statuses[self.index(name)].as_ref().unwrap()
    }

    fn due(&self, name: &str) -> bool {
        let i = self.index(name);
        probe_due(self.statuses[i].as_ref(), self.pods[i].as_ref(), self.now)
    }

    fn step(&mut self, probes: &[(&str, ProbeOutcome)]) -> Vec<Decision> {
        let inputs: Vec<NodeInput<'_>> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| NodeInput {
                name,
                previous: self.statuses[i].as_ref(),
                pod: self.pods[i].as_ref(),
                drain_requested: self.requested.contains(name),
                probe: probes.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()),
                probe_sample: None,
                probe_interval: self.interval,
                serving_probe_interval: self.serving_interval,
                target_revision: Some(self.target.as_str()),
                deployment_exists: self.deployments[i].is_some(),
                deployment_revision: self.deployments[i].as_deref(),
                selected: self.selected.contains(name),
                leaving: false,
                force: self.forced.contains(name),
                maintenance: self.moving.get(name).map(String::as_str),
                power: omero_operator::stopping::Power::Run,
            })
            .collect();
        let decisions = step(&inputs, &self.policy, self.now);
        assert_eq!(decisions.len(), self.names.len());
        for (i, decision) in decisions.iter().enumerate() {
            assert_eq!(decision.status.name, self.names[i]);
            if let (Some(routable), Some(pod)) = (decision.set_routable, self.pods[i].as_mut()) {
                pod.routable = routable;
            }
            // The controller writes the Deployment with the revision the status released.
            if !self.policy.paused && decision.status.deployment_revision.is_some() {
                self.deployments[i].clone_from(&decision.status.deployment_revision);
            }
            self.statuses[i] = Some(decision.status.clone());
        }
        decisions
    }

    /// One reconcile in which only `name` was probed; returns that node's decision.
    fn probe(&mut self, name: &str, outcome: ProbeOutcome) -> Decision {
        let i = self.index(name);
        assert!(self.due(name), "{name} is not due for a probe");
        self.step(&[(name, outcome)]).swap_remove(i)
    }
}

// --- request::parse -------------------------------------------------------------------------

const NODES: &[&str] = &["main", "backup", "ro-1", "ro-2"];

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(ToString::to_string).collect()
}

#[test]
fn parse_valid_list() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "backup,ro-2")]), NODES);
    assert_eq!(request, Request { drain: nodes(&["backup", "ro-2"]), ..Request::default() });
}

#[test]
fn parse_trims_whitespace_around_names_and_the_value() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "  backup ,\tro-2\n")]), NODES);
    assert_eq!(request.drain, nodes(&["backup", "ro-2"]));
    assert!(request.problems.is_empty(), "{:?}", request.problems);
}

#[test]
fn parse_a_repeated_name_drains_it_once_without_complaint() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "backup,backup")]), NODES);
    assert_eq!(request.drain, nodes(&["backup"]));
    assert!(request.problems.is_empty());
}

#[test]
fn parse_reports_empty_entries_and_keeps_the_valid_ones() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "backup,, ,ro-2")]), NODES);
    assert_eq!(request.drain, nodes(&["backup", "ro-2"]));
    assert_eq!(request.problems.len(), 2, "{:?}", request.problems);
    assert!(request.problems[0].contains("entry 2 is empty"), "{}", request.problems[0]);
    assert!(request.problems[1].contains("entry 3 is empty"), "{}", request.problems[1]);
    assert!(request.problems.iter().all(|p| p.starts_with(DRAIN_ANNOTATION)));
}

#[test]
fn parse_reports_a_trailing_comma_as_an_empty_entry() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "backup,")]), NODES);
    assert_eq!(request.drain, nodes(&["backup"]));
    assert_eq!(request.problems.len(), 1);
    assert!(request.problems[0].contains("entry 2 is empty"), "{}", request.problems[0]);
}

#[test]
fn parse_reports_an_unknown_name_with_the_list_of_nodes() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "backup,ro-3")]), NODES);
    assert_eq!(request.drain, nodes(&["backup"]));
    assert_eq!(request.problems.len(), 1);
    let problem = &request.problems[0];
    assert!(problem.contains("no node named 'ro-3'"), "{problem}");
    assert!(problem.contains("main, backup, ro-1, ro-2"), "{problem}");
}

#[test]
fn parse_reports_malformed_entries() {
    for bad in ["Backup", "ro_2", "ro 2", "backup;ro-2", "\"backup\"", "ro-2/"] {
        let value = format!("main,{bad}");
        let request = parse(&annotations(&[(DRAIN_ANNOTATION, &value)]), NODES);
        assert_eq!(request.drain, nodes(&["main"]), "{bad}");
        assert_eq!(request.problems.len(), 1, "{bad}: {:?}", request.problems);
        assert!(request.problems[0].contains("is not a node name"), "{}", request.problems[0]);
        assert!(request.problems[0].contains(bad.trim()), "{}", request.problems[0]);
    }
}

#[test]
fn parse_force_true() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "main"), (FORCE_ANNOTATION, "true")]), NODES);
    assert!(request.force);
    assert!(request.problems.is_empty());
    let request = parse(&annotations(&[(FORCE_ANNOTATION, " true ")]), NODES);
    assert!(request.force, "surrounding whitespace is ignored");
}

#[test]
fn parse_force_naming_nodes_forces_only_their_requested_drains() {
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "main,ro-1"), (FORCE_ANNOTATION, "ro-1")]), NODES);
    assert!(!request.force);
    assert_eq!(request.force_nodes, nodes(&["ro-1"]));
    assert!(request.forced("ro-1") && !request.forced("main"));
    assert!(request.problems.is_empty(), "{:?}", request.problems);

    // A name not being drained is reported and forces nothing (it would force its next drain).
    let request = parse(&annotations(&[(DRAIN_ANNOTATION, "main"), (FORCE_ANNOTATION, "main, ro-2")]), NODES);
    assert_eq!(request.force_nodes, nodes(&["main"]));
    assert_eq!(request.problems.len(), 1, "{:?}", request.problems);
    assert!(request.problems[0].contains("'ro-2' is not asked to drain"), "{}", request.problems[0]);
}

#[test]
fn parse_force_false_or_empty_is_no_force_and_no_problem() {
    for value in ["false", "", "  "] {
        let request = parse(&annotations(&[(FORCE_ANNOTATION, value)]), NODES);
        assert_eq!(request, Request::default(), "{value:?}");
    }
}

#[test]
fn parse_force_garbage_is_reported_and_does_not_force() {
    for value in ["yes", "1", "True", "TRUE", "on"] {
        let request = parse(&annotations(&[(DRAIN_ANNOTATION, "main"), (FORCE_ANNOTATION, value)]), NODES);
        assert!(!request.force, "{value}");
        assert_eq!(request.drain, nodes(&["main"]), "the drain list still counts");
        assert_eq!(request.problems.len(), 1, "{value}");
        assert!(request.problems[0].starts_with(FORCE_ANNOTATION), "{}", request.problems[0]);
        assert!(request.problems[0].contains(value), "{}", request.problems[0]);
    }
}

#[test]
fn parse_without_annotations_requests_nothing() {
    assert_eq!(parse(&BTreeMap::new(), NODES), Request::default());
    let unrelated = annotations(&[("kubectl.kubernetes.io/last-applied-configuration", "{}")]);
    assert_eq!(parse(&unrelated, NODES), Request::default());
    for blank in ["", "   "] {
        assert_eq!(parse(&annotations(&[(DRAIN_ANNOTATION, blank)]), NODES), Request::default());
    }
}

// --- serving_state and the server's identity -------------------------------------------------

#[test]
fn only_the_server_container_decides_whether_a_node_serves() {
    let running = pod("main", true, true);
    let now = at(100);
    let state = |pod: &PodObservation| serving_state(Some(pod), now, READY_TIMEOUT);
    assert_eq!(serving_state(None, now, READY_TIMEOUT), Serving::NotServing("the node has no pod".into()));
    assert_eq!(state(&running), Serving::Running);
    // A readiness blip: the server came up in this container, so it may hold sessions.
    assert_eq!(state(&PodObservation { ready: false, ..running.clone() }), Serving::Running);
    // Ready but its startup probe not reported yet: ready is enough.
    let ready_only = PodObservation { server: None, ..running.clone() };
    assert_eq!(state(&ready_only), Serving::Running);
    // Not started, within the allowance since the pod was created.
    let starting = pod("main", false, false);
    assert_eq!(state(&starting), Serving::Starting);
    assert_eq!(state(&PodObservation { created: None, ..starting.clone() }), Serving::Starting);
    assert_eq!(serving_state(Some(&starting), at(2399), READY_TIMEOUT), Serving::Starting);
    let Serving::NotServing(why) = serving_state(Some(&starting), at(2400), READY_TIMEOUT) else {
        panic!("a server never ready in the allowance does not serve");
    };
    assert!(why.contains("never ready in the 40m"), "{why}");
    // A failure of the server container wins over anything else.
    let crashing = PodObservation { failure: Some("CrashLoopBackOff".into()), ..running.clone() };
    assert_eq!(state(&crashing), Serving::NotServing("CrashLoopBackOff".into()));
    let Serving::NotServing(why) = state(&PodObservation { running: false, ready: false, ..running }) else {
        panic!("a pod that is not running does not serve");
    };
    assert!(why.contains("not running"), "{why}");
}

#[test]
fn the_server_identity_changes_with_a_new_pod_container_or_restart() {
    let original = pod("main", true, true);
    assert_eq!(original.server_identity(), format!("omero-main-5d8f7/{SERVER_ID}/0"));
    let unready = PodObservation { ready: false, routable: false, ip: None, ..original.clone() };
    assert_eq!(unready.server_identity(), original.server_identity(), "a blip is the same server");
    let others = [
        PodObservation { name: "omero-main-6c2b1".into(), ..original.clone() },
        PodObservation {
            server: Some(ServerContainer {
                id: Some("containerd://9a9a".into()),
                restarts: 0,
                started: true,
            }),
            ..original.clone()
        },
        PodObservation {
            server: Some(ServerContainer { id: Some(SERVER_ID.into()), restarts: 1, started: true }),
            ..original.clone()
        },
    ];
    for other in &others {
        assert_ne!(other.server_identity(), original.server_identity(), "{other:?}");
    }
}

// --- nodes that are not asked to drain ------------------------------------------------------

#[test]
fn serving_without_request_puts_the_label_on_when_missing() {
    let mut cluster = Cluster::new(&["main"]);
    let decisions = cluster.step(&[]);
    let main = &decisions[0];
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!(main.set_routable, Some(true));
    assert!(main.status.routable && main.status.ready);
    assert!(main.events.is_empty());
    assert_eq!(main.status.pod.as_deref(), Some("omero-main-5d8f7"));
    assert_eq!(main.status.image.as_deref(), Some("openmicroscopy/omero-server:5.6"));
    assert_eq!(main.status.message, None);
    assert_eq!(main.status.revision.as_deref(), Some(REVISION));
    assert_eq!(main.status.target_revision.as_deref(), Some(REVISION));
    assert_eq!(main.status.deployment_revision.as_deref(), Some(REVISION));
    assert!(main.status.up_to_date);
}

#[test]
fn serving_without_request_leaves_a_present_label_alone() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.advance(60);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
    assert_eq!(decisions[0].set_routable, None);
    assert!(decisions[0].status.routable);
    assert!(decisions[0].events.is_empty());
}

#[test]
fn phases_follow_the_server_when_not_draining() {
    let mut cluster = Cluster::new(&["none", "starting", "failed", "failed-ready", "terminating"]);
    *cluster.pod_mut("none") = None;
    *cluster.pod_mut("starting") = Some(pod("starting", false, false));
    *cluster.pod_mut("failed") =
        Some(PodObservation { failure: Some("ImagePullBackOff".into()), ..pod("failed", false, false) });
    // A failure wins over a ready flag: the server cannot run.
    *cluster.pod_mut("failed-ready") =
        Some(PodObservation { failure: Some("CrashLoopBackOff".into()), ..pod("failed-ready", true, false) });
    *cluster.pod_mut("terminating") =
        Some(PodObservation { running: false, ..pod("terminating", false, false) });
    let decisions = cluster.step(&[]);
    let phases: Vec<_> = decisions.iter().map(|d| d.status.phase).collect();
    assert_eq!(
        phases,
        [NodePhase::Pending, NodePhase::Starting, NodePhase::Failed, NodePhase::Failed, NodePhase::Pending]
    );
    assert!(decisions.iter().all(|d| d.set_routable.is_none() && d.events.is_empty()));
    assert_eq!(decisions[0].status.pod, None);
    assert_eq!(decisions[0].status.message.as_deref(), Some("the node has no pod"));
    assert!(!decisions[1].status.ready);
    assert_eq!(decisions[1].status.message, None);
    assert_eq!(decisions[2].status.message.as_deref(), Some("ImagePullBackOff"));
    assert_eq!(decisions[3].status.message.as_deref(), Some("CrashLoopBackOff"));
    assert!(decisions[4].status.message.as_deref().unwrap().contains("not running"));

    // Starting -> Serving once ready, and the label goes on.
    let starting = cluster.pod_mut("starting").as_mut().unwrap();
    starting.ready = true;
    starting.server.as_mut().unwrap().started = true;
    cluster.advance(5);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    assert_eq!(decisions[1].set_routable, Some(true));
    assert_eq!(decisions[1].status.message, None);
}

#[test]
fn a_started_server_serves_through_a_readiness_blip() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.advance(10);
    blip(cluster.pod_mut("main"));
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert!(!main.status.ready);
    assert_eq!(main.set_routable, None, "the label stays: the Service skips an unready pod anyway");
    assert!(main.status.routable);
    assert!(main.events.is_empty());
    assert_eq!(main.status.message, None);

    // Long past the start-up allowance: a server that came up is not "never ready".
    cluster.advance(10 * 2400);
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving);

    cluster.pod_mut("main").as_mut().unwrap().ready = true;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert!(main.status.ready && main.status.routable);
    assert_eq!((main.set_routable, main.events.len()), (None, 0));
}

#[test]
fn the_label_goes_on_only_once_the_pod_is_ready() {
    let mut cluster = Cluster::new(&["main"]);
    let main_pod = cluster.pod_mut("main").as_mut().unwrap();
    main_pod.ready = false;
    main_pod.server.as_mut().unwrap().started = true;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving, "its server came up");
    assert_eq!(main.set_routable, None);
    assert!(!main.status.routable);

    cluster.advance(5);
    cluster.pod_mut("main").as_mut().unwrap().ready = true;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!(main.set_routable, Some(true));
    assert!(main.status.routable);
}

#[test]
fn a_server_never_ready_within_the_allowance_fails() {
    let mut cluster = Cluster::new(&["main"]);
    *cluster.pod_mut("main") = Some(pod("main", false, false));
    cluster.advance(2399);
    assert_eq!(cluster.step(&[])[0].status.phase, NodePhase::Starting);
    cluster.advance(1);
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Failed);
    assert!(main.status.message.as_deref().unwrap().contains("never ready"), "{:?}", main.status.message);
    assert_eq!((main.set_routable, main.events.len()), (None, 0));
}

#[test]
fn a_failed_node_stays_failed_until_its_server_runs() {
    let mut cluster = Cluster::new(&["main"]);
    *cluster.pod_mut("main") =
        Some(PodObservation { failure: Some("ImagePullBackOff".into()), ..pod("main", false, false) });
    assert_eq!(cluster.step(&[])[0].status.phase, NodePhase::Failed);

    // The image pulls and the container starts, its server not up yet: still Failed.
    cluster.advance(60);
    cluster.pod_mut("main").as_mut().unwrap().failure = None;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Failed);
    assert_eq!(main.status.message.as_deref(), Some("ImagePullBackOff"), "why it failed is kept");
    // Gone, or replaced by a pod that is not running yet: still Failed.
    *cluster.pod_mut("main") = None;
    assert_eq!(cluster.step(&[])[0].status.phase, NodePhase::Failed);
    *cluster.pod_mut("main") =
        Some(PodObservation { running: false, ..new_pod("main", "2", REVISION, at(60), false) });
    assert_eq!(cluster.step(&[])[0].status.phase, NodePhase::Failed);
    cluster.pod_mut("main").as_mut().unwrap().running = true;
    assert_eq!(cluster.step(&[])[0].status.phase, NodePhase::Failed);

    // Its server comes up: Serving, the label once the pod is ready.
    server_mut(cluster.pod_mut("main")).started = true;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!((main.set_routable, main.status.message.as_deref()), (None, None));
    cluster.pod_mut("main").as_mut().unwrap().ready = true;
    assert_eq!(cluster.step(&[])[0].set_routable, Some(true));
}

// --- starting a drain -----------------------------------------------------------------------

#[test]
fn start_drain_takes_the_label_off_and_sets_the_deadline() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.advance(10);
    cluster.drain(&["backup"]);
    let decisions = cluster.step(&[]);

    let backup = &decisions[1];
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.set_routable, Some(false));
    assert!(!backup.status.routable);
    assert!(!cluster.pods[1].as_ref().unwrap().routable);
    assert_eq!(backup.status.drain_started_at, time(10));
    assert_eq!(backup.status.drain_deadline, time(610));
    assert_eq!(backup.status.next_probe_at, time(10), "the first probe is due at once");
    assert!(!backup.status.deadline_reached);
    assert_eq!(backup.status.sessions, None);
    assert_eq!(backup.status.drain_reason, Some(DrainReason::Requested));
    assert_eq!(backup.status.drained_server, Some(format!("omero-backup-5d8f7/{SERVER_ID}/0")));
    assert_eq!(backup.events, [drain_started("backup", 610)]);
    assert!(cluster.due("backup"));

    let main = &decisions[0];
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!((main.set_routable, main.events.len()), (None, 0));
}

#[test]
fn draining_the_last_serving_node_is_refused_once() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    let main = &decisions[0];
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!(main.set_routable, None);
    assert!(cluster.pods[0].as_ref().unwrap().routable);
    assert_eq!(main.status.drain_deadline, None);
    let [NodeEvent::DrainRefused { node, reason }] = main.events.as_slice() else {
        panic!("{:?}", main.events);
    };
    assert_eq!(node, "main");
    assert!(reason.contains("last serving node"), "{reason}");
    assert!(reason.contains(FORCE_ANNOTATION), "the reason names the way out: {reason}");
    let message = main.status.message.clone().unwrap();
    assert!(message.starts_with("drain refused"), "{message}");

    // The next reconcile, same request, same status: no second event.
    for _ in 0..3 {
        cluster.advance(30);
        let decisions = cluster.step(&[]);
        assert_eq!(decisions[0].status.phase, NodePhase::Serving);
        assert!(decisions[0].events.is_empty(), "{:?}", decisions[0].events);
        assert_eq!(decisions[0].status.message.as_ref(), Some(&message));
    }

    // Withdrawn and asked again: refused again, with a new event.
    cluster.drain(&[]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.message, None);
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert!(matches!(decisions[0].events.as_slice(), [NodeEvent::DrainRefused { .. }]));
}

#[test]
fn a_forced_node_may_be_the_last_serving_one_and_ends_at_its_deadline_under_hold() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.policy.on_deadline = OnDeadline::Hold;
    cluster.drain(&["main", "backup"]);
    cluster.forced = nodes(&["backup"]);
    let decisions = cluster.step(&[]);
    // main first (spec order) takes one of two serving nodes; backup is then the last serving
    // node, and its force lets it go too.
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[1].status.phase, NodePhase::Draining);
    cluster.advance(TIMEOUT.std().as_secs());
    let decisions = cluster.step(&[("main", ProbeOutcome::Count(2)), ("backup", ProbeOutcome::Count(2))]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining, "Hold: main waits for its sessions");
    assert_eq!(decisions[1].status.phase, NodePhase::Drained, "forced: backup ends at its deadline");

    // Without force, the last serving node stays.
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.drain(&["main", "backup"]);
    cluster.forced = nodes(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[1].status.phase, NodePhase::Serving, "main's force is not backup's");
}

#[test]
fn a_node_that_is_not_ready_does_not_count_as_serving() {
    // backup starting (a new pod whose server is not up) or in a readiness blip: either way it
    // takes no new session, so main is the last node that does.
    for (change, backup_phase) in [("starting", NodePhase::Starting), ("blip", NodePhase::Serving)] {
        let mut cluster = Cluster::serving(&["main", "backup"]);
        match change {
            "starting" => {
                *cluster.pod_mut("backup") = Some(new_pod("backup", "6c2b1", REVISION, at(0), false))
            }
            _ => blip(cluster.pod_mut("backup")),
        }
        cluster.drain(&["main"]);
        let decisions = cluster.step(&[]);
        assert_eq!(decisions[0].status.phase, NodePhase::Serving, "{change}");
        assert!(matches!(decisions[0].events.as_slice(), [NodeEvent::DrainRefused { .. }]), "{change}");
        assert_eq!(decisions[1].status.phase, backup_phase, "{change}");
        assert!(!decisions[1].status.ready);

        // Once backup serves again, the refused drain goes ahead.
        let backup = cluster.pod_mut("backup").as_mut().unwrap();
        backup.ready = true;
        backup.server.as_mut().unwrap().started = true;
        cluster.advance(20);
        let decisions = cluster.step(&[]);
        assert_eq!(decisions[0].status.phase, NodePhase::Draining, "{change}");
        assert_eq!(decisions[0].events, [drain_started("main", 620)], "{change}");
        assert_eq!(decisions[0].status.drain_started_at, time(20));
        assert!(decisions[0].status.message.as_deref().is_some_and(|m| !m.contains("refused")));
        assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    }
}

#[test]
fn forced_drain_takes_the_last_serving_node() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.policy.force = true;
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[0].set_routable, Some(false));
    assert_eq!(decisions[0].events, [drain_started("main", 600)]);
}

#[test]
fn two_requested_of_two_serving_drains_the_first_and_refuses_the_second() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.drain(&["main", "backup"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    assert_eq!(decisions[1].set_routable, None);
    let events = event_names(&decisions);
    assert!(matches!(
        events.as_slice(),
        [NodeEvent::DrainStarted { node: a, .. }, NodeEvent::DrainRefused { node: b, .. }]
            if a == "main" && b == "backup"
    ));

    // It stays that way, without repeating the refusal.
    cluster.advance(5);
    let decisions = cluster.step(&[("main", ProbeOutcome::Count(1))]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    assert!(event_names(&decisions).is_empty());
}

#[test]
fn moving_the_drain_to_another_node_in_one_edit_is_not_refused() {
    // `drain: main` becomes `drain: backup`: main comes back in the same step, so backup is not
    // the last serving node.
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.drain(&["main"]);
    cluster.step(&[]);
    assert_eq!(cluster.status("main").phase, NodePhase::Draining);

    cluster.advance(30);
    cluster.drain(&["backup"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
    assert_eq!(decisions[0].set_routable, Some(true));
    assert_eq!(decisions[1].status.phase, NodePhase::Draining);
    assert_eq!(event_names(&decisions), [undrained("main"), drain_started("backup", 630)]);
}

#[test]
fn a_requested_drain_of_a_node_that_is_not_ready_is_never_refused() {
    // The only node, briefly unready or still starting: draining it takes no serving node away.
    for change in ["blip", "starting"] {
        let mut cluster = Cluster::serving(&["main"]);
        match change {
            "blip" => blip(cluster.pod_mut("main")),
            _ => *cluster.pod_mut("main") = Some(new_pod("main", "6c2b1", REVISION, at(0), false)),
        }
        cluster.advance(3);
        cluster.drain(&["main"]);
        let main = cluster.step(&[]).swap_remove(0);
        assert_eq!(main.status.phase, NodePhase::Draining, "{change}");
        assert_eq!(main.events, [drain_started("main", 603)], "{change}");
        assert!(cluster.due("main"), "{change}: its sessions are probed");
        // The blip's pod still carries the label; the new pod never had it.
        assert_eq!(main.set_routable, (change == "blip").then_some(false), "{change}");
    }

    // Two nodes asked to drain, the ready one the last serving: only it is refused.
    let mut cluster = Cluster::serving(&["main", "backup"]);
    blip(cluster.pod_mut("backup"));
    cluster.drain(&["main", "backup"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
    assert!(matches!(decisions[0].events.as_slice(), [NodeEvent::DrainRefused { .. }]));
    assert_eq!(decisions[1].status.phase, NodePhase::Draining);
    assert_eq!(decisions[1].events, [drain_started("backup", 600)]);
    assert_eq!(
        refused(&nodes(&["main", "backup"]), &cluster.statuses.iter().flatten().cloned().collect::<Vec<_>>()),
        ["main"]
    );
}

#[test]
fn a_node_that_is_not_serving_is_drained_at_once() {
    let mut cluster = Cluster::serving(&["main", "gone", "failed", "terminating", "stuck"]);
    cluster.advance(3);
    *cluster.pod_mut("gone") = None;
    cluster.pod_mut("failed").as_mut().unwrap().failure = Some("CrashLoopBackOff".into());
    let terminating = cluster.pod_mut("terminating").as_mut().unwrap();
    terminating.running = false;
    terminating.ready = false;
    // A new pod whose server never came up in the start-up allowance.
    *cluster.pod_mut("stuck") = Some(new_pod("stuck", "6c2b1", REVISION, at(3), false));
    cluster.advance(2400);
    cluster.drain(&["gone", "failed", "terminating", "stuck"]);
    let decisions = cluster.step(&[]);
    let whys = ["no pod", "CrashLoopBackOff", "not running", "never ready"];
    for (decision, why) in decisions[1..].iter().zip(whys) {
        let name = decision.status.name.as_str();
        assert_eq!(decision.status.phase, NodePhase::Drained, "{name}");
        assert_eq!(decision.events, [drain_completed(name)]);
        assert_eq!(decision.status.drain_started_at, time(2403));
        assert_eq!(decision.status.drain_deadline, None);
        assert_eq!(decision.status.next_probe_at, None);
        assert_eq!(decision.status.drain_reason, Some(DrainReason::Requested));
        let message = decision.status.message.as_deref().unwrap();
        assert!(message.starts_with("drained at once: ") && message.contains(why), "{name}: {message}");
        assert!(!cluster.due(name));
    }
    // The label comes off a pod that still carries it; a missing pod or a new one needs no patch.
    let patches: Vec<_> = decisions.iter().map(|d| d.set_routable).collect();
    assert_eq!(patches, [None, None, Some(false), Some(false), None]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
}

#[test]
fn the_only_node_is_drained_at_once_without_force_when_it_is_not_serving() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.pod_mut("main").as_mut().unwrap().failure = Some("OOMKilled".into());
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Drained);
    assert_eq!(decisions[0].events, [drain_completed("main")]);
}

// --- probes ---------------------------------------------------------------------------------

#[test]
fn open_sessions_keep_the_node_draining() {
    let mut cluster = Cluster::draining_backup();
    cluster.advance(1);
    let backup = cluster.probe("backup", ProbeOutcome::Count(3));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.status.sessions, Some(3));
    assert_eq!(backup.status.sessions_since, time(1));
    assert_eq!(backup.status.zero_session_probes, 0);
    assert_eq!(backup.status.next_probe_at, time(31));
    assert!(backup.status.message.as_deref().unwrap().ends_with("; 3 open"));
    assert_eq!((backup.set_routable, backup.events.len()), (None, 0));
    assert!(!probe_due(Some(&backup.status), cluster.pods[1].as_ref(), at(30)));
    assert!(probe_due(Some(&backup.status), cluster.pods[1].as_ref(), at(31)));
}

#[test]
fn one_zero_is_not_enough() {
    let mut cluster = Cluster::draining_backup();
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.status.zero_session_probes, 1);
    assert_eq!(backup.status.sessions, Some(0));
    assert!(backup.events.is_empty());
}

#[test]
fn two_zeros_in_a_row_complete_the_drain() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(2));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(ZERO_CONFIRMATIONS, 2);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.events, [drain_completed("backup")]);
    assert_eq!(backup.set_routable, None, "the label is already off");
    assert_eq!(backup.status.next_probe_at, None);
    assert_eq!(backup.status.sessions, Some(0));
    assert_eq!(backup.status.drain_deadline, time(600), "kept for the record");
    assert!(!backup.status.deadline_reached);
    assert_eq!(backup.status.message.as_deref(), Some("drained: no open sessions"));
    assert!(!cluster.due("backup"));
}

#[test]
fn a_failure_between_two_zeros_resets_the_confirmations() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Failed("connection refused".into()));
    assert_eq!(backup.status.zero_session_probes, 0);
    cluster.advance_to(backup.status.next_probe_at.unwrap().0);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining, "zero, failure, zero is not two zeros in a row");
    assert_eq!(backup.status.zero_session_probes, 1);
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained);
}

#[test]
fn a_session_between_two_zeros_resets_the_confirmations() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Count(1));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.status.zero_session_probes, 1);
}

#[test]
fn a_failing_probe_never_counts_as_zero_and_backs_off() {
    let mut cluster = Cluster::draining_backup();
    cluster.policy.timeout = Duration::from_secs(7200);
    // Restart the drain with the long timeout.
    cluster.drain(&[]);
    cluster.step(&[]);
    cluster.drain(&["backup"]);
    cluster.step(&[]);
    cluster.probe("backup", ProbeOutcome::Count(4));
    cluster.advance(30);

    let mut waits = Vec::new();
    for failures in 1..=8u32 {
        let backup = cluster.probe("backup", ProbeOutcome::Failed("password authentication failed".into()));
        let status = &backup.status;
        assert_eq!(status.phase, NodePhase::Draining);
        assert!(backup.events.is_empty());
        assert_eq!(status.probe_failures, failures);
        assert_eq!(status.probe_error.as_deref(), Some("password authentication failed"));
        assert_eq!(status.sessions, Some(4), "the last good count is kept");
        assert_eq!(status.zero_session_probes, 0);
        let message = status.message.as_deref().unwrap();
        // The same message at every failure: a count of them in it would be a write each.
        assert_eq!(message, "draining: session probe failing; last good count 4");
        let next = status.next_probe_at.as_ref().unwrap().0;
        assert!(!cluster.due("backup"));
        waits.push(secs(next) - secs(cluster.now));
        cluster.advance_to(next);
    }
    assert_eq!(waits, [30, 60, 120, 240, 300, 300, 300, 300]);
}

#[test]
fn a_probe_that_never_worked_reports_no_count() {
    let mut cluster = Cluster::draining_backup();
    let backup = cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    assert_eq!(backup.status.sessions, None);
    assert!(backup.status.message.as_deref().unwrap().contains("last good count none"));
}

#[test]
fn probe_backoff_doubles_and_is_capped() {
    let interval = Duration::from_secs(10);
    let waits: Vec<u64> = (0..=8).map(|f| probe_backoff(interval, f).as_millis() / 1000).collect();
    assert_eq!(waits, [10, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(probe_backoff(interval, u32::MAX), MAX_PROBE_BACKOFF);
    // An interval longer than the cap is the cap.
    let slow = Duration::from_secs(900);
    assert_eq!(probe_backoff(slow, 1), slow);
    assert_eq!(probe_backoff(slow, 5), slow);
    assert_eq!(probe_backoff(Duration::from_millis(u64::MAX), 20), Duration::from_millis(u64::MAX));
}

#[test]
fn failures_alone_never_drain_before_the_deadline() {
    let mut cluster = Cluster::draining_backup();
    loop {
        let next = cluster.status("backup").next_probe_at.as_ref().unwrap().0;
        if next >= at(600) {
            break;
        }
        cluster.advance_to(next);
        let backup = cluster.probe("backup", ProbeOutcome::Failed("no route to host".into()));
        assert_eq!(backup.status.phase, NodePhase::Draining);
    }
}

#[test]
fn a_working_probe_clears_the_error() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    cluster.advance(60);
    let backup = cluster.probe("backup", ProbeOutcome::Count(2));
    assert_eq!(backup.status.probe_error, None);
    assert_eq!(backup.status.probe_failures, 0);
    assert_eq!(backup.status.sessions, Some(2));
    assert_eq!(backup.status.next_probe_at, time(120));
    assert!(!backup.status.message.as_deref().unwrap().contains("failing"));
}

#[test]
fn without_a_probe_the_drain_waits_for_the_deadline() {
    let mut cluster = Cluster::draining_backup();
    let backup = cluster.probe("backup", ProbeOutcome::NoProbe);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.status.next_probe_at, None);
    assert!(backup.status.message.as_deref().unwrap().contains("no session probe"));
    assert_eq!(
        next_wakeup(&[cluster.status("main").clone(), backup.status.clone()], READY_TIMEOUT),
        Some(at(600))
    );

    cluster.advance(599);
    let backup = cluster.probe("backup", ProbeOutcome::NoProbe);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.events.is_empty());

    cluster.advance(1);
    let backup = cluster.probe("backup", ProbeOutcome::NoProbe);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(
        backup.events,
        [NodeEvent::DeadlineReached { node: "backup".into(), sessions: None, proceeding: true }]
    );
    assert!(backup.status.message.as_deref().unwrap().contains("unknown number of sessions"));
}

// --- the deadline ---------------------------------------------------------------------------

#[test]
fn at_the_deadline_proceed_drains_and_reports_the_open_sessions() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(9));
    cluster.advance(570);
    cluster.probe("backup", ProbeOutcome::Count(5));
    cluster.advance(29);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining, "one second before the deadline");

    cluster.advance(1);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert!(backup.status.deadline_reached);
    assert_eq!(backup.status.next_probe_at, None);
    assert_eq!(
        backup.events,
        [NodeEvent::DeadlineReached { node: "backup".into(), sessions: Some(5), proceeding: true }]
    );
    let message = backup.status.message.as_deref().unwrap();
    assert!(message.contains("5 sessions still open"), "{message}");

    cluster.advance(60);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert!(backup.events.is_empty());
}

#[test]
fn at_the_deadline_hold_keeps_draining_until_the_sessions_end() {
    let mut cluster = Cluster::draining_backup();
    cluster.policy.on_deadline = OnDeadline::Hold;
    cluster.probe("backup", ProbeOutcome::Count(5));
    cluster.advance(600);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.status.deadline_reached);
    assert_eq!(
        backup.events,
        [NodeEvent::DeadlineReached { node: "backup".into(), sessions: Some(5), proceeding: false }]
    );
    let message = backup.status.message.as_deref().unwrap();
    assert!(message.contains("5 sessions open") && message.contains("Hold"), "{message}");
    // Past the deadline only the probe wakes the node up.
    assert_eq!(next_wakeup(std::slice::from_ref(&backup.status), READY_TIMEOUT), Some(at(30)));

    let backup = cluster.probe("backup", ProbeOutcome::Count(2));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.events.is_empty(), "the deadline is reported once");
    assert!(backup.status.message.as_deref().unwrap().contains("2 sessions open"));

    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.events, [drain_completed("backup")]);
    assert_eq!(backup.status.drain_deadline, time(600));
}

#[test]
fn force_ends_a_drain_held_past_its_deadline() {
    let mut cluster = Cluster::draining_backup();
    cluster.policy.on_deadline = OnDeadline::Hold;
    cluster.probe("backup", ProbeOutcome::Count(5));
    cluster.advance(600);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining);

    cluster.advance(10);
    cluster.policy.force = true;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.events, [drain_completed("backup")], "the deadline was reported when it passed");
    assert!(backup.status.message.as_deref().unwrap().contains("5 sessions still open"));
    assert_eq!(backup.status.next_probe_at, None);
}

// --- pods and requests changing mid-drain ---------------------------------------------------

#[test]
fn a_readiness_blip_mid_drain_keeps_the_node_draining_and_probed() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(3));
    blip(cluster.pod_mut("backup"));
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining, "its server still holds its sessions");
    assert!(!backup.status.ready);
    assert_eq!((backup.set_routable, backup.events.len()), (None, 0));
    assert_eq!(backup.status.next_probe_at, time(30));
    assert!(backup.status.message.as_deref().unwrap().ends_with("; 3 open"));

    // Still probed while unready: two zeros end the drain as usual.
    cluster.advance(20);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.events, [drain_completed("backup")]);
    assert_eq!(backup.status.message.as_deref(), Some("drained: no open sessions"));

    // A failing probe on an unready server does not drain it either.
    let mut cluster = Cluster::draining_backup();
    blip(cluster.pod_mut("backup"));
    let backup = cluster.probe("backup", ProbeOutcome::Failed("connection refused".into()));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.events.is_empty());
}

#[test]
fn a_server_that_stops_serving_mid_drain_is_drained() {
    let changes = [
        ("failed", "holds no sessions"),
        ("gone", "holds no sessions"),
        ("terminating", "holds no sessions"),
        ("new pod", "its sessions are gone"),
        ("new container", "its sessions are gone"),
        ("container restarted", "its sessions are gone"),
    ];
    for (change, says) in changes {
        let mut cluster = Cluster::draining_backup();
        cluster.probe("backup", ProbeOutcome::Count(3));
        cluster.advance(10);
        let pod = cluster.pod_mut("backup");
        match change {
            "failed" => pod.as_mut().unwrap().failure = Some("OOMKilled".into()),
            "gone" => *pod = None,
            "terminating" => {
                let p = pod.as_mut().unwrap();
                p.running = false;
                p.ready = false;
            }
            // The pod replaced (evicted, deleted by hand): a new server, up and ready.
            "new pod" => *pod = Some(new_pod("backup", "6c2b1", REVISION, at(5), true)),
            // The server container replaced, not up again yet.
            "new container" => {
                pod.as_mut().unwrap().ready = false;
                *server_mut(pod) =
                    ServerContainer { id: Some("containerd://9a9a".into()), restarts: 0, started: false };
            }
            // Restarted in place (liveness probe), already up again.
            _ => server_mut(pod).restarts += 1,
        }
        let backup = cluster.step(&[]).swap_remove(1);
        assert_eq!(backup.status.phase, NodePhase::Drained, "{change}");
        assert_eq!(backup.events, [drain_completed("backup")], "{change}");
        assert_eq!(backup.status.next_probe_at, None);
        assert_eq!(backup.status.drain_deadline, time(600));
        let message = backup.status.message.as_deref().unwrap();
        assert!(message.starts_with("drained: ") && message.contains(says), "{change}: {message}");
        assert!(!cluster.due("backup"));
        // Whatever the new pod is, it is not routable while the node is drained.
        assert!(cluster.pods[1].as_ref().is_none_or(|p| !p.routable), "{change}");
    }
}

#[test]
fn undrain_mid_drain_brings_a_ready_node_back() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(5);
    cluster.drain(&[]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.set_routable, Some(true));
    assert!(backup.status.routable);
    assert_eq!(backup.events, [undrained("backup")]);
    let cleared = NodeStatus {
        name: "backup".into(),
        phase: NodePhase::Serving,
        ready: true,
        routable: true,
        image: backup.status.image.clone(),
        pod: backup.status.pod.clone(),
        revision: Some(REVISION.into()),
        target_revision: Some(REVISION.into()),
        deployment_revision: Some(REVISION.into()),
        up_to_date: true,
        ..NodeStatus::default()
    };
    assert_eq!(backup.status, cleared, "every drain field is cleared");
}

#[test]
fn undrain_of_a_node_whose_server_is_not_up_waits_for_ready_before_the_label() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(1));
    // Its server container restarts: the sessions are gone, and it is not up yet.
    let pod = cluster.pod_mut("backup");
    pod.as_mut().unwrap().ready = false;
    let server = server_mut(pod);
    server.restarts = 1;
    server.started = false;
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);

    cluster.drain(&[]);
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Starting);
    assert_eq!(backup.set_routable, None);
    assert_eq!(backup.events, [undrained("backup")]);
    assert_eq!(backup.status.drain_started_at, None);
    assert_eq!(backup.status.drained_server, None);

    // Up, not ready yet: Serving, but no label.
    server_mut(cluster.pod_mut("backup")).started = true;
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.set_routable, None);
    assert!(backup.events.is_empty());

    cluster.pod_mut("backup").as_mut().unwrap().ready = true;
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.set_routable, Some(true));
    assert!(backup.events.is_empty());
}

#[test]
fn a_drained_node_stays_drained_while_requested() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let drained = cluster.probe("backup", ProbeOutcome::Count(0)).status;
    assert_eq!(drained.phase, NodePhase::Drained);

    for _ in 0..5 {
        cluster.advance(3600);
        let backup = cluster.step(&[]).swap_remove(1);
        assert_eq!(backup.status, drained);
        assert!(backup.events.is_empty());
        assert_eq!(backup.set_routable, None);
        assert!(!cluster.due("backup"));
    }
    // Its server restarting changes nothing: it is drained already.
    server_mut(cluster.pod_mut("backup")).restarts += 1;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Drained, 0));
    // Someone puts the label back by hand: it comes off again.
    cluster.pod_mut("backup").as_mut().unwrap().routable = true;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.set_routable, Some(false));
    assert_eq!(backup.status.phase, NodePhase::Drained);

    cluster.drain(&[]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.events, [undrained("backup")]);
    assert_eq!(backup.set_routable, Some(true));
}

#[test]
fn a_draining_pod_relabelled_by_hand_loses_the_label_again() {
    let mut cluster = Cluster::draining_backup();
    cluster.pod_mut("backup").as_mut().unwrap().routable = true;
    let backup = cluster.probe("backup", ProbeOutcome::Count(2));
    assert_eq!(backup.set_routable, Some(false));
    assert!(!backup.status.routable);
}

// --- paused ---------------------------------------------------------------------------------

#[test]
fn paused_changes_no_phase_and_patches_no_label() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(3));
    let before = cluster.statuses.clone();
    cluster.policy.paused = true;
    // The drain moves to main, main loses its label, backup's deadline passes and its probe
    // says zero: nothing of it is acted on.
    cluster.drain(&["main"]);
    cluster.pod_mut("main").as_mut().unwrap().routable = false;
    cluster.advance(700);
    for _ in 0..2 {
        let decisions = cluster.step(&[("backup", ProbeOutcome::Count(0))]);
        assert!(decisions.iter().all(|d| d.set_routable.is_none() && d.events.is_empty()), "{decisions:#?}");
        let main = NodeStatus { routable: false, ..before[0].clone().unwrap() };
        assert_eq!(decisions[0].status, main, "only what was observed is refreshed");
        assert_eq!(Some(&decisions[1].status), before[1].as_ref());
        cluster.advance(30);
    }

    // Unpaused: it all catches up at once.
    cluster.policy.paused = false;
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[0].set_routable, None, "its label is off already");
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    assert_eq!(decisions[1].set_routable, Some(true));
    assert_eq!(event_names(&decisions), [drain_started("main", 1360), undrained("backup")]);
}

#[test]
fn paused_holds_a_drain_past_its_deadline_until_unpaused() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(3));
    cluster.policy.paused = true;
    cluster.advance(900);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(!backup.status.deadline_reached);
    assert!(backup.events.is_empty());

    cluster.policy.paused = false;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(
        backup.events,
        [NodeEvent::DeadlineReached { node: "backup".into(), sessions: Some(3), proceeding: true }]
    );
}

#[test]
fn paused_first_sight_records_phases_from_the_pods() {
    let mut cluster = Cluster::new(&["main", "starting", "gone", "failed"]);
    cluster.policy.paused = true;
    *cluster.pod_mut("starting") = Some(pod("starting", false, false));
    *cluster.pod_mut("gone") = None;
    cluster.pod_mut("failed").as_mut().unwrap().failure = Some("CrashLoopBackOff".into());
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    let phases: Vec<_> = decisions.iter().map(|d| d.status.phase).collect();
    assert_eq!(phases, [NodePhase::Serving, NodePhase::Starting, NodePhase::Pending, NodePhase::Failed]);
    assert!(decisions.iter().all(|d| d.set_routable.is_none() && d.events.is_empty()), "{decisions:#?}");
    assert!(decisions.iter().all(|d| d.status.drain_started_at.is_none()));
    assert!(!decisions[0].status.routable, "no label while paused");
}

// --- sessions counted while serving ----------------------------------------------------------

const SERVING_INTERVAL: Duration = Duration::from_secs(60);

#[test]
fn a_serving_node_is_counted_at_its_serving_interval_and_stays_serving() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.serving_interval = Some(SERVING_INTERVAL);
    let i = cluster.index("backup");
    let due = |c: &Cluster| {
        serving_probe_due(c.statuses[i].as_ref(), c.pods[i].as_ref(), c.serving_interval, c.now)
    };
    assert!(due(&cluster), "a serving node never counted is due at once");
    assert!(
        !serving_probe_due(cluster.statuses[i].as_ref(), cluster.pods[i].as_ref(), None, cluster.now),
        "servingInterval 0s: never"
    );
    cluster.advance(5);
    let decision = cluster.step(&[("backup", ProbeOutcome::Count(4))]).swap_remove(i);
    assert_eq!(decision.status.phase, NodePhase::Serving);
    assert!(decision.events.is_empty() && decision.set_routable.is_none(), "{decision:#?}");
    assert_eq!(decision.status.sessions, Some(4));
    assert_eq!(decision.status.sessions_since, time(5));
    assert_eq!(decision.status.next_probe_at, time(65));
    assert!(!due(&cluster));
    assert_eq!(
        next_wakeup(&cluster.statuses.iter().flatten().cloned().collect::<Vec<_>>(), READY_TIMEOUT),
        Some(at(65))
    );

    // Between counts the last one is kept; a failure is kept beside it and retried later.
    cluster.advance(10);
    cluster.step(&[]);
    assert_eq!(cluster.status("backup").sessions, Some(4));
    cluster.advance(50);
    assert!(due(&cluster));
    let failed =
        cluster.step(&[("backup", ProbeOutcome::Failed("connection refused".into()))]).swap_remove(i);
    assert_eq!(failed.status.phase, NodePhase::Serving, "a failing count never takes a node out");
    assert!(failed.status.routable);
    assert_eq!((failed.status.sessions, failed.status.probe_failures), (Some(4), 1));
    assert_eq!(failed.status.probe_error.as_deref(), Some("connection refused"));
    assert_eq!(failed.status.sessions_since, time(5), "the age of the count shows it is old");
    let second = cluster.now + probe_backoff(SERVING_INTERVAL, 1).std();
    assert_eq!(failed.status.next_probe_at, Some(Time(second)));

    // A drain starts its own count at once, from the last serving count (kept, with its age,
    // until the drain's first probe): only probes after the drain began can end it.
    cluster.advance_to(second);
    cluster.drain(&["backup"]);
    let draining = cluster.step(&[]).swap_remove(i);
    assert_eq!(draining.status.phase, NodePhase::Draining);
    assert_eq!((draining.status.sessions, draining.status.probe_error.clone()), (Some(4), None));
    assert_eq!((draining.status.sessions_since, draining.status.zero_session_probes), (time(5), 0));
    assert!(cluster.due("backup"));
}

#[test]
fn a_serving_node_is_not_counted_when_not_ready_or_out_of_service() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.serving_interval = Some(SERVING_INTERVAL);
    let i = cluster.index("backup");
    cluster.pod_mut("backup").as_mut().unwrap().ready = false;
    assert!(!serving_probe_due(
        cluster.statuses[i].as_ref(),
        cluster.pods[i].as_ref(),
        cluster.serving_interval,
        cluster.now
    ));
    let mut draining = Cluster::draining_backup();
    draining.serving_interval = Some(SERVING_INTERVAL);
    assert!(!serving_probe_due(
        draining.statuses[i].as_ref(),
        draining.pods[i].as_ref(),
        draining.serving_interval,
        draining.now
    ));
}

#[test]
fn a_serving_count_is_news_only_when_it_changes() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.serving_interval = Some(SERVING_INTERVAL);
    let i = cluster.index("backup");
    // The same count again, from the same sample or a new one, is not news: status keeps
    // the time the count was first seen, so the probe writes nothing.
    for (t, sample, count, since) in
        [(0, "s1", 2, 0), (60, "s1", 2, 0), (120, "s2", 2, 0), (180, "s3", 3, 180)]
    {
        cluster.advance_to(at(t));
        let status = cluster.statuses[i].clone();
        let pod = cluster.pods[i].clone();
        let input = NodeInput {
            name: "backup",
            previous: status.as_ref(),
            pod: pod.as_ref(),
            drain_requested: false,
            probe: Some(ProbeOutcome::Count(count)),
            probe_sample: Some(sample.into()),
            probe_interval: INTERVAL,
            serving_probe_interval: Some(SERVING_INTERVAL),
            target_revision: Some(REVISION),
            deployment_exists: true,
            deployment_revision: Some(REVISION),
            selected: false,
            leaving: false,
            force: false,
            maintenance: None,
            power: omero_operator::stopping::Power::Run,
        };
        let decision = step(std::slice::from_ref(&input), &cluster.policy, cluster.now).swap_remove(0);
        assert_eq!(decision.status.sessions_since, time(since), "at {t}s, sample {sample}");
        assert_eq!(decision.status.probe_sample.as_deref(), Some(sample));
        cluster.statuses[i] = Some(decision.status);
    }
}

// --- probe_due and next_wakeup --------------------------------------------------------------

fn status_with(phase: NodePhase, next_probe: Option<i64>, deadline: Option<i64>) -> NodeStatus {
    NodeStatus {
        name: "n".into(),
        phase,
        next_probe_at: next_probe.and_then(time),
        drain_deadline: deadline.and_then(time),
        ..NodeStatus::default()
    }
}

#[test]
fn probe_is_due_for_draining_nodes_at_their_time_whatever_their_pod() {
    let ready = pod("n", true, false);
    let unready = pod("n", false, false);
    let pods = [None, Some(&ready), Some(&unready)];
    for pod in pods {
        assert!(!probe_due(None, pod, at(0)));
        for phase in [
            NodePhase::Pending,
            NodePhase::Starting,
            NodePhase::Serving,
            NodePhase::Drained,
            NodePhase::Failed,
        ] {
            assert!(!probe_due(Some(&status_with(phase, Some(0), Some(600))), pod, at(100)), "{phase:?}");
        }
        let draining = status_with(NodePhase::Draining, Some(30), Some(600));
        assert!(!probe_due(Some(&draining), pod, at(29)));
        assert!(probe_due(Some(&draining), pod, at(30)));
        assert!(probe_due(Some(&draining), pod, at(31)));
        assert!(probe_due(Some(&status_with(NodePhase::Draining, None, Some(600))), pod, at(0)));
    }
}

#[test]
fn probe_is_due_for_a_restarting_node_once_its_new_pod_is_ready() {
    let restarting = NodeStatus {
        deployment_revision: Some("r2".into()),
        ..status_with(NodePhase::Restarting, None, None)
    };
    let new_ready = new_pod("n", "6c2b1", "r2", at(0), true);
    let new_unready = new_pod("n", "6c2b1", "r2", at(0), false);
    let old_ready = pod("n", true, true);
    assert!(probe_due(Some(&restarting), Some(&new_ready), at(0)));
    assert!(!probe_due(Some(&restarting), Some(&new_unready), at(0)), "not ready yet");
    assert!(!probe_due(Some(&restarting), Some(&old_ready), at(0)), "the old pod's probe says nothing");
    assert!(!probe_due(Some(&restarting), None, at(0)));
    // After a failed probe, at its backoff time.
    let backing_off = NodeStatus { next_probe_at: time(60), ..restarting };
    assert!(!probe_due(Some(&backing_off), Some(&new_ready), at(59)));
    assert!(probe_due(Some(&backing_off), Some(&new_ready), at(60)));
}

#[test]
fn next_wakeup_is_the_earliest_probe_or_deadline_of_a_draining_node() {
    assert_eq!(next_wakeup(&[], READY_TIMEOUT), None);
    let statuses = [
        status_with(NodePhase::Serving, Some(1), Some(1)),
        status_with(NodePhase::Drained, Some(2), Some(2)),
        status_with(NodePhase::Draining, Some(90), Some(600)),
        status_with(NodePhase::Draining, None, Some(300)),
    ];
    // A serving node's next count wakes it too.
    assert_eq!(next_wakeup(&statuses, READY_TIMEOUT), Some(at(1)));
    assert_eq!(next_wakeup(&statuses[1..], READY_TIMEOUT), Some(at(90)));
    assert_eq!(next_wakeup(&statuses[3..], READY_TIMEOUT), Some(at(300)));
    assert_eq!(next_wakeup(&statuses[1..2], READY_TIMEOUT), None);
    // A deadline already reached (Hold) no longer wakes anything.
    let held = NodeStatus { deadline_reached: true, ..status_with(NodePhase::Draining, None, Some(300)) };
    assert_eq!(next_wakeup(std::slice::from_ref(&held), READY_TIMEOUT), None);
    let held = NodeStatus { next_probe_at: time(700), ..held };
    assert_eq!(next_wakeup(&[held], READY_TIMEOUT), Some(at(700)));
}

#[test]
fn next_wakeup_includes_a_restarting_node_s_probe_and_ready_timeout() {
    let restarting =
        NodeStatus { restart_started_at: time(100), ..status_with(NodePhase::Restarting, None, None) };
    assert_eq!(next_wakeup(std::slice::from_ref(&restarting), READY_TIMEOUT), Some(at(2500)));
    assert_eq!(next_wakeup(std::slice::from_ref(&restarting), Duration::from_secs(60)), Some(at(160)));
    let probing = NodeStatus { next_probe_at: time(130), ..restarting };
    let draining = status_with(NodePhase::Draining, Some(200), Some(600));
    assert_eq!(next_wakeup(&[draining, probing], READY_TIMEOUT), Some(at(130)));
}

// --- extreme durations ----------------------------------------------------------------------

#[test]
fn an_enormous_timeout_or_interval_does_not_panic() {
    // The schema accepts any number of hours; the deadline must saturate, not overflow.
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.policy.timeout = "99999999999h".parse().unwrap();
    cluster.policy.ready_timeout = "99999999999h".parse().unwrap();
    cluster.interval = "99999999999h".parse().unwrap();
    cluster.drain(&["backup"]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.status.drain_deadline.as_ref().unwrap().0 > at(0));
    let backup = cluster.probe("backup", ProbeOutcome::Count(1));
    assert!(backup.status.next_probe_at.as_ref().unwrap().0 > at(0));
    cluster.advance(10);
    let backup = cluster.step(&[("backup", ProbeOutcome::Failed("x".into()))]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    serde_json::to_string(&backup.status).unwrap();

    // A server that never comes up, under an allowance that never ends: Starting, no panic.
    *cluster.pod_mut("main") = Some(new_pod("main", "6c2b1", REVISION, at(0), false));
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Starting);
    let restarting =
        NodeStatus { restart_started_at: time(0), ..status_with(NodePhase::Restarting, None, None) };
    assert!(next_wakeup(&[restarting], cluster.policy.ready_timeout).is_some_and(|t| t > at(0)));
}

// --- resuming after an operator restart -----------------------------------------------------

/// The statuses without what the operator only remembers (next probe, backoff, sample).
fn only_recorded(statuses: &[Option<NodeStatus>]) -> Vec<Option<NodeStatus>> {
    let forget = |s: &NodeStatus| NodeStatus {
        next_probe_at: None,
        probe_failures: 0,
        probe_sample: None,
        zero_session_probes: 0,
        ..s.clone()
    };
    statuses.iter().map(|s| s.as_ref().map(forget)).collect()
}

/// `restored` with what the operator remembered of `before` (next probe, backoff, sample).
fn with_remembered(
    restored: Vec<Option<NodeStatus>>,
    before: &[Option<NodeStatus>],
) -> Vec<Option<NodeStatus>> {
    let remembered = |r: NodeStatus, b: &NodeStatus| NodeStatus {
        next_probe_at: b.next_probe_at.clone(),
        probe_failures: b.probe_failures,
        probe_sample: b.probe_sample.clone(),
        zero_session_probes: b.zero_session_probes,
        ..r
    };
    restored
        .into_iter()
        .zip(before)
        .map(|(r, b)| match (r, b) {
            (Some(r), Some(b)) => Some(remembered(r, b)),
            (r, _) => r,
        })
        .collect()
}

/// What the API server gives back: the status as JSON, `Time` at second precision; what the
/// operator only remembers is not in it.
fn through_the_api_server(statuses: &[Option<NodeStatus>]) -> Vec<Option<NodeStatus>> {
    let json = serde_json::to_value(statuses).unwrap();
    serde_json::from_value(json).unwrap()
}

#[test]
fn a_restarted_operator_resumes_the_same_drain() {
    let mut cluster = Cluster::draining_backup();
    cluster.advance(1);
    cluster.probe("backup", ProbeOutcome::Count(3));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Count(0));

    let json = serde_json::to_value(cluster.status("backup")).unwrap();
    assert_eq!(json["phase"], "Draining");
    assert_eq!(json["drainDeadline"], "2026-01-01T00:10:00Z");
    assert_eq!(json["drainStartedAt"], "2026-01-01T00:00:00Z");
    assert_eq!(json.get("zeroSessionProbes"), None, "the confirmations are memory");
    assert_eq!(json["drainReason"], "Requested");
    assert_eq!(json["drainedServer"], format!("omero-backup-5d8f7/{SERVER_ID}/0"));

    // The operator restarts 20 seconds later: a new process with only the stored status.
    let restored = through_the_api_server(&cluster.statuses);
    assert_eq!(restored, only_recorded(&cluster.statuses), "whole-second times survive the round trip");
    let mut resumed = Cluster::serving(&["main", "backup"]);
    resumed.statuses = restored;
    resumed.pods = cluster.pods.clone();
    resumed.drain(&["backup"]);
    resumed.now = cluster.now + StdDuration::from_secs(20);
    resumed.advance(10);

    // The zero seen before the restart was memory: two new ones confirm it.
    let backup = resumed.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Draining, "a zero before the restart is confirmed afresh");
    assert!(backup.events.is_empty());
    resumed.advance_to(backup.status.next_probe_at.as_ref().unwrap().0);
    let backup = resumed.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.status.drain_deadline, time(600));
    assert_eq!(backup.status.drain_started_at, time(0));
    assert_eq!(backup.events, [drain_completed("backup")]);
}

#[test]
fn a_restarted_operator_sees_a_server_that_restarted_while_it_was_down() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(3));
    let mut resumed = Cluster::new(&["main", "backup"]);
    resumed.statuses = through_the_api_server(&cluster.statuses);
    resumed.pods = cluster.pods.clone();
    resumed.drain(&["backup"]);
    resumed.now = at(120);
    server_mut(resumed.pod_mut("backup")).restarts = 1;
    let backup = resumed.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert!(backup.status.message.as_deref().unwrap().contains("its sessions are gone"));
}

#[test]
fn a_restarted_operator_keeps_the_deadline_and_probes_at_once() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(6));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    cluster.advance(30);
    cluster.probe("backup", ProbeOutcome::Failed("timeout".into()));
    assert_eq!(cluster.status("backup").next_probe_at, time(120));

    let mut resumed = Cluster::new(&["main", "backup"]);
    resumed.statuses = through_the_api_server(&cluster.statuses);
    resumed.pods = cluster.pods.clone();
    resumed.drain(&["backup"]);
    resumed.now = at(100);
    let decisions = resumed.step(&[]);
    assert!(event_names(&decisions).is_empty(), "no second DrainStarted: {decisions:#?}");
    assert!(decisions.iter().all(|d| d.set_routable.is_none()));
    // The backoff was memory: the new process probes at once, and backs off afresh.
    assert!(resumed.due("backup"), "a new process probes at once");
    let backup = resumed.probe("backup", ProbeOutcome::Failed("timeout".into()));
    assert_eq!(backup.status.probe_failures, 1);
    assert_eq!(backup.status.next_probe_at, time(130));
    assert_eq!(backup.status.probe_error.as_deref(), Some("timeout"), "the failure was recorded");
    assert_eq!(backup.status.sessions, Some(6));

    // Down across the deadline: the first reconcile after it reports it with the last count.
    resumed.statuses = through_the_api_server(&resumed.statuses);
    resumed.advance_to(at(900));
    let backup = resumed.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(
        backup.events,
        [NodeEvent::DeadlineReached { node: "backup".into(), sessions: Some(6), proceeding: true }]
    );
    assert_eq!(backup.status.drain_deadline, time(600));
}

#[test]
fn a_restart_does_not_repeat_a_refusal() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.drain(&["main"]);
    cluster.step(&[]);
    let mut resumed = Cluster::new(&["main"]);
    resumed.statuses = through_the_api_server(&cluster.statuses);
    resumed.pods = cluster.pods.clone();
    resumed.drain(&["main"]);
    let decisions = resumed.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
    assert!(decisions[0].events.is_empty());
}

// --- rollouts: a node restarted with a new revision ----------------------------------------

const NEW: &str = "r2";

/// `main` and `backup` serving revision r1; the spec now asks for r2.
fn out_of_date() -> Cluster {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.target = NEW.into();
    cluster
}

/// `backup`, drained for the rollout at time 30: its Deployment has r2, its old pod still runs.
fn restarting_backup() -> Cluster {
    let mut cluster = out_of_date();
    cluster.selected = nodes(&["backup"]);
    cluster.step(&[]);
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Restarting);
    cluster.selected.clear();
    cluster
}

fn restarted(node: &str) -> NodeEvent {
    NodeEvent::Restarted { node: node.into(), revision: NEW.into() }
}

#[test]
fn a_selected_out_of_date_node_is_drained_then_released() {
    let mut cluster = out_of_date();
    cluster.selected = nodes(&["backup"]);
    let decisions = cluster.step(&[]);
    let backup = &decisions[1];
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(
        backup.events,
        [NodeEvent::DrainStarted { node: "backup".into(), deadline: at(600), reason: DrainReason::Rollout }]
    );
    assert_eq!(backup.status.drain_reason, Some(DrainReason::Rollout));
    assert_eq!(backup.set_routable, Some(false));
    assert_eq!(backup.status.target_revision.as_deref(), Some(NEW));
    assert_eq!(backup.status.deployment_revision.as_deref(), Some(REVISION), "not released while draining");
    assert!(!backup.status.up_to_date);
    // main is out of date too, but the planner did not choose it: it serves on, unchanged.
    let main = &decisions[0];
    assert_eq!(main.status.phase, NodePhase::Serving);
    assert_eq!((main.set_routable, main.events.len()), (None, 0));
    assert_eq!(main.status.deployment_revision.as_deref(), Some(REVISION));
    assert_eq!(cluster.deployments, [Some(REVISION.into()), Some(REVISION.into())]);

    // The planner need not choose it again: the rollout's drain goes on.
    cluster.selected.clear();
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Restarting);
    assert_eq!(
        backup.events,
        [drain_completed("backup"), NodeEvent::Restarting { node: "backup".into(), revision: NEW.into() }]
    );
    assert_eq!(backup.status.deployment_revision.as_deref(), Some(NEW));
    assert_eq!(backup.status.restart_started_at, time(30));
    assert_eq!(backup.status.next_probe_at, None);
    assert_eq!(backup.set_routable, None);
    assert_eq!(
        backup.status.message.as_deref(),
        Some("restarting with revision r2: waiting for the new pod to be ready")
    );
    assert_eq!(cluster.deployments, [Some(REVISION.into()), Some(NEW.into())]);
    // The old pod, still ready, is not the restarted node: no probe, no Restarted.
    assert!(!cluster.due("backup"));
    cluster.advance(1);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Restarting, 0));
}

#[test]
fn a_restarted_node_serves_again_once_ready_and_probed() {
    for outcome in [ProbeOutcome::Count(2), ProbeOutcome::NoProbe] {
        let mut cluster = restarting_backup();
        *cluster.pod_mut("backup") = Some(new_pod("backup", "7c9d1", NEW, at(35), false));
        cluster.advance(5);
        let backup = cluster.step(&[]).swap_remove(1);
        assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Restarting, 0));
        assert!(!cluster.due("backup"), "not ready yet");
        // Even a probe that answers does not bring it back before its pod is ready.
        let backup = cluster.step(&[("backup", outcome.clone())]).swap_remove(1);
        assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Restarting, 0));

        let new = cluster.pod_mut("backup").as_mut().unwrap();
        new.ready = true;
        new.server.as_mut().unwrap().started = true;
        cluster.advance(60);
        let backup = cluster.probe("backup", outcome.clone());
        assert_eq!(backup.status.phase, NodePhase::Serving, "{outcome:?}");
        assert_eq!(backup.events, [restarted("backup")]);
        assert_eq!(backup.set_routable, Some(true));
        assert_eq!(backup.status.revision.as_deref(), Some(NEW));
        assert!(backup.status.up_to_date);
        assert_eq!(backup.status.restart_started_at, None);
        assert_eq!(backup.status.drain_reason, None);
        assert_eq!(backup.status.drain_deadline, None);
        assert_eq!(backup.status.message, None);

        cluster.advance(60);
        let backup = cluster.step(&[]).swap_remove(1);
        assert_eq!(backup.status.phase, NodePhase::Serving);
        assert!(backup.events.is_empty() && backup.set_routable.is_none());
    }
}

#[test]
fn a_failing_probe_keeps_a_restarted_node_out_until_it_answers() {
    let mut cluster = restarting_backup();
    *cluster.pod_mut("backup") = Some(new_pod("backup", "7c9d1", NEW, at(35), true));
    cluster.advance(60);
    let backup = cluster.probe("backup", ProbeOutcome::Failed("connection refused".into()));
    assert_eq!(backup.status.phase, NodePhase::Restarting);
    assert!(backup.events.is_empty());
    assert_eq!(backup.set_routable, None, "not routable before its probe answers");
    assert_eq!(backup.status.probe_failures, 1);
    assert_eq!(backup.status.probe_error.as_deref(), Some("connection refused"));
    assert_eq!(backup.status.next_probe_at, time(120));
    assert!(backup.status.message.as_deref().unwrap().ends_with("ready, but its session probe fails"));
    assert!(!cluster.due("backup"));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.events, [restarted("backup")]);
    assert_eq!(backup.status.probe_failures, 0);
    assert_eq!(backup.status.probe_error, None);
}

#[test]
fn a_restart_not_ready_within_the_ready_timeout_fails() {
    let mut cluster = restarting_backup();
    *cluster.pod_mut("backup") = Some(new_pod("backup", "7c9d1", NEW, at(35), false));
    let statuses: Vec<NodeStatus> = cluster.statuses.iter().flatten().cloned().collect();
    assert_eq!(next_wakeup(&statuses, READY_TIMEOUT), Some(at(2430)));
    cluster.advance(2399);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Restarting, 0));
    cluster.advance(1);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Failed);
    let [NodeEvent::RestartFailed { node, reason }] = backup.events.as_slice() else {
        panic!("{:?}", backup.events);
    };
    assert_eq!(node, "backup");
    assert!(reason.contains("not ready with revision r2 within 40m"), "{reason}");
    assert!(backup.status.message.as_deref().unwrap().contains("the rollout stops here"));
    assert_eq!(backup.status.restart_started_at, None);
    assert_eq!(backup.set_routable, None);

    // Failed while its server is not up; Serving once it is; the label once ready.
    cluster.advance(60);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.events.len()), (NodePhase::Failed, 0));
    server_mut(cluster.pod_mut("backup")).started = true;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.set_routable), (NodePhase::Serving, None));
    cluster.pod_mut("backup").as_mut().unwrap().ready = true;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!((backup.status.phase, backup.set_routable), (NodePhase::Serving, Some(true)));
}

#[test]
fn a_new_pod_that_cannot_run_fails_the_restart_at_once() {
    let mut cluster = restarting_backup();
    *cluster.pod_mut("backup") = Some(PodObservation {
        failure: Some("CrashLoopBackOff".into()),
        ..new_pod("backup", "7c9d1", NEW, at(35), false)
    });
    cluster.advance(30);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Failed);
    let [NodeEvent::RestartFailed { reason, .. }] = backup.events.as_slice() else {
        panic!("{:?}", backup.events);
    };
    assert!(reason.contains("cannot run: CrashLoopBackOff"), "{reason}");
}

#[test]
fn an_out_of_date_node_that_is_not_serving_is_released_at_once() {
    for change in ["gone", "failed"] {
        let mut cluster = out_of_date();
        match change {
            "gone" => *cluster.pod_mut("backup") = None,
            _ => cluster.pod_mut("backup").as_mut().unwrap().failure = Some("CrashLoopBackOff".into()),
        }
        cluster.advance(5);
        let decisions = cluster.step(&[]);
        let backup = &decisions[1];
        assert_eq!(backup.status.phase, NodePhase::Restarting, "{change}");
        assert_eq!(
            backup.events,
            [NodeEvent::Restarting { node: "backup".into(), revision: NEW.into() }],
            "{change}: no drain"
        );
        assert_eq!(backup.status.deployment_revision.as_deref(), Some(NEW));
        assert_eq!(backup.status.restart_started_at, time(5));
        assert_eq!(backup.status.drain_started_at, None);
        assert_eq!(cluster.deployments[1].as_deref(), Some(NEW));
        assert_eq!(decisions[0].status.phase, NodePhase::Serving);
        assert_eq!(decisions[0].status.deployment_revision.as_deref(), Some(REVISION));
    }
}

#[test]
fn an_out_of_date_node_in_a_readiness_blip_is_not_released_without_a_drain() {
    let mut cluster = out_of_date();
    blip(cluster.pod_mut("backup"));
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.status.deployment_revision.as_deref(), Some(REVISION));
    assert!(backup.events.is_empty());
}

#[test]
fn a_node_without_a_deployment_is_given_its_target_at_once() {
    let mut cluster = Cluster::new(&["main"]);
    cluster.deployments = vec![None];
    *cluster.pod_mut("main") = None;
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Pending);
    assert_eq!(main.status.deployment_revision.as_deref(), Some(REVISION));
    assert!(main.events.is_empty(), "created, not restarted");
    assert_eq!(cluster.deployments, [Some(REVISION.into())]);
}

#[test]
fn a_rollout_drain_of_the_last_serving_node_is_not_refused_here() {
    // The planner decides whether a rollout may take the last serving node (allow-downtime).
    let mut cluster = Cluster::serving(&["main"]);
    cluster.target = NEW.into();
    cluster.selected = nodes(&["main"]);
    let main = cluster.step(&[]).swap_remove(0);
    assert_eq!(main.status.phase, NodePhase::Draining);
    assert!(matches!(main.events.as_slice(), [NodeEvent::DrainStarted { reason: DrainReason::Rollout, .. }]));
}

#[test]
fn a_requested_drain_gets_the_new_revision_and_stays_drained() {
    let mut cluster = out_of_date();
    cluster.drain(&["backup"]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.drain_reason, Some(DrainReason::Requested));
    cluster.probe("backup", ProbeOutcome::Count(0));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Restarting, "drained: nothing to protect");
    assert_eq!(cluster.deployments[1].as_deref(), Some(NEW));

    *cluster.pod_mut("backup") = Some(new_pod("backup", "7c9d1", NEW, at(35), true));
    cluster.advance(30);
    let backup = cluster.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(backup.status.drain_reason, Some(DrainReason::Requested));
    assert_eq!(backup.events, [restarted("backup")]);
    assert_eq!(backup.set_routable, None);
    assert!(backup.status.message.as_deref().unwrap().contains("stays drained"));

    cluster.drain(&[]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.events, [undrained("backup")]);
    assert_eq!(backup.set_routable, Some(true));
}

// --- properties over random histories -------------------------------------------------------

#[derive(Clone, Debug)]
enum PodChange {
    Keep,
    /// The server is up and the pod ready (a new pod if there was none or it was stopping).
    Ready,
    /// A readiness blip: the pod stops being ready, its server runs on (a new pod whose server
    /// is not up yet, if there was none).
    NotReady,
    /// The server container restarts: a new container, not up yet.
    Restart,
    /// The server container cannot run (crash loop).
    Fail,
    /// The pod is terminating.
    Stop,
    Gone,
    /// Someone sets or removes the routable label by hand.
    Label(bool),
    /// The Deployment replaces the pod with a new one of its revision, not up yet.
    Roll,
}

#[derive(Clone, Debug)]
enum Probe {
    Count(u64),
    Fail,
    /// Due but not run in this reconcile (e.g. another node's probe errored first).
    Skip,
}

#[derive(Clone, Debug)]
struct Tick {
    /// A new drain annotation, as a bit set over the nodes; `None` keeps the previous one.
    request: Option<u8>,
    force: bool,
    paused: bool,
    pods: Vec<PodChange>,
    probes: Vec<Probe>,
    advance: u64,
}

#[derive(Clone, Debug)]
struct Scenario {
    timeout: u64,
    interval: u64,
    ready_timeout: u64,
    on_deadline: OnDeadline,
    /// Per node: whether it has a session probe (`database`/`metrics`) or not (`none`).
    has_probe: Vec<bool>,
    initially_ready: Vec<bool>,
    ticks: Vec<Tick>,
}

fn pod_change() -> impl Strategy<Value = PodChange> {
    prop_oneof![
        12 => Just(PodChange::Keep),
        2 => Just(PodChange::Ready),
        1 => Just(PodChange::NotReady),
        1 => Just(PodChange::Restart),
        1 => Just(PodChange::Fail),
        1 => Just(PodChange::Stop),
        1 => Just(PodChange::Gone),
        1 => any::<bool>().prop_map(PodChange::Label),
        1 => Just(PodChange::Roll),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        4 => Just(Probe::Count(0)),
        3 => (1u64..5).prop_map(Probe::Count),
        2 => Just(Probe::Fail),
        1 => Just(Probe::Skip),
    ]
}

fn tick(nodes: usize) -> impl Strategy<Value = Tick> {
    (
        proptest::option::weighted(0.3, 0u8..32),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.08),
        proptest::collection::vec(pod_change(), nodes),
        proptest::collection::vec(probe(), nodes),
        prop_oneof![0u64..=5, 5u64..=120, 120u64..=700],
    )
        .prop_map(|(request, force, paused, pods, probes, advance)| Tick {
            request,
            force,
            paused,
            pods,
            probes,
            advance,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=5).prop_flat_map(|nodes| {
        (
            prop_oneof![Just(60u64), Just(300), Just(600)],
            prop_oneof![Just(10u64), Just(30)],
            prop_oneof![Just(120u64), Just(2400)],
            prop_oneof![Just(OnDeadline::Proceed), Just(OnDeadline::Hold)],
            proptest::collection::vec(proptest::bool::weighted(0.8), nodes),
            proptest::collection::vec(proptest::bool::weighted(0.9), nodes),
            proptest::collection::vec(tick(nodes), 1..=30),
        )
            .prop_map(
                |(timeout, interval, ready_timeout, on_deadline, has_probe, initially_ready, ticks)| {
                    Scenario {
                        timeout,
                        interval,
                        ready_timeout,
                        on_deadline,
                        has_probe,
                        initially_ready,
                        ticks,
                    }
                },
            )
    })
}

/// Ready for new sessions: what the last-serving-node rule counts.
fn is_ready(pod: Option<&PodObservation>) -> bool {
    pod.is_some_and(|p| p.ready && p.failure.is_none())
}

/// The test's own reading of a node's OMERO server, independent of [`serving_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    NoPod,
    NotRunning,
    Failed,
    /// Not up within the allowance since its pod was created.
    NeverReady,
    Starting,
    /// Up: ready, or started and briefly unready.
    Up,
}

impl Server {
    fn of(pod: Option<&PodObservation>, now: Timestamp, allowance: Duration) -> Self {
        let Some(pod) = pod else { return Self::NoPod };
        if pod.failure.is_some() {
            Self::Failed
        } else if !pod.running {
            Self::NotRunning
        } else if pod.ready || pod.server.as_ref().is_some_and(|s| s.started) {
            Self::Up
        } else if pod.created.is_some_and(|c| c + allowance.std() <= now) {
            Self::NeverReady
        } else {
            Self::Starting
        }
    }

    /// Nothing on it can hold a session.
    fn gone(self) -> bool {
        !matches!(self, Self::Starting | Self::Up)
    }
}

/// The phase of a node in service: a failed node stays Failed until its server is up.
fn expected_service_phase(server: Server, was: NodePhase) -> NodePhase {
    match server {
        Server::Up => NodePhase::Serving,
        _ if was == NodePhase::Failed => NodePhase::Failed,
        Server::Starting => NodePhase::Starting,
        Server::NoPod | Server::NotRunning => NodePhase::Pending,
        Server::Failed | Server::NeverReady => NodePhase::Failed,
    }
}

/// Pod name, container id, restart count: which server process it is.
fn identity(pod: Option<&PodObservation>) -> Option<(String, Option<String>, i32)> {
    pod.map(|p| {
        let server = p.server.clone().unwrap_or_default();
        (p.name.clone(), server.id, server.restarts)
    })
}

fn was_refused(status: Option<&NodeStatus>) -> bool {
    status.is_some_and(|s| {
        s.phase == NodePhase::Serving && s.message.as_deref().is_some_and(|m| m.starts_with("drain refused"))
    })
}

/// What the test remembers of each node's current drain, independently of the machine.
#[derive(Clone, Debug, Default)]
struct Model {
    /// Zero counts in a row in this drain.
    zeros: u32,
    /// `DeadlineReached` events in this drain.
    deadline_events: u32,
    /// The server the drain waits on, as it was when the drain began.
    server: Option<(String, Option<String>, i32)>,
}

/// Changes a node's pod; a new pod is one of `revision`, its Deployment's.
fn apply_pod_change(
    pod: &mut Option<PodObservation>,
    change: &PodChange,
    name: &str,
    revision: &str,
    created: Timestamp,
    pods: &mut u32,
) {
    let mut fresh = |ready: bool| {
        *pods += 1;
        new_pod(name, &pods.to_string(), revision, created, ready)
    };
    match change {
        PodChange::Keep => {}
        PodChange::Ready => match pod {
            Some(p) if p.running => {
                let server = p.server.get_or_insert_with(ServerContainer::default);
                if p.failure.take().is_some() {
                    // Out of its crash loop: it came up in a restarted container.
                    server.restarts += 1;
                }
                server.started = true;
                p.ready = true;
            }
            _ => *pod = Some(fresh(true)),
        },
        PodChange::NotReady => match pod {
            Some(p) => p.ready = false,
            None => *pod = Some(fresh(false)),
        },
        PodChange::Restart => {
            if let Some(p) = pod.as_mut().filter(|p| p.running) {
                *pods += 1;
                let server = p.server.get_or_insert_with(ServerContainer::default);
                server.restarts += 1;
                server.id = Some(format!("containerd://{pods}"));
                server.started = false;
                p.ready = false;
                p.failure = None;
            }
        }
        PodChange::Fail => {
            let p = pod.get_or_insert_with(|| fresh(false));
            p.ready = false;
            p.failure = Some("CrashLoopBackOff".into());
        }
        PodChange::Stop => {
            if let Some(p) = pod {
                p.running = false;
                p.ready = false;
            }
        }
        PodChange::Gone => *pod = None,
        PodChange::Label(routable) => {
            if let Some(p) = pod {
                p.routable = *routable;
            }
        }
        PodChange::Roll => *pod = Some(fresh(false)),
    }
}

fn run_scenario(scenario: &Scenario) -> Result<(), TestCaseError> {
    let n = scenario.has_probe.len();
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let timeout = Duration::from_secs(scenario.timeout);
    let interval = Duration::from_secs(scenario.interval);
    let ready_timeout = Duration::from_secs(scenario.ready_timeout);
    let proceed = scenario.on_deadline == OnDeadline::Proceed;
    let mut statuses: Vec<Option<NodeStatus>> = vec![None; n];
    let mut pods: Vec<Option<PodObservation>> =
        (0..n).map(|i| Some(pod(&names[i], scenario.initially_ready[i], false))).collect();
    let mut models = vec![Model::default(); n];
    let mut requested = vec![false; n];
    let mut created_pods = 0;
    let mut now = at(0);

    for (t, tick) in scenario.ticks.iter().enumerate() {
        if let Some(mask) = tick.request {
            requested = (0..n).map(|i| mask & (1 << i) != 0).collect();
        }
        for (i, change) in tick.pods.iter().enumerate() {
            apply_pod_change(&mut pods[i], change, &names[i], REVISION, now, &mut created_pods);
        }
        now += StdDuration::from_secs(tick.advance);
        let policy = Policy {
            timeout,
            on_deadline: scenario.on_deadline,
            force: tick.force,
            ready_timeout,
            paused: tick.paused,
        };
        let previous_phase = |i: usize| statuses[i].as_ref().map(|s| s.phase).unwrap_or_default();
        let mut probes: Vec<Option<ProbeOutcome>> = Vec::with_capacity(n);
        for i in 0..n {
            let due = probe_due(statuses[i].as_ref(), pods[i].as_ref(), now);
            // A draining node is probed at its time whatever its pod looks like: a readiness
            // blip does not stop the probes. Nothing else is (nothing restarts here).
            let at_its_time =
                statuses[i].as_ref().is_some_and(|s| s.next_probe_at.as_ref().is_none_or(|p| p.0 <= now));
            prop_assert_eq!(
                due,
                previous_phase(i) == NodePhase::Draining && at_its_time,
                "tick {}, node {}",
                t,
                i
            );
            probes.push(match (due, &tick.probes[i], scenario.has_probe[i]) {
                (false, _, _) | (_, Probe::Skip, _) => None,
                (_, _, false) => Some(ProbeOutcome::NoProbe),
                (_, Probe::Count(c), true) => Some(ProbeOutcome::Count(*c)),
                (_, Probe::Fail, true) => Some(ProbeOutcome::Failed("connection refused".into())),
            });
        }
        let inputs: Vec<NodeInput<'_>> = (0..n)
            .map(|i| NodeInput {
                name: &names[i],
                previous: statuses[i].as_ref(),
                pod: pods[i].as_ref(),
                drain_requested: requested[i],
                probe: probes[i].clone(),
                probe_sample: None,
                probe_interval: interval,
                serving_probe_interval: None,
                target_revision: Some(REVISION),
                deployment_exists: true,
                deployment_revision: Some(REVISION),
                selected: false,
                leaving: false,
                force: false,
                maintenance: None,
                power: omero_operator::stopping::Power::Run,
            })
            .collect();
        let decisions = step(&inputs, &policy, now);
        drop(inputs);
        prop_assert_eq!(decisions.len(), n);

        let ctx = |i: usize| format!("tick {t}, {}: {:#?}", names[i], decisions[i]);
        let ready: Vec<bool> = (0..n).map(|i| is_ready(pods[i].as_ref())).collect();
        let servers: Vec<Server> = (0..n).map(|i| Server::of(pods[i].as_ref(), now, ready_timeout)).collect();

        for i in 0..n {
            let status = &decisions[i].status;
            // The machine reads the server as the test does.
            let state = serving_state(pods[i].as_ref(), now, ready_timeout);
            let agrees = match state {
                Serving::NotServing(_) => servers[i].gone(),
                Serving::Starting => servers[i] == Server::Starting,
                Serving::Running => servers[i] == Server::Up,
            };
            prop_assert!(agrees, "{:?} read as {:?}: {}", servers[i], state, ctx(i));
            // What was observed is recorded, paused or not.
            prop_assert_eq!(&status.name, &names[i]);
            prop_assert_eq!(status.ready, pods[i].as_ref().is_some_and(|p| p.ready), "{}", ctx(i));
            prop_assert_eq!(&status.pod, &pods[i].as_ref().map(|p| p.name.clone()), "{}", ctx(i));
            prop_assert_eq!(status.up_to_date, pods[i].is_some(), "{}", ctx(i));
            prop_assert_eq!(status.target_revision.as_deref(), Some(REVISION));
            prop_assert_eq!(status.deployment_revision.as_deref(), Some(REVISION), "{}", ctx(i));
            prop_assert!(status.phase != NodePhase::Restarting, "nothing is out of date: {}", ctx(i));
        }

        if policy.paused {
            // Paused: no phase moves, no label is patched, nothing is reported; a node seen for
            // the first time gets the phase its pod shows.
            for i in 0..n {
                let decision = &decisions[i];
                prop_assert_eq!(decision.set_routable, None, "{}", ctx(i));
                prop_assert!(decision.events.is_empty(), "{}", ctx(i));
                let status = &decision.status;
                match statuses[i].as_ref() {
                    Some(previous) => {
                        let kept = NodeStatus {
                            ready: status.ready,
                            routable: status.routable,
                            image: status.image.clone(),
                            pod: status.pod.clone(),
                            revision: status.revision.clone(),
                            up_to_date: status.up_to_date,
                            ..previous.clone()
                        };
                        prop_assert_eq!(status, &kept, "{}", ctx(i));
                    }
                    None => {
                        prop_assert_eq!(
                            status.phase,
                            expected_service_phase(servers[i], NodePhase::Pending),
                            "{}",
                            ctx(i)
                        );
                        prop_assert_eq!(status.drain_started_at.as_ref(), None, "{}", ctx(i));
                    }
                }
                prop_assert_eq!(status.routable, pods[i].as_ref().is_some_and(|p| p.routable), "{}", ctx(i));
            }
        } else {
            check_step(
                &StepView {
                    t,
                    now,
                    names: &names,
                    statuses: &statuses,
                    pods: &pods,
                    requested: &requested,
                    probes: &probes,
                    ready: &ready,
                    servers: &servers,
                    policy: &policy,
                    proceed,
                    interval,
                },
                &decisions,
                &mut models,
            )?;
        }

        // Carry out the decisions; the statuses go through the API server and come back intact.
        for (i, decision) in decisions.iter().enumerate() {
            if let (Some(routable), Some(pod)) = (decision.set_routable, pods[i].as_mut()) {
                pod.routable = routable;
            }
            statuses[i] = Some(decision.status.clone());
        }
        // What the operator only remembers comes back from its memory, not the API server.
        let restored = through_the_api_server(&statuses);
        prop_assert_eq!(&restored, &only_recorded(&statuses));
        statuses = with_remembered(restored, &statuses);

        // The wakeup comes no later than any pending probe or unreached deadline.
        let current: Vec<NodeStatus> = statuses.iter().flatten().cloned().collect();
        let wakeup = next_wakeup(&current, ready_timeout);
        for status in current.iter().filter(|s| s.phase == NodePhase::Draining) {
            let deadline = status.drain_deadline.as_ref().filter(|_| !status.deadline_reached);
            for due in [status.next_probe_at.as_ref(), deadline].into_iter().flatten() {
                prop_assert!(wakeup.is_some_and(|w| w <= due.0), "{:?} after {:?}", wakeup, due);
            }
        }
        if current.iter().all(|s| s.phase != NodePhase::Draining) {
            prop_assert_eq!(wakeup, None);
        }
    }
    Ok(())
}

/// One unpaused step's inputs, for [`check_step`].
struct StepView<'a> {
    t: usize,
    now: Timestamp,
    names: &'a [String],
    statuses: &'a [Option<NodeStatus>],
    pods: &'a [Option<PodObservation>],
    requested: &'a [bool],
    probes: &'a [Option<ProbeOutcome>],
    ready: &'a [bool],
    servers: &'a [Server],
    policy: &'a Policy,
    proceed: bool,
    interval: Duration,
}

fn check_step(v: &StepView<'_>, decisions: &[Decision], models: &mut [Model]) -> Result<(), TestCaseError> {
    let (t, now, names, policy) = (v.t, v.now, v.names, v.policy);
    let n = names.len();
    let ctx = |i: usize| format!("tick {t}, {}: {:#?}", names[i], decisions[i]);
    let previous_phase = |i: usize| v.statuses[i].as_ref().map(|s| s.phase).unwrap_or_default();
    let serves = |j: usize| decisions[j].status.phase == NodePhase::Serving && v.ready[j];

    // Never the last serving node without force. The nodes that can take new sessions after
    // this step are the ready ones not deliberately out of service, plus the ready ones whose
    // drain was withdrawn; if there is one, one of them still serves.
    let could_serve: Vec<usize> = (0..n)
        .filter(|&i| v.ready[i] && (!previous_phase(i).is_out_of_service() || !v.requested[i]))
        .collect();
    if !policy.force && !could_serve.is_empty() {
        prop_assert!(
            could_serve.iter().any(|&i| serves(i)),
            "tick {}: the last serving node left without force: {:#?}",
            t,
            decisions
        );
    }
    // The weaker form: a ready node that was Serving is never the only one and leaves.
    let serving_before: Vec<usize> =
        (0..n).filter(|&i| v.ready[i] && previous_phase(i) == NodePhase::Serving).collect();
    if !policy.force && serving_before.len() == 1 {
        let i = serving_before[0];
        let others_serve = (0..n).any(|j| j != i && serves(j));
        prop_assert!(others_serve || serves(i), "{}", ctx(i));
    }

    let out_of_service = decisions.iter().filter(|d| d.status.phase.is_out_of_service()).count();
    prop_assert!(out_of_service <= v.requested.iter().filter(|r| **r).count());

    for i in 0..n {
        let previous = v.statuses[i].as_ref();
        let was = previous_phase(i);
        let decision = &decisions[i];
        let status = &decision.status;
        let is = status.phase;
        let requested = v.requested[i];
        let server = v.servers[i];
        let deadline = status.drain_deadline.as_ref().map(|d| d.0);
        let deadline_passed = deadline.is_some_and(|d| d <= now);
        let by_deadline = deadline_passed && (v.proceed || policy.force);
        let model = &mut models[i];

        // The model's view of this drain.
        if is == NodePhase::Draining && was != NodePhase::Draining {
            *model = Model { server: identity(v.pods[i].as_ref()), ..Model::default() };
        }
        match &v.probes[i] {
            Some(ProbeOutcome::Count(0)) => model.zeros += 1,
            Some(ProbeOutcome::Count(_) | ProbeOutcome::Failed(_)) => model.zeros = 0,
            Some(ProbeOutcome::NoProbe) | None => {}
        }
        // The server the drain waited on holds no session any more: it does not serve, or it
        // is another process (a new pod or container, a restart).
        let sessions_gone = server.gone() || identity(v.pods[i].as_ref()) != model.server;

        // Out of service only on request.
        if is.is_out_of_service() {
            prop_assert!(requested, "{}", ctx(i));
        }

        if !requested {
            prop_assert_eq!(is, expected_service_phase(server, was), "{}", ctx(i));
            prop_assert_eq!(status.drain_started_at.as_ref(), None, "{}", ctx(i));
            prop_assert_eq!(status.drain_deadline.as_ref(), None, "{}", ctx(i));
            prop_assert_eq!(status.drain_reason, None, "{}", ctx(i));
            prop_assert_eq!(status.drained_server.as_ref(), None, "{}", ctx(i));
            prop_assert_eq!(status.next_probe_at.as_ref(), None, "{}", ctx(i));
            prop_assert_eq!(status.sessions, None, "{}", ctx(i));
            prop_assert_eq!(status.probe_error.as_ref(), None, "{}", ctx(i));
            prop_assert!(!status.deadline_reached, "{}", ctx(i));
            prop_assert_eq!(status.zero_session_probes + status.probe_failures, 0, "{}", ctx(i));
            if matches!(is, NodePhase::Serving | NodePhase::Starting) {
                prop_assert_eq!(status.message.as_ref(), None, "{}", ctx(i));
            }
            if server.gone() {
                prop_assert!(status.message.is_some(), "says why it does not serve: {}", ctx(i));
            }
        } else if !was.is_out_of_service() {
            if server.gone() {
                // Nothing to wait for: drained at once, whatever else serves.
                prop_assert_eq!(is, NodePhase::Drained, "{}", ctx(i));
                prop_assert_eq!(status.drain_started_at.as_ref().map(|s| s.0), Some(now), "{}", ctx(i));
                prop_assert_eq!(deadline, None, "{}", ctx(i));
                let message = status.message.as_deref().unwrap_or_default();
                prop_assert!(message.starts_with("drained at once: "), "{}", ctx(i));
            } else if policy.force || !v.ready[i] {
                // Forced, or a node that takes no new sessions (starting or briefly unready):
                // never refused, its sessions waited for.
                prop_assert_eq!(is, NodePhase::Draining, "{}", ctx(i));
            } else {
                // A ready node asked to drain starts draining, or is refused.
                prop_assert!(matches!(is, NodePhase::Draining | NodePhase::Serving), "{}", ctx(i));
            }
        } else if was == NodePhase::Drained {
            let expected = NodeStatus {
                ready: status.ready,
                routable: status.routable,
                image: status.image.clone(),
                pod: status.pod.clone(),
                revision: status.revision.clone(),
                up_to_date: status.up_to_date,
                ..previous.unwrap().clone()
            };
            prop_assert_eq!(status, &expected, "a drained node stays as it was: {}", ctx(i));
        } else if was == NodePhase::Draining && sessions_gone {
            prop_assert_eq!(is, NodePhase::Drained, "{}", ctx(i));
            let message = status.message.as_deref().unwrap_or_default();
            let says = if server.gone() { "holds no sessions" } else { "its sessions are gone" };
            prop_assert!(message.contains(says), "{}", ctx(i));
        }

        // The deadline never moves while the node stays in its drain.
        if requested
            && matches!(was, NodePhase::Draining | NodePhase::Drained)
            && matches!(is, NodePhase::Draining | NodePhase::Drained)
        {
            let previous = previous.unwrap();
            prop_assert_eq!(&status.drain_deadline, &previous.drain_deadline, "{}", ctx(i));
            prop_assert_eq!(&status.drain_started_at, &previous.drain_started_at, "{}", ctx(i));
        }
        if is == NodePhase::Draining {
            prop_assert!(status.drain_started_at.is_some() && deadline.is_some(), "{}", ctx(i));
            prop_assert_eq!(status.drain_reason, Some(DrainReason::Requested), "{}", ctx(i));
            prop_assert!(status.drained_server.is_some(), "{}", ctx(i));
            prop_assert!(!server.gone(), "a server that does not serve is never waited on: {}", ctx(i));
            prop_assert_eq!(status.deadline_reached, deadline_passed, "{}", ctx(i));
            if v.proceed || policy.force {
                prop_assert!(
                    !deadline_passed,
                    "Proceed (or force) never holds past the deadline: {}",
                    ctx(i)
                );
            }
            prop_assert!(model.zeros < ZERO_CONFIRMATIONS, "two zeros in a row must drain: {}", ctx(i));
        }
        if is == NodePhase::Drained {
            prop_assert!(status.drain_started_at.is_some(), "{}", ctx(i));
            prop_assert_eq!(status.next_probe_at.as_ref(), None, "{}", ctx(i));
            prop_assert_eq!(status.drain_reason, Some(DrainReason::Requested), "{}", ctx(i));
        }

        // Why a draining node became Drained: its server stopped serving or is another one
        // (its sessions are gone), the deadline passed with Proceed (or Hold, forced), or two
        // zero counts in a row. Never a failed probe, never a readiness blip, never open
        // sessions before the deadline.
        if was == NodePhase::Draining && is == NodePhase::Drained {
            prop_assert!(
                sessions_gone || by_deadline || model.zeros >= ZERO_CONFIRMATIONS,
                "drained without a reason: {}",
                ctx(i)
            );
            if matches!(v.probes[i], Some(ProbeOutcome::Failed(_))) {
                prop_assert!(sessions_gone || by_deadline, "a failed probe drained the node: {}", ctx(i));
            }
            if status.sessions.is_some_and(|s| s > 0) {
                prop_assert!(sessions_gone || by_deadline, "drained with open sessions: {}", ctx(i));
            }
        }
        if was == NodePhase::Draining && requested && by_deadline {
            prop_assert_eq!(is, NodePhase::Drained, "{}", ctx(i));
        }

        // What the probe did to the status.
        if was == NodePhase::Draining && is == NodePhase::Draining {
            let previous = previous.unwrap();
            prop_assert_eq!(&status.drained_server, &previous.drained_server, "{}", ctx(i));
            match &v.probes[i] {
                Some(ProbeOutcome::Count(c)) => {
                    prop_assert_eq!(status.sessions, Some(*c as i64), "{}", ctx(i));
                    prop_assert_eq!(status.probe_error.as_ref(), None, "{}", ctx(i));
                    prop_assert_eq!(status.next_probe_at.as_ref().map(|t| t.0), Some(now + v.interval.std()));
                }
                Some(ProbeOutcome::Failed(error)) => {
                    prop_assert_eq!(status.sessions, previous.sessions, "{}", ctx(i));
                    prop_assert_eq!(status.probe_error.as_ref(), Some(error), "{}", ctx(i));
                    prop_assert_eq!(status.probe_failures, previous.probe_failures + 1, "{}", ctx(i));
                    let backoff = probe_backoff(v.interval, status.probe_failures);
                    prop_assert!(
                        backoff >= v.interval && backoff.as_millis() <= 300_000.max(v.interval.as_millis())
                    );
                    prop_assert_eq!(status.next_probe_at.as_ref().map(|t| t.0), Some(now + backoff.std()));
                }
                Some(ProbeOutcome::NoProbe) => prop_assert_eq!(status.next_probe_at.as_ref(), None),
                None => {
                    prop_assert_eq!(&status.next_probe_at, &previous.next_probe_at, "{}", ctx(i));
                    prop_assert_eq!(status.sessions, previous.sessions, "{}", ctx(i));
                }
            }
        }

        // Label patches agree with the phase, and after them the label matches the phase: on
        // for a Serving node whose pod is ready, off for a node out of service, untouched
        // otherwise.
        let pod = v.pods[i].as_ref();
        let pod_ready = pod.is_some_and(|p| p.ready);
        let takes_sessions = is == NodePhase::Serving && pod_ready;
        match decision.set_routable {
            Some(true) => prop_assert!(takes_sessions, "{}", ctx(i)),
            Some(false) => prop_assert!(is.is_out_of_service(), "{}", ctx(i)),
            None => {}
        }
        let label = pod.map(|p| decision.set_routable.unwrap_or(p.routable));
        prop_assert_eq!(status.routable, label.unwrap_or(false), "{}", ctx(i));
        if takes_sessions {
            prop_assert_eq!(label, Some(true), "{}", ctx(i));
        }
        if is.is_out_of_service() && label.is_some() {
            prop_assert_eq!(label, Some(false), "{}", ctx(i));
        }
        if !takes_sessions && !is.is_out_of_service() {
            prop_assert_eq!(decision.set_routable, None, "{}", ctx(i));
        }

        // Events, each exactly when its transition happens.
        let count = |f: &dyn Fn(&NodeEvent) -> bool| decision.events.iter().filter(|e| f(e)).count();
        let started = count(&|e| matches!(e, NodeEvent::DrainStarted { .. }));
        prop_assert_eq!(started, usize::from(is == NodePhase::Draining && was != NodePhase::Draining));
        for event in &decision.events {
            match event {
                NodeEvent::DrainStarted { node, deadline: d, reason } => {
                    prop_assert_eq!(node, &names[i]);
                    prop_assert_eq!(*d, now + policy.timeout.std());
                    prop_assert_eq!(Some(*d), deadline);
                    prop_assert_eq!(*reason, DrainReason::Requested);
                }
                NodeEvent::DeadlineReached { node, sessions, proceeding } => {
                    prop_assert_eq!(node, &names[i]);
                    prop_assert!(deadline_passed, "{}", ctx(i));
                    prop_assert_eq!(*proceeding, v.proceed || policy.force);
                    prop_assert_eq!(*sessions, status.sessions.map(|s| s as u64));
                    model.deadline_events += 1;
                    prop_assert_eq!(model.deadline_events, 1, "the deadline is reported once: {}", ctx(i));
                }
                NodeEvent::DrainCompleted { node }
                | NodeEvent::DrainRefused { node, .. }
                | NodeEvent::Undrained { node } => {
                    prop_assert_eq!(node, &names[i]);
                }
                NodeEvent::Restarting { .. }
                | NodeEvent::Restarted { .. }
                | NodeEvent::RestartFailed { .. }
                | NodeEvent::MovingOff { .. }
                | NodeEvent::PodReplaced { .. }
                | NodeEvent::Moved { .. }
                | NodeEvent::Stopped { .. }
                | NodeEvent::Starting { .. } => {
                    prop_assert!(
                        false,
                        "nothing restarts, moves, stops or starts without a rollout, maintenance or a stop: {}",
                        ctx(i)
                    );
                }
            }
        }
        let completed = count(&|e| matches!(e, NodeEvent::DrainCompleted { .. }));
        let deadline_drained = count(&|e| matches!(e, NodeEvent::DeadlineReached { proceeding: true, .. }));
        let newly_drained = is == NodePhase::Drained && was != NodePhase::Drained;
        prop_assert_eq!(completed + deadline_drained, usize::from(newly_drained), "{}", ctx(i));
        let undrained = count(&|e| matches!(e, NodeEvent::Undrained { .. }));
        prop_assert_eq!(undrained, usize::from(!requested && was.is_out_of_service()), "{}", ctx(i));
        let refusals = count(&|e| matches!(e, NodeEvent::DrainRefused { .. }));
        let refused_now = requested && is == NodePhase::Serving;
        prop_assert_eq!(refusals, usize::from(refused_now && !was_refused(previous)), "{}", ctx(i));
        if refused_now {
            // Refused only when it really is the last: it takes new sessions, and no other
            // node does after the step (a Serving node in a readiness blip does not).
            prop_assert!(!policy.force, "{}", ctx(i));
            prop_assert!(v.ready[i], "a node that is not ready is never refused: {}", ctx(i));
            prop_assert!(
                (0..n).all(|j| j == i || !serves(j)),
                "tick {}: {} refused while another node serves: {:#?}",
                t,
                names[i],
                decisions
            );
        }
        prop_assert!(decision.events.len() <= 2, "{}", ctx(i));

        if !requested || is == NodePhase::Drained {
            *model = Model::default();
        }
    }
    Ok(())
}

// --- properties of rollouts over random histories -------------------------------------------

#[derive(Clone, Debug)]
struct RolloutTick {
    /// The spec changes: a new target revision for every node.
    new_target: bool,
    /// The nodes the rollout planner chooses, as a bit set.
    selected: u8,
    /// A new drain annotation, as a bit set; `None` keeps the previous one.
    request: Option<u8>,
    pods: Vec<PodChange>,
    probes: Vec<Probe>,
    advance: u64,
}

#[derive(Clone, Debug)]
struct RolloutScenario {
    interval: u64,
    ready_timeout: u64,
    has_probe: Vec<bool>,
    ticks: Vec<RolloutTick>,
}

fn rollout_scenario() -> impl Strategy<Value = RolloutScenario> {
    let pod_change = prop_oneof![
        8 => Just(PodChange::Keep),
        3 => Just(PodChange::Roll),
        4 => Just(PodChange::Ready),
        1 => Just(PodChange::NotReady),
        1 => Just(PodChange::Restart),
        1 => Just(PodChange::Fail),
        1 => Just(PodChange::Stop),
        1 => Just(PodChange::Gone),
        1 => any::<bool>().prop_map(PodChange::Label),
    ];
    (1usize..=4).prop_flat_map(move |nodes| {
        let tick = (
            proptest::bool::weighted(0.15),
            0u8..16,
            proptest::option::weighted(0.15, 0u8..16),
            proptest::collection::vec(pod_change.clone(), nodes),
            proptest::collection::vec(probe(), nodes),
            prop_oneof![0u64..=5, 5u64..=120, 120u64..=700],
        )
            .prop_map(|(new_target, selected, request, pods, probes, advance)| RolloutTick {
                new_target,
                selected,
                request,
                pods,
                probes,
                advance,
            });
        (
            prop_oneof![Just(10u64), Just(30)],
            prop_oneof![Just(120u64), Just(2400)],
            proptest::collection::vec(proptest::bool::weighted(0.8), nodes),
            proptest::collection::vec(tick, 1..=40),
        )
            .prop_map(|(interval, ready_timeout, has_probe, ticks)| RolloutScenario {
                interval,
                ready_timeout,
                has_probe,
                ticks,
            })
    })
}

/// The rollout's side of the lifecycle: a node's Deployment gets a new revision only once
/// nothing on the node can hold a session, a node leaves service only when asked or chosen,
/// and a restarted node serves again only once its new pod is ready and its probe answers.
fn run_rollout_scenario(scenario: &RolloutScenario) -> Result<(), TestCaseError> {
    let n = scenario.has_probe.len();
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let interval = Duration::from_secs(scenario.interval);
    let ready_timeout = Duration::from_secs(scenario.ready_timeout);
    let policy = Policy {
        timeout: Duration::from_secs(300),
        on_deadline: OnDeadline::Proceed,
        force: false,
        ready_timeout,
        paused: false,
    };
    let mut statuses: Vec<Option<NodeStatus>> = vec![None; n];
    let mut pods: Vec<Option<PodObservation>> = (0..n).map(|i| Some(pod(&names[i], true, false))).collect();
    let mut deployments: Vec<String> = vec![REVISION.into(); n];
    let mut target = REVISION.to_string();
    let mut revisions = 1;
    let mut requested = vec![false; n];
    let mut created_pods = 0;
    let mut now = at(0);

    for (t, tick) in scenario.ticks.iter().enumerate() {
        if tick.new_target {
            revisions += 1;
            target = format!("r{revisions}");
        }
        if let Some(mask) = tick.request {
            requested = (0..n).map(|i| mask & (1 << i) != 0).collect();
        }
        // The planner only ever chooses nodes that serve (see `rollout::plan_restarts`); which of them,
        // and how many, is left to chance here.
        let selected: Vec<bool> = (0..n)
            .map(|i| {
                let serving = statuses[i].as_ref().is_some_and(|s| s.phase == NodePhase::Serving);
                serving && tick.selected & (1 << i) != 0
            })
            .collect();
        for (i, change) in tick.pods.iter().enumerate() {
            apply_pod_change(&mut pods[i], change, &names[i], &deployments[i], now, &mut created_pods);
        }
        now += StdDuration::from_secs(tick.advance);
        let probes: Vec<Option<ProbeOutcome>> = (0..n)
            .map(|i| {
                if !probe_due(statuses[i].as_ref(), pods[i].as_ref(), now) {
                    return None;
                }
                match (&tick.probes[i], scenario.has_probe[i]) {
                    (Probe::Skip, _) => None,
                    (_, false) => Some(ProbeOutcome::NoProbe),
                    (Probe::Count(c), true) => Some(ProbeOutcome::Count(*c)),
                    (Probe::Fail, true) => Some(ProbeOutcome::Failed("connection refused".into())),
                }
            })
            .collect();
        let inputs: Vec<NodeInput<'_>> = (0..n)
            .map(|i| NodeInput {
                name: &names[i],
                previous: statuses[i].as_ref(),
                pod: pods[i].as_ref(),
                drain_requested: requested[i],
                probe: probes[i].clone(),
                probe_sample: None,
                probe_interval: interval,
                serving_probe_interval: None,
                target_revision: Some(target.as_str()),
                deployment_exists: true,
                deployment_revision: Some(deployments[i].as_str()),
                selected: selected[i],
                leaving: false,
                force: false,
                maintenance: None,
                power: omero_operator::stopping::Power::Run,
            })
            .collect();
        let decisions = step(&inputs, &policy, now);
        drop(inputs);

        for (i, decision) in decisions.iter().enumerate() {
            let ctx = format!("tick {t}, {}: {:#?}", names[i], decision);
            let previous = statuses[i].as_ref();
            let was = previous.map(|s| s.phase).unwrap_or_default();
            let status = &decision.status;
            let is = status.phase;
            let pod = pods[i].as_ref();
            let server = Server::of(pod, now, ready_timeout);
            let has = |f: &dyn Fn(&NodeEvent) -> bool| decision.events.iter().any(f);
            let drained_now = has(&|e| {
                matches!(
                    e,
                    NodeEvent::DrainCompleted { .. } | NodeEvent::DeadlineReached { proceeding: true, .. }
                )
            });

            // The Deployment moves only to the target, and only once the node has nothing to
            // protect: its server holds no session, or it was drained (now or before).
            let released = status.deployment_revision.as_deref() != Some(deployments[i].as_str());
            if released {
                prop_assert_eq!(status.deployment_revision.as_deref(), Some(target.as_str()), "{}", ctx);
                let nothing_to_protect = server.gone()
                    || matches!(was, NodePhase::Drained | NodePhase::Restarting)
                    || (was == NodePhase::Draining && drained_now);
                prop_assert!(nothing_to_protect, "released while its server may hold sessions: {}", ctx);
                prop_assert_eq!(is, NodePhase::Restarting, "{}", ctx);
                prop_assert_eq!(status.restart_started_at.as_ref().map(|t| t.0), Some(now), "{}", ctx);
            }
            let restarting_events: Vec<&NodeEvent> =
                decision.events.iter().filter(|e| matches!(e, NodeEvent::Restarting { .. })).collect();
            let expected = NodeEvent::Restarting { node: names[i].clone(), revision: target.clone() };
            prop_assert_eq!(restarting_events, if released { vec![&expected] } else { vec![] }, "{}", ctx);

            // A server that may hold sessions leaves service only when asked or chosen.
            let out_of_date = deployments[i] != target;
            if !was.is_out_of_service() && is.is_out_of_service() && !server.gone() {
                prop_assert!(requested[i] || (selected[i] && out_of_date), "{}", ctx);
                prop_assert_eq!(is, NodePhase::Draining, "{}", ctx);
                let reason = if requested[i] { DrainReason::Requested } else { DrainReason::Rollout };
                prop_assert_eq!(status.drain_reason, Some(reason), "{}", ctx);
            }

            // Back from a restart only with the new pod ready and its probe answered.
            let restarted = has(&|e| matches!(e, NodeEvent::Restarted { .. }));
            let new_pod_ready = previous.is_some_and(|s| {
                pod.is_some_and(|p| p.ready && p.failure.is_none() && p.revision == s.deployment_revision)
            });
            let answered = matches!(probes[i], Some(ProbeOutcome::Count(_) | ProbeOutcome::NoProbe));
            if was == NodePhase::Restarting {
                prop_assert_eq!(restarted, new_pod_ready && answered, "{}", ctx);
                let started = previous.and_then(|s| s.restart_started_at.as_ref()).unwrap().0;
                let timed_out = started + ready_timeout.std() <= now;
                let new_pod_fails = pod.is_some_and(|p| {
                    p.failure.is_some() && p.revision == previous.and_then(|s| s.deployment_revision.clone())
                });
                let failed = has(&|e| matches!(e, NodeEvent::RestartFailed { .. }));
                // A restart fails exactly when its new pod cannot run, or when it is not back
                // in service within the ready timeout.
                prop_assert_eq!(failed, new_pod_fails || (timed_out && !restarted), "{}", ctx);
                if failed {
                    // Failed; or, its server not serving, released at once to a newer target.
                    let expected = if released { NodePhase::Restarting } else { NodePhase::Failed };
                    prop_assert_eq!(is, expected, "{}", ctx);
                }
                if is == NodePhase::Serving {
                    prop_assert!(restarted, "{}", ctx);
                }
                if restarted && !released {
                    let stays_out = if requested[i] { NodePhase::Drained } else { NodePhase::Serving };
                    prop_assert_eq!(is, stays_out, "{}", ctx);
                }
            } else {
                prop_assert!(!restarted, "{}", ctx);
            }

            // Restarting: out of service, its new pod not routable.
            if is == NodePhase::Restarting {
                prop_assert!(status.restart_started_at.is_some(), "{}", ctx);
                prop_assert_ne!(decision.set_routable, Some(true), "{}", ctx);
                prop_assert!(!status.routable, "{}", ctx);
                // Restarted into Drained (a requested drain), then released to a newer target.
                prop_assert!(!restarted || (released && requested[i]), "{}", ctx);
            }
            if decision.set_routable == Some(true) {
                prop_assert!(is == NodePhase::Serving && pod.is_some_and(|p| p.ready), "{}", ctx);
            }
            if is.is_out_of_service() {
                prop_assert!(
                    requested[i]
                        || status.drain_reason == Some(DrainReason::Rollout)
                        || is == NodePhase::Restarting,
                    "{}",
                    ctx
                );
            }
        }

        for (i, decision) in decisions.iter().enumerate() {
            if let (Some(routable), Some(pod)) = (decision.set_routable, pods[i].as_mut()) {
                pod.routable = routable;
            }
            deployments[i] = decision.status.deployment_revision.clone().unwrap();
            statuses[i] = Some(decision.status.clone());
        }
        let restored = through_the_api_server(&statuses);
        prop_assert_eq!(&restored, &only_recorded(&statuses));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn drain_invariants_hold_over_random_histories(scenario in scenario()) {
        run_scenario(&scenario)?;
    }

    #[test]
    fn rollout_invariants_hold_over_random_histories(scenario in rollout_scenario()) {
        run_rollout_scenario(&scenario)?;
    }

    #[test]
    fn parse_keeps_every_known_name_and_reports_every_bad_entry(
        entries in proptest::collection::vec(
            prop_oneof![
                Just("main".to_string()),
                Just("backup".to_string()),
                Just("ro-2".to_string()),
                Just(" ro-1 ".to_string()),
                Just(String::new()),
                Just("ro-9".to_string()),
                Just("Main".to_string()),
                "[a-z_ .]{1,6}",
            ],
            1..8,
        )
    ) {
        let value = entries.join(",");
        let request = parse(&annotations(&[(DRAIN_ANNOTATION, &value)]), NODES);
        let known: BTreeSet<String> =
            entries.iter().map(|e| e.trim().to_string()).filter(|e| NODES.contains(&e.as_str())).collect();
        prop_assert_eq!(&request.drain, &known);
        if !value.trim().is_empty() {
            let bad = entries.iter().filter(|e| !NODES.contains(&e.trim())).count();
            prop_assert_eq!(request.problems.len(), bad, "{:?}", request.problems);
        }
        prop_assert!(!request.force);
    }
}

/// A node in `phase`, ready when it serves.
fn node_in(name: &str, phase: NodePhase) -> NodeStatus {
    NodeStatus { name: name.into(), phase, ready: phase == NodePhase::Serving, ..NodeStatus::default() }
}

#[test]
fn refused_nodes_are_the_requested_ones_still_serving() {
    let request = Request { drain: nodes(&["a", "b", "d"]), ..Request::default() };
    let statuses = [
        node_in("a", NodePhase::Draining),
        node_in("b", NodePhase::Serving),
        node_in("c", NodePhase::Serving),
        // Leaving the spec: not a refused drain.
        NodeStatus { leaving: true, ..node_in("d", NodePhase::Serving) },
    ];
    assert_eq!(refused(&request.drain, &statuses), ["b"]);
}

#[test]
fn the_grid_master_is_taken_out_of_a_drain_request_and_reported() {
    let mut request = Request { drain: nodes(&["main", "w1"]), ..Request::default() };
    keep_grid_master(&mut request, "main");
    assert_eq!(request.drain, nodes(&["w1"]));
    assert_eq!(request.problems.len(), 1);
    assert!(request.problems[0].contains("'main' is the grid master"), "{:?}", request.problems);
    // Not asked for: nothing to report.
    keep_grid_master(&mut request, "main");
    assert_eq!(request.problems.len(), 1);
}

#[test]
fn the_redirect_targets_the_serving_master_else_the_first_serving_node() {
    // Always the master when it serves, even with nothing out of service: the row is owned.
    let all_serving = [node_in("w1", NodePhase::Serving), node_in("main", NodePhase::Serving)];
    assert_eq!(redirect_target(&all_serving, "main").map(|n| n.name.as_str()), Some("main"));
    // A master whose pod is not ready now is not a target, whatever OMERO's node table says.
    let mut blip = all_serving.clone();
    blip[1].ready = false;
    assert_eq!(redirect_target(&blip, "main").map(|n| n.name.as_str()), Some("w1"));

    let draining = [
        node_in("w1", NodePhase::Draining),
        node_in("w2", NodePhase::Serving),
        node_in("main", NodePhase::Serving),
    ];
    assert_eq!(redirect_target(&draining, "main").map(|n| n.name.as_str()), Some("main"));

    let restarting = [node_in("w1", NodePhase::Restarting), node_in("main", NodePhase::Serving)];
    assert_eq!(redirect_target(&restarting, "main").map(|n| n.name.as_str()), Some("main"));

    let master_down = [
        node_in("w1", NodePhase::Drained),
        node_in("w2", NodePhase::Serving),
        node_in("main", NodePhase::Starting),
    ];
    assert_eq!(redirect_target(&master_down, "main").map(|n| n.name.as_str()), Some("w2"));

    let none_serving = [node_in("w1", NodePhase::Drained), node_in("main", NodePhase::Failed)];
    assert_eq!(redirect_target(&none_serving, "main"), None, "nowhere to steer to");
}

// --- maintenance moves ----------------------------------------------------------------------

#[test]
fn a_maintenance_move_drains_then_replaces_the_pod_and_serves_on_the_new_one() {
    let mut c = Cluster::serving(&["main", "backup"]);
    c.pod_mut("backup").as_mut().unwrap().kube_node = Some("k1".into());
    let old_pod = c.pod_mut("backup").clone().unwrap().name;
    c.moving.insert("backup".into(), "k1".into());
    let d = c.step(&[]).swap_remove(1);
    assert_eq!(d.status.phase, NodePhase::Draining);
    assert_eq!(d.status.drain_reason, Some(DrainReason::Maintenance));
    assert_eq!(d.status.moving_off.as_deref(), Some("k1"));
    assert_eq!(d.set_routable, Some(false));
    assert!(d.status.message.as_deref().unwrap().starts_with("moving off node k1 for maintenance"), "{d:?}");
    assert!(d.events.contains(&NodeEvent::MovingOff { node: "backup".into(), kube_node: "k1".into() }));

    // Two zero counts: drained, and in the same step the pod it replaces is recorded.
    c.probe("backup", ProbeOutcome::Count(0));
    c.advance(30);
    let d = c.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(d.status.phase, NodePhase::Restarting);
    assert_eq!(d.status.replaced_pod.as_deref(), Some(old_pod.as_str()));
    assert_eq!(d.status.deployment_revision.as_deref(), Some(REVISION), "the same template");
    assert!(
        d.events.contains(&NodeEvent::PodReplaced {
            node: "backup".into(),
            kube_node: "k1".into(),
            pod: old_pod.clone()
        }),
        "{:?}",
        d.events
    );

    // The old pod, still there (a lagging cache), never counts as the new one, ready or not.
    c.advance(5);
    let d = c.step(&[]).swap_remove(1);
    assert_eq!(d.status.phase, NodePhase::Restarting);
    assert!(!c.due("backup"), "the replaced pod is never probed as the new one");
    // The new pod, elsewhere: probed once ready, then serving.
    *c.pod_mut("backup") = Some(new_pod("backup", "n2", REVISION, c.now, false));
    c.advance(5);
    let d = c.step(&[]).swap_remove(1);
    assert!(d.status.message.as_deref().unwrap().contains("moving off node k1"), "{d:?}");
    *c.pod_mut("backup") = Some(new_pod("backup", "n2", REVISION, c.now, true));
    let d = c.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(d.status.phase, NodePhase::Serving);
    assert_eq!(d.set_routable, Some(true));
    assert_eq!((d.status.moving_off.clone(), d.status.replaced_pod.clone()), (None, None));
    assert!(d.events.contains(&NodeEvent::Moved { node: "backup".into(), kube_node: "k1".into() }));
}

#[test]
fn an_uncordon_cancels_a_draining_move_but_a_drained_one_moves() {
    let mut c = Cluster::serving(&["main", "backup"]);
    c.moving.insert("backup".into(), "k1".into());
    c.step(&[]);
    assert_eq!(c.status("backup").phase, NodePhase::Draining);
    c.moving.clear();
    let d = c.step(&[]).swap_remove(1);
    assert_eq!(d.status.phase, NodePhase::Serving);
    assert_eq!((d.status.drain_reason, d.status.moving_off.clone()), (None, None));
    assert_eq!(d.set_routable, Some(true));
    assert!(d.events.contains(&undrained("backup")));
}

#[test]
fn a_maintenance_move_of_a_node_that_does_not_serve_is_drained_at_once() {
    let mut c = Cluster::serving(&["main", "backup"]);
    c.pod_mut("backup").as_mut().unwrap().running = false;
    c.pod_mut("backup").as_mut().unwrap().ready = false;
    c.moving.insert("backup".into(), "k1".into());
    let d = c.step(&[]).swap_remove(1);
    assert_eq!(d.status.phase, NodePhase::Restarting, "drained at once, then moved: {d:?}");
    assert_eq!(d.status.moving_off.as_deref(), Some("k1"));
    assert_eq!(d.status.replaced_pod, None, "its pod is not on k1 (unknown): nothing to delete");
}
