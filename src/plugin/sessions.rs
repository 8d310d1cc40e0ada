//! `kubectl omero sessions CLUSTER [NODE]`: who is on each node, before a drain. Each node is
//! read where its probe counts, always through the API server and so under the caller's own
//! RBAC:
//!
//! - `Counter`: the session counter's `/sessions/list` on the node's pod, through the pod proxy
//!   (`pods/proxy` get: the built-in edit and admin roles grant it, view does not);
//! - `Metrics`: the exporter's endpoint on the pod, through the pod proxy; its gauge gives
//!   sessions per user name only (no agents, no times);
//! - `Database`: the operator's `/sessions/{namespace}/{cluster}/{node}`, through the service
//!   proxy to the operator's Service (`services/proxy` get on that one Service in the
//!   operator's namespace: the chart's `sessionReaders`), since only the operator can reach
//!   OMERO's database;
//! - `None`: nothing counts its sessions; said so.
//!
//! [`read`] is the I/O; [`in_words`] is pure. A node whose listing fails is shown with the
//! reason (and, when refused, the right to grant) and the others still are.

use std::fmt::Write as _;
use std::io::Write as _;

use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;

use super::version::{DEFAULT_OPERATOR_NAMESPACE, OPERATOR_SELECTOR};
use crate::{
    api::{
        DEFAULT_METRICS_PATH, DEFAULT_SESSIONS_METRIC, NodePhase, OmeroCluster, SessionProbe,
        SessionProbeKind,
    },
    omero::{
        COUNTER_PORT,
        session_list::{
            COUNTER_LIST_PATH, OPERATOR_SESSIONS_FORMAT, OperatorSessionsAnswer, SessionList, UserSessions,
            is_counter_answer, read_counter_list, read_exporter_users, reasons,
        },
    },
};

/// The port name of the chart's metrics Service (`templates/service.yaml`), which the service
/// proxy path names and the chart's `sessionReaders` Role grants by name.
pub const OPERATOR_PORT_NAME: &str = "http";
/// The chart's metrics Service of a release named `omero-operator`: tried when the Service
/// cannot be found by its labels.
pub const DEFAULT_OPERATOR_SERVICE: &str = "omero-operator-metrics";

/// What `kubectl omero sessions` was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionsOptions {
    /// Only this node.
    pub node: Option<String>,
    /// The operator's namespace (its Service is looked for there only).
    pub operator_namespace: Option<String>,
    /// The operator's metrics Service by name (then it is not looked for).
    pub operator_service: Option<String>,
}

/// One node's sessions, or why there are none to show.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSessions {
    pub node: String,
    /// The node's phase in status (`Serving`, `Draining`, ...); none before the operator saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The node is leaving service (draining) or out of it (drained).
    pub draining: bool,
    /// The probe that counts it: `Database`, `Counter`, `Metrics` or `None`.
    pub probe: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(flatten)]
    pub listing: Listing,
}

/// What was read of one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "camelCase")]
pub enum Listing {
    /// Its probe is `None`.
    NotCounted,
    /// The session counter's list.
    Counter { list: SessionList },
    /// The operator's listing of the database probe's rule.
    Database { list: SessionList },
    /// The exporter's gauge, per user name.
    Exporter { users: Vec<UserSessions> },
    /// Why nothing could be read.
    Failed { error: String },
}

impl NodeSessions {
    pub fn failed(&self) -> bool {
        matches!(self.listing, Listing::Failed { .. })
    }
}

/// The nodes to show, in the order `kubectl omero status` shows them (the spec's, then nodes
/// leaving it; the read-only pool's among the spec's), each with the probe that counts it: the
/// spec's, or for a node that left it the one its status recorded.
pub fn nodes_of(
    cluster: &OmeroCluster,
    only: Option<&str>,
) -> Result<Vec<(String, Option<SessionProbe>)>, String> {
    let cluster = &*crate::pool::resolved(cluster);
    let names = crate::request::nameable_nodes(cluster);
    if let Some(only) = only
        && !names.contains(&only)
    {
        return Err(format!("no node named {only}; the nodes are {}", names.join(", ")));
    }
    let status = cluster.status.clone().unwrap_or_default();
    Ok(names
        .into_iter()
        .filter(|n| only.is_none_or(|only| only == *n))
        .map(|name| {
            let probe = match cluster.spec.node(name) {
                Some(spec) => Some(cluster.spec.session_probe_of(spec)),
                None => status.node(name).and_then(|s| s.session_probe.clone()),
            };
            (name.to_string(), probe)
        })
        .collect())
}

/// Reads every node's sessions (see the module).
pub async fn read(
    client: &Client,
    namespace: &str,
    cluster: &OmeroCluster,
    options: &SessionsOptions,
) -> Result<Vec<NodeSessions>, String> {
    let nodes = nodes_of(cluster, options.node.as_deref())?;
    let status = cluster.status.clone().unwrap_or_default();
    let database_probed =
        nodes.iter().any(|(_, p)| p.as_ref().is_some_and(|p| p.kind == SessionProbeKind::Database));
    // Looked for once, and only when a node needs it.
    let operator = if database_probed { Some(operator_services(client, options).await) } else { None };
    let reads = nodes.into_iter().map(|(name, probe)| {
        let node_status = status.node(&name);
        let pod = node_status.and_then(|s| s.pod.clone());
        let phase = node_status.map(|s| s.phase);
        let operator = operator.as_ref();
        async move {
            let kind = probe.as_ref().map_or(SessionProbeKind::None, |p| p.kind);
            let listing = match (kind, &pod, &probe) {
                (SessionProbeKind::None, _, _) | (_, _, None) => Listing::NotCounted,
                (SessionProbeKind::Database, _, _) => {
                    match operator.expect("looked for with a database node") {
                        Ok(services) => {
                            from_operator(client, services, namespace, &cluster.name_any(), &name).await
                        }
                        Err(why) => Listing::Failed { error: why.clone() },
                    }
                }
                (_, None, _) => Listing::Failed { error: "no pod: the node does not run".into() },
                (SessionProbeKind::Counter, Some(pod), _) => from_counter(client, namespace, pod).await,
                (SessionProbeKind::Metrics, Some(pod), Some(probe)) => {
                    from_exporter(client, namespace, pod, probe).await
                }
            };
            NodeSessions {
                node: name,
                phase: phase.map(|p| format!("{p:?}")),
                draining: matches!(phase, Some(NodePhase::Draining | NodePhase::Drained)),
                probe: format!("{kind:?}"),
                pod,
                listing,
            }
        }
    });
    Ok(futures::future::join_all(reads).await)
}

/// A GET through the API server; its status and body, whatever the status.
async fn get(client: &Client, path: &str) -> Result<(u16, String), String> {
    let request = http::Request::get(path).body(kube::client::Body::empty()).map_err(|e| e.to_string())?;
    let response = client.send(request).await.map_err(|e| super::describe("", &e))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect_bytes().await.map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The API server's own error (a `Status`): its message, or the body's start.
fn api_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| body.chars().take(200).collect::<String>().trim().to_string())
}

/// A refusal or failure of the API server's pod proxy, in words, with the right to grant.
fn pod_proxy_failure(status: u16, body: &str, namespace: &str, pod: &str, what: &str) -> String {
    let message = api_message(body);
    match status {
        403 => format!(
            "forbidden: {message}; reading a node's sessions goes through the API server's pod proxy: it needs get on \
             pods/proxy in namespace {namespace}, which the built-in edit and admin roles grant and view does not"
        ),
        404 => format!("pod {pod} not found ({message}): the node's pod changed; try again"),
        _ => format!("the API server could not reach {what} on pod {pod} (HTTP {status}): {message}"),
    }
}

async fn from_counter(client: &Client, namespace: &str, pod: &str) -> Listing {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{COUNTER_PORT}/proxy{COUNTER_LIST_PATH}");
    let (status, body) = match get(client, &path).await {
        Ok(answer) => answer,
        Err(error) => return Listing::Failed { error },
    };
    // The counter's own failure (503 with its reason) is its answer; any other is the proxy's.
    if !is_counter_answer(&body) {
        let error = if status == 404 && !body.trim_start().starts_with('{') {
            "the counter answers no list: its pod runs the script of an operator from before `kubectl omero \
             sessions`; the node gets the new script when it next restarts"
                .to_string()
        } else {
            pod_proxy_failure(status, &body, namespace, pod, "the session counter")
        };
        return Listing::Failed { error };
    }
    match read_counter_list(status, &body) {
        Ok(list) => Listing::Counter { list },
        Err(error) => Listing::Failed { error },
    }
}

async fn from_exporter(client: &Client, namespace: &str, pod: &str, probe: &SessionProbe) -> Listing {
    let Some(port) = probe.port else {
        return Listing::Failed { error: "its metrics probe names no port".into() };
    };
    let path = probe.path.as_deref().unwrap_or(DEFAULT_METRICS_PATH);
    let slash = if path.starts_with('/') { "" } else { "/" };
    let url = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{slash}{path}");
    let (status, body) = match get(client, &url).await {
        Ok(answer) => answer,
        Err(error) => return Listing::Failed { error },
    };
    if !(200..300).contains(&status) {
        return Listing::Failed { error: pod_proxy_failure(status, &body, namespace, pod, "the exporter") };
    }
    let metric = probe.metric.as_deref().unwrap_or(DEFAULT_SESSIONS_METRIC);
    match read_exporter_users(&body, metric, &probe.excluded_users()) {
        Ok(users) => Listing::Exporter { users },
        Err(error) => Listing::Failed { error: format!("the exporter's answer: {error}") },
    }
}

/// The operator Services to ask about database-probed nodes, in order, or why there is none.
/// Named: that one. Else the chart's metrics Services by its labels, in `operator_namespace` or
/// every namespace; where Services may not be listed there, the default release's Service in
/// [`DEFAULT_OPERATOR_NAMESPACE`] (asking it is what `sessionReaders` allows).
pub async fn operator_services(
    client: &Client,
    options: &SessionsOptions,
) -> Result<Vec<(String, String)>, String> {
    let namespace = options.operator_namespace.as_deref();
    if let Some(name) = &options.operator_service {
        return Ok(vec![(namespace.unwrap_or(DEFAULT_OPERATOR_NAMESPACE).to_string(), name.clone())]);
    }
    let params = ListParams::default().labels(OPERATOR_SELECTOR);
    let listed = match namespace {
        Some(ns) => Api::<Service>::namespaced(client.clone(), ns).list(&params).await,
        None => Api::<Service>::all(client.clone()).list(&params).await,
    };
    let services = match listed {
        Ok(list) => list.items,
        // Not allowed to look: ask the default release's Service, where sessionReaders lets
        // its readers in.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let ns = namespace.unwrap_or(DEFAULT_OPERATOR_NAMESPACE);
            return Ok(vec![(ns.to_string(), DEFAULT_OPERATOR_SERVICE.to_string())]);
        }
        Err(e) => return Err(format!("looking for the operator's Service: {}", super::describe("", &e))),
    };
    let found: Vec<(String, String)> = services
        .iter()
        .filter(|s| {
            let ports = s.spec.as_ref().and_then(|s| s.ports.as_ref());
            ports.is_some_and(|ports| ports.iter().any(|p| p.name.as_deref() == Some(OPERATOR_PORT_NAME)))
        })
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    if found.is_empty() {
        let place = namespace.map_or("any namespace".to_string(), |ns| format!("namespace {ns}"));
        return Err(format!(
            "no Service labelled {OPERATOR_SELECTOR} with a port named {OPERATOR_PORT_NAME} in {place}: the operator \
             lists a database-probed node's sessions on its metrics Service (chart value metrics.service.enabled); \
             name it with --operator-namespace and --operator-service"
        ));
    }
    Ok(found)
}

/// Asks each operator Service in turn until one watches the cluster's namespace.
async fn from_operator(
    client: &Client,
    services: &[(String, String)],
    namespace: &str,
    cluster: &str,
    node: &str,
) -> Listing {
    let mut not_watching = Vec::new();
    for (service_namespace, service) in services {
        // Through the port's name: RBAC compares the proxy's name as the path spells it, so the
        // chart's sessionReaders grants `<service>:http` (`rbac::SESSION_READER_RULE`).
        let path = format!(
            "/api/v1/namespaces/{service_namespace}/services/{service}:{OPERATOR_PORT_NAME}/proxy/sessions/{namespace}/\
             {cluster}/{node}"
        );
        let (status, body) = match get(client, &path).await {
            Ok(answer) => answer,
            Err(error) => return Listing::Failed { error },
        };
        let answer = serde_json::from_str::<OperatorSessionsAnswer>(&body)
            .ok()
            .filter(|a| a.format == OPERATOR_SESSIONS_FORMAT);
        let Some(answer) = answer else {
            let message = api_message(&body);
            let error = match status {
                403 => format!(
                    "forbidden: {message}; a database-probed node's sessions are read from the operator through the \
                     API server's service proxy: it needs get on services/proxy for {service}:{OPERATOR_PORT_NAME} in \
                     namespace {service_namespace} (the chart's sessionReaders value grants it)"
                ),
                404 if message.contains("not found") => format!(
                    "the operator's Service {service_namespace}/{service} was not found ({message}): name it with \
                     --operator-namespace and --operator-service"
                ),
                _ => format!(
                    "the API server could not reach the operator's Service {service_namespace}/{service} (HTTP \
                     {status}): {message}"
                ),
            };
            return Listing::Failed { error };
        };
        if answer.ok {
            return match answer.list {
                Some(list) => Listing::Database { list },
                None => Listing::Failed { error: "the operator's answer carries no list".into() },
            };
        }
        if answer.reason.as_deref() == Some(reasons::NOT_WATCHED) {
            not_watching.push(format!("{service_namespace}/{service}"));
            continue;
        }
        let error = answer.error.unwrap_or_else(|| "no reason given".into());
        return Listing::Failed { error: format!("the operator: {error}") };
    }
    Listing::Failed {
        error: format!(
            "no operator found that watches namespace {namespace} (asked {})",
            not_watching.join(", ")
        ),
    }
}

/// The sessions in words: per node a heading (its phase, where the list was read, how many),
/// then a table of its sessions.
pub fn in_words(nodes: &[NodeSessions], now: Timestamp) -> String {
    let mut out = String::new();
    let mut restricted_seen = false;
    for (i, node) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut heading = node.node.clone();
        if let Some(phase) = &node.phase {
            let _ = write!(heading, " ({phase})");
        }
        if let Some(pod) = &node.pod {
            let _ = write!(heading, ", pod {pod}");
        }
        match &node.listing {
            Listing::NotCounted => {
                let _ = writeln!(out, "{heading}: not counted: no session probe");
            }
            Listing::Failed { error } => {
                let _ = writeln!(out, "{heading}: sessions not read: {error}");
            }
            Listing::Counter { list } => {
                let sample = match (&list.sample, list.age_seconds) {
                    (Some(sample), Some(age)) => format!(" (sample {sample}, {age:.0}s old)"),
                    (Some(sample), None) => format!(" (sample {sample})"),
                    _ => String::new(),
                };
                let _ = writeln!(out, "{heading}: {}, from the session counter{sample}", how_many(list));
                restricted_seen |= list.sessions.iter().any(|s| s.restricted);
                out.push_str(&session_table(list, now));
            }
            Listing::Database { list } => {
                let _ = writeln!(
                    out,
                    "{heading}: {}, from OMERO's database through the operator (it keeps no last access)",
                    how_many(list)
                );
                out.push_str(&session_table(list, now));
            }
            Listing::Exporter { users } => {
                let total: u64 = users.iter().map(|u| u.sessions).sum();
                let _ = writeln!(
                    out,
                    "{heading}: {}, from the exporter's gauge: per user only (it gives no agents or times)",
                    plural(total, "session")
                );
                if !users.is_empty() {
                    let mut table = tabwriter::TabWriter::new(Vec::new()).padding(2);
                    let _ = writeln!(table, "  USER\tSESSIONS");
                    for user in users {
                        let _ =
                            writeln!(table, "  {}\t{}", user.user.as_deref().unwrap_or("-"), user.sessions);
                    }
                    out.push_str(
                        &String::from_utf8(table.into_inner().unwrap_or_default()).unwrap_or_default(),
                    );
                }
            }
        }
    }
    if restricted_seen {
        out.push_str(
            "\n?: not shown to the counter's user (no ReadSession privilege on a read-write node): only the user name \
             is known\n",
        );
    }
    out
}

fn how_many(list: &SessionList) -> String {
    let mut text = plural(list.count, "session");
    if list.truncated {
        let _ = write!(text, " (the first {} shown)", list.sessions.len());
    }
    text
}

fn plural(n: u64, what: &str) -> String {
    match n {
        0 => format!("no {what}s"),
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

/// One session a line: USER, AGENT, STARTED, LAST ACCESS, IDLE (times to the second, UTC).
fn session_table(list: &SessionList, now: Timestamp) -> String {
    if list.sessions.is_empty() {
        return String::new();
    }
    let mut table = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let _ = writeln!(table, "  USER\tAGENT\tSTARTED\tLAST ACCESS\tIDLE");
    for session in &list.sessions {
        let unknown = if session.restricted { "?" } else { "-" };
        let agent = session.agent.as_deref().unwrap_or(unknown);
        let idle = session.idle_seconds.map_or(unknown.to_string(), seconds_in_words);
        let _ = writeln!(
            table,
            "  {}\t{agent}\t{}\t{}\t{idle}",
            session.user.as_deref().unwrap_or("-"),
            time_in_words(session.started.as_deref(), now, unknown),
            time_in_words(session.last_access.as_deref(), now, unknown),
        );
    }
    String::from_utf8(table.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// An ISO time as `2026-01-01 10:00:00Z (3h ago)`; as it came when it does not parse.
fn time_in_words(time: Option<&str>, now: Timestamp, unknown: &str) -> String {
    let Some(time) = time else { return unknown.to_string() };
    match time.parse::<Timestamp>() {
        Ok(at) => {
            let ago = (now.as_second() - at.as_second()).max(0);
            format!("{} ({} ago)", at.strftime("%Y-%m-%d %H:%M:%SZ"), seconds_in_words(ago as f64))
        }
        Err(_) => time.to_string(),
    }
}

fn seconds_in_words(seconds: f64) -> String {
    let secs = seconds.max(0.0).round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86400, (secs % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::omero::session_list::ListedSession;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn node(name: &str, phase: &str, probe: &str, listing: Listing) -> NodeSessions {
        NodeSessions {
            node: name.into(),
            phase: Some(phase.into()),
            draining: phase == "Draining",
            probe: probe.into(),
            pod: Some(format!("omero-{name}-7d9f")),
            listing,
        }
    }

    fn session(
        user: &str,
        agent: &str,
        started: &str,
        last: Option<&str>,
        idle: Option<f64>,
    ) -> ListedSession {
        ListedSession {
            user: Some(user.into()),
            agent: Some(agent.into()),
            started: Some(started.into()),
            last_access: last.map(String::from),
            idle_seconds: idle,
            time_to_idle_seconds: Some(600.0),
            time_to_live_seconds: Some(0.0),
            restricted: false,
        }
    }

    #[test]
    fn every_kind_of_node_in_words() {
        let nodes = [
            node(
                "rw",
                "Serving",
                "Database",
                Listing::Database {
                    list: SessionList {
                        count: 2,
                        sessions: vec![
                            session("alice", "OMERO.insight", "2026-01-01T09:00:00Z", None, None),
                            session("bob", "OMERO.web", "2026-01-01T11:59:30Z", None, None),
                        ],
                        ..SessionList::default()
                    },
                },
            ),
            node(
                "ro-1",
                "Draining",
                "Counter",
                Listing::Counter {
                    list: SessionList {
                        count: 1502,
                        truncated: true,
                        sessions: vec![
                            session(
                                "carol",
                                "OMERO.web",
                                "2026-01-01T11:00:00.000Z",
                                Some("2026-01-01T11:58:00.000Z"),
                                Some(118.0),
                            ),
                            ListedSession {
                                user: Some("erin".into()),
                                restricted: true,
                                ..Default::default()
                            },
                        ],
                        sample: Some("1a2b-7".into()),
                        age_seconds: Some(2.4),
                        ..SessionList::default()
                    },
                },
            ),
            node(
                "ro-2",
                "Serving",
                "Metrics",
                Listing::Exporter { users: vec![UserSessions { user: Some("dave".into()), sessions: 2 }] },
            ),
            node("ro-3", "Serving", "None", Listing::NotCounted),
            node("ro-4", "Serving", "Counter", Listing::Failed { error: "forbidden: no".into() }),
            node(
                "ro-5",
                "Serving",
                "Counter",
                Listing::Counter {
                    list: SessionList { sample: Some("9-1".into()), ..SessionList::default() },
                },
            ),
        ];
        let text = in_words(&nodes, now());
        assert_eq!(
            text,
            "\
rw (Serving), pod omero-rw-7d9f: 2 sessions, from OMERO's database through the operator (it keeps no last access)
  USER   AGENT          STARTED                           LAST ACCESS  IDLE
  alice  OMERO.insight  2026-01-01 09:00:00Z (3h00m ago)  -            -
  bob    OMERO.web      2026-01-01 11:59:30Z (30s ago)    -            -

ro-1 (Draining), pod omero-ro-1-7d9f: 1502 sessions (the first 2 shown), from the session counter (sample 1a2b-7, 2s old)
  USER   AGENT      STARTED                           LAST ACCESS                       IDLE
  carol  OMERO.web  2026-01-01 11:00:00Z (1h00m ago)  2026-01-01 11:58:00Z (2m00s ago)  1m58s
  erin   ?          ?                                 ?                                 ?

ro-2 (Serving), pod omero-ro-2-7d9f: 2 sessions, from the exporter's gauge: per user only (it gives no agents or times)
  USER  SESSIONS
  dave  2

ro-3 (Serving), pod omero-ro-3-7d9f: not counted: no session probe

ro-4 (Serving), pod omero-ro-4-7d9f: sessions not read: forbidden: no

ro-5 (Serving), pod omero-ro-5-7d9f: no sessions, from the session counter (sample 9-1)

?: not shown to the counter's user (no ReadSession privilege on a read-write node): only the user name is known
"
        );
    }

    #[test]
    fn json_names_the_source_and_keeps_what_is_unknown_out_of_the_guess() {
        let nodes = [
            node("ro-3", "Serving", "None", Listing::NotCounted),
            node("ro-4", "Draining", "Counter", Listing::Failed { error: "x".into() }),
        ];
        let json = serde_json::to_value(nodes).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"node": "ro-3", "phase": "Serving", "draining": false, "probe": "None", "pod": "omero-ro-3-7d9f",
                 "source": "notCounted"},
                {"node": "ro-4", "phase": "Draining", "draining": true, "probe": "Counter", "pod": "omero-ro-4-7d9f",
                 "source": "failed", "error": "x"}
            ])
        );
    }

    #[test]
    fn durations_read_as_a_person_reads_them() {
        assert_eq!(seconds_in_words(0.4), "0s");
        assert_eq!(seconds_in_words(118.0), "1m58s");
        assert_eq!(seconds_in_words(7260.0), "2h01m");
        assert_eq!(seconds_in_words(90000.0), "1d01h");
        assert_eq!(time_in_words(Some("not a time"), now(), "-"), "not a time");
        assert_eq!(time_in_words(None, now(), "?"), "?");
    }

    #[test]
    fn refusals_say_which_right_is_missing() {
        let refused = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"p:9450\" is forbidden: User \"v\" cannot get resource \"pods/proxy\"","reason":"Forbidden","code":403}"#;
        let error = pod_proxy_failure(403, refused, "omero", "p", "the session counter");
        assert!(error.starts_with("forbidden: pods \"p:9450\" is forbidden"), "{error}");
        assert!(error.contains("needs get on pods/proxy in namespace omero"), "{error}");
        assert!(error.contains("the built-in edit and admin roles grant and view does not"), "{error}");
        let unreachable = r#"{"kind":"Status","message":"error trying to reach service: dial tcp 10.1.2.3:9450: connect: connection refused","code":503}"#;
        assert_eq!(
            pod_proxy_failure(503, unreachable, "omero", "p", "the session counter"),
            "the API server could not reach the session counter on pod p (HTTP 503): error trying to reach service: \
             dial tcp 10.1.2.3:9450: connect: connection refused"
        );
    }
}
