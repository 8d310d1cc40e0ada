//! `kubectl omero`: what the plugin shows and the annotation edits it makes. The views and
//! decisions are pure (status in, text or an outcome out: `node_table`, `progress`, `Follower`,
//! `acknowledged`, the drain-list edits). The I/O is three functions: `get` (a read that lists
//! the clusters there are when the name is wrong), `edit_annotations` (the one
//! read-modify-write, with a `resourceVersion` precondition, retried on conflict, so it never
//! drops what someone else put in an annotation meanwhile) and `follow` (a watch of the
//! cluster, shown through a `Display`).

pub mod complete;
pub mod connect;
pub mod logs;
pub mod sessions;
pub mod status;
pub mod version;

use std::{collections::BTreeMap, io::Write};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    api::{NodePhase, OmeroCluster, Topology, conditions},
    request::{DRAIN_ANNOTATION, FORCE_ANNOTATION},
};

/// Conflicts in a row before an edit gives up.
const MAX_CONFLICTS: usize = 5;

/// The cluster's conditions in words, one line each.
pub fn conditions_in_words(cluster: &OmeroCluster) -> Vec<String> {
    let Some(status) = &cluster.status else {
        return vec!["no status yet: is the operator running?".into()];
    };
    [conditions::READY, conditions::PROGRESSING, conditions::DEGRADED]
        .iter()
        .filter_map(|t| status.condition(t))
        .map(|c| {
            let state = match (c.type_.as_str(), c.status.as_str()) {
                ("Ready", "True") => "ready",
                ("Ready", _) => "not ready",
                ("Progressing", "True") => "progressing",
                ("Progressing", _) => "stable",
                ("Degraded", "True") => "degraded",
                _ => "not degraded",
            };
            format!("{state}: {}", c.message)
        })
        .collect()
}

/// The nodes as a table: name, role, phase, ready, routable, sessions (and how old that count
/// is), revision (and whether up to date), drain deadline, message.
pub fn node_table(cluster: &OmeroCluster, now: Timestamp) -> String {
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let _ = writeln!(out, "NODE\tROLE\tPHASE\tREADY\tROUTABLE\tSESSIONS\tREVISION\tDEADLINE\tMESSAGE");
    let statuses = cluster.status.as_ref().map(|s| s.nodes.as_slice()).unwrap_or_default();
    for node in statuses {
        let spec = cluster.spec.node(&node.name);
        let role = match (cluster.spec.topology, spec) {
            (_, None) => "leaving",
            (Topology::Grid, Some(n)) if n.is_master() => "master",
            (Topology::Grid, Some(_)) => "worker",
            (_, Some(n)) if n.is_read_write() => "read-write",
            _ => "read-only",
        };
        let mut sessions = match (node.sessions, &node.sessions_since) {
            (Some(n), Some(at)) => format!("{n} ({} ago)", age(at.0, now)),
            (Some(n), None) => n.to_string(),
            _ => "-".into(),
        };
        if node.probe_error.is_some() {
            sessions.push_str(", probe failing");
        }
        let revision = match (&node.revision, node.up_to_date) {
            (Some(r), true) => r.clone(),
            (Some(r), false) => format!("{r} (out of date)"),
            (None, _) => "-".into(),
        };
        let deadline = node.drain_deadline.as_ref().map_or("-".to_string(), |d| d.0.to_string());
        let _ = writeln!(
            out,
            "{}\t{role}\t{}\t{}\t{}\t{sessions}\t{revision}\t{deadline}\t{}",
            node.name,
            node.phase.as_str(),
            yes_no(node.ready),
            yes_no(node.routable),
            node.message.as_deref().unwrap_or("")
        );
    }
    String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// The drain list with `add` added (kept in the order it was, new names at the end).
pub fn with_nodes(list: Option<&str>, add: &[String]) -> String {
    let mut names = names(list);
    for name in add {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names.join(",")
}

/// The drain list without `remove`; `None` when nothing is left (the annotation goes).
pub fn without_nodes(list: Option<&str>, remove: &[String]) -> Option<String> {
    let names: Vec<String> = names(list).into_iter().filter(|n| !remove.contains(n)).collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn names(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

/// Nodes of `names` that the cluster does not have, with the names it has, for the error.
pub fn unknown_nodes(cluster: &OmeroCluster, names: &[String]) -> Result<(), String> {
    let known = crate::request::nameable_nodes(cluster);
    let unknown: Vec<&str> = names.iter().map(String::as_str).filter(|n| !known.contains(n)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!("no node named {}; the nodes are {}", unknown.join(", "), known.join(", ")))
}

/// An annotation change: the new value, or `None` to remove it.
pub type AnnotationChange = BTreeMap<String, Option<String>>;

/// Reads the cluster, lets `change` decide the annotation edit from what is there now, and
/// sends it as a merge patch that carries the `resourceVersion` read: if someone changed the
/// cluster meanwhile, the API server refuses it (409) and the edit starts over from a fresh
/// read. Returns the edit made.
pub async fn edit_annotations(
    api: &Api<OmeroCluster>,
    name: &str,
    change: impl Fn(&OmeroCluster) -> Result<AnnotationChange, String>,
) -> Result<AnnotationChange, String> {
    for _ in 0..MAX_CONFLICTS {
        let cluster = get(api, name).await?;
        let edit = change(&cluster)?;
        let patch =
            json!({"metadata": {"resourceVersion": cluster.metadata.resource_version, "annotations": edit}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(edit),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(describe(name, &e)),
        }
    }
    Err(format!("OmeroCluster {name} kept changing under this edit ({MAX_CONFLICTS} conflicts): try again"))
}

/// An API error in the words a user needs.
pub fn describe(name: &str, error: &kube::Error) -> String {
    match error {
        // The resource type itself is unknown: the API server has no OmeroCluster CRD.
        kube::Error::Api(e)
            if e.code == 404 && e.message.contains("could not find the requested resource") =>
        {
            "the OmeroCluster resource is not installed on this cluster (no CRD \
             omeroclusters.omero.openmicroscopy.org): install the operator's chart or \
             `omero-operator crd | kubectl apply -f -`"
                .into()
        }
        kube::Error::Api(e) if e.code == 404 => {
            format!("no OmeroCluster named {name} here (kubectl get omc lists them)")
        }
        // The API server's message names the user, the verb and the resource.
        kube::Error::Api(e) if e.code == 403 => format!(
            "forbidden: {}; `kubectl omero status` and `wait` need the namespace's view role, every other \
             command its edit (or admin) role (the chart aggregates OmeroCluster rights into both)",
            e.message
        ),
        // `--request-timeout` passed: its own words, not kube's `ServiceError: ...`.
        kube::Error::Service(e) if e.is::<connect::RequestTimedOut>() => e.to_string(),
        other => other.to_string(),
    }
}

/// Reads the cluster; when there is none by that name, says which ones there are.
pub async fn get(api: &Api<OmeroCluster>, name: &str) -> Result<OmeroCluster, String> {
    match api.get(name).await {
        // The read-only pool's nodes are nodes of the cluster to every command.
        Ok(cluster) => Ok(crate::pool::resolved(&cluster).into_owned()),
        Err(kube::Error::Api(e))
            if e.code == 404 && !e.message.contains("could not find the requested resource") =>
        {
            let names: Vec<String> = match api.list_metadata(&kube::api::ListParams::default()).await {
                Ok(list) => list.items.into_iter().filter_map(|c| c.metadata.name).collect(),
                Err(_) => return Err(format!("no OmeroCluster named {name} here")),
            };
            Err(if names.is_empty() {
                format!(
                    "no OmeroCluster named {name}: there is none in this namespace (-n NAMESPACE to look elsewhere)"
                )
            } else {
                format!("no OmeroCluster named {name}; the ones here are {}", names.join(", "))
            })
        }
        Err(e) => Err(describe(name, &e)),
    }
}

/// The drain annotation change that adds `nodes`, and with `force` adds them to the per-node
/// force list too.
pub fn drain(cluster: &OmeroCluster, nodes: &[String], forced: bool) -> Result<AnnotationChange, String> {
    unknown_nodes(cluster, nodes)?;
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(DRAIN_ANNOTATION));
    let mut edit = BTreeMap::from([(
        DRAIN_ANNOTATION.to_string(),
        Some(with_nodes(current.map(String::as_str), nodes)),
    )]);
    if forced && let Some(list) = force(cluster, nodes) {
        edit.insert(FORCE_ANNOTATION.to_string(), Some(list));
    }
    Ok(edit)
}

/// The drain annotation change that removes `nodes` (and only those), from the per-node force
/// list too.
pub fn undrain(cluster: &OmeroCluster, nodes: &[String]) -> Result<AnnotationChange, String> {
    unknown_nodes(cluster, nodes)?;
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(DRAIN_ANNOTATION));
    let mut edit =
        BTreeMap::from([(DRAIN_ANNOTATION.to_string(), without_nodes(current.map(String::as_str), nodes))]);
    if let Some(left) = unforce(cluster, nodes) {
        edit.insert(FORCE_ANNOTATION.to_string(), left);
    }
    Ok(edit)
}

/// The edit made it into `status.observedRequests`: the operator runs and has read it (each
/// annotation set is there with the value written; each removed one is gone).
pub fn acknowledged(cluster: &OmeroCluster, edit: &AnnotationChange) -> bool {
    let Some(status) = &cluster.status else { return false };
    edit.iter().all(|(key, value)| status.observed_requests.get(key) == value.as_ref())
}

/// The operator has reconciled the cluster's spec as of `generation` (`status.observedGeneration`).
pub fn observed(cluster: &OmeroCluster, generation: i64) -> bool {
    cluster.status.as_ref().and_then(|s| s.observed_generation).is_some_and(|seen| seen >= generation)
}

/// Sets `spec.stopped` (a merge patch of that field alone) and returns the cluster's generation
/// after it: what the operator acknowledges by observing it.
pub async fn set_stopped(api: &Api<OmeroCluster>, name: &str, stopped: bool) -> Result<i64, String> {
    let patch = serde_json::json!({ "spec": { "stopped": stopped } });
    let patched = api
        .patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(|e| describe(name, &e))?;
    Ok(patched.metadata.generation.unwrap_or_default())
}

/// What `--wait` (and `kubectl omero wait`) follows until it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The named nodes' drains: until each is Drained.
    Drain(Vec<String>),
    /// A restart (or any rollout), or `kubectl omero wait`: until the named nodes (every node
    /// of the spec when empty) run the revision the spec asks for and serve, or stay drained
    /// when asked to.
    Settle(Vec<String>),
    /// `spec.stopped: true`: until every node of the spec is Stopped and its pod gone.
    Stop,
    /// `spec.stopped: false`: until every node of the spec serves.
    Start,
}

/// Where an operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    /// Ended as asked, with a one-line summary.
    Done(String),
    /// Ended otherwise: refused, failed, or stuck until someone acts; the reason.
    Failed(String),
}

/// One node's progress in words: phase, sessions left, time to the deadline, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProgress {
    pub name: String,
    /// What changed when this changes (the countdown to the deadline left out).
    pub state: String,
    /// `state` with the time left to the drain deadline.
    pub line: String,
    pub done: bool,
}

/// The operation's progress as the cluster's status shows it now. Pure.
pub fn progress(cluster: &OmeroCluster, op: &Operation, now: Timestamp) -> (Vec<NodeProgress>, Outcome) {
    let cluster = &*crate::pool::resolved(cluster);
    let status = cluster.status.clone().unwrap_or_default();
    let names: Vec<String> = match op {
        Operation::Drain(nodes) => nodes.clone(),
        Operation::Settle(nodes) if !nodes.is_empty() => nodes.clone(),
        Operation::Settle(_) | Operation::Stop | Operation::Start => {
            cluster.spec.nodes.iter().map(|n| n.name.clone()).collect()
        }
    };
    let asked_to_drain =
        crate::request::parse(cluster.annotations(), &crate::request::nameable_nodes(cluster)).drain;
    let mut nodes = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let Some(node) = status.node(name) else {
            nodes.push(NodeProgress {
                name: name.clone(),
                state: "no status yet".into(),
                line: "no status yet".into(),
                done: false,
            });
            continue;
        };
        let done = match op {
            Operation::Drain(_) => node.phase == NodePhase::Drained,
            Operation::Settle(_) if asked_to_drain.contains(name) => {
                node.phase == NodePhase::Drained && node.up_to_date
            }
            Operation::Settle(_) => node.phase == NodePhase::Serving && node.ready && node.up_to_date,
            // Its pod gone too: the OMERO server has stopped, not only been told to.
            Operation::Stop => node.phase == NodePhase::Stopped && node.pod.is_none(),
            Operation::Start => node.phase == NodePhase::Serving && node.ready,
        };
        let refused = node.phase == NodePhase::Serving
            && matches!(op, Operation::Drain(_))
            && node.message.as_deref().is_some_and(|m| m.starts_with(crate::lifecycle::DRAIN_REFUSED));
        if node.phase == NodePhase::Failed || refused {
            failures.push(format!("{name}: {}", node.message.as_deref().unwrap_or(node.phase.as_str())));
        }
        let mut state = node.phase.as_str().to_string();
        if let Some(n) = node.sessions {
            state.push_str(&format!(", {n} session{}", if n == 1 { "" } else { "s" }));
        }
        if matches!(op, Operation::Settle(_)) && !node.up_to_date && node.target_revision.is_some() {
            state.push_str(&format!(", revision {}", node.target_revision.as_deref().unwrap_or_default()));
            state.push_str(" to come");
        }
        if let Some(message) = &node.message {
            state.push_str(&format!(": {message}"));
        }
        let mut line = state.clone();
        if node.phase == NodePhase::Draining
            && let Some(deadline) = &node.drain_deadline
        {
            let left = deadline.0.as_second() - now.as_second();
            if left > 0 {
                line = format!("{line} (deadline in {})", age(now, deadline.0));
            } else {
                line = format!("{line} (deadline passed)");
            }
        }
        nodes.push(NodeProgress { name: name.clone(), state, line, done });
    }
    let invalid = status
        .condition(conditions::DEGRADED)
        .filter(|c| c.status == "True" && c.reason == "InvalidSpec")
        .map(|c| c.message.clone());
    let outcome = if let Some(message) = invalid {
        Outcome::Failed(message)
    } else if !failures.is_empty() {
        Outcome::Failed(failures.join("; "))
    } else if nodes.iter().all(|n| n.done) {
        let list: Vec<&str> = names.iter().map(String::as_str).collect();
        Outcome::Done(match op {
            Operation::Drain(_) => format!("drained {}", list.join(", ")),
            Operation::Settle(_) => format!("{} up to date", list.join(", ")),
            Operation::Stop => format!("stopped {}", list.join(", ")),
            Operation::Start => format!("started {}", list.join(", ")),
        })
    } else if let Some(rollout) = status.rollout.as_ref().filter(|r| r.paused || r.waiting_for_consent)
        && matches!(op, Operation::Settle(_))
    {
        // Only a person ends these waits (resume, or consent to downtime); other waits (the
        // `maxUnavailable` budget taken, a node not ready yet) free themselves, and `--timeout`
        // bounds them.
        Outcome::Failed(format!("the rollout waits: {}", rollout.waiting.as_deref().unwrap_or("paused")))
    } else {
        Outcome::Running
    };
    (nodes, outcome)
}

/// Follows an operation across successive reads of the cluster, for a log: the lines of the
/// nodes whose state changed since the last read.
#[derive(Debug)]
pub struct Follower {
    op: Operation,
    last: BTreeMap<String, String>,
    /// The rollout's last `waiting` shown.
    waiting: Option<String>,
}

impl Follower {
    pub fn new(op: Operation) -> Self {
        Self { op, last: BTreeMap::new(), waiting: None }
    }

    /// The nodes as they stand, the lines that changed (`node: state`), and the outcome.
    pub fn observe(
        &mut self,
        cluster: &OmeroCluster,
        now: Timestamp,
    ) -> (Vec<NodeProgress>, Vec<String>, Outcome) {
        let (nodes, outcome) = progress(cluster, &self.op, now);
        let mut changed = Vec::new();
        for node in &nodes {
            if self.last.get(&node.name) != Some(&node.state) {
                self.last.insert(node.name.clone(), node.state.clone());
                changed.push(format!("{}: {}", node.name, node.line));
            }
        }
        // Why the rollout does not move, when that changes: a wait that frees itself (the
        // budget taken, a node not ready) goes on, but the reader sees what it waits for.
        if matches!(self.op, Operation::Settle(_)) {
            let waiting =
                cluster.status.as_ref().and_then(|s| s.rollout.as_ref()).and_then(|r| r.waiting.clone());
            if waiting != self.waiting {
                if let Some(why) = &waiting {
                    changed.push(format!("rollout waits: {why}"));
                }
                self.waiting = waiting;
            }
        }
        (nodes, changed, outcome)
    }
}

/// The per-node force list with `add` added: `drain --force` forces only the named nodes.
pub fn force(cluster: &OmeroCluster, nodes: &[String]) -> Option<String> {
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(FORCE_ANNOTATION));
    match current.map(|v| v.trim()) {
        // Every node is forced already.
        Some("true") => None,
        Some("false") | None => Some(with_nodes(None, nodes)),
        Some(list) => Some(with_nodes(Some(list), nodes)),
    }
}

/// The per-node force list without `remove`: an undrain ends the force with the drain. A
/// cluster-wide `"true"` is left alone.
pub fn unforce(cluster: &OmeroCluster, nodes: &[String]) -> Option<Option<String>> {
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(FORCE_ANNOTATION))?;
    match current.trim() {
        "true" | "false" => None,
        list => {
            let left = without_nodes(Some(list), nodes);
            (left.as_deref() != Some(list)).then_some(left)
        }
    }
}

/// How `--wait` shows progress: redrawn in place on a terminal, or one line per change.
pub trait Display {
    /// The nodes as they stand, and the lines of those that changed since the last call.
    fn show(&mut self, nodes: &[NodeProgress], changed: &[String]);
    /// A line of its own (acknowledgement, summary).
    fn say(&mut self, line: &str);
}

/// One line per change, each with the time: for pipes and logs.
pub struct Log<W: Write> {
    pub out: W,
}

impl<W: Write> Display for Log<W> {
    fn show(&mut self, _: &[NodeProgress], changed: &[String]) {
        let time = Timestamp::now().strftime("%H:%M:%S");
        for line in changed {
            let _ = writeln!(self.out, "{time} {line}");
        }
        let _ = self.out.flush();
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }
}

/// How following a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The operator took the request in (`status.observedRequests`); not waited for further.
    Acknowledged,
    Done(String),
    Failed(String),
    /// The operator did not show the request in status in time: it is not running, or cannot
    /// write the cluster's status.
    NotAcknowledged(std::time::Duration),
    TimedOut(std::time::Duration),
    /// Ctrl-C: watching stopped; the operation goes on.
    Interrupted,
}

/// What to follow after an edit.
#[derive(Clone, Debug, Default)]
pub struct FollowOptions {
    /// The edit made: wait until the operator shows it read it.
    pub ack: Option<AnnotationChange>,
    /// A spec change made, by the cluster's generation after it: wait until the operator's
    /// status has observed that generation.
    pub ack_generation: Option<i64>,
    pub ack_timeout: std::time::Duration,
    /// Follow the operation until it ends (else stop once acknowledged).
    pub wait: bool,
    pub timeout: Option<std::time::Duration>,
    /// Redraw this often (the countdown to deadlines), on a terminal.
    pub redraw: Option<std::time::Duration>,
}

/// Follows the cluster from a watch (never by polling): first until the operator acknowledges
/// `options.ack`, then, with `options.wait`, until the operation ends, the timeout passes or
/// `interrupt` completes.
pub async fn follow(
    api: Api<OmeroCluster>,
    name: &str,
    op: Operation,
    options: &FollowOptions,
    display: &mut dyn Display,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Ending, String> {
    use futures::StreamExt;
    use tokio::time::{Instant, sleep_until};

    // A watch that fails, closes or expires (410) is started again, with the watcher's backoff,
    // so a long drain outlives a passing fault; only many failures in a row end the command.
    let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::backoff(
        kube::runtime::watcher::watch_object(api, name),
        kube::runtime::watcher::DefaultBackoff::default(),
    ));
    let mut failures = 0u32;
    let mut interrupt = std::pin::pin!(interrupt);
    let started = Instant::now();
    let ack_deadline = started + options.ack_timeout;
    let far = started + std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = options.timeout.map_or(far, |t| started + t);
    let mut redraw = tokio::time::interval(options.redraw.unwrap_or(std::time::Duration::from_secs(3600)));
    let mut acknowledged_yet = options.ack.is_none() && options.ack_generation.is_none();
    let mut follower = Follower::new(op);
    let mut latest: Option<OmeroCluster> = None;
    loop {
        tokio::select! {
            () = &mut interrupt => return Ok(Ending::Interrupted),
            () = sleep_until(ack_deadline), if !acknowledged_yet => {
                return Ok(Ending::NotAcknowledged(options.ack_timeout));
            }
            () = sleep_until(deadline), if options.timeout.is_some() => {
                return Ok(Ending::TimedOut(started.elapsed()));
            }
            _ = redraw.tick(), if options.redraw.is_some() && latest.is_some() => {
                if let Some(cluster) = &latest {
                    let (nodes, _, _) = follower.observe(cluster, Timestamp::now());
                    display.show(&nodes, &[]);
                }
            }
            event = stream.next() => {
                let cluster = match event {
                    None => return Err(format!("the watch of OmeroCluster {name} ended")),
                    Some(Err(e)) => {
                        failures += 1;
                        let why = watch_error(name, &e);
                        if failures >= MAX_WATCH_FAILURES {
                            return Err(format!(
                                "{why}; gave up following after {failures} failed watches in a row (the \
                                 operation goes on: follow it again with `kubectl omero wait`)"
                            ));
                        }
                        display.say(&format!("the watch failed ({why}); watching again"));
                        continue;
                    }
                    Some(Ok(None)) => return Err(format!("OmeroCluster {name} was deleted")),
                    Some(Ok(Some(cluster))) => {
                        failures = 0;
                        cluster
                    }
                };
                if !acknowledged_yet {
                    let seen = options.ack.as_ref().is_none_or(|edit| acknowledged(&cluster, edit))
                        && options.ack_generation.is_none_or(|generation| observed(&cluster, generation));
                    if !seen {
                        continue;
                    }
                    acknowledged_yet = true;
                    display.say("acknowledged by the operator");
                    if !options.wait {
                        return Ok(Ending::Acknowledged);
                    }
                }
                let (nodes, changed, outcome) = follower.observe(&cluster, Timestamp::now());
                display.show(&nodes, &changed);
                match outcome {
                    Outcome::Done(summary) => return Ok(Ending::Done(summary)),
                    Outcome::Failed(why) => return Ok(Ending::Failed(why)),
                    Outcome::Running => latest = Some(cluster),
                }
            }
        }
    }
}

/// Failed watches in a row after which `--wait` gives up (about 3 minutes of the watcher's
/// backoff: 0.8 s doubling to 30 s).
pub const MAX_WATCH_FAILURES: u32 = 10;

fn watch_error(name: &str, error: &kube::runtime::watcher::Error) -> String {
    use kube::runtime::watcher::Error as W;
    match error {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => describe(name, e),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn drain_lists_keep_what_others_put_there() {
        assert_eq!(with_nodes(Some("ro-1"), &s(&["ro-2"])), "ro-1,ro-2");
        assert_eq!(with_nodes(Some("ro-1, ro-2"), &s(&["ro-2"])), "ro-1,ro-2");
        assert_eq!(with_nodes(None, &s(&["ro-2"])), "ro-2");
        assert_eq!(without_nodes(Some("ro-1,ro-2"), &s(&["ro-1"])).as_deref(), Some("ro-2"));
        assert_eq!(without_nodes(Some("ro-1"), &s(&["ro-1"])), None);
    }

    #[test]
    fn age_reads_as_a_duration() {
        let now = Timestamp::from_second(10_000).unwrap();
        assert_eq!(age(Timestamp::from_second(9_990).unwrap(), now), "10s");
        assert_eq!(age(Timestamp::from_second(9_000).unwrap(), now), "16m");
        assert_eq!(age(Timestamp::from_second(1_000).unwrap(), now), "2h");
    }
}
