//! The real `omero-operator` binary as its own process, N OmeroClusters of 3 nodes, and the
//! operator's every API request passing through this benchmark, which counts them by verb and
//! resource, counts its LISTs and its concurrent connections, and reads its memory. Prints the
//! operator process's own memory (idle, and with every cluster cached), the time until all are
//! reconciled, after a restart facing N reconciled and N new clusters, its requests per
//! cluster by verb, its LIST requests, and its most concurrent connections. Between the two
//! runs the fleet idles: every read-only node's sessions are counted by a metrics probe of an exporter this
//! benchmark serves on 127.0.0.1:9449 (the same count at every probe), and the operator's
//! writes over `OMERO_BENCH_IDLE_SECONDS` (default 180, three serving probe intervals; `0`:
//! no idle phase) are counted and given per hour. Against a real API server it also measures
//! that server's own write rate first (3,300 ConfigMap creates from 8 and from 32 clients),
//! the limit the operator's writes are set against.
//!
//! The operator reaches this benchmark as it reaches an API server: over TLS (a certificate made
//! at start, its CA in the operator's kubeconfig), HTTP/2 or HTTP/1.1 as ALPN chooses, so the
//! connections counted are those it would hold to a real one. The API behind is either played
//! here over real HTTP (the default: the
//! operator creates Deployments and Services by server-side apply, and gets them back with
//! an API server's defaults and managed fields; a pod per Deployment appears ready as the
//! ReplicaSet controller and kubelet would make it; watch events for every change), or a real
//! API server given by a kubeconfig, to which each request is forwarded:
//!
//!     cargo bench --bench operator_process                    # 300 clusters of 3 nodes, played API
//!     OMERO_BENCH_CLUSTERS=100 cargo bench --bench operator_process
//!     OMERO_BENCH_KUBECONFIG=~/.kube/config cargo bench --bench operator_process
//!         # a real API server: a namespace omero-bench-<time> with the CRD, a Secret and the
//!         # clusters, deleted at the end; the kubeconfig's user needs the operator's rights
//!         # and to create namespaces and the CRD
//!     OMERO_BENCH_KUBECONFIG=played cargo bench --bench operator_process
//!         # the real-server path against the played API on a port of its own (checks the
//!         # forwarding and setup of this benchmark, not an API server)
//!     OMERO_BENCH_WRAPPER="valgrind --tool=massif" cargo bench --bench operator_process
//!         # the operator's heap over the first run, then stop (use a dev build for symbols)
//!     OMERO_BENCH_OPERATOR_LOG=1 ...                          # the operator's warnings on stderr
//!     OMERO_BENCH_PROGRESS=1 ...                              # clusters reconciled, once a second
//!     OMERO_BENCH_OPERATOR_ARGS="--concurrency 8" ...         # more arguments for the operator
//!     OMERO_BENCH_DIRECT=1 OMERO_BENCH_KUBECONFIG=... ...     # the operator talks to the real
//!         # API server itself, not through the counting proxy: times, memory, and its TCP
//!         # connections to the server (read from /proc), but no request counts
//!
//! The played API is not a real API server (no etcd, no admission, no real ReplicaSets): its
//! costs are this program's, so only the operator's side is measured. Against a real API
//! server no pod runs unless its cluster has kubelets, and "reconciled" needs none; for the
//! idle fleet the benchmark plays scheduler and kubelet itself (binds each pod to a Node
//! `omero-bench-node` it makes, writes it Running and Ready at 127.0.0.1) with its own client,
//! whose writes are not counted as the operator's.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{
    BodyExt, StreamBody,
    combinators::{BoxBody, UnsyncBoxBody},
};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

type Reply = Response<BoxBody<Bytes, Infallible>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the operator gets back: a played reply, or a real API server's response.
type Forwarded = Response<UnsyncBoxBody<Bytes, BoxError>>;
type Watcher = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

const NS: &str = "bench";

#[derive(Default)]
struct Api {
    /// By resource (plural) then "namespace/name".
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    watchers: Vec<(String, Watcher)>,
    resource_version: u64,
}

/// The API played here.
#[derive(Clone, Default)]
struct Server {
    api: Arc<Mutex<Api>>,
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
    fn pod_for(&mut self, deployment: &Value, ns: &str) {
        let name = deployment["metadata"]["name"].as_str().unwrap().to_string();
        let mut labels = deployment["spec"]["template"]["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!("h");
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-h-x"), "namespace": ns, "uid": format!("pod-{name}"),
                         "labels": labels, "annotations": deployment["spec"]["template"]["metadata"]["annotations"],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-h"),
                                              "uid": format!("rs-{name}"), "controller": true}]},
            "spec": deployment["spec"]["template"]["spec"],
            "status": running_status(&name, &deployment["spec"]["template"]["spec"]["containers"]),
        });
        self.store("pods", format!("{ns}/{name}-h-x"), pod, true);
    }
}

/// A pod's status as a kubelet writes it once every container runs and is ready, at
/// 127.0.0.1 (where the exporter answers); `containers` is the pod spec's list.
fn running_status(pod: &str, containers: &Value) -> Value {
    let statuses: Vec<Value> = containers
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "ready": true, "restartCount": 0, "started": true, "image": c["image"],
                   "imageID": "bench", "containerID": format!("containerd://{pod}-{}", c["name"].as_str().unwrap_or_default()),
                   "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}})
        })
        .collect();
    json!({"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
           "startTime": "2026-12-01T00:00:00Z",
           "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                          {"type": "Initialized", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
           "containerStatuses": statuses})
}

/// `(resource, namespace, name, subresource)` of an API path.
fn route(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = if parts.first() == Some(&"api") { &parts[2..] } else { &parts[3.min(parts.len())..] };
    let (ns, rest) = match rest {
        ["namespaces", _] => (None, rest),
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
    let key = |ns: &Option<String>, name: &str| format!("{}/{name}", ns.as_deref().unwrap_or(""));
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(match (parts.method, name) {
        (Method::GET, None) if query.contains("watch=true") => {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            api.watchers.push((resource, tx));
            Response::builder().status(200).body(StreamBody::new(rx).boxed()).unwrap()
        }
        (Method::GET, None) => {
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
            object["metadata"]["generation"] = json!(1);
            if let Some(ns) = &ns {
                object["metadata"]["namespace"] = json!(ns);
            }
            let stored = api.store(&resource, key(&ns, &name), object, true);
            reply(StatusCode::CREATED, &stored)
        }
        (Method::PATCH, Some(name)) => {
            let existing = api.objects.get(&resource).and_then(|m| m.get(&key(&ns, &name))).cloned();
            // An apply that carries a resourceVersion (the operator's create-only apply) is
            // conditional on it: no object here is at the one sent.
            if existing.is_some() && body["metadata"].get("resourceVersion").is_some() {
                return Ok(reply(
                    StatusCode::CONFLICT,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"}),
                ));
            }
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
            defaults(&resource, &mut object);
            let stored = api.store(&resource, key(&ns, &name), object, added);
            if resource == "deployments" && added {
                api.pod_for(&stored, ns.as_deref().unwrap_or(NS));
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
        (Method::DELETE, None) => {
            // A collection delete, with at most one `key=value` label selector (the benchmark's
            // own clean-ups).
            let selector = query
                .split('&')
                .find_map(|p| p.strip_prefix("labelSelector="))
                .map(|s| s.replace("%3D", "="))
                .and_then(|s| s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())));
            let prefix = format!("{}/", ns.as_deref().unwrap_or(""));
            if let Some(objects) = api.objects.get_mut(&resource) {
                objects.retain(|k, o| {
                    let selected = selector.as_ref().is_none_or(|(l, v)| o["metadata"]["labels"][l] == **v);
                    !(k.starts_with(&prefix) && selected)
                });
            }
            reply(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        }
        _ => not_found(),
    })
}

/// Sets `value` at `key` of `object` unless it is there (an API server's defaulting).
fn default(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.entry(key.to_string()).or_insert(value);
    }
}

/// The defaults a Kubernetes 1.28 API server fills into what the operator applies, so the
/// objects the operator caches and compares are as long as real ones, and a comparison that
/// took a default for a change would show as applies here.
fn defaults(resource: &str, object: &mut Value) {
    let probe = |probe: &mut Value| {
        for (k, v) in
            [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)]
        {
            default(probe, k, json!(v));
        }
    };
    let pod_spec = |spec: &mut Value| {
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("securityContext", json!({})),
        ] {
            default(spec, k, v);
        }
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                default(c, "imagePullPolicy", json!("IfNotPresent"));
                for port in c["ports"].as_array_mut().into_iter().flatten() {
                    default(port, "protocol", json!("TCP"));
                }
                for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if c[p].is_object() {
                        probe(&mut c[p]);
                    }
                }
            }
        }
        for volume in spec["volumes"].as_array_mut().into_iter().flatten() {
            for source in ["configMap", "secret"] {
                if volume[source].is_object() {
                    default(&mut volume[source], "defaultMode", json!(420));
                }
            }
        }
    };
    match resource {
        "deployments" => {
            let spec = &mut object["spec"];
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            pod_spec(&mut spec["template"]["spec"]);
        }
        "services" => {
            let spec = &mut object["spec"];
            let headless = spec["clusterIP"] == "None";
            for (k, v) in [
                ("type", json!("ClusterIP")),
                ("sessionAffinity", json!("None")),
                ("ipFamilies", json!(["IPv4"])),
                ("ipFamilyPolicy", json!("SingleStack")),
                ("internalTrafficPolicy", json!("Cluster")),
                ("clusterIP", json!("10.96.0.10")),
                ("clusterIPs", json!([if headless { "None" } else { "10.96.0.10" }])),
            ] {
                default(spec, k, v);
            }
            for port in spec["ports"].as_array_mut().into_iter().flatten() {
                default(port, "protocol", json!("TCP"));
                let number = port["port"].clone();
                default(port, "targetPort", number);
            }
        }
        _ => {}
    }
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

/// The read-only nodes' session probe: the exporter this benchmark serves on every pod's
/// address (127.0.0.1), which always counts [`SESSIONS`] people.
static EXPORTER_PROBE: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"type": "Metrics", "port": EXPORTER_PORT, "exporterUser": "exporter"}),
);
const EXPORTER_PORT: u16 = 9449;
const SESSIONS: u64 = 3;

/// The sessions exporter of every read-only node: the same [`SESSIONS`] people at every
/// probe, as on a quiet afternoon. Counts the probes it answers.
async fn serve_exporter(probes: Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", EXPORTER_PORT))
        .await
        .unwrap_or_else(|e| panic!("the exporter's port 127.0.0.1:{EXPORTER_PORT}: {e}"));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let probes = probes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let n = probes.fetch_add(1, Ordering::SeqCst);
                    let text = format!(
                        "omero_sessions_active{{username=\"alice\"}} {SESSIONS}\nomero_sessions_processing_seconds_count {n}\n"
                    );
                    async move { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
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
                 "nodes": [{"name": "rw", "sessionProbe": {"type": "None"}},
                           {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": EXPORTER_PROBE.clone()},
                           {"name": "ro-2", "readOnly": {"db": true, "repo": true}, "sessionProbe": EXPORTER_PROBE.clone()}]}
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
        let names = |resource: &str| -> BTreeSet<String> {
            api.objects.get(resource).into_iter().flatten().map(|(key, _)| key.clone()).collect()
        };
        let clusters: Vec<&Value> =
            api.objects.get("omeroclusters").into_iter().flatten().map(|(_, c)| c).collect();
        count_reconciled(clusters, &names("deployments"), &names("services"), NS)
    }

    fn counted(&self) -> usize {
        let api = self.api.lock().unwrap();
        count_counted(api.objects.get("omeroclusters").into_iter().flatten().map(|(_, c)| c))
    }

    /// Serves this API on `listener` (each connection on its own task).
    fn serve_on(self, listener: tokio::net::TcpListener) {
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let server = self.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| serve(server.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
}

/// Of `clusters`, those whose status is of their generation and whose Deployment and Service
/// per node and entry Service exist (`deployments` and `services` as "namespace/name").
fn count_reconciled<'a>(
    clusters: impl IntoIterator<Item = &'a Value>,
    deployments: &BTreeSet<String>,
    services: &BTreeSet<String>,
    ns: &str,
) -> usize {
    clusters
        .into_iter()
        .filter(|c| c["status"]["observedGeneration"] == c["metadata"]["generation"])
        .filter(|c| {
            let name = c["metadata"]["name"].as_str().unwrap_or_default();
            let has = |set: &BTreeSet<String>, n: String| set.contains(&format!("{ns}/{n}"));
            NODES
                .iter()
                .all(|n| has(deployments, format!("{name}-{n}")) && has(services, format!("{name}-{n}")))
                && has(services, name.to_string())
        })
        .count()
}

/// Of `clusters`' read-only nodes, those whose status holds the exporter's count.
fn count_counted<'a>(clusters: impl IntoIterator<Item = &'a Value>) -> usize {
    clusters
        .into_iter()
        .flat_map(|c| c["status"]["nodes"].as_array().into_iter().flatten())
        .filter(|n| n["name"] != "rw" && n["sessions"] == SESSIONS)
        .count()
}

/// The node names of every benchmark cluster.
const NODES: [&str; 3] = ["rw", "ro-1", "ro-2"];

/// A real API server, reached with the kubeconfig's credentials, and the namespace the
/// benchmark made there.
#[derive(Clone)]
struct RealApi {
    client: kube::Client,
    ns: String,
    /// What the benchmark looks at, kept by watches (started by `set_up`).
    watched: Arc<std::sync::OnceLock<Watched>>,
}

/// The namespace's clusters, and the names of the operator's Deployments and Services, as
/// watches keep them: a look reads these, not a LIST of everything (which on 2 cores, every
/// second, took API server CPU from what is measured). A watch can only lag, so a run is
/// never seen reconciled early.
struct Watched {
    clusters: kube::runtime::reflector::Store<omero_operator::api::OmeroCluster>,
    deployments: kube::runtime::reflector::Store<
        kube::core::PartialObjectMeta<k8s_openapi::api::apps::v1::Deployment>,
    >,
    services:
        kube::runtime::reflector::Store<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Service>>,
}

impl Watched {
    /// Starts the three watches on `ns` and waits until each has listed.
    async fn start(client: &kube::Client, ns: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        fn run<S: futures::Stream + Send + 'static>(stream: S) {
            tokio::spawn(stream.for_each(|_| std::future::ready(())));
        }
        use omero_operator::api::keys::{MANAGED_BY_LABEL, MANAGER};
        let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
        let (clusters, writer) = reflector::store();
        run(reflector(
            writer,
            watcher(kube::Api::namespaced(client.clone(), ns), watcher::Config::default()),
        )
        .default_backoff());
        let (deployments, writer) = reflector::store();
        run(reflector(writer, watcher(kube::Api::namespaced(client.clone(), ns), ours.clone()))
            .default_backoff());
        let (services, writer) = reflector::store();
        run(reflector(writer, watcher(kube::Api::namespaced(client.clone(), ns), ours)).default_backoff());
        let watched = Self { clusters, deployments, services };
        let synced = async {
            let _ = watched.clusters.wait_until_ready().await;
            let _ = watched.deployments.wait_until_ready().await;
            let _ = watched.services.wait_until_ready().await;
        };
        tokio::time::timeout(Duration::from_secs(60), synced).await.expect("the benchmark's watches listed");
        watched
    }

    /// Each cluster's name, generation and status, as JSON (what `count_reconciled` and
    /// `count_counted` read), without the rest of it.
    fn clusters(&self) -> Vec<Value> {
        self.clusters
            .state()
            .iter()
            .map(|c| {
                json!({"metadata": {"name": c.metadata.name, "generation": c.metadata.generation},
                       "status": c.status})
            })
            .collect()
    }
}

impl RealApi {
    async fn connect(kubeconfig: &std::path::Path) -> Self {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig).expect("a readable kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a usable kubeconfig");
        let client = kube::Client::try_from(config).expect("a client");
        let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        Self { client, ns: format!("omero-bench-{seconds}"), watched: Default::default() }
    }

    fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        kube::Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The namespace, the CRD (this build's), and the database Secret the clusters name.
    async fn set_up(&self) {
        use k8s_openapi::{
            api::core::v1::{Namespace, Secret},
            apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        };
        use kube::{
            Api, CustomResourceExt,
            api::{Patch, PatchParams, PostParams},
        };
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": self.ns}})).unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace");
        let crd = omero_operator::api::OmeroCluster::crd();
        Api::<CustomResourceDefinition>::all(self.client.clone())
            .patch(
                &crd.metadata.name.clone().unwrap(),
                &PatchParams::apply(BENCH_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("the CRD");
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "omero-db"}, "stringData": {"password": "bench"}}),
        )
        .unwrap();
        self.api::<Secret>().create(&PostParams::default(), &secret).await.expect("the Secret");
        let clusters = self.api::<omero_operator::api::OmeroCluster>();
        wait_for("the CRD to be served", Duration::from_secs(60), Duration::from_millis(500), || {
            let clusters = clusters.clone();
            async move { clusters.list(&kube::api::ListParams::default().limit(1)).await.is_ok() }
        })
        .await;
        let watched = Watched::start(&self.client, &self.ns).await;
        assert!(self.watched.set(watched).is_ok(), "set up once");
    }

    fn watched(&self) -> &Watched {
        self.watched.get().expect("set up first")
    }

    /// Creates the clusters as `kubectl apply` would (with its last-applied copy).
    async fn add_clusters(&self, range: std::ops::Range<usize>) {
        let api = self.api::<omero_operator::api::OmeroCluster>();
        for i in range {
            let mut c = cluster(i);
            if let Some(m) = c["metadata"].as_object_mut() {
                for generated in ["uid", "generation", "namespace"] {
                    m.remove(generated);
                }
            }
            let cluster = serde_json::from_value(c).expect("a benchmark cluster");
            api.create(&kube::api::PostParams::default(), &cluster).await.expect("a cluster");
        }
    }

    async fn reconciled(&self) -> usize {
        let watched = self.watched();
        fn names<K: kube::Resource + Clone>(
            store: &kube::runtime::reflector::Store<K>,
            ns: &str,
        ) -> BTreeSet<String>
        where
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store.state().iter().filter_map(|o| o.meta().name.clone()).map(|n| format!("{ns}/{n}")).collect()
        }
        let (deployments, services) =
            (names(&watched.deployments, &self.ns), names(&watched.services, &self.ns));
        count_reconciled(&watched.clusters(), &deployments, &services, &self.ns)
    }

    async fn counted(&self) -> usize {
        count_counted(&self.watched().clusters())
    }

    /// The scheduler and kubelet this API server has none of: binds each pod of the namespace
    /// to the benchmark's Node and writes it Running and Ready at 127.0.0.1 (where the
    /// exporter answers), until `want` pods are. Its own writes, not the operator's.
    async fn play_kubelet(&self, want: usize) {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::{Node, Pod};
        use kube::api::PostParams;
        let nodes = kube::Api::<Node>::all(self.client.clone());
        if nodes.get_opt(BENCH_NODE).await.expect("reading the Node").is_none() {
            let node: Node = serde_json::from_value(json!({"metadata": {"name": BENCH_NODE}})).unwrap();
            nodes.create(&PostParams::default(), &node).await.expect("the benchmark's Node");
        }
        let pods = self.api::<Pod>();
        loop {
            let list = pods.list(&kube::api::ListParams::default()).await.expect("listing pods");
            let ready = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"))
            };
            if list.items.iter().filter(|p| ready(p)).count() >= want {
                return;
            }
            let waiting: Vec<Pod> = list.items.into_iter().filter(|p| !ready(p)).collect();
            futures::stream::iter(waiting).for_each_concurrent(8, |pod| run_pod(&pods, pod)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The API server's own write rate, the limit the operator's writes are measured
    /// against: `writes` ConfigMap creates from `clients` concurrent clients (then deleted).
    async fn raw_write_rate(&self, clients: usize, writes: usize) -> f64 {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::ConfigMap;
        let config_maps = self.api::<ConfigMap>();
        let start = Instant::now();
        futures::stream::iter(0..writes)
            .for_each_concurrent(clients, |i| {
                let config_maps = config_maps.clone();
                async move {
                    let cm: ConfigMap = serde_json::from_value(json!({
                        "metadata": {"name": format!("raw-{clients}-{i}"), "labels": {"omero-bench": "raw"}},
                        "data": {"k": "v"}}))
                    .unwrap();
                    config_maps.create(&kube::api::PostParams::default(), &cm).await.expect("a ConfigMap");
                }
            })
            .await;
        let rate = writes as f64 / start.elapsed().as_secs_f64();
        config_maps
            .delete_collection(
                &kube::api::DeleteParams::default(),
                &kube::api::ListParams::default().labels("omero-bench=raw"),
            )
            .await
            .expect("deleting the ConfigMaps");
        rate
    }

    async fn leading(&self) -> bool {
        let lease = self.api::<k8s_openapi::api::coordination::v1::Lease>().get_opt(LEASE).await;
        lease.ok().flatten().and_then(|l| l.spec?.holder_identity).is_some()
    }

    /// A killed operator's Lease goes, so the next one leads at once, not at its expiry.
    async fn forget_lease(&self) {
        let leases = self.api::<k8s_openapi::api::coordination::v1::Lease>();
        let _ = leases.delete(LEASE, &kube::api::DeleteParams::default()).await;
    }

    /// Deletes everything the run made, and waits until the namespace is gone: the namespace
    /// controller alone takes minutes over thousands of objects, loading the API server
    /// through whatever runs next.
    async fn tear_down(&self) {
        use k8s_openapi::api::{
            apps::v1::{Deployment, ReplicaSet},
            core::v1::{ConfigMap, Event, Namespace, Node, Pod, Service},
            policy::v1::PodDisruptionBudget,
        };
        use kube::api::{DeleteParams, ListParams};
        eprintln!("deleting namespace {}", self.ns);
        let all = ListParams::default();
        let delete = DeleteParams::default();
        // Clusters first, so the operator's children are not made again; no kubelet confirms a
        // bound pod's deletion: pods go at once.
        let _ = self.api::<omero_operator::api::OmeroCluster>().delete_collection(&delete, &all).await;
        let _ = self.api::<Deployment>().delete_collection(&delete, &all).await;
        let _ = self.api::<ReplicaSet>().delete_collection(&delete, &all).await;
        let _ = self.api::<Pod>().delete_collection(&DeleteParams::default().grace_period(0), &all).await;
        let _ = self.api::<Service>().delete_collection(&delete, &all).await;
        let _ = self.api::<PodDisruptionBudget>().delete_collection(&delete, &all).await;
        let _ = self.api::<ConfigMap>().delete_collection(&delete, &all).await;
        let _ = self.api::<Event>().delete_collection(&delete, &all).await;
        let _ = kube::Api::<Node>::all(self.client.clone()).delete(BENCH_NODE, &delete).await;
        let namespaces = kube::Api::<Namespace>::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &delete).await;
        wait_for("the namespace to go", Duration::from_secs(900), Duration::from_secs(2), || {
            let namespaces = namespaces.clone();
            async move { matches!(namespaces.get_opt(&self.ns).await, Ok(None)) }
        })
        .await;
    }
}

/// One pod through the played scheduler and kubelet: bound to the benchmark's Node if it is
/// not yet, then written running and ready. A refusal is printed and the next pass retries.
async fn run_pod(pods: &kube::Api<k8s_openapi::api::core::v1::Pod>, pod: k8s_openapi::api::core::v1::Pod) {
    use kube::api::{Patch, PatchParams, PostParams};
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": BENCH_NODE}});
        if let Err(e) =
            pods.create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding).await
        {
            eprintln!("binding {name}: {e}");
            return;
        }
    }
    let containers = serde_json::to_value(pod.spec.map(|s| s.containers).unwrap_or_default()).unwrap();
    let status = json!({"status": running_status(&name, &containers)});
    if let Err(e) = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await {
        eprintln!("status of {name}: {e}");
    }
}

/// The Lease the operator leads by (its default name).
const LEASE: &str = "omero-operator";
/// The Node the benchmark binds pods to on a real API server (made if missing, deleted at the end).
const BENCH_NODE: &str = "omero-bench-node";
/// The field manager of what the benchmark itself applies.
const BENCH_MANAGER: &str = "omero-operator-bench";

/// The API server the operator's requests are handed to.
#[derive(Clone)]
enum Upstream {
    Played(Server),
    Real(RealApi),
}

impl Upstream {
    fn ns(&self) -> String {
        match self {
            Upstream::Played(_) => NS.into(),
            Upstream::Real(real) => real.ns.clone(),
        }
    }

    async fn add_clusters(&self, range: std::ops::Range<usize>) {
        match self {
            Upstream::Played(server) => server.add_clusters(range),
            Upstream::Real(real) => real.add_clusters(range).await,
        }
    }

    async fn reconciled(&self) -> usize {
        match self {
            Upstream::Played(server) => server.reconciled(),
            Upstream::Real(real) => real.reconciled().await,
        }
    }

    /// Read-only nodes whose status holds the exporter's count.
    async fn counted(&self) -> usize {
        match self {
            Upstream::Played(server) => server.counted(),
            Upstream::Real(real) => real.counted().await,
        }
    }

    async fn leading(&self) -> bool {
        match self {
            Upstream::Played(server) => {
                server.api.lock().unwrap().objects.get("leases").is_some_and(|m| !m.is_empty())
            }
            Upstream::Real(real) => real.leading().await,
        }
    }

    async fn forget_lease(&self) {
        match self {
            Upstream::Played(server) => drop(server.api.lock().unwrap().objects.remove("leases")),
            Upstream::Real(real) => real.forget_lease().await,
        }
    }

    /// How often to look whether all are reconciled (a look reads what the benchmark keeps).
    fn poll(&self) -> Duration {
        match self {
            Upstream::Played(_) => Duration::from_millis(20),
            Upstream::Real(_) => Duration::from_millis(200),
        }
    }
}

/// What the operator asked for, counted on the way through.
#[derive(Default)]
struct Counts {
    /// Requests by "VERB resource[/subresource]".
    requests: BTreeMap<String, usize>,
    /// Collection GETs that are not watches.
    lists: usize,
}

/// Between the operator and its API: counts each request and connection, then hands the
/// request on.
#[derive(Clone)]
struct Proxy {
    upstream: Upstream,
    counts: Arc<Mutex<Counts>>,
    connections: Arc<AtomicUsize>,
    most_connections: Arc<AtomicUsize>,
}

impl Proxy {
    fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            counts: Arc::default(),
            connections: Arc::default(),
            most_connections: Arc::default(),
        }
    }

    fn count(&self, request: &Request<Incoming>) {
        let (resource, _, name, sub) = route(request.uri().path());
        let watch =
            request.uri().query().unwrap_or_default().split('&').any(|q| q == "watch=true" || q == "watch=1");
        let mut counts = self.counts.lock().unwrap();
        let sub = sub.map(|s| format!("/{s}")).unwrap_or_default();
        *counts.requests.entry(format!("{} {resource}{sub}", request.method())).or_default() += 1;
        if request.method() == Method::GET && name.is_none() && !watch {
            counts.lists += 1;
        }
    }

    /// Starts counting again, from the connections open now.
    fn reset(&self) {
        *self.counts.lock().unwrap() = Counts::default();
        self.most_connections.store(self.connections.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    async fn handle(self, request: Request<Incoming>) -> Result<Forwarded, Infallible> {
        self.count(&request);
        match &self.upstream {
            Upstream::Played(server) => {
                let reply = serve(server.clone(), request).await?;
                Ok(reply.map(|body| body.map_err(|never| match never {}).boxed_unsync()))
            }
            Upstream::Real(real) => Ok(forward(&real.client, request).await),
        }
    }

    /// Serves the operator on `listener` over TLS, each TCP connection counted from its accept.
    fn serve_on(self, listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor) {
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let proxy = self.clone();
                let open = proxy.connections.fetch_add(1, Ordering::SeqCst) + 1;
                proxy.most_connections.fetch_max(open, Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(stream).await {
                        let service = service_fn({
                            let proxy = proxy.clone();
                            move |request| proxy.clone().handle(request)
                        });
                        // HTTP/2 or HTTP/1.1, whichever ALPN chose (the client's first bytes say).
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    proxy.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
}

/// The proxy's TLS, as an API server's: a self-signed certificate for 127.0.0.1 made now, h2
/// and HTTP/1.1 offered by ALPN. Returns the acceptor and the certificate as PEM, which the
/// operator's kubeconfig trusts.
fn proxy_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.into())
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), certified.cert.pem())
}

/// Hands a request to a real API server with the kubeconfig's credentials (the client adds
/// its address, TLS and authentication), and streams the answer back: watches included.
async fn forward(client: &kube::Client, request: Request<Incoming>) -> Forwarded {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = Request::builder().method(parts.method.clone()).uri(path);
    for header in [http::header::CONTENT_TYPE, http::header::ACCEPT] {
        if let Some(value) = parts.headers.get(&header) {
            builder = builder.header(header, value);
        }
    }
    let request = builder.body(kube::client::Body::from(bytes.to_vec())).expect("a request");
    match client.send(request).await {
        Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed_unsync()),
        Err(error) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(
                http_body_util::Full::new(Bytes::from(error.to_string()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap(),
    }
}

/// A kubeconfig for `address`, default namespace `ns`: HTTPS trusting `certificate_authority`
/// (PEM) when given, else plain HTTP.
fn kubeconfig_for(
    dir: &std::path::Path,
    name: &str,
    address: std::net::SocketAddr,
    certificate_authority: Option<&str>,
    ns: &str,
) -> std::path::PathBuf {
    let cluster = match certificate_authority {
        Some(pem) => format!(
            "{{server: \"https://{address}\", certificate-authority-data: {}}}",
            base64::engine::general_purpose::STANDARD.encode(pem)
        ),
        None => format!("{{server: \"http://{address}\"}}"),
    };
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {cluster}\nusers:\n- name: b\n  user: {{}}\n\
             contexts:\n- name: b\n  context: {{cluster: b, user: b, namespace: {ns}}}\ncurrent-context: b\n"
        ),
    )
    .unwrap();
    path
}

/// The established TCP connections of process `pid` to a server on `port`: its sockets (from
/// `/proc/PID/fd`) that `/proc/net/tcp` and `tcp6` show connected to that remote port.
fn tcp_connections_to(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    let sockets: BTreeSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // remote address HEXIP:PORT, state 01 = established, inode.
            fields.len() > 9
                && fields[2].rsplit(':').next() == Some(port.as_str())
                && fields[3] == "01"
                && sockets.contains(fields[9])
        })
        .count()
}

/// The CPU time a process has used so far (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
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
fn start_operator(kubeconfig: &std::path::Path, http: &str, ns: &str) -> Child {
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
        .args([
            "run",
            "--log-level",
            "warn",
            "--http-address",
            http,
            "--namespace",
            ns,
            "--lease-namespace",
            ns,
        ])
        .args(std::env::var("OMERO_BENCH_OPERATOR_ARGS").unwrap_or_default().split_whitespace())
        .env("KUBECONFIG", kubeconfig)
        // As the chart runs it.
        .env("MALLOC_ARENA_MAX", "2")
        .env("MALLOC_MMAP_THRESHOLD_", "65536")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("OMERO_BENCH_OPERATOR_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("the operator starts")
}

/// With `OMERO_BENCH_PROGRESS` set, how many clusters are reconciled, once a second, on stderr:
/// the ramp shows whether a run is bound by throughput (a straight line) or by a tail.
fn progress(started: Instant, reconciled: usize) -> usize {
    // At most one line a second.
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap();
    let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
    if due && std::env::var_os("OMERO_BENCH_PROGRESS").is_some() {
        *last = Some(Instant::now());
        eprintln!("  {:6.1} s: {reconciled} reconciled", started.elapsed().as_secs_f64());
    }
    reconciled
}

async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(every).await;
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("OMERO_BENCH_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("omero-operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut direct_to: Option<std::path::PathBuf> = None;
    let upstream = match std::env::var("OMERO_BENCH_KUBECONFIG") {
        Err(_) => Upstream::Played(Server::default()),
        Ok(kubeconfig) => {
            let kubeconfig = if kubeconfig == "played" {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                Server::default().serve_on(listener);
                kubeconfig_for(&dir, "played-kubeconfig", address, None, "default")
            } else {
                std::path::PathBuf::from(kubeconfig)
            };
            if std::env::var_os("OMERO_BENCH_DIRECT").is_some() {
                direct_to = Some(kubeconfig.clone());
            }
            let real = RealApi::connect(&kubeconfig).await;
            eprintln!("setting up namespace {} (CRD, Secret)", real.ns);
            real.set_up().await;
            Upstream::Real(real)
        }
    };
    // The API server's own write rate, measured first, before the operator loads it.
    let raw_rates = match &upstream {
        Upstream::Real(real) => {
            eprintln!("the API server's own write rate");
            let mut rates = Vec::new();
            for clients in [8, 32] {
                rates.push((clients, real.raw_write_rate(clients, 3_300).await));
            }
            rates
        }
        Upstream::Played(_) => Vec::new(),
    };
    let probes = Arc::new(AtomicUsize::new(0));
    serve_exporter(probes.clone()).await;
    let ns = upstream.ns();
    let proxy = Proxy::new(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tls, certificate) = proxy_tls();
    let kubeconfig =
        kubeconfig_for(&dir, "kubeconfig", listener.local_addr().unwrap(), Some(&certificate), &ns);
    proxy.clone().serve_on(listener, tls);
    // Direct: the operator uses the real API server's kubeconfig; its connections to it are
    // counted from /proc (the proxy sees nothing).
    let operator_pid = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let kubeconfig = match &direct_to {
        Some(real) => {
            let server = kube::config::Kubeconfig::read_from(real).unwrap().clusters[0]
                .cluster
                .as_ref()
                .and_then(|c| c.server.clone())
                .expect("a server in the kubeconfig");
            let port = server.parse::<http::Uri>().unwrap().port_u16().unwrap_or(443);
            let (pid, most) = (operator_pid.clone(), proxy.most_connections.clone());
            tokio::spawn(async move {
                loop {
                    let open = tcp_connections_to(pid.load(Ordering::SeqCst), port);
                    most.fetch_max(open, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            real.clone()
        }
        None => kubeconfig,
    };
    let http_port = |p: u16| format!("127.0.0.1:{p}");
    let every = upstream.poll();

    // Idle: no cluster at all, leading, caches filled.
    eprintln!("idle operator");
    let mut operator = start_operator(&kubeconfig, &http_port(18431), &ns);
    wait_for("the lease", Duration::from_secs(60), every, || upstream.leading()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(operator.id(), "VmRSS:");
    operator.kill().unwrap();
    operator.wait().unwrap();

    // N clusters, all new: time until every one is reconciled, then memory with all cached.
    eprintln!("creating {n} clusters, then starting the operator");
    let created = Instant::now();
    upstream.add_clusters(0..n).await;
    let created = created.elapsed();
    upstream.forget_lease().await;
    proxy.reset();
    let mut operator = start_operator(&kubeconfig, &http_port(18432), &ns);
    operator_pid.store(operator.id(), Ordering::SeqCst);
    let started = Instant::now();
    let took = wait_for("all reconciled", Duration::from_secs(600), every, || async {
        progress(started, upstream.reconciled().await) == n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cached = rss_kib(operator.id(), "VmRSS:");
    let peak = rss_kib(operator.id(), "VmHWM:");
    let cpu = cpu_time(operator.id());
    let (requests, lists) = {
        let counts = proxy.counts.lock().unwrap();
        (counts.requests.clone(), counts.lists)
    };
    let most = proxy.most_connections.load(Ordering::SeqCst);
    let seconds: u64 =
        std::env::var("OMERO_BENCH_IDLE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(180);
    let idle_fleet = if std::env::var_os("OMERO_BENCH_WRAPPER").is_none() && seconds > 0 {
        // The fleet serving, every read-only node probed and counted; then idle for a while.
        if let Upstream::Real(real) = &upstream {
            eprintln!("playing the kubelet for {} pods", 3 * n);
            real.play_kubelet(3 * n).await;
        }
        eprintln!("waiting for every read-only node's count");
        wait_for("every count", Duration::from_secs(600), every, || async {
            upstream.counted().await == 2 * n
        })
        .await;
        eprintln!("{n} clusters idle for {seconds} s");
        proxy.reset();
        let probed = probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let writes: BTreeMap<String, usize> = proxy
            .counts
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(k, _)| !k.starts_with("GET "))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Some((seconds, probes.load(Ordering::SeqCst) - probed, writes))
    } else {
        None
    };
    // SIGTERM, as Kubernetes stops it (a profiler then writes its report).
    let _ = Command::new("kill").args(["-TERM", &operator.id().to_string()]).status();
    operator.wait().unwrap();
    if std::env::var_os("OMERO_BENCH_WRAPPER").is_some() {
        if let Upstream::Real(real) = &upstream {
            real.tear_down().await;
        }
        return;
    }

    // Restart facing N reconciled and N new clusters.
    eprintln!("creating {n} more clusters, then restarting the operator");
    upstream.add_clusters(n..2 * n).await;
    upstream.forget_lease().await;
    proxy.reset();
    let mut operator = start_operator(&kubeconfig, &http_port(18433), &ns);
    operator_pid.store(operator.id(), Ordering::SeqCst);
    let started = Instant::now();
    let caught_up = wait_for("caught up", Duration::from_secs(600), every, || async {
        progress(started, upstream.reconciled().await) == 2 * n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_cached = rss_kib(operator.id(), "VmRSS:");
    let restart_peak = rss_kib(operator.id(), "VmHWM:");
    let restart_cpu = cpu_time(operator.id());
    let restart_most = proxy.most_connections.load(Ordering::SeqCst);
    operator.kill().unwrap();
    operator.wait().unwrap();
    if let Upstream::Real(real) = &upstream {
        real.tear_down().await;
    }

    let against = match &upstream {
        Upstream::Played(_) => "an HTTP API played by this benchmark".to_string(),
        Upstream::Real(real) if direct_to.is_some() => format!(
            "the API server of OMERO_BENCH_KUBECONFIG directly (namespace {}; no request counted, connections from /proc)",
            real.ns
        ),
        Upstream::Real(real) => format!("the API server of OMERO_BENCH_KUBECONFIG (namespace {})", real.ns),
    };
    println!("omero-operator process against {against}, {n} clusters x 3 nodes:");
    println!("  RSS idle (leading, no cluster): {:.1} MiB", idle as f64 / 1024.0);
    println!(
        "  {n} clusters created in {created:.2?}; all reconciled {took:.2?} after the operator started (operator CPU time by then, 3 s later: {cpu:.2?})"
    );
    println!(
        "  RSS with {n} clusters cached: {:.1} MiB (peak {:.1} MiB)",
        cached as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "  restart facing {n} reconciled + {n} new: caught up in {caught_up:.2?} (operator CPU time {restart_cpu:.2?}; RSS then {:.1} MiB with {} clusters cached, peak {:.1} MiB; at most {restart_most} connections)",
        restart_cached as f64 / 1024.0,
        2 * n,
        restart_peak as f64 / 1024.0
    );
    let writes: usize = requests.iter().filter(|(k, _)| !k.starts_with("GET ")).map(|(_, v)| v).sum();
    for (clients, rate) in &raw_rates {
        println!(
            "  the API server's own write rate: {rate:.0} ConfigMap creates/s from {clients} clients \
             (the operator's {writes} writes of the first run would take {:.1} s at that rate)",
            writes as f64 / rate
        );
    }
    if let Some((seconds, probed, idle_writes)) = &idle_fleet {
        // The leader's lease renewals go on whatever the fleet does: counted apart.
        let renewals: usize =
            idle_writes.iter().filter(|(k, _)| k.ends_with(" leases")).map(|(_, v)| v).sum();
        let total = idle_writes.values().sum::<usize>() - renewals;
        let per_hour = |writes: usize| writes as f64 * 3600.0 / *seconds as f64;
        println!(
            "  idle fleet of {n} clusters ({} read-only nodes counted, every probe answering {SESSIONS}): \
             {probed} probes and {total} writes in {seconds} s ({:.0} writes per hour), besides {renewals} \
             lease renewals ({:.0} per hour); all writes: {idle_writes:?}",
            2 * n,
            per_hour(total),
            per_hour(renewals)
        );
    }
    println!("  LIST requests over the first run: {lists} (the watches' own starts)");
    println!("  most concurrent connections over the first run: {most}");
    let per: HashMap<&str, f64> = requests.iter().map(|(k, v)| (k.as_str(), *v as f64 / n as f64)).collect();
    let mut per: Vec<_> = per.into_iter().collect();
    per.sort_by(|a, b| a.0.cmp(b.0));
    println!("  requests per cluster by verb and resource (first run):");
    for (k, v) in per {
        println!("    {k}: {v:.2}");
    }
}
