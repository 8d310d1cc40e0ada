//! The drain state machine through its public API: every transition and rule, resumption from
//! a status that went through the API server, and property tests over random histories of
//! requests, pods, probes and time.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration as StdDuration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use omero_operator::{
    api::{Duration, NodePhase, NodeStatus, OnDeadline},
    drain::{
        DRAIN_ANNOTATION, Decision, DrainEvent, DrainRequest, FORCE_ANNOTATION, MAX_PROBE_BACKOFF, NodeInput,
        PodObservation, Policy, ProbeOutcome, ZERO_CONFIRMATIONS, next_wakeup, parse_request, probe_backoff,
        probe_due, step,
    },
};
use proptest::prelude::*;

const INTERVAL: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(600);
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

fn pod(node: &str, ready: bool, routable: bool) -> PodObservation {
    PodObservation {
        name: format!("omero-{node}-5d8f7"),
        ip: Some("10.0.0.7".into()),
        ready,
        routable,
        image: Some("openmicroscopy/omero-server:5.6".into()),
        failure: None,
    }
}

fn event_names(decisions: &[Decision]) -> Vec<DrainEvent> {
    decisions.iter().flat_map(|d| d.events.iter().cloned()).collect()
}

/// A cluster as the controller sees it between reconciles: the persisted statuses, the pods,
/// the annotations. `step` plays one reconcile and carries out the label patches.
struct Cluster {
    names: Vec<String>,
    statuses: Vec<Option<NodeStatus>>,
    pods: Vec<Option<PodObservation>>,
    requested: BTreeSet<String>,
    policy: Policy,
    interval: Duration,
    now: Timestamp,
}

impl Cluster {
    /// Fresh pods, ready but not yet labelled, and no status: the first reconcile.
    fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(ToString::to_string).collect(),
            statuses: vec![None; names.len()],
            pods: names.iter().map(|n| Some(pod(n, true, false))).collect(),
            requested: BTreeSet::new(),
            policy: Policy { timeout: TIMEOUT, on_deadline: OnDeadline::Proceed, force: false },
            interval: INTERVAL,
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
                probe_interval: self.interval,
            })
            .collect();
        let decisions = step(&inputs, &self.policy, self.now);
        assert_eq!(decisions.len(), self.names.len());
        for (i, decision) in decisions.iter().enumerate() {
            assert_eq!(decision.status.name, self.names[i]);
            if let (Some(routable), Some(pod)) = (decision.set_routable, self.pods[i].as_mut()) {
                pod.routable = routable;
            }
            self.statuses[i] = Some(decision.status.clone());
        }
        decisions
    }

    /// One reconcile in which only `name` was probed; returns that node's decision.
    fn probe(&mut self, name: &str, outcome: ProbeOutcome) -> Decision {
        let i = self.index(name);
        assert!(probe_due(self.statuses[i].as_ref(), self.now), "{name} is not due for a probe");
        self.step(&[(name, outcome)]).swap_remove(i)
    }
}

// --- parse_request -------------------------------------------------------------------------

const NODES: &[&str] = &["main", "backup", "ro-1", "ro-2"];

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(ToString::to_string).collect()
}

#[test]
fn parse_valid_list() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "backup,ro-2")]), NODES);
    assert_eq!(request, DrainRequest { nodes: nodes(&["backup", "ro-2"]), force: false, problems: vec![] });
}

#[test]
fn parse_trims_whitespace_around_names_and_the_value() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "  backup ,\tro-2\n")]), NODES);
    assert_eq!(request.nodes, nodes(&["backup", "ro-2"]));
    assert!(request.problems.is_empty(), "{:?}", request.problems);
}

#[test]
fn parse_a_repeated_name_drains_it_once_without_complaint() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "backup,backup")]), NODES);
    assert_eq!(request.nodes, nodes(&["backup"]));
    assert!(request.problems.is_empty());
}

#[test]
fn parse_reports_empty_entries_and_keeps_the_valid_ones() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "backup,, ,ro-2")]), NODES);
    assert_eq!(request.nodes, nodes(&["backup", "ro-2"]));
    assert_eq!(request.problems.len(), 2, "{:?}", request.problems);
    assert!(request.problems[0].contains("entry 2 is empty"), "{}", request.problems[0]);
    assert!(request.problems[1].contains("entry 3 is empty"), "{}", request.problems[1]);
    assert!(request.problems.iter().all(|p| p.starts_with(DRAIN_ANNOTATION)));
}

#[test]
fn parse_reports_a_trailing_comma_as_an_empty_entry() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "backup,")]), NODES);
    assert_eq!(request.nodes, nodes(&["backup"]));
    assert_eq!(request.problems.len(), 1);
    assert!(request.problems[0].contains("entry 2 is empty"), "{}", request.problems[0]);
}

#[test]
fn parse_reports_an_unknown_name_with_the_list_of_nodes() {
    let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, "backup,ro-3")]), NODES);
    assert_eq!(request.nodes, nodes(&["backup"]));
    assert_eq!(request.problems.len(), 1);
    let problem = &request.problems[0];
    assert!(problem.contains("no node named 'ro-3'"), "{problem}");
    assert!(problem.contains("main, backup, ro-1, ro-2"), "{problem}");
}

#[test]
fn parse_reports_malformed_entries() {
    for bad in ["Backup", "ro_2", "ro 2", "backup;ro-2", "\"backup\"", "ro-2/"] {
        let value = format!("main,{bad}");
        let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, &value)]), NODES);
        assert_eq!(request.nodes, nodes(&["main"]), "{bad}");
        assert_eq!(request.problems.len(), 1, "{bad}: {:?}", request.problems);
        assert!(request.problems[0].contains("is not a node name"), "{}", request.problems[0]);
        assert!(request.problems[0].contains(bad.trim()), "{}", request.problems[0]);
    }
}

#[test]
fn parse_force_true() {
    let request =
        parse_request(&annotations(&[(DRAIN_ANNOTATION, "main"), (FORCE_ANNOTATION, "true")]), NODES);
    assert!(request.force);
    assert!(request.problems.is_empty());
    let request = parse_request(&annotations(&[(FORCE_ANNOTATION, " true ")]), NODES);
    assert!(request.force, "surrounding whitespace is ignored");
}

#[test]
fn parse_force_false_or_empty_is_no_force_and_no_problem() {
    for value in ["false", "", "  "] {
        let request = parse_request(&annotations(&[(FORCE_ANNOTATION, value)]), NODES);
        assert_eq!(request, DrainRequest::default(), "{value:?}");
    }
}

#[test]
fn parse_force_garbage_is_reported_and_does_not_force() {
    for value in ["yes", "1", "True", "TRUE", "on"] {
        let request =
            parse_request(&annotations(&[(DRAIN_ANNOTATION, "main"), (FORCE_ANNOTATION, value)]), NODES);
        assert!(!request.force, "{value}");
        assert_eq!(request.nodes, nodes(&["main"]), "the drain list still counts");
        assert_eq!(request.problems.len(), 1, "{value}");
        assert!(request.problems[0].starts_with(FORCE_ANNOTATION), "{}", request.problems[0]);
        assert!(request.problems[0].contains(value), "{}", request.problems[0]);
    }
}

#[test]
fn parse_without_annotations_requests_nothing() {
    assert_eq!(parse_request(&BTreeMap::new(), NODES), DrainRequest::default());
    let unrelated = annotations(&[("kubectl.kubernetes.io/last-applied-configuration", "{}")]);
    assert_eq!(parse_request(&unrelated, NODES), DrainRequest::default());
    for blank in ["", "   "] {
        assert_eq!(parse_request(&annotations(&[(DRAIN_ANNOTATION, blank)]), NODES), DrainRequest::default());
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
fn phases_follow_the_pod_when_not_draining() {
    let mut cluster = Cluster::new(&["none", "starting", "failed", "failed-ready"]);
    *cluster.pod_mut("none") = None;
    *cluster.pod_mut("starting") = Some(pod("starting", false, false));
    *cluster.pod_mut("failed") =
        Some(PodObservation { failure: Some("ImagePullBackOff".into()), ..pod("failed", false, false) });
    // A failure wins over a ready flag: the pod cannot run.
    *cluster.pod_mut("failed-ready") =
        Some(PodObservation { failure: Some("CrashLoopBackOff".into()), ..pod("failed-ready", true, false) });
    let decisions = cluster.step(&[]);
    let phases: Vec<_> = decisions.iter().map(|d| d.status.phase).collect();
    assert_eq!(phases, [NodePhase::Pending, NodePhase::Starting, NodePhase::Failed, NodePhase::Failed]);
    assert!(decisions.iter().all(|d| d.set_routable.is_none() && d.events.is_empty()));
    assert_eq!(decisions[0].status.pod, None);
    assert!(!decisions[1].status.ready);
    assert_eq!(decisions[2].status.message.as_deref(), Some("ImagePullBackOff"));
    assert_eq!(decisions[3].status.message.as_deref(), Some("CrashLoopBackOff"));

    // Starting -> Serving once ready, and the label goes on.
    cluster.pod_mut("starting").as_mut().unwrap().ready = true;
    cluster.advance(5);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
    assert_eq!(decisions[1].set_routable, Some(true));
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
    assert_eq!(backup.events, [DrainEvent::Started { node: "backup".into(), deadline: at(610) }]);
    assert!(probe_due(Some(&backup.status), cluster.now));

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
    let [DrainEvent::Refused { node, reason }] = main.events.as_slice() else {
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
    assert!(matches!(decisions[0].events.as_slice(), [DrainEvent::Refused { .. }]));
}

#[test]
fn a_node_that_is_not_ready_does_not_count_as_serving() {
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.pod_mut("backup").as_mut().unwrap().ready = false;
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
    assert!(matches!(decisions[0].events.as_slice(), [DrainEvent::Refused { .. }]));
    assert_eq!(decisions[1].status.phase, NodePhase::Starting);

    // Once backup serves again, the refused drain goes ahead.
    cluster.pod_mut("backup").as_mut().unwrap().ready = true;
    cluster.advance(20);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert!(matches!(decisions[0].events.as_slice(), [DrainEvent::Started { .. }]));
    assert_eq!(decisions[0].status.drain_started_at, time(20));
    assert!(decisions[0].status.message.as_deref().is_some_and(|m| !m.contains("refused")));
    assert_eq!(decisions[1].status.phase, NodePhase::Serving);
}

#[test]
fn forced_drain_takes_the_last_serving_node() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.policy.force = true;
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Draining);
    assert_eq!(decisions[0].set_routable, Some(false));
    assert_eq!(decisions[0].events, [DrainEvent::Started { node: "main".into(), deadline: at(600) }]);
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
        [DrainEvent::Started { node: a, .. }, DrainEvent::Refused { node: b, .. }] if a == "main" && b == "backup"
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
    assert_eq!(
        event_names(&decisions),
        [
            DrainEvent::Undrained { node: "main".into() },
            DrainEvent::Started { node: "backup".into(), deadline: at(630) }
        ]
    );
}

#[test]
fn a_node_whose_pod_is_not_ready_is_drained_at_once() {
    let mut cluster = Cluster::serving(&["main", "starting", "gone", "failed"]);
    *cluster.pod_mut("starting") = Some(pod("starting", false, true));
    *cluster.pod_mut("gone") = None;
    *cluster.pod_mut("failed") =
        Some(PodObservation { failure: Some("CrashLoopBackOff".into()), ..pod("failed", true, true) });
    cluster.advance(3);
    cluster.drain(&["starting", "gone", "failed"]);
    let decisions = cluster.step(&[]);
    for decision in &decisions[1..] {
        let name = decision.status.name.as_str();
        assert_eq!(decision.status.phase, NodePhase::Drained, "{name}");
        assert_eq!(decision.events, [DrainEvent::Completed { node: name.into() }]);
        assert_eq!(decision.status.drain_started_at, time(3));
        assert_eq!(decision.status.drain_deadline, None);
        assert_eq!(decision.status.next_probe_at, None);
        assert!(decision.status.message.as_deref().unwrap().contains("not ready"), "{name}");
        assert!(!probe_due(Some(&decision.status), cluster.now));
    }
    // The label comes off a pod that still carries it; a missing pod needs no patch.
    assert_eq!(decisions[1].set_routable, Some(false));
    assert_eq!(decisions[2].set_routable, None);
    assert_eq!(decisions[3].set_routable, Some(false));
    assert_eq!(decisions[0].status.phase, NodePhase::Serving);
}

#[test]
fn the_only_node_drains_at_once_without_force_when_its_pod_is_not_ready() {
    let mut cluster = Cluster::serving(&["main"]);
    cluster.pod_mut("main").as_mut().unwrap().ready = false;
    cluster.drain(&["main"]);
    let decisions = cluster.step(&[]);
    assert_eq!(decisions[0].status.phase, NodePhase::Drained);
    assert_eq!(decisions[0].events, [DrainEvent::Completed { node: "main".into() }]);
}

// --- probes ---------------------------------------------------------------------------------

#[test]
fn open_sessions_keep_the_node_draining() {
    let mut cluster = Cluster::draining_backup();
    cluster.advance(1);
    let backup = cluster.probe("backup", ProbeOutcome::Count(3));
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert_eq!(backup.status.sessions, Some(3));
    assert_eq!(backup.status.sessions_observed_at, time(1));
    assert_eq!(backup.status.zero_session_probes, 0);
    assert_eq!(backup.status.next_probe_at, time(31));
    assert!(backup.status.message.as_deref().unwrap().contains("3 open sessions"));
    assert_eq!((backup.set_routable, backup.events.len()), (None, 0));
    assert!(!probe_due(Some(&backup.status), at(30)));
    assert!(probe_due(Some(&backup.status), at(31)));
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
    assert_eq!(backup.events, [DrainEvent::Completed { node: "backup".into() }]);
    assert_eq!(backup.set_routable, None, "the label is already off");
    assert_eq!(backup.status.next_probe_at, None);
    assert_eq!(backup.status.sessions, Some(0));
    assert_eq!(backup.status.drain_deadline, time(600), "kept for the record");
    assert!(!backup.status.deadline_reached);
    assert_eq!(backup.status.message.as_deref(), Some("drained: no open sessions"));
    assert!(!probe_due(Some(&backup.status), cluster.now));
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
        assert!(message.contains(&format!("failing ({failures} in a row)")), "{message}");
        assert!(message.contains("last good count 4"), "{message}");
        let next = status.next_probe_at.as_ref().unwrap().0;
        assert!(!probe_due(Some(status), cluster.now));
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
    assert_eq!(next_wakeup(&[cluster.status("main").clone(), backup.status.clone()]), Some(at(600)));

    cluster.advance(599);
    let backup = cluster.probe("backup", ProbeOutcome::NoProbe);
    assert_eq!(backup.status.phase, NodePhase::Draining);
    assert!(backup.events.is_empty());

    cluster.advance(1);
    let backup = cluster.probe("backup", ProbeOutcome::NoProbe);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(
        backup.events,
        [DrainEvent::DeadlineReached { node: "backup".into(), sessions: None, proceeding: true }]
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
        [DrainEvent::DeadlineReached { node: "backup".into(), sessions: Some(5), proceeding: true }]
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
        [DrainEvent::DeadlineReached { node: "backup".into(), sessions: Some(5), proceeding: false }]
    );
    let message = backup.status.message.as_deref().unwrap();
    assert!(message.contains("5 sessions open") && message.contains("Hold"), "{message}");
    // Past the deadline only the probe wakes the node up.
    assert_eq!(next_wakeup(std::slice::from_ref(&backup.status)), Some(at(30)));

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
    assert_eq!(backup.events, [DrainEvent::Completed { node: "backup".into() }]);
    assert_eq!(backup.status.drain_deadline, time(600));
}

// --- pods and requests changing mid-drain ---------------------------------------------------

#[test]
fn a_pod_that_stops_being_ready_mid_drain_is_drained() {
    for change in ["not ready", "failed", "gone"] {
        let mut cluster = Cluster::draining_backup();
        cluster.probe("backup", ProbeOutcome::Count(3));
        cluster.advance(10);
        let pod = cluster.pod_mut("backup");
        match change {
            "not ready" => pod.as_mut().unwrap().ready = false,
            "failed" => pod.as_mut().unwrap().failure = Some("OOMKilled".into()),
            _ => *pod = None,
        }
        let backup = cluster.step(&[]).swap_remove(1);
        assert_eq!(backup.status.phase, NodePhase::Drained, "{change}");
        assert_eq!(backup.events, [DrainEvent::Completed { node: "backup".into() }], "{change}");
        assert_eq!(backup.status.next_probe_at, None);
        assert_eq!(backup.status.drain_deadline, time(600));
        assert!(backup.status.message.as_deref().unwrap().contains("stopped being ready"));
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
    assert_eq!(backup.events, [DrainEvent::Undrained { node: "backup".into() }]);
    let cleared = NodeStatus {
        name: "backup".into(),
        phase: NodePhase::Serving,
        ready: true,
        routable: true,
        image: backup.status.image.clone(),
        pod: backup.status.pod.clone(),
        ..NodeStatus::default()
    };
    assert_eq!(backup.status, cleared, "every drain field is cleared");
}

#[test]
fn undrain_of_a_node_that_is_not_ready_waits_for_ready_before_the_label() {
    let mut cluster = Cluster::draining_backup();
    cluster.probe("backup", ProbeOutcome::Count(1));
    cluster.pod_mut("backup").as_mut().unwrap().ready = false;
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);

    cluster.drain(&[]);
    cluster.advance(10);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Starting);
    assert_eq!(backup.set_routable, None);
    assert_eq!(backup.events, [DrainEvent::Undrained { node: "backup".into() }]);
    assert_eq!(backup.status.drain_started_at, None);

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
        assert!(!probe_due(Some(&backup.status), cluster.now));
    }
    // Someone puts the label back by hand: it comes off again.
    cluster.pod_mut("backup").as_mut().unwrap().routable = true;
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.set_routable, Some(false));
    assert_eq!(backup.status.phase, NodePhase::Drained);

    cluster.drain(&[]);
    let backup = cluster.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Serving);
    assert_eq!(backup.events, [DrainEvent::Undrained { node: "backup".into() }]);
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
fn probe_is_due_only_for_draining_nodes_at_their_time() {
    assert!(!probe_due(None, at(0)));
    for phase in [
        NodePhase::Pending,
        NodePhase::Starting,
        NodePhase::Serving,
        NodePhase::Drained,
        NodePhase::Restarting,
        NodePhase::Failed,
    ] {
        assert!(!probe_due(Some(&status_with(phase, Some(0), Some(600))), at(100)), "{phase:?}");
    }
    let draining = status_with(NodePhase::Draining, Some(30), Some(600));
    assert!(!probe_due(Some(&draining), at(29)));
    assert!(probe_due(Some(&draining), at(30)));
    assert!(probe_due(Some(&draining), at(31)));
    assert!(probe_due(Some(&status_with(NodePhase::Draining, None, Some(600))), at(0)));
}

#[test]
fn next_wakeup_is_the_earliest_probe_or_deadline_of_a_draining_node() {
    assert_eq!(next_wakeup(&[]), None);
    let statuses = [
        status_with(NodePhase::Serving, Some(1), Some(1)),
        status_with(NodePhase::Drained, Some(2), Some(2)),
        status_with(NodePhase::Draining, Some(90), Some(600)),
        status_with(NodePhase::Draining, None, Some(300)),
    ];
    assert_eq!(next_wakeup(&statuses), Some(at(90)));
    assert_eq!(next_wakeup(&statuses[3..]), Some(at(300)));
    assert_eq!(next_wakeup(&statuses[..2]), None);
    // A deadline already reached (Hold) no longer wakes anything.
    let held = NodeStatus { deadline_reached: true, ..status_with(NodePhase::Draining, None, Some(300)) };
    assert_eq!(next_wakeup(std::slice::from_ref(&held)), None);
    let held = NodeStatus { next_probe_at: time(700), ..held };
    assert_eq!(next_wakeup(&[held]), Some(at(700)));
}

// --- extreme durations ----------------------------------------------------------------------

#[test]
fn an_enormous_timeout_or_interval_does_not_panic() {
    // The schema accepts any number of hours; the deadline must saturate, not overflow.
    let mut cluster = Cluster::serving(&["main", "backup"]);
    cluster.policy.timeout = "99999999999h".parse().unwrap();
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
}

// --- resuming after an operator restart -----------------------------------------------------

/// What the API server gives back: the status as JSON, `Time` at second precision.
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
    assert_eq!(json["zeroSessionProbes"], 1);

    // The operator restarts 20 seconds later: a new process with only the stored status.
    let restored = through_the_api_server(&cluster.statuses);
    assert_eq!(restored, cluster.statuses, "whole-second times survive the round trip");
    let mut resumed = Cluster::serving(&["main", "backup"]);
    resumed.statuses = restored;
    resumed.pods = cluster.pods.clone();
    resumed.drain(&["backup"]);
    resumed.now = cluster.now + StdDuration::from_secs(20);
    resumed.advance(10);

    let backup = resumed.probe("backup", ProbeOutcome::Count(0));
    assert_eq!(backup.status.phase, NodePhase::Drained, "the first zero before the restart counts");
    assert_eq!(backup.status.drain_deadline, time(600));
    assert_eq!(backup.status.drain_started_at, time(0));
    assert_eq!(backup.events, [DrainEvent::Completed { node: "backup".into() }]);
}

#[test]
fn a_restarted_operator_keeps_the_deadline_and_the_backoff() {
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
    assert!(event_names(&decisions).is_empty(), "no second Started: {decisions:#?}");
    assert!(decisions.iter().all(|d| d.set_routable.is_none()));
    assert!(!probe_due(resumed.statuses[1].as_ref(), at(100)), "the backoff survives");
    resumed.advance_to(at(120));
    let backup = resumed.probe("backup", ProbeOutcome::Failed("timeout".into()));
    assert_eq!(backup.status.probe_failures, 3);
    assert_eq!(backup.status.next_probe_at, time(240));
    assert_eq!(backup.status.sessions, Some(6));

    // Down across the deadline: the first reconcile after it reports it with the last count.
    resumed.statuses = through_the_api_server(&resumed.statuses);
    resumed.advance_to(at(900));
    let backup = resumed.step(&[]).swap_remove(1);
    assert_eq!(backup.status.phase, NodePhase::Drained);
    assert_eq!(
        backup.events,
        [DrainEvent::DeadlineReached { node: "backup".into(), sessions: Some(6), proceeding: true }]
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

// --- properties over random histories -------------------------------------------------------

#[derive(Clone, Debug)]
enum PodChange {
    Keep,
    Ready,
    NotReady,
    Fail,
    Gone,
    /// Someone sets or removes the routable label by hand.
    Label(bool),
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
    pods: Vec<PodChange>,
    probes: Vec<Probe>,
    advance: u64,
}

#[derive(Clone, Debug)]
struct Scenario {
    timeout: u64,
    interval: u64,
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
        1 => Just(PodChange::Fail),
        1 => Just(PodChange::Gone),
        1 => any::<bool>().prop_map(PodChange::Label),
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
        proptest::collection::vec(pod_change(), nodes),
        proptest::collection::vec(probe(), nodes),
        prop_oneof![0u64..=5, 5u64..=120, 120u64..=700],
    )
        .prop_map(|(request, force, pods, probes, advance)| Tick {
            request,
            force,
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
            prop_oneof![Just(OnDeadline::Proceed), Just(OnDeadline::Hold)],
            proptest::collection::vec(proptest::bool::weighted(0.8), nodes),
            proptest::collection::vec(proptest::bool::weighted(0.9), nodes),
            proptest::collection::vec(tick(nodes), 1..=30),
        )
            .prop_map(|(timeout, interval, on_deadline, has_probe, initially_ready, ticks)| {
                Scenario { timeout, interval, on_deadline, has_probe, initially_ready, ticks }
            })
    })
}

fn is_ready(pod: Option<&PodObservation>) -> bool {
    pod.is_some_and(|p| p.ready && p.failure.is_none())
}

fn expected_service_phase(pod: Option<&PodObservation>) -> NodePhase {
    match pod {
        None => NodePhase::Pending,
        Some(p) if p.failure.is_some() => NodePhase::Failed,
        Some(p) if p.ready => NodePhase::Serving,
        Some(_) => NodePhase::Starting,
    }
}

fn refused(status: Option<&NodeStatus>) -> bool {
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
}

fn apply_pod_change(pod: &mut Option<PodObservation>, change: &PodChange, name: &str, restarts: &mut u32) {
    match change {
        PodChange::Keep => {}
        PodChange::Ready => match pod {
            Some(p) => {
                p.ready = true;
                p.failure = None;
            }
            None => {
                *restarts += 1;
                *pod = Some(PodObservation {
                    name: format!("omero-{name}-{restarts}"),
                    ..self::pod(name, true, false)
                });
            }
        },
        PodChange::NotReady => match pod {
            Some(p) => p.ready = false,
            None => *pod = Some(self::pod(name, false, false)),
        },
        PodChange::Fail => {
            let p = pod.get_or_insert_with(|| self::pod(name, false, false));
            p.ready = false;
            p.failure = Some("CrashLoopBackOff".into());
        }
        PodChange::Gone => *pod = None,
        PodChange::Label(routable) => {
            if let Some(p) = pod {
                p.routable = *routable;
            }
        }
    }
}

fn run_scenario(scenario: &Scenario) -> Result<(), TestCaseError> {
    let n = scenario.has_probe.len();
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let timeout = Duration::from_secs(scenario.timeout);
    let interval = Duration::from_secs(scenario.interval);
    let proceed = scenario.on_deadline == OnDeadline::Proceed;
    let mut statuses: Vec<Option<NodeStatus>> = vec![None; n];
    let mut pods: Vec<Option<PodObservation>> =
        (0..n).map(|i| Some(pod(&names[i], scenario.initially_ready[i], false))).collect();
    let mut models = vec![Model::default(); n];
    let mut requested = vec![false; n];
    let mut restarts = 0;
    let mut now = at(0);

    for (t, tick) in scenario.ticks.iter().enumerate() {
        if let Some(mask) = tick.request {
            requested = (0..n).map(|i| mask & (1 << i) != 0).collect();
        }
        for (i, change) in tick.pods.iter().enumerate() {
            apply_pod_change(&mut pods[i], change, &names[i], &mut restarts);
        }
        now += StdDuration::from_secs(tick.advance);
        let policy = Policy { timeout, on_deadline: scenario.on_deadline, force: tick.force };
        let probes: Vec<Option<ProbeOutcome>> = (0..n)
            .map(|i| {
                if !probe_due(statuses[i].as_ref(), now) {
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
                probe_interval: interval,
            })
            .collect();
        let decisions = step(&inputs, &policy, now);
        drop(inputs);
        prop_assert_eq!(decisions.len(), n);

        let ctx = |i: usize| format!("tick {t}, {}: {:#?}", names[i], decisions[i]);
        let previous_phase = |i: usize| statuses[i].as_ref().map(|s| s.phase).unwrap_or_default();
        let ready: Vec<bool> = (0..n).map(|i| is_ready(pods[i].as_ref())).collect();

        // Never the last serving node without force. The nodes that can serve after this step
        // are the ready ones not deliberately out of service, plus the ready ones whose drain was
        // withdrawn; if there is one, one of them still serves.
        let could_serve: Vec<usize> = (0..n)
            .filter(|&i| ready[i] && (!previous_phase(i).is_out_of_service() || !requested[i]))
            .collect();
        if !policy.force && !could_serve.is_empty() {
            prop_assert!(
                could_serve.iter().any(|&i| decisions[i].status.phase == NodePhase::Serving),
                "tick {}: the last serving node left without force: {:#?}",
                t,
                decisions
            );
        }
        // The weaker form: a ready node that was Serving is never the only one and leaves.
        let serving_before: Vec<usize> =
            (0..n).filter(|&i| ready[i] && previous_phase(i) == NodePhase::Serving).collect();
        if !policy.force && serving_before.len() == 1 {
            let i = serving_before[0];
            let others_serve = (0..n).any(|j| j != i && decisions[j].status.phase == NodePhase::Serving);
            prop_assert!(others_serve || decisions[i].status.phase == NodePhase::Serving, "{}", ctx(i));
        }

        let out_of_service = decisions.iter().filter(|d| d.status.phase.is_out_of_service()).count();
        prop_assert!(out_of_service <= requested.iter().filter(|r| **r).count());

        for i in 0..n {
            let previous = statuses[i].as_ref();
            let was = previous_phase(i);
            let decision = &decisions[i];
            let status = &decision.status;
            let is = status.phase;
            let deadline = status.drain_deadline.as_ref().map(|d| d.0);
            let deadline_passed = deadline.is_some_and(|d| d <= now);
            let model = &mut models[i];

            // The model's view of this drain.
            if is == NodePhase::Draining && was != NodePhase::Draining {
                *model = Model::default();
            }
            match &probes[i] {
                Some(ProbeOutcome::Count(0)) => model.zeros += 1,
                Some(ProbeOutcome::Count(_) | ProbeOutcome::Failed(_)) => model.zeros = 0,
                Some(ProbeOutcome::NoProbe) | None => {}
            }

            prop_assert_eq!(&status.name, &names[i]);
            prop_assert_eq!(status.ready, pods[i].as_ref().is_some_and(|p| p.ready), "{}", ctx(i));

            // Out of service only on request.
            if is.is_out_of_service() {
                prop_assert!(requested[i], "{}", ctx(i));
            }
            prop_assert!(is != NodePhase::Restarting, "{}", ctx(i));

            if !requested[i] {
                prop_assert_eq!(is, expected_service_phase(pods[i].as_ref()), "{}", ctx(i));
                prop_assert_eq!(status.drain_started_at.as_ref(), None, "{}", ctx(i));
                prop_assert_eq!(status.drain_deadline.as_ref(), None, "{}", ctx(i));
                prop_assert_eq!(status.next_probe_at.as_ref(), None, "{}", ctx(i));
                prop_assert_eq!(status.sessions, None, "{}", ctx(i));
                prop_assert_eq!(status.probe_error.as_ref(), None, "{}", ctx(i));
                prop_assert!(!status.deadline_reached, "{}", ctx(i));
                prop_assert_eq!(status.zero_session_probes + status.probe_failures, 0, "{}", ctx(i));
            } else if ready[i] && !was.is_out_of_service() {
                // A ready node asked to drain starts draining, or is refused (never when forced).
                if policy.force {
                    prop_assert_eq!(is, NodePhase::Draining, "{}", ctx(i));
                } else {
                    prop_assert!(matches!(is, NodePhase::Draining | NodePhase::Serving), "{}", ctx(i));
                }
            } else if !ready[i] && !was.is_out_of_service() {
                prop_assert_eq!(
                    is,
                    NodePhase::Drained,
                    "a node that is not ready drains at once: {}",
                    ctx(i)
                );
            } else if was == NodePhase::Drained {
                let expected = NodeStatus {
                    ready: status.ready,
                    routable: status.routable,
                    image: status.image.clone(),
                    pod: status.pod.clone(),
                    ..previous.unwrap().clone()
                };
                prop_assert_eq!(status, &expected, "a drained node stays as it was: {}", ctx(i));
            }

            // The deadline never moves while the node stays in its drain.
            if requested[i]
                && matches!(was, NodePhase::Draining | NodePhase::Drained)
                && matches!(is, NodePhase::Draining | NodePhase::Drained)
            {
                let previous = previous.unwrap();
                prop_assert_eq!(&status.drain_deadline, &previous.drain_deadline, "{}", ctx(i));
                prop_assert_eq!(&status.drain_started_at, &previous.drain_started_at, "{}", ctx(i));
            }
            if is == NodePhase::Draining {
                prop_assert!(status.drain_started_at.is_some() && deadline.is_some(), "{}", ctx(i));
                prop_assert_eq!(status.deadline_reached, deadline_passed, "{}", ctx(i));
                if proceed || policy.force {
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
            }

            // Why a draining node became Drained: its pod stopped being ready, the deadline
            // passed with Proceed (or Hold, forced), or two zero counts in a row. Never a failed probe, never
            // open sessions before the deadline.
            if was == NodePhase::Draining && is == NodePhase::Drained {
                let by_deadline = deadline_passed && (proceed || policy.force);
                prop_assert!(
                    !ready[i] || by_deadline || model.zeros >= ZERO_CONFIRMATIONS,
                    "drained without a reason: {}",
                    ctx(i)
                );
                if matches!(probes[i], Some(ProbeOutcome::Failed(_))) {
                    prop_assert!(!ready[i] || by_deadline, "a failed probe drained the node: {}", ctx(i));
                }
                if status.sessions.is_some_and(|s| s > 0) {
                    prop_assert!(!ready[i] || by_deadline, "drained with open sessions: {}", ctx(i));
                }
            }
            if was == NodePhase::Draining && requested[i] && ready[i] && deadline_passed && proceed {
                prop_assert_eq!(is, NodePhase::Drained, "{}", ctx(i));
            }

            // What the probe did to the status.
            if was == NodePhase::Draining && is == NodePhase::Draining {
                let previous = previous.unwrap();
                match &probes[i] {
                    Some(ProbeOutcome::Count(c)) => {
                        prop_assert_eq!(status.sessions, Some(*c as i64), "{}", ctx(i));
                        prop_assert_eq!(status.probe_error.as_ref(), None, "{}", ctx(i));
                        prop_assert_eq!(
                            status.next_probe_at.as_ref().map(|t| t.0),
                            Some(now + interval.std())
                        );
                    }
                    Some(ProbeOutcome::Failed(error)) => {
                        prop_assert_eq!(status.sessions, previous.sessions, "{}", ctx(i));
                        prop_assert_eq!(status.probe_error.as_ref(), Some(error), "{}", ctx(i));
                        prop_assert_eq!(status.probe_failures, previous.probe_failures + 1, "{}", ctx(i));
                        let backoff = probe_backoff(interval, status.probe_failures);
                        prop_assert!(
                            backoff >= interval && backoff.as_millis() <= 300_000.max(interval.as_millis())
                        );
                        prop_assert_eq!(
                            status.next_probe_at.as_ref().map(|t| t.0),
                            Some(now + backoff.std())
                        );
                    }
                    Some(ProbeOutcome::NoProbe) => prop_assert_eq!(status.next_probe_at.as_ref(), None),
                    None => {
                        prop_assert_eq!(&status.next_probe_at, &previous.next_probe_at, "{}", ctx(i));
                        prop_assert_eq!(status.sessions, previous.sessions, "{}", ctx(i));
                    }
                }
            }

            // Label patches agree with the phase, and after them the label matches the phase.
            match decision.set_routable {
                Some(true) => prop_assert_eq!(is, NodePhase::Serving, "{}", ctx(i)),
                Some(false) => prop_assert!(is.is_out_of_service(), "{}", ctx(i)),
                None => {}
            }
            let label = pods[i].as_ref().map(|p| decision.set_routable.unwrap_or(p.routable));
            prop_assert_eq!(status.routable, label.unwrap_or(false), "{}", ctx(i));
            if is == NodePhase::Serving {
                prop_assert_eq!(label, Some(true), "{}", ctx(i));
            }
            if is.is_out_of_service() && label.is_some() {
                prop_assert_eq!(label, Some(false), "{}", ctx(i));
            }

            // Events, each exactly when its transition happens.
            let count = |f: &dyn Fn(&DrainEvent) -> bool| decision.events.iter().filter(|e| f(e)).count();
            let started = count(&|e| matches!(e, DrainEvent::Started { .. }));
            prop_assert_eq!(started, usize::from(is == NodePhase::Draining && was != NodePhase::Draining));
            for event in &decision.events {
                match event {
                    DrainEvent::Started { node, deadline: d } => {
                        prop_assert_eq!(node, &names[i]);
                        prop_assert_eq!(*d, now + timeout.std());
                        prop_assert_eq!(Some(*d), deadline);
                    }
                    DrainEvent::DeadlineReached { node, sessions, proceeding } => {
                        prop_assert_eq!(node, &names[i]);
                        prop_assert!(deadline_passed, "{}", ctx(i));
                        prop_assert_eq!(*proceeding, proceed || policy.force);
                        prop_assert_eq!(*sessions, status.sessions.map(|s| s as u64));
                        model.deadline_events += 1;
                        prop_assert_eq!(
                            model.deadline_events,
                            1,
                            "the deadline is reported once: {}",
                            ctx(i)
                        );
                    }
                    DrainEvent::Completed { node }
                    | DrainEvent::Refused { node, .. }
                    | DrainEvent::Undrained { node } => {
                        prop_assert_eq!(node, &names[i]);
                    }
                }
            }
            let completed = count(&|e| matches!(e, DrainEvent::Completed { .. }));
            let deadline_drained =
                count(&|e| matches!(e, DrainEvent::DeadlineReached { proceeding: true, .. }));
            let newly_drained = is == NodePhase::Drained && was != NodePhase::Drained;
            prop_assert_eq!(completed + deadline_drained, usize::from(newly_drained), "{}", ctx(i));
            let undrained = count(&|e| matches!(e, DrainEvent::Undrained { .. }));
            prop_assert_eq!(undrained, usize::from(!requested[i] && was.is_out_of_service()), "{}", ctx(i));
            let refusals = count(&|e| matches!(e, DrainEvent::Refused { .. }));
            let refused_now = requested[i] && is == NodePhase::Serving;
            prop_assert_eq!(refusals, usize::from(refused_now && !refused(previous)), "{}", ctx(i));
            if refused_now {
                // Refused only when it really is the last: no other node serves after the step.
                prop_assert!(!policy.force, "{}", ctx(i));
                prop_assert!(
                    (0..n).all(|j| j == i || decisions[j].status.phase != NodePhase::Serving),
                    "tick {}: {} refused while another node serves: {:#?}",
                    t,
                    names[i],
                    decisions
                );
            }
            prop_assert!(decision.events.len() <= 2, "{}", ctx(i));

            if !requested[i] || is == NodePhase::Drained {
                *model = Model::default();
            }
        }

        // Carry out the decisions; the statuses go through the API server and come back intact.
        for (i, decision) in decisions.iter().enumerate() {
            if let (Some(routable), Some(pod)) = (decision.set_routable, pods[i].as_mut()) {
                pod.routable = routable;
            }
            statuses[i] = Some(decision.status.clone());
        }
        let restored = through_the_api_server(&statuses);
        prop_assert_eq!(&restored, &statuses);
        statuses = restored;

        // The wakeup comes no later than any pending probe or unreached deadline.
        let current: Vec<NodeStatus> = statuses.iter().flatten().cloned().collect();
        let wakeup = next_wakeup(&current);
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn drain_invariants_hold_over_random_histories(scenario in scenario()) {
        run_scenario(&scenario)?;
    }

    #[test]
    fn parse_request_keeps_every_known_name_and_reports_every_bad_entry(
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
        let request = parse_request(&annotations(&[(DRAIN_ANNOTATION, &value)]), NODES);
        let known: BTreeSet<String> =
            entries.iter().map(|e| e.trim().to_string()).filter(|e| NODES.contains(&e.as_str())).collect();
        prop_assert_eq!(&request.nodes, &known);
        if !value.trim().is_empty() {
            let bad = entries.iter().filter(|e| !NODES.contains(&e.trim())).count();
            prop_assert_eq!(request.problems.len(), bad, "{:?}", request.problems);
        }
        prop_assert!(!request.force);
    }
}

fn node_in(name: &str, phase: NodePhase) -> NodeStatus {
    NodeStatus { name: name.into(), phase, ..NodeStatus::default() }
}

#[test]
fn refused_nodes_are_the_requested_ones_still_serving() {
    let request =
        DrainRequest { nodes: ["a".to_string(), "b".to_string()].into(), ..DrainRequest::default() };
    let statuses = [
        node_in("a", NodePhase::Draining),
        node_in("b", NodePhase::Serving),
        node_in("c", NodePhase::Serving),
    ];
    assert_eq!(omero_operator::drain::refused(&request, &statuses), ["b"]);
}

#[test]
fn the_grid_master_is_taken_out_of_a_drain_request_and_reported() {
    let mut request =
        DrainRequest { nodes: ["main".to_string(), "w1".to_string()].into(), ..DrainRequest::default() };
    omero_operator::drain::keep_grid_master(&mut request, "main");
    assert_eq!(request.nodes, BTreeSet::from(["w1".to_string()]));
    assert_eq!(request.problems.len(), 1);
    assert!(request.problems[0].contains("'main' is the grid master"), "{:?}", request.problems);
    // Not asked for: nothing to report.
    omero_operator::drain::keep_grid_master(&mut request, "main");
    assert_eq!(request.problems.len(), 1);
}

#[test]
fn the_redirect_targets_the_serving_master_else_the_first_serving_node() {
    use omero_operator::drain::redirect_target;
    let all_serving = [node_in("w1", NodePhase::Serving), node_in("main", NodePhase::Serving)];
    assert_eq!(redirect_target(&all_serving, "main"), None, "nothing out of service: nothing to steer");

    let draining = [
        node_in("w1", NodePhase::Draining),
        node_in("w2", NodePhase::Serving),
        node_in("main", NodePhase::Serving),
    ];
    assert_eq!(redirect_target(&draining, "main").map(|n| n.name.as_str()), Some("main"));

    let master_down = [
        node_in("w1", NodePhase::Drained),
        node_in("w2", NodePhase::Serving),
        node_in("main", NodePhase::Starting),
    ];
    assert_eq!(redirect_target(&master_down, "main").map(|n| n.name.as_str()), Some("w2"));

    let none_serving = [node_in("w1", NodePhase::Drained), node_in("main", NodePhase::Failed)];
    assert_eq!(redirect_target(&none_serving, "main"), None, "nowhere to steer to");
}
