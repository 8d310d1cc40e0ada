//! `kubectl omero logs`: the real `kubectl-omero` binary, over real HTTP, against a small API
//! server in this test that serves one OmeroCluster, the node's pods (LIST by label) and their
//! `pods/log` as an API server does (the query's container, `timestamps`, `tailLines`,
//! `sinceSeconds`, `sinceTime` in whole seconds, and `follow` holding the stream open). Each
//! request is noted as the verb an API server would authorize, and must be among those
//! `src/rbac.rs` lists for `logs`.

#[path = "support/kubeconfig.rs"]
mod kubeconfig;

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::{Timestamp, ToSpan};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

type Reply = Response<BoxBody<Bytes, Infallible>>;

const CLUSTERS: &str = "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters";
const PODS: &str = "/api/v1/namespaces/omero/pods";

/// What the served API holds.
#[derive(Default)]
struct World {
    cluster: Value,
    pods: Vec<Value>,
    /// Each (pod, container)'s log: the runtime's time of each line, and the line.
    logs: BTreeMap<(String, String), Vec<(Timestamp, String)>>,
    /// Pods whose followed streams stay open; the others' end once what they hold is sent.
    open: BTreeSet<String>,
    /// The log requests: pod and query.
    log_requests: Vec<(String, BTreeMap<String, String>)>,
    /// `resource verb`, as an API server authorizes them.
    verbs: BTreeSet<String>,
}

type Shared = Arc<Mutex<World>>;

fn cluster(server_logs: &str) -> Value {
    let yaml = format!(
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {{name: omero, namespace: omero}}\n\
         spec:\n  image: openmicroscopy/omero-server:5.6\n  database: {{host: db, passwordSecret: {{name: s, key: k}}}}\n  \
         repository: {{claimName: repo}}\n  nodes: [{{name: rw}}, {{name: ro-1, readOnly: {{db: true, repo: true}}}}]\n{server_logs}"
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

fn pod(name: &str, node: &str, created: i64, log_container: bool) -> Value {
    let mut containers = vec![json!({"name": "omero-server", "image": "x"})];
    if log_container {
        containers.push(json!({"name": "omero-logs", "image": "x"}));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "omero", "uid": format!("uid-{name}"),
                        "creationTimestamp": Timestamp::from_second(created).unwrap().to_string(),
                        "labels": {"app.kubernetes.io/managed-by": "omero-operator",
                                   "omero.openmicroscopy.org/cluster": "omero",
                                   "omero.openmicroscopy.org/node": node}},
           "spec": {"containers": containers}})
}

fn json_reply(code: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

fn failure(code: StatusCode, message: &str) -> Reply {
    json_reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code.as_u16(), "message": message}),
    )
}

fn query_of(request: &Request<Incoming>) -> BTreeMap<String, String> {
    let query = request.uri().query().unwrap_or_default();
    url_pairs(query)
}

fn url_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (k.to_string(), v.replace("%3A", ":").replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"))
        })
        .collect()
}

/// The lines of a log a request asks for, with their times, as the kubelet selects them.
fn selected(lines: &[(Timestamp, String)], query: &BTreeMap<String, String>) -> Vec<(Timestamp, String)> {
    let since = query.get("sinceTime").map(|t| t.parse::<Timestamp>().unwrap()).or_else(|| {
        query.get("sinceSeconds").map(|s| Timestamp::now() - s.parse::<i64>().unwrap().seconds())
    });
    let mut chosen: Vec<_> = lines.iter().filter(|(t, _)| since.is_none_or(|s| *t >= s)).cloned().collect();
    if let Some(tail) = query.get("tailLines") {
        let tail: usize = tail.parse().unwrap();
        chosen = chosen.split_off(chosen.len().saturating_sub(tail));
    }
    chosen
}

fn formatted(line: &(Timestamp, String), timestamps: bool) -> Bytes {
    Bytes::from(if timestamps { format!("{} {}\n", line.0, line.1) } else { format!("{}\n", line.1) })
}

async fn serve(world: Shared, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let path = request.uri().path().to_string();
    let query = query_of(&request);
    if path == format!("{CLUSTERS}/omero") {
        world.lock().unwrap().verbs.insert("omeroclusters get".into());
        return Ok(json_reply(StatusCode::OK, &world.lock().unwrap().cluster.clone()));
    }
    if path == PODS {
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let mut w = world.lock().unwrap();
        w.verbs.insert("pods list".into());
        let items: Vec<Value> = w
            .pods
            .iter()
            .filter(|p| {
                selector.split(',').all(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    p["metadata"]["labels"][k] == v
                })
            })
            .cloned()
            .collect();
        return Ok(json_reply(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}),
        ));
    }
    let Some(pod) = path.strip_prefix(&format!("{PODS}/")).and_then(|p| p.strip_suffix("/log")) else {
        return Ok(failure(StatusCode::NOT_FOUND, &format!("{path} not found")));
    };
    let pod = pod.to_string();
    let container = query.get("container").cloned().unwrap_or_default();
    let (lines, follow, timestamps) = {
        let mut w = world.lock().unwrap();
        w.verbs.insert("pods/log get".into());
        w.log_requests.push((pod.clone(), query.clone()));
        if !w.pods.iter().any(|p| p["metadata"]["name"] == pod.as_str()) {
            return Ok(failure(StatusCode::NOT_FOUND, &format!("pods \"{pod}\" not found")));
        }
        let Some(lines) = w.logs.get(&(pod.clone(), container.clone())) else {
            return Ok(failure(
                StatusCode::BAD_REQUEST,
                &format!("container {container} is not valid for pod {pod}"),
            ));
        };
        (lines.clone(), query.get("follow").is_some_and(|f| f == "true"), query.contains_key("timestamps"))
    };
    let first = selected(&lines, &query);
    if !follow {
        let body: Vec<u8> = first.iter().flat_map(|l| formatted(l, timestamps).to_vec()).collect();
        return Ok(Response::builder().status(200).body(Full::new(Bytes::from(body)).boxed()).unwrap());
    }
    // Following: what there is, then each line appended, until the stream is closed.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    for line in &first {
        let _ = tx.unbounded_send(Ok(Frame::data(formatted(line, timestamps))));
    }
    tokio::spawn(async move {
        let mut sent = lines.len();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (now, open) = {
                let w = world.lock().unwrap();
                (w.logs[&(pod.clone(), container.clone())].clone(), w.open.contains(&pod))
            };
            for line in &now[sent..] {
                if tx.unbounded_send(Ok(Frame::data(formatted(line, timestamps)))).is_err() {
                    return;
                }
            }
            sent = now.len();
            if !open {
                return;
            }
        }
    });
    Ok(Response::builder().status(200).body(StreamBody::new(rx).boxed()).unwrap())
}

struct Served {
    world: Shared,
    kubeconfig: std::path::PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn served(name: &str, world: World) -> Served {
    let world: Shared = Arc::new(Mutex::new(world));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let world = world.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let world = world.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| serve(world.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    let kubeconfig =
        kubeconfig::at_server(&format!("omero-plugin-logs-{name}"), &format!("http://{address}"));
    Served { world, kubeconfig, server }
}

/// `kubectl-omero ARGS` to its end: stdout, stderr, exit code. What it asked must be what
/// `src/rbac.rs` lists for `logs`.
async fn kubectl_omero(served: &Served, args: &[&str]) -> (String, String, Option<i32>) {
    served.world.lock().unwrap().verbs.clear();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
        .arg("--kubeconfig")
        .arg(&served.kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap();
    assert_rbac_lists(&served.world.lock().unwrap().verbs);
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code(),
    )
}

fn assert_rbac_lists(used: &BTreeSet<String>) {
    let command =
        omero_operator::rbac::PLUGIN_COMMANDS.iter().find(|c| c.name == "logs").expect("logs in rbac.rs");
    let listed: BTreeSet<String> =
        command.needs.iter().map(|n| format!("{} {}", n.resource, n.verb)).collect();
    assert!(used.is_subset(&listed), "`kubectl omero logs` asked for {used:?}; src/rbac.rs lists {listed:?}");
}

/// A minute ago, to the second, plus `millis`: the times the runtime gave the lines.
fn at(base: i64, millis: i64) -> Timestamp {
    Timestamp::from_second(base).unwrap() + millis.milliseconds()
}

/// As the log container writes a stack trace: its line breaks as `\n`, its tabs as they are.
const TRACE: &str = "Blitz-0.log: 2024-01-02 13:45:12,346 ERROR [ome.services.util.ServiceHandler] (l.Server-7) \
                     failed\\njava.lang.IllegalStateException: no\\n\tat ome.services.Foo.bar(Foo.java:12)";

/// One node `rw` with a pod whose log container holds records of three files.
fn world_with_records(base: i64) -> World {
    let mut world = World { cluster: cluster(""), ..World::default() };
    world.pods.push(pod("omero-rw-a", "rw", base - 100, true));
    world.pods.push(pod("omero-ro-1-a", "ro-1", base - 100, true));
    let lines = [
        "omero-logs: following /opt/omero/server/OMERO.server/var/log/*.log, *.out, *.err",
        "Blitz-0.log: 2024-01-02 13:45:10,000 INFO  [ome.services.blitz.Entry] (main) Starting",
        "Tables-0.log: 2024-01-02 13:45:11,000 INFO  [omero.tables] (MainThread) Tables up",
        TRACE,
        "master.err: -! 01/02/24 13:45:12.500 warning: a warning",
        "Blitz-0.log: 2024-01-02 13:45:13,000 INFO  [ome.services.blitz.Entry] (main) Blitz up, C:\\\\path",
    ];
    let timed: Vec<(Timestamp, String)> =
        lines.iter().enumerate().map(|(i, l)| (at(base, 100 * i as i64), l.to_string())).collect();
    world.logs.insert(("omero-rw-a".into(), "omero-logs".into()), timed);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_files_last_records_whole_and_every_file_with_its_name() {
    let base = Timestamp::now().as_second() - 60;
    let served = served("records", world_with_records(base)).await;

    let (out, err, code) =
        kubectl_omero(&served, &["logs", "omero", "rw", "--file", "Blitz-0", "--tail", "2"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "2024-01-02 13:45:12,346 ERROR [ome.services.util.ServiceHandler] (l.Server-7) failed\n\
         java.lang.IllegalStateException: no\n\tat ome.services.Foo.bar(Foo.java:12)\n\
         2024-01-02 13:45:13,000 INFO  [ome.services.blitz.Entry] (main) Blitz up, C:\\path\n",
        "the last two of Blitz-0.log, each record whole, its escapes undone"
    );
    assert_eq!(err, "");
    let verbs = served.world.lock().unwrap().verbs.clone();
    assert_eq!(
        verbs,
        ["omeroclusters get", "pods list", "pods/log get"].map(String::from).into(),
        "the cluster, the node's pods, one log"
    );
    let (pod, query) = served.world.lock().unwrap().log_requests.last().cloned().unwrap();
    assert_eq!(pod, "omero-rw-a");
    assert_eq!(
        query,
        [("container", "omero-logs"), ("timestamps", "true")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        "--tail of one file counts its records: the whole log is read, no tailLines"
    );

    let (out, _, code) = kubectl_omero(&served, &["logs", "omero", "rw", "--file", "master.err"]).await;
    assert_eq!((out.as_str(), code), ("-! 01/02/24 13:45:12.500 warning: a warning\n", Some(0)));

    // Every file: each record after its file's name; --tail is the API server's tailLines.
    let (out, _, code) =
        kubectl_omero(&served, &["logs", "omero", "rw", "--tail", "3", "--since", "2h"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("Blitz-0.log: 2024-01-02 13:45:12,346 ERROR"), "{out}");
    assert_eq!(lines[2], "\tat ome.services.Foo.bar(Foo.java:12)");
    assert!(lines[3].starts_with("master.err: -! "), "{out}");
    let (_, query) = served.world.lock().unwrap().log_requests.last().cloned().unwrap();
    assert_eq!((query["tailLines"].as_str(), query["sinceSeconds"].as_str()), ("3", "7200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_container_no_pod_or_no_such_node_is_said() {
    let base = Timestamp::now().as_second() - 60;
    let mut world = world_with_records(base);
    world.cluster = cluster("  serverLogs: {mode: None}\n");
    world.pods[0] = pod("omero-rw-b", "rw", base, false);
    world.logs.insert(
        ("omero-rw-b".into(), "omero-server".into()),
        vec![(at(base, 0), r"Running /startup/99-run.sh, C:\n kept".into())],
    );
    world.pods.remove(1);
    let served = served("fallback", world).await;

    let (out, err, code) = kubectl_omero(&served, &["logs", "omero", "rw", "--file", "Blitz-0"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "Running /startup/99-run.sh, C:\\n kept\n", "the server's log as it is");
    assert_eq!(
        err.trim_end(),
        "pod omero-rw-b has no omero-logs container: spec.serverLogs.mode is None, so OMERO's log files stay in \
         var/log; showing the omero-server container's log instead, which holds only the image's start-up output \
         (--file does not apply to it)"
    );
    let (_, query) = served.world.lock().unwrap().log_requests.last().cloned().unwrap();
    assert_eq!(query["container"], "omero-server");

    let (out, err, code) = kubectl_omero(&served, &["logs", "omero", "ro-1"]).await;
    assert_eq!((out.as_str(), code), ("", Some(1)));
    assert_eq!(
        err.trim_end(),
        "error: node ro-1 of omero has no pod: it is stopped or its pod is not made yet (kubectl omero status omero)"
    );

    let (_, err, code) = kubectl_omero(&served, &["logs", "omero", "ro-9"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(err.trim_end(), "error: no node named ro-9; the nodes are rw, ro-1");
}

/// Reads the plugin's output as it comes until it holds `text`.
async fn until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    text: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l| l.contains(text)) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("waited for {text:?}; saw {seen:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the output ended before {text:?}; saw {seen:#?}"));
        seen.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_goes_on_across_a_dropped_stream_and_a_new_pod_showing_each_record_once() {
    let base = Timestamp::now().as_second() - 60;
    let mut world = world_with_records(base);
    world.open.insert("omero-rw-a".into());
    let served = served("follow", world).await;
    let append = |pod: &str, millis: i64, line: &str| {
        let mut w = served.world.lock().unwrap();
        w.logs.entry((pod.into(), "omero-logs".into())).or_default().push((at(base, millis), line.into()));
    };

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
        .arg("--kubeconfig")
        .arg(&served.kubeconfig)
        .args(["logs", "omero", "rw", "-f", "--file", "Blitz-0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    until(&mut lines, &mut seen, "Blitz up").await;
    // In the same second as the lines before it: a resumed stream (sinceTime in whole seconds)
    // sends those again, and the plugin must not show them twice.
    append("omero-rw-a", 550, "Blitz-0.log: 2024-01-02 13:45:14,000 INFO  [x] (main) while following");
    until(&mut lines, &mut seen, "while following").await;
    // The connection drops (the pod goes on): the plugin reads again from where it was.
    served.world.lock().unwrap().open.remove("omero-rw-a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.world.lock().unwrap().open.insert("omero-rw-a".into());
    append("omero-rw-a", 700, "Blitz-0.log: 2024-01-02 13:45:15,000 INFO  [x] (main) after the drop");
    until(&mut lines, &mut seen, "after the drop").await;

    // The node restarts: the old pod goes, a new one comes, read from its start.
    append("omero-rw-b", 60_000, "Blitz-0.log: 2024-01-02 13:50:00,000 INFO  [x] (main) the new pod starts");
    append("omero-rw-b", 60_100, "Tables-0.log: 2024-01-02 13:50:00,100 INFO  [x] (main) not this file");
    {
        let mut w = served.world.lock().unwrap();
        w.pods.retain(|p| p["metadata"]["name"] != "omero-rw-a");
        w.open.remove("omero-rw-a");
        w.pods.push(pod("omero-rw-b", "rw", base + 60, true));
        w.open.insert("omero-rw-b".into());
    }
    until(&mut lines, &mut seen, "the new pod starts").await;
    append("omero-rw-b", 61_000, "Blitz-0.log: 2024-01-02 13:50:01,000 INFO  [x] (main) the new pod serves");
    until(&mut lines, &mut seen, "the new pod serves").await;
    child.kill().await.unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await.unwrap();

    let messages: Vec<&str> = seen.iter().filter_map(|l| l.split(") ").nth(1)).collect();
    assert_eq!(
        messages,
        [
            "Starting",
            "failed",
            "Blitz up, C:\\path",
            "while following",
            "after the drop",
            "the new pod starts",
            "the new pod serves"
        ],
        "each once, in order, only Blitz-0.log's: {seen:#?}"
    );
    assert!(err.contains("node rw has a new pod, omero-rw-b: its logs follow"), "{err}");
    let requests = served.world.lock().unwrap().log_requests.clone();
    let (first, resumed) = (&requests[0].1, &requests[2].1);
    assert!(!first.contains_key("follow"), "the first read takes what is there: {requests:?}");
    assert_eq!(requests[1].1.get("follow").map(String::as_str), Some("true"), "then follows");
    assert_eq!(
        resumed.get("sinceTime").map(String::as_str),
        Some(Timestamp::from_second(base).unwrap().to_string().as_str()),
        "again from the second of the last line: {requests:?}"
    );
    let new_pod = requests.iter().find(|(pod, _)| pod == "omero-rw-b").unwrap();
    assert!(!new_pod.1.contains_key("sinceTime") && !new_pod.1.contains_key("sinceSeconds"), "{new_pod:?}");
    assert_rbac_lists(&served.world.lock().unwrap().verbs);
}
