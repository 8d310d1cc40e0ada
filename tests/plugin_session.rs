//! A recorded `kubectl omero` session: the real `kubectl-omero` binary, over real HTTP, against
//! a small API server in this test that serves one OmeroCluster (GET, merge PATCH with its
//! `resourceVersion` precondition, LIST and WATCH) from the port double, while the real
//! reconcile runs on it with `support::sim` playing the Deployment controller, the kubelet and
//! OMERO's sessions, on the real clock (probes every second, pods ready 2 s after creation).
//! It drains a node with sessions and waits, puts it back, restarts every node and waits.
//! The transcript is printed (`cargo test --test plugin_session -- --nocapture`); the README
//! shows one. Every request is noted as the verb an API server would authorize, and each
//! command's verbs must be among those `src/rbac.rs` lists for it (`PLUGIN_COMMANDS`).

mod support;

use std::{
    collections::BTreeSet,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use omero_operator::{api::NodePhase, controller::Clock};
use serde_json::{Value, json};
use support::{FakeCluster, cluster_from_yaml, reconcile_once, sim::Sim};

const CLUSTER: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 10m}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 1s, servingInterval: 2s}
  - name: ro-1
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 1s, servingInterval: 2s, exporterUser: monitor}
  - name: ro-2
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 1s, servingInterval: 2s, exporterUser: monitor}
"#;

type Reply = Response<BoxBody<Bytes, Infallible>>;

fn json_reply(code: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

fn cluster_json(fake: &FakeCluster) -> Value {
    let mut value = serde_json::to_value(fake.cluster()).unwrap();
    value["apiVersion"] = json!("omero.openmicroscopy.org/v1alpha1");
    value["kind"] = json!("OmeroCluster");
    value
}

/// The verbs requested so far, as an API server authorizes them: `resource verb`.
type Verbs = Arc<Mutex<BTreeSet<String>>>;

/// The API server's side for the one cluster.
async fn serve(fake: FakeCluster, verbs: Verbs, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    // What `status` reads beside the cluster (`plugin::status::read_objects`): the entry
    // Service, the pods, the Warning Events.
    if let Some(rest) = path.strip_prefix("/api/v1/namespaces/omero/") {
        let (resource, name) = rest.split_once('/').map_or((rest, None), |(r, n)| (r, Some(n)));
        let verb = if name.is_some() { "get" } else { "list" };
        verbs.lock().unwrap().insert(format!("{resource} {verb}"));
        return Ok(core_reply(&fake, resource, name, &percent_decoded(query)));
    }
    let base = "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters";
    let resource = path.strip_prefix(base).map_or("other", |rest| {
        if rest.ends_with("/status") { "omeroclusters/status" } else { "omeroclusters" }
    });
    let verb = match (&parts.method, path == base) {
        (&Method::GET, true) if query.contains("watch=true") => "watch",
        (&Method::GET, true) => "list",
        (&Method::GET, false) => "get",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::POST, _) => "create",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        (other, _) => panic!("unexpected {other} {path}"),
    };
    verbs.lock().unwrap().insert(format!("{resource} {verb}"));
    if path == base && query.contains("watch=true") {
        // A watch: every new resourceVersion of the cluster goes out as one MODIFIED event.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        tokio::spawn(async move {
            let mut sent = fake.cluster().metadata.resource_version;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = fake.cluster().metadata.resource_version;
                if now != sent {
                    sent = now;
                    let mut line =
                        serde_json::to_vec(&json!({"type": "MODIFIED", "object": cluster_json(&fake)}))
                            .unwrap();
                    line.push(b'\n');
                    if tx.unbounded_send(Ok(Frame::data(Bytes::from(line)))).is_err() {
                        return;
                    }
                }
            }
        });
        return Ok(Response::builder().status(200).body(StreamBody::new(rx).boxed()).unwrap());
    }
    if path == base {
        let cluster = cluster_json(&fake);
        let list = json!({"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroClusterList",
                          "metadata": {"resourceVersion": cluster["metadata"]["resourceVersion"]}, "items": [cluster]});
        return Ok(json_reply(StatusCode::OK, &list));
    }
    if path != format!("{base}/omero") {
        return Ok(json_reply(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("{path} not found")}),
        ));
    }
    match parts.method {
        Method::GET => Ok(json_reply(StatusCode::OK, &cluster_json(&fake))),
        Method::PATCH => {
            let patch: Value = serde_json::from_slice(&bytes).unwrap();
            let current = fake.cluster().metadata.resource_version;
            if patch["metadata"]["resourceVersion"].as_str() != current.as_deref() {
                return Ok(json_reply(
                    StatusCode::CONFLICT,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                            "code": 409, "message": "the object has been modified"}),
                ));
            }
            fake.edit(|cluster| {
                let annotations = cluster.metadata.annotations.get_or_insert_default();
                for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
                    match v.as_str() {
                        Some(v) => annotations.insert(k.clone(), v.into()),
                        None => annotations.remove(k),
                    };
                }
            });
            Ok(json_reply(StatusCode::OK, &cluster_json(&fake)))
        }
        other => panic!("unexpected {other} {path}"),
    }
}

/// A core API answer from the fake: the Service by name, or the pods, or the Events (as the
/// core API shows the operator's events.k8s.io Events, filtered by the field selector's type).
fn core_reply(fake: &FakeCluster, resource: &str, name: Option<&str>, query: &str) -> Reply {
    let not_found = || {
        json_reply(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("{resource} {name:?} not found")}),
        )
    };
    let state = fake.state();
    let items: Vec<Value> = match (resource, name) {
        ("services", Some(name)) => {
            return state
                .services
                .get(name)
                .map_or_else(not_found, |s| json_reply(StatusCode::OK, &json!(s)));
        }
        ("pods", None) => state
            .pods
            .values()
            .map(|p| {
                let mut pod = json!(p);
                // Bound, as a scheduler would have (the simulation plays none).
                pod["spec"]["nodeName"] = json!("k8s-node-1");
                pod
            })
            .collect(),
        ("events", None) => {
            assert!(query.contains("involvedObject.kind=OmeroCluster,involvedObject.name=omero"), "{query}");
            let warnings_only = query.contains("type=Warning");
            let now = Timestamp::now().to_string();
            state
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    !warnings_only || e.type_ == omero_operator::controller::port::EventType::Warning
                })
                .map(|(i, e)| {
                    json!({"metadata": {"name": format!("omero.{i}")}, "type": format!("{:?}", e.type_),
                           "involvedObject": {"kind": "OmeroCluster", "name": "omero"},
                           "reason": e.reason, "message": e.note, "lastTimestamp": now, "count": 1})
                })
                .collect()
        }
        _ => return not_found(),
    };
    json_reply(StatusCode::OK, &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
}

/// A query string as the server reads it (`%3D` is `=`, `%2C` is `,`).
fn percent_decoded(query: &str) -> String {
    query.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/")
}

/// Runs `kubectl-omero ARGS` against the server; returns its output as a terminal would show
/// it (stdout then stderr) and whether it succeeded.
async fn kubectl_omero(kubeconfig: &std::path::Path, args: &str) -> (String, Option<i32>) {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(&args)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (text, output.status.code())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_and_a_restart_with_the_real_binary_over_http() {
    // The cluster, up and serving, on the real clock.
    let fake = FakeCluster::new(cluster_from_yaml(CLUSTER));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let mut sim = Sim::new(&fake, Duration::from_secs(2));
    sim.clock = Clock::starting_at(Timestamp::now());
    let ctx = sim.context();
    for _ in 0..6 {
        sim.kubelet();
        reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(fake.status().nodes.iter().all(|n| n.phase == NodePhase::Serving), "{:#?}", fake.status());
    sim.open_sessions("ro-1", 1, Duration::from_secs(2));
    sim.open_sessions("ro-1", 1, Duration::from_secs(4));
    sim.open_sessions("rw", 3, Duration::from_secs(3));

    // The operator: reconciles as its requeue asks, at least every 200 ms (a watch event).
    let operator = tokio::spawn({
        let (fake, sim) = (fake.clone(), sim.clone());
        async move {
            loop {
                sim.kubelet();
                let requeue = reconcile_once(&fake, &ctx).await.unwrap_or(Duration::from_millis(200));
                tokio::time::sleep(requeue.min(Duration::from_millis(200))).await;
            }
        }
    });

    // The API server, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let verbs = Verbs::default();
    let server = tokio::spawn({
        let (fake, verbs) = (fake.clone(), verbs.clone());
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (fake, verbs) = (fake.clone(), verbs.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| serve(fake.clone(), verbs.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    let kubeconfig = support::kubeconfig::at_server("omero-plugin-session", &format!("http://{address}"));

    let mut transcript = String::new();
    let mut run = async |args: &str| {
        verbs.lock().unwrap().clear();
        let (output, code) = kubectl_omero(&kubeconfig, args).await;
        transcript.push_str(&format!("$ kubectl omero {args}\n{output}"));
        // What it asked of the API server is what src/rbac.rs says it needs.
        let name = args.split_whitespace().next().unwrap();
        let command = omero_operator::rbac::PLUGIN_COMMANDS
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("`kubectl omero {name}` is not in src/rbac.rs PLUGIN_COMMANDS"));
        let listed: BTreeSet<String> =
            command.needs.iter().map(|n| format!("{} {}", n.resource, n.verb)).collect();
        let used = verbs.lock().unwrap().clone();
        assert!(
            used.is_subset(&listed),
            "`kubectl omero {args}` asked for {used:?}; src/rbac.rs lists {listed:?} for {name}"
        );
        (output, code)
    };
    let (status, code) = run("status omero").await;
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains("rw    read-write  Serving"), "{status}");
    assert!(
        status.contains("Entry:     omero.omero.svc, ports 4063 (glacier2-tcp), 4064 (glacier2-ssl)"),
        "{status}"
    );
    assert!(status.contains("Image:     openmicroscopy/omero-server:5.6\n"), "{status}");
    assert!(status.contains("ro-2  omero-ro-2-"), "each node's pod: {status}");
    assert!(status.contains("Problems:  none\nWarnings:  none\n"), "{status}");
    let asked =
        |verbs: &[&str]| -> BTreeSet<String> { verbs.iter().map(|v| format!("omeroclusters {v}")).collect() };
    let mut around = asked(&["get"]);
    around.extend(["services get", "pods list", "events list"].map(String::from));
    assert_eq!(
        *verbs.lock().unwrap(),
        around,
        "a status reads the cluster, its entry Service, pods and Events, nothing else"
    );

    let (drain, code) = run("drain omero ro-1 --wait").await;
    assert_eq!(code, Some(0), "{drain}");
    assert!(drain.contains("acknowledged by the operator"), "{drain}");
    assert!(drain.contains("ro-1: Draining, 2 sessions"), "{drain}");
    assert!(drain.lines().last().unwrap().starts_with("drained ro-1 in "), "{drain}");
    assert_eq!(fake.node("ro-1").phase, NodePhase::Drained);
    assert_eq!(
        *verbs.lock().unwrap(),
        asked(&["get", "list", "patch", "watch"]),
        "a drain reads, patches the annotations, and follows by a watch (which lists first)"
    );

    let (undrain, code) = run("undrain omero ro-1").await;
    assert!(code == Some(0) && undrain.contains("acknowledged by the operator"), "{undrain}");

    let (restart, code) = run("restart omero --all --wait").await;
    assert_eq!(code, Some(0), "{restart}");
    assert!(restart.lines().last().unwrap().starts_with("rw, ro-1, ro-2 up to date in "), "{restart}");
    let restarts = sim.world().restarts.clone();
    assert_eq!(
        restarts,
        [("ro-1".to_string(), 1), ("ro-2".to_string(), 1), ("rw".to_string(), 1)].into(),
        "each node restarted exactly once"
    );
    assert_eq!(sim.world().killed, 0, "no session was killed");

    let (refused, code) = run("drain omero ro-9").await;
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("error: no node named ro-9; the nodes are rw, ro-1, ro-2"), "{refused}");
    run("status omero").await;

    // Waiting longer than --timeout: exit 2, the operation goes on, and how to watch again.
    let (timed_out, code) = run("wait omero ro-1 --drained --timeout 1s").await;
    assert_eq!(code, Some(2), "{timed_out}");
    assert!(
        timed_out.contains("timed out after 1.0s; the operation goes on. Watch again: kubectl omero wait omero ro-1 --drained"),
        "{timed_out}"
    );

    // The operator stops: a request is written but never acknowledged, and the user is told.
    operator.abort();
    let (unacknowledged, code) = run("drain omero ro-2 --ack-timeout 1s").await;
    assert_eq!(code, Some(1), "{unacknowledged}");
    assert!(
        unacknowledged.contains("the operator has not acknowledged the request within 1s"),
        "{unacknowledged}"
    );

    server.abort();
    println!("{transcript}");
}
