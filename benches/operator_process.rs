//! The real `omero-operator` binary as its own process, against an API server played over
//! real HTTP by this benchmark: N OmeroClusters of 3 nodes, the operator creating their
//! Deployments and Services by server-side apply, a pod per Deployment appearing ready (as the
//! ReplicaSet controller and kubelet would), watch events for every change. Prints the
//! operator process's own memory (idle, and with every cluster cached), the time until all are
//! reconciled, after a restart facing N reconciled and N new clusters, its requests per
//! cluster by verb, its LIST requests, and its most concurrent connections.
//!
//!     cargo bench --bench operator_process                    # 300 clusters of 3 nodes
//!     OMERO_BENCH_CLUSTERS=100 cargo bench --bench operator_process
//!     OMERO_BENCH_WRAPPER="valgrind --tool=massif" cargo bench --bench operator_process
//!         # the operator's heap over the first run, then stop (use a dev build for symbols)
//!
//! Not a real API server (no etcd, no admission, no real ReplicaSets): the API side's costs
//! are this program's, so only the operator's side is measured.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

type Reply = Response<BoxBody<Bytes, Infallible>>;
type Watcher = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

const NS: &str = "bench";

#[derive(Default)]
struct Api {
    /// By resource (plural) then "namespace/name".
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    watchers: Vec<(String, Watcher)>,
    resource_version: u64,
    /// Requests by "VERB resource".
    requests: BTreeMap<String, usize>,
    lists: usize,
}

#[derive(Clone, Default)]
struct Server {
    api: Arc<Mutex<Api>>,
    connections: Arc<AtomicUsize>,
    most_connections: Arc<AtomicUsize>,
}

fn reply(code: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

fn not_found() -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// RFC 7386 JSON merge patch (and, for server-side apply here, the same merge of the applied
/// fields).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl Api {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Stores `object` and tells the watches of `resource`.
    fn store(&mut self, resource: &str, key: String, mut object: Value, added: bool) -> Value {
        object["metadata"]["resourceVersion"] = json!(self.bump());
        object["metadata"]["managedFields"] = managed_fields(resource, &object);
        self.objects.entry(resource.into()).or_default().insert(key, object.clone());
        let event = json!({"type": if added { "ADDED" } else { "MODIFIED" }, "object": object});
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        self.watchers.retain(|(r, w)| {
            r != resource || w.unbounded_send(Ok(Frame::data(Bytes::from(line.clone())))).is_ok()
        });
        object
    }

    /// The ReplicaSet controller and the kubelet, at once: a Deployment's pod, running and ready.
    fn pod_for(&mut self, deployment: &Value) {
        let name = deployment["metadata"]["name"].as_str().unwrap().to_string();
        let ns = deployment["metadata"]["namespace"].as_str().unwrap_or(NS).to_string();
        let mut labels = deployment["spec"]["template"]["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!("h");
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-h-x"), "namespace": ns, "uid": format!("pod-{name}"),
                         "labels": labels, "annotations": deployment["spec"]["template"]["metadata"]["annotations"],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-h"),
                                              "uid": format!("rs-{name}"), "controller": true}]},
            "spec": deployment["spec"]["template"]["spec"],
            "status": {"phase": "Running", "podIP": "127.0.0.1", "startTime": "2026-11-30T00:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "omero-server", "ready": true, "restartCount": 0, "started": true,
                                              "image": "x", "imageID": "x", "containerID": format!("containerd://{name}"),
                                              "state": {"running": {"startedAt": "2026-11-30T00:00:00Z"}}}]}
        });
        self.store("pods", format!("{ns}/{name}-h-x"), pod, true);
    }
}

/// `(resource, namespace, name, subresource)` of an API path.
fn route(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = if parts.first() == Some(&"api") { &parts[2..] } else { &parts[3.min(parts.len())..] };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let get = |i: usize| rest.get(i).map(|s| s.to_string());
    (get(0).unwrap_or_default(), ns, get(1), get(2))
}

async fn serve(server: Server, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let query = parts.uri.query().unwrap_or_default();
    let (resource, ns, name, sub) = route(parts.uri.path());
    let mut api = server.api.lock().unwrap();
    *api.requests
        .entry(format!(
            "{} {resource}{}",
            parts.method,
            sub.as_deref().map(|s| format!("/{s}")).unwrap_or_default()
        ))
        .or_default() += 1;
    let key = |ns: &Option<String>, name: &str| format!("{}/{name}", ns.as_deref().unwrap_or(""));
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(match (parts.method, name) {
        (Method::GET, None) if query.contains("watch=true") => {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            api.watchers.push((resource, tx));
            Response::builder().status(200).body(StreamBody::new(rx).boxed()).unwrap()
        }
        (Method::GET, None) => {
            api.lists += 1;
            let items: Vec<Value> = api
                .objects
                .get(&resource)
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| ns.as_ref().is_none_or(|ns| k.starts_with(&format!("{ns}/"))))
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            let rv = api.resource_version.to_string();
            reply(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match api.objects.get(&resource).and_then(|m| m.get(&key(&ns, &name))) {
            Some(object) => reply(StatusCode::OK, object),
            None => not_found(),
        },
        (Method::POST, None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("event").to_string();
            let mut object = body.clone();
            object["metadata"]["uid"] = json!(format!("{resource}-{name}"));
            let stored = api.store(&resource, key(&ns, &name), object, true);
            reply(StatusCode::CREATED, &stored)
        }
        (Method::PATCH, Some(name)) => {
            let existing = api.objects.get(&resource).and_then(|m| m.get(&key(&ns, &name))).cloned();
            let added = existing.is_none();
            let mut object = existing.unwrap_or_else(
                || json!({"metadata": {"uid": format!("{resource}-{name}"), "generation": 1}}),
            );
            let mut patch = body.clone();
            if let Some(m) = patch["metadata"].as_object_mut() {
                m.remove("uid");
                m.remove("resourceVersion");
            }
            merge(&mut object, &patch);
            let stored = api.store(&resource, key(&ns, &name), object, added);
            if resource == "deployments" && added {
                api.pod_for(&stored);
            }
            reply(StatusCode::OK, &stored)
        }
        (Method::PUT, Some(name)) if sub.as_deref() == Some("status") => {
            let Some(mut object) = api.objects.get(&resource).and_then(|m| m.get(&key(&ns, &name))).cloned()
            else {
                return Ok(not_found());
            };
            if body["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                return Ok(reply(
                    StatusCode::CONFLICT,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"}),
                ));
            }
            object["status"] = body["status"].clone();
            let stored = api.store(&resource, key(&ns, &name), object, false);
            reply(StatusCode::OK, &stored)
        }
        (Method::DELETE, Some(name)) => {
            api.objects.get_mut(&resource).and_then(|m| m.remove(&key(&ns, &name)));
            reply(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        }
        _ => not_found(),
    })
}

/// What a real API server records of who set which field (`metadata.managedFields`), as it
/// returns with every object: the writer's fields, and the status writer's. The operator
/// drops them from its caches, but decodes them with every object and watch event.
fn managed_fields(resource: &str, object: &Value) -> Value {
    /// A fieldsV1 set: every key of an object as `f:key`; lists as a whole.
    fn fields(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut set: serde_json::Map<String, Value> =
                    map.iter().map(|(k, v)| (format!("f:{k}"), fields(v))).collect();
                set.insert(".".into(), json!({}));
                Value::Object(set)
            }
            _ => json!({}),
        }
    }
    let manager = if resource == "omeroclusters" { "kubectl-client-side-apply" } else { "omero-operator" };
    let mut spec = object.clone();
    if let Some(o) = spec.as_object_mut() {
        o.remove("status");
        o.remove("apiVersion");
        o.remove("kind");
    }
    if let Some(m) = spec["metadata"].as_object_mut() {
        for generated in ["managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"] {
            m.remove(generated);
        }
    }
    let entry = |manager: &str, operation: &str, subresource: Option<&str>, set: Value| {
        let mut e = json!({"manager": manager, "operation": operation, "apiVersion": object["apiVersion"],
                           "time": "2026-11-30T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": set});
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    };
    let mut entries = vec![entry(manager, "Apply", None, fields(&spec))];
    if let Some(status) = object.get("status").filter(|s| !s.is_null()) {
        entries.push(entry("omero-operator", "Update", Some("status"), json!({"f:status": fields(status)})));
    }
    Value::Array(entries)
}

/// An OmeroCluster as `kubectl apply` leaves it: with the applied spec kept again in the
/// last-applied annotation.
fn cluster(i: usize) -> Value {
    let name = format!("omero-{i:04}");
    let mut cluster = json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"image": "openmicroscopy/omero-server:5.6",
                 "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                 "repository": {"claimName": "omero-data"},
                 "nodes": [{"name": "rw", "sessionProbe": {"type": "none"}},
                           {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
                           {"name": "ro-2", "readOnly": {"db": true, "repo": true}}]}
    });
    let applied = cluster.to_string();
    cluster["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": applied});
    cluster["metadata"]["uid"] = json!(format!("uid-{name}"));
    cluster["metadata"]["generation"] = json!(1);
    cluster
}

impl Server {
    fn add_clusters(&self, range: std::ops::Range<usize>) {
        let mut api = self.api.lock().unwrap();
        for i in range {
            let c = cluster(i);
            let key = format!("{NS}/{}", c["metadata"]["name"].as_str().unwrap());
            api.store("omeroclusters", key, c, true);
        }
    }

    /// Clusters whose status is of their generation and whose 3 Deployments and 4 Services exist.
    fn reconciled(&self) -> usize {
        let api = self.api.lock().unwrap();
        let count = |r: &str| api.objects.get(r).map_or(0, |m| m.len());
        let Some(clusters) = api.objects.get("omeroclusters") else { return 0 };
        let deployments = api.objects.get("deployments");
        let services = api.objects.get("services");
        let _ = count;
        clusters
            .values()
            .filter(|c| c["status"]["observedGeneration"] == c["metadata"]["generation"])
            .filter(|c| {
                let name = c["metadata"]["name"].as_str().unwrap();
                let has = |m: Option<&BTreeMap<String, Value>>, n: &str| {
                    m.is_some_and(|m| m.contains_key(&format!("{NS}/{n}")))
                };
                ["rw", "ro-1", "ro-2"].iter().all(|n| {
                    has(deployments, &format!("{name}-{n}")) && has(services, &format!("{name}-{n}"))
                }) && has(services, name)
            })
            .count()
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The operator's process; `OMERO_BENCH_WRAPPER` (e.g. `valgrind --tool=massif`) runs it
/// under a profiler.
fn start_operator(kubeconfig: &std::path::Path, http: &str) -> Child {
    let wrapper = std::env::var("OMERO_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_omero-operator"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_omero-operator")),
    };
    command
        .args(["run", "--log-level", "warn", "--http-address", http, "--lease-namespace", NS])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the operator starts")
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("OMERO_BENCH_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let server = Server::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let server = server.clone();
                let open = server.connections.fetch_add(1, Ordering::SeqCst) + 1;
                server.most_connections.fetch_max(open, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn({
                        let server = server.clone();
                        move |request| serve(server.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    server.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("omero-operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"http://{address}\"}}\nusers:\n- name: b\n  user: {{}}\n\
             contexts:\n- name: b\n  context: {{cluster: b, user: b, namespace: {NS}}}\ncurrent-context: b\n"
        ),
    )
    .unwrap();
    let http_port = |p: u16| format!("127.0.0.1:{p}");
    let leading =
        |server: &Server| server.api.lock().unwrap().objects.get("leases").is_some_and(|m| !m.is_empty());

    // Idle: no cluster at all, leading, caches filled.
    let mut operator = start_operator(&kubeconfig, &http_port(18431));
    wait_for("the lease", Duration::from_secs(60), || leading(&server)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(operator.id(), "VmRSS:");
    operator.kill().unwrap();
    operator.wait().unwrap();

    // N clusters, all new: time until every one is reconciled, then memory with all cached.
    server.add_clusters(0..n);
    server.api.lock().unwrap().requests.clear();
    server.api.lock().unwrap().lists = 0;
    server.api.lock().unwrap().objects.remove("leases");
    server.most_connections.store(server.connections.load(Ordering::SeqCst), Ordering::SeqCst);
    let mut operator = start_operator(&kubeconfig, &http_port(18432));
    let took = wait_for("all reconciled", Duration::from_secs(600), || server.reconciled() == n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cached = rss_kib(operator.id(), "VmRSS:");
    let peak = rss_kib(operator.id(), "VmHWM:");
    let requests = server.api.lock().unwrap().requests.clone();
    let lists = server.api.lock().unwrap().lists;
    let most = server.most_connections.load(Ordering::SeqCst);
    // SIGTERM, as Kubernetes stops it (a profiler then writes its report).
    let _ = Command::new("kill").args(["-TERM", &operator.id().to_string()]).status();
    operator.wait().unwrap();
    if std::env::var_os("OMERO_BENCH_WRAPPER").is_some() {
        return;
    }

    // Restart facing N reconciled and N new clusters.
    server.add_clusters(n..2 * n);
    server.api.lock().unwrap().objects.remove("leases");
    let mut operator = start_operator(&kubeconfig, &http_port(18433));
    let caught_up = wait_for("caught up", Duration::from_secs(600), || server.reconciled() == 2 * n).await;
    let restart_peak = rss_kib(operator.id(), "VmHWM:");
    operator.kill().unwrap();
    operator.wait().unwrap();

    println!("omero-operator process against an HTTP API played by this benchmark, {n} clusters x 3 nodes:");
    println!("  RSS idle (leading, no cluster): {:.1} MiB", idle as f64 / 1024.0);
    println!("  all {n} reconciled after start: {took:.2?}");
    println!(
        "  RSS with {n} clusters cached: {:.1} MiB (peak {:.1} MiB)",
        cached as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "  restart facing {n} reconciled + {n} new: caught up in {caught_up:.2?} (peak RSS {:.1} MiB)",
        restart_peak as f64 / 1024.0
    );
    println!("  LIST requests over the first run: {lists} (the watches' own starts)");
    println!("  most concurrent connections: {most}");
    let per: HashMap<&str, f64> = requests.iter().map(|(k, v)| (k.as_str(), *v as f64 / n as f64)).collect();
    let mut per: Vec<_> = per.into_iter().collect();
    per.sort_by(|a, b| a.0.cmp(b.0));
    println!("  requests per cluster by verb and resource (first run):");
    for (k, v) in per {
        println!("    {k}: {v:.2}");
    }
}
