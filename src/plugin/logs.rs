//! `kubectl omero logs CLUSTER NODE`: OMERO's own logs of one node, from its pod's `omero-logs`
//! container (`render::server_logs`), through the API server's `pods/log`.
//!
//! The log container writes one line per record, `<file>: <record>`, a record's line breaks as
//! `\n` and backslashes as `\\`; this shows each record with its line breaks back, keeps only
//! one file's with `--file`, and with `--follow` goes on across restarts of the container and
//! of the pod (a restart of the node makes a new pod). Where the pod has no log container
//! (`spec.serverLogs.mode: None`, or a pod made before it), it says so and shows the server
//! container's log instead, which holds only the image's start-up output.
//!
//! The pure parts (which file a line is from, the escapes, where a resumed stream starts again)
//! are functions; [`logs`] is the I/O: the cluster (to know the node and the setting), the
//! node's pods (by the operator's labels) and their `pods/log`, always with `timestamps=true`
//! so that a stream started again skips exactly the lines already shown.

use std::{collections::VecDeque, io::Write, time::Duration};

use futures::AsyncBufReadExt;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, LogParams},
};

use crate::{
    api::{OMERO_CONTAINER, OmeroCluster, SERVER_LOGS_CONTAINER},
    render::node_selector_labels,
};

/// How long to wait before looking again for a pod or a container that is not there yet.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// The file suffixes the log container follows (`logs/omero_log_follower.py`).
const SUFFIXES: [&str; 3] = [".log", ".out", ".err"];
/// The name the log container writes its own notes under.
const FOLLOWER: &str = "omero-logs";

/// What `kubectl omero logs` was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogsOptions {
    /// Go on showing new records, across restarts, until interrupted.
    pub follow: bool,
    /// Only this file's records: `Blitz-0` or `Blitz-0.log` (`master` is `master.out` and
    /// `master.err`).
    pub file: Option<String>,
    /// Only the last this many records (of the file, with `file`).
    pub tail: Option<usize>,
    /// Only records written this recently.
    pub since: Option<Duration>,
}

/// The files a line may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFilter(Option<String>);

impl FileFilter {
    pub fn new(file: Option<&str>) -> Self {
        Self(file.map(|f| f.trim().to_string()).filter(|f| !f.is_empty()))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `file` is the one asked for: the same name, or the same without its suffix.
    pub fn matches(&self, file: &str) -> bool {
        let Some(wanted) = &self.0 else { return true };
        file == wanted || file.rsplit_once('.').is_some_and(|(stem, _)| stem == wanted)
    }
}

/// The file and the record of a line of the log container, the record's escapes undone; `None`
/// for a line of another shape.
pub fn record_of(line: &str) -> Option<(&str, String)> {
    let (file, record) = line.split_once(": ")?;
    let named = file == FOLLOWER
        || (SUFFIXES.iter().any(|s| file.ends_with(s)) && !file.contains(char::is_whitespace));
    named.then(|| (file, unescape(record)))
}

/// A record as OMERO wrote it: `\n` is a line break, `\\` a backslash.
pub fn unescape(record: &str) -> String {
    let mut out = String::with_capacity(record.len());
    let mut chars = record.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A line of a `timestamps=true` log: the time the container runtime gave it, and the line.
pub fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((time, rest)) => match time.parse::<Timestamp>() {
            Ok(time) => (Some(time), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            Ok(time) => (Some(time), ""),
            Err(_) => (None, line),
        },
    }
}

/// How far a log has been read: the time of the last line and how many lines had that time.
/// `pods/log` takes `sinceTime` in whole seconds, so a stream started again from there returns
/// some lines already read; [`Position::resume`] tells them apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    last: Option<Timestamp>,
    at_last: usize,
}

impl Position {
    /// A line with time `at` was read.
    pub fn read(&mut self, at: Timestamp) {
        if self.last == Some(at) {
            self.at_last += 1;
        } else if self.last.is_none_or(|last| at > last) {
            self.last = Some(at);
            self.at_last = 1;
        }
    }

    /// Where to ask a stream to start again: the second of the last line read.
    pub fn since_time(&self) -> Option<Timestamp> {
        self.last.and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }

    /// What to skip of a stream started at [`Position::since_time`].
    pub fn resume(&self) -> Resume {
        Resume { last: self.last, to_skip: self.at_last }
    }
}

/// The lines of a resumed stream that were read before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    last: Option<Timestamp>,
    to_skip: usize,
}

impl Resume {
    /// Whether a line with time `at` is new. Lines without a time are taken as new.
    pub fn is_new(&mut self, at: Option<Timestamp>) -> bool {
        let (Some(last), Some(at)) = (self.last, at) else { return true };
        if at < last {
            return false;
        }
        if at == last && self.to_skip > 0 {
            self.to_skip -= 1;
            return false;
        }
        true
    }
}

/// Which container of the pod is read, and so how its lines are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `omero-logs`: OMERO's records, `<file>: <record>`.
    LogContainer,
    /// `omero-server`: the image's start-up output, as it is.
    Server,
}

impl Source {
    pub fn container(self) -> &'static str {
        match self {
            Source::LogContainer => SERVER_LOGS_CONTAINER,
            Source::Server => OMERO_CONTAINER,
        }
    }

    /// What the pod's containers let be read.
    pub fn of(pod: &Pod) -> Self {
        let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
        if containers.iter().any(|c| c.name == SERVER_LOGS_CONTAINER) {
            Source::LogContainer
        } else {
            Source::Server
        }
    }
}

/// What to print of a line (its time already taken off): `None` when `filter` leaves it out.
/// A record is shown with its line breaks; with every file, after its file's name.
pub fn shown(source: Source, filter: &FileFilter, line: &str) -> Option<String> {
    match source {
        Source::Server => Some(line.to_string()),
        Source::LogContainer => match record_of(line) {
            Some((file, record)) if filter.matches(file) => {
                Some(if filter.is_all() { format!("{file}: {record}") } else { record })
            }
            Some(_) => None,
            // Not a record (the supervisor's own words, say): only when every file is shown.
            None => filter.is_all().then(|| line.to_string()),
        },
    }
}

/// The node's current pod: the newest not terminating, else the newest.
pub fn current_pod(mut pods: Vec<Pod>) -> Option<Pod> {
    pods.sort_by_key(|p| (p.metadata.deletion_timestamp.is_none(), p.metadata.creation_timestamp.clone()));
    pods.pop()
}

fn pod_words(error: &kube::Error, node: &str) -> String {
    match error {
        kube::Error::Api(e) if e.code == 403 => format!(
            "forbidden: {}; `kubectl omero logs` reads the node's pods and their logs (pods: list, pods/log: \
             get), which the namespace's view role grants",
            e.message
        ),
        other => format!("reading node {node}'s pods: {}", super::describe("", other)),
    }
}

/// The node's pods by the operator's labels.
async fn find_pod(pods: &Api<Pod>, cluster: &str, node: &str) -> Result<Option<Pod>, String> {
    let selector = node_selector_labels(cluster, node)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| pod_words(&e, node))?;
    Ok(current_pod(list.items))
}

/// Why the pod has no log container, for the note.
fn why_no_log_container(cluster: &OmeroCluster, pod: &str) -> String {
    if cluster.spec.server_logs_container() {
        format!(
            "pod {pod} has no {SERVER_LOGS_CONTAINER} container (it was made before the operator added one; it \
             gets one when the node next restarts)"
        )
    } else {
        format!(
            "pod {pod} has no {SERVER_LOGS_CONTAINER} container: spec.serverLogs.mode is None, so OMERO's log files \
             stay in var/log"
        )
    }
}

/// Reads the node's logs and writes them to `out` (records) and `notes` (what the reader should
/// know: the container read, a pod that ended, a wait), until the log ends, or with `follow`
/// until the process is interrupted.
pub async fn logs(
    client: Client,
    namespace: &str,
    cluster_name: &str,
    node: &str,
    options: &LogsOptions,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<(), String> {
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), namespace);
    let cluster = super::get(&clusters, cluster_name).await?;
    super::unknown_nodes(&cluster, &[node.to_string()])?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let filter = FileFilter::new(options.file.as_deref());
    let mut pod = find_pod(&pods, cluster_name, node).await?;
    let no_pod = || {
        format!(
            "node {node} of {cluster_name} has no pod: it is stopped or its pod is not made yet (kubectl omero status \
             {cluster_name})"
        )
    };
    if pod.is_none() && !options.follow {
        return Err(no_pod());
    }
    // Waiting for a pod, for its log container to start, or a stream to end: said once each.
    let mut said = String::new();
    let mut say = |notes: &mut dyn Write, text: String| {
        if said != text {
            let _ = writeln!(notes, "{text}");
            said = text;
        }
    };
    let mut position = Position::default();
    let mut read_pod: Option<String> = None;
    // A pod that came after the first is read from its start: all of its log is new.
    let mut whole_pod = false;
    loop {
        let Some(current) = pod.take() else {
            say(notes, format!("{}; waiting for one", no_pod()));
            tokio::time::sleep(LOOK_AGAIN).await;
            pod = find_pod(&pods, cluster_name, node).await?;
            continue;
        };
        let name = current.name_any();
        let source = Source::of(&current);
        if read_pod.as_deref() != Some(name.as_str()) {
            if read_pod.is_some() {
                say(notes, format!("node {node} has a new pod, {name}: its logs follow"));
                position = Position::default();
                whole_pod = true;
            }
            if source == Source::Server {
                say(
                    notes,
                    format!(
                        "{}; showing the {OMERO_CONTAINER} container's log instead, which holds only the image's \
                         start-up output{}",
                        why_no_log_container(&cluster, &name),
                        if filter.is_all() { "" } else { " (--file does not apply to it)" }
                    ),
                );
            }
        }
        let first = read_pod.is_none();
        read_pod = Some(name.clone());
        let shown_filter = if source == Source::Server { FileFilter::new(None) } else { filter.clone() };
        // The first read of the first pod: what is there (--tail, --since). Then, following,
        // from where that left off; when it read nothing, only what comes now (the API
        // server's clock, not this machine's, says when that is). A later pod from its start.
        let since_time = position.since_time();
        let params = LogParams {
            container: Some(source.container().into()),
            timestamps: true,
            follow: options.follow && !first,
            since_seconds: match (first, since_time, whole_pod) {
                (true, _, _) => options.since.map(|s| s.as_secs().max(1) as i64),
                (false, None, false) => Some(1),
                _ => None,
            },
            since_time: if first { None } else { since_time },
            tail_lines: if first && shown_filter.is_all() { options.tail.map(|t| t as i64) } else { None },
            ..LogParams::default()
        };
        let keep = if first && !shown_filter.is_all() { options.tail } else { None };
        match read_log(&pods, &name, &params, &shown_filter, source, &mut position, keep, out).await {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 404 => {
                // The container is not running yet (or any more), or the pod went.
                if !options.follow {
                    return Err(format!("pod {name}, container {}: {}", source.container(), e.message));
                }
                say(notes, format!("pod {name}: {}; waiting", e.message));
                tokio::time::sleep(LOOK_AGAIN).await;
            }
            Err(e) if !options.follow => return Err(pod_words(&e, node)),
            Err(e) => {
                say(notes, format!("reading pod {name}'s log failed ({e}); reading again"));
                tokio::time::sleep(LOOK_AGAIN).await;
            }
        }
        if !options.follow {
            return Ok(());
        }
        if !first {
            // The stream ended: the container stopped, or the connection did. The same pod
            // again (its container restarted, or the connection ended), or its successor.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        pod = find_pod(&pods, cluster_name, node).await?;
        if let Some(next) = &pod
            && next.name_any() == name
            && next.metadata.deletion_timestamp.is_some()
        {
            say(notes, format!("pod {name} is stopping; waiting for node {node}'s next pod"));
            tokio::time::sleep(LOOK_AGAIN).await;
            pod = find_pod(&pods, cluster_name, node).await?;
            // Still that pod: read what it wrote since, then look again.
        }
    }
}

/// Reads one log request to its end, writing what `filter` keeps; with `keep`, only the last
/// that many shown (then it must not follow).
#[allow(clippy::too_many_arguments)]
async fn read_log(
    pods: &Api<Pod>,
    pod: &str,
    params: &LogParams,
    filter: &FileFilter,
    source: Source,
    position: &mut Position,
    keep: Option<usize>,
    out: &mut dyn Write,
) -> Result<(), kube::Error> {
    let stream = pods.log_stream(pod, params).await?;
    let mut stream = std::pin::pin!(stream);
    let mut resume = position.resume();
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bytes, not text: a line cut at a limit may end inside a character.
        let read = stream.read_until(b'\n', &mut line).await.map_err(kube::Error::ReadEvents)?;
        if read == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let (at, rest) = split_timestamp(text.trim_end_matches(['\n', '\r']));
        if !resume.is_new(at) {
            continue;
        }
        if let Some(at) = at {
            position.read(at);
        }
        let Some(shown) = shown(source, filter, rest) else { continue };
        match keep {
            Some(n) => {
                kept.push_back(shown);
                if kept.len() > n {
                    kept.pop_front();
                }
            }
            None => {
                if writeln!(out, "{shown}").and_then(|()| out.flush()).is_err() {
                    // The reader went (`| head`): nothing more to do.
                    std::process::exit(0);
                }
            }
        }
    }
    for shown in kept {
        if writeln!(out, "{shown}").is_err() {
            std::process::exit(0);
        }
    }
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_file_is_named_with_or_without_its_suffix() {
        let blitz = FileFilter::new(Some("Blitz-0"));
        assert!(blitz.matches("Blitz-0.log"));
        assert!(!blitz.matches("Blitz-01.log") && !blitz.matches("Tables-0.log"));
        assert!(FileFilter::new(Some("Blitz-0.log")).matches("Blitz-0.log"));
        assert!(!FileFilter::new(Some("Blitz-0.log")).matches("Blitz-0.err"));
        let master = FileFilter::new(Some("master"));
        assert!(master.matches("master.err") && master.matches("master.out"));
        assert!(FileFilter::new(None).matches("anything.log") && FileFilter::new(Some(" ")).is_all());
    }

    #[test]
    fn records_come_back_with_their_line_breaks_and_backslashes() {
        // As the follower writes it: line breaks and backslashes escaped, a tab as it is.
        let line = "Blitz-0.log: 2024-01-02 13:45:12,346 ERROR failed\\n\tat ome.X(X.java:1)\\nC:\\\\new";
        let (file, record) = record_of(line).unwrap();
        assert_eq!(file, "Blitz-0.log");
        assert_eq!(record, "2024-01-02 13:45:12,346 ERROR failed\n\tat ome.X(X.java:1)\nC:\\new");
        assert_eq!(unescape(r"a\\nb"), r"a\nb", "an escaped backslash before n is no line break");
        assert_eq!(unescape(r"odd\x and\"), r"odd\x and\");
        assert_eq!(
            record_of("omero-logs: following /var/log"),
            Some(("omero-logs", "following /var/log".into()))
        );
        assert_eq!(record_of("omero-logs exited: 1"), None);
        assert_eq!(record_of("a b.log: x"), None, "no file name has a space");
    }

    #[test]
    fn what_is_shown_of_each_line() {
        let all = FileFilter::new(None);
        let blitz = FileFilter::new(Some("Blitz-0"));
        let record = "Blitz-0.log: one\\n\ttwo";
        assert_eq!(shown(Source::LogContainer, &all, record).as_deref(), Some("Blitz-0.log: one\n\ttwo"));
        assert_eq!(shown(Source::LogContainer, &blitz, record).as_deref(), Some("one\n\ttwo"));
        assert_eq!(shown(Source::LogContainer, &blitz, "Tables-0.log: x"), None);
        assert_eq!(shown(Source::LogContainer, &blitz, "stray line"), None);
        assert_eq!(shown(Source::LogContainer, &all, "stray line").as_deref(), Some("stray line"));
        assert_eq!(shown(Source::Server, &all, r"as\nit is").as_deref(), Some(r"as\nit is"));
    }

    #[test]
    fn timestamps_are_taken_off_the_line() {
        let (time, rest) = split_timestamp("2024-01-02T13:45:12.123456789Z Blitz-0.log: x y");
        assert_eq!((time, rest), (Some(at("2024-01-02T13:45:12.123456789Z")), "Blitz-0.log: x y"));
        assert_eq!(split_timestamp("no time here"), (None, "no time here"));
        assert_eq!(split_timestamp("2024-01-02T13:45:12Z"), (Some(at("2024-01-02T13:45:12Z")), ""));
    }

    #[test]
    fn a_resumed_stream_skips_exactly_what_was_read() {
        let mut position = Position::default();
        assert_eq!(position.since_time(), None);
        for t in ["2024-01-02T13:45:11.5Z", "2024-01-02T13:45:12.25Z", "2024-01-02T13:45:12.25Z"] {
            position.read(at(t));
        }
        assert_eq!(position.since_time(), Some(at("2024-01-02T13:45:12Z")), "whole seconds, down");
        // What the API server sends again from 13:45:12, then what is new.
        let mut resume = position.resume();
        let again = [
            "2024-01-02T13:45:12.1Z",
            "2024-01-02T13:45:12.25Z",
            "2024-01-02T13:45:12.25Z",
            "2024-01-02T13:45:12.25Z",
            "2024-01-02T13:45:12.9Z",
        ];
        let new: Vec<bool> = again.iter().map(|t| resume.is_new(Some(at(t)))).collect();
        assert_eq!(new, [false, false, false, true, true]);
        assert!(resume.is_new(None));
    }

    #[test]
    fn the_current_pod_is_the_newest_not_stopping() {
        let pod = |name: &str, created: i64, stopping: bool| -> Pod {
            let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(created).unwrap(),
            );
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.into());
            pod.metadata.creation_timestamp = Some(time.clone());
            pod.metadata.deletion_timestamp = stopping.then_some(time);
            pod
        };
        let chosen =
            current_pod(vec![pod("new-stopping", 30, true), pod("old", 10, false), pod("mid", 20, false)]);
        assert_eq!(chosen.unwrap().name_any(), "mid");
        assert_eq!(current_pod(vec![pod("a", 1, true), pod("b", 2, true)]).unwrap().name_any(), "b");
        assert!(current_pod(Vec::new()).is_none());
    }
}
