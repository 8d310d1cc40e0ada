//! The kube adapter's requests, checked on a scripted API server (`tower-test`), as kube-rs's
//! controller-rs does: server-side apply with the operator's field manager, the status
//! subresource, label patches on pods, deletes, Events; look-ups by name answered from the
//! metadata caches with no request, and creates that only create; and the count of write
//! requests of an unchanged reconcile through the real adapter.

mod support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Client,
    client::Body,
    core::PartialObjectMeta,
    runtime::{
        reflector::{self, store::Writer},
        watcher,
    },
};
use omero_operator::{
    api::{ObjectProblemReason, OmeroCluster, OmeroClusterStatus, SecretKeyRef},
    controller::{
        Clock, Context,
        cache::{self, Cached},
        kube_port::{CREATE_ONLY, Caches, KubePort, NameCaches},
        port::{Child, ChildKind, ClusterPort, Event, EventType, Related, StatusWrite},
        reconcile,
    },
    render,
};
use serde_json::{Value, json};
use support::{FakeOmero, cluster_from_yaml};

const CLUSTER: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - name: rw
  - name: ro-1
    readOnly: {db: true, repo: true}
  - name: ro-2
    readOnly: {db: true, repo: true}
"#;

/// A request as the API server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    async fn of(request: Request<Body>) -> Self {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        Self {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts.headers.get("content-type").map(|v| v.to_str().unwrap().to_string()),
            body: if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() },
        }
    }

    fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// A small in-memory API server: enough of apps/v1, core/v1, events and the OmeroCluster
/// status for the adapter, storing what is applied and answering lists from it.
#[derive(Default)]
struct ApiServer {
    seen: Vec<Seen>,
    /// Objects by "kind/name".
    objects: BTreeMap<String, Value>,
    cluster: Value,
    /// Applies refused by "kind/name", with the HTTP status and the API server's message.
    refuse: BTreeMap<String, (StatusCode, String)>,
    /// Plays an API server that refuses a resourceVersion on an apply that creates (as
    /// Kubernetes 1.22's Services did, kubernetes/kubernetes#106745).
    refuse_version_on_create: bool,
}

type Shared = Arc<Mutex<ApiServer>>;

fn client(server: Shared) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let seen = Seen::of(request).await;
            let (status, reply) = server.lock().unwrap().answer(seen);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, "omero")
}

impl ApiServer {
    fn answer(&mut self, seen: Seen) -> (StatusCode, Value) {
        self.seen.push(seen.clone());
        let parts: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
        match (seen.method.clone(), parts.as_slice()) {
            (Method::GET, [.., "namespaces", _, kind]) => {
                panic!("a reconcile never LISTs ({kind}): children come from the watch caches")
            }
            (Method::GET, [.., kind, name]) => match self.objects.get(&format!("{kind}/{name}")) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => (StatusCode::NOT_FOUND, not_found),
            },
            (Method::PUT, [.., "omeroclusters", _, "status"]) => {
                // The API server's optimistic concurrency: a replace must carry the current
                // resourceVersion, and each write makes a new one.
                let current = self.cluster["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
                if seen.body["metadata"]["resourceVersion"].as_str() != Some(current.as_str()) {
                    return (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                        "message": "the object has been modified; please apply your changes to the latest version and try again"}),
                    );
                }
                self.cluster["status"] = seen.body["status"].clone();
                let next = current.parse::<u64>().unwrap_or(0) + 1;
                self.cluster["metadata"]["resourceVersion"] = json!(next.to_string());
                (StatusCode::OK, self.cluster.clone())
            }
            (Method::PATCH, [.., "pods", name]) => {
                let pod = self.objects.get_mut(&format!("pods/{name}")).unwrap();
                for (k, v) in seen.body["metadata"]["labels"].as_object().unwrap() {
                    let labels = pod["metadata"]["labels"].as_object_mut().unwrap();
                    if v.is_null() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), v.clone());
                    }
                }
                (StatusCode::OK, pod.clone())
            }
            (Method::PATCH, [.., kind, name]) if self.refuse.contains_key(&format!("{kind}/{name}")) => {
                let (status, message) = self.refuse[&format!("{kind}/{name}")].clone();
                let reason = if status == StatusCode::FORBIDDEN { "Forbidden" } else { "Invalid" };
                (
                    status,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                "code": status.as_u16(), "message": message}),
                )
            }
            (Method::PATCH, [.., kind, name])
                if seen.body["metadata"].get("resourceVersion").is_some()
                    && (self.objects.contains_key(&format!("{kind}/{name}"))
                        || self.refuse_version_on_create) =>
            {
                // A resourceVersion in an apply is a precondition on the object it updates: none
                // of these objects is at the one sent. One that creates drops it, unless this
                // server plays one that refuses it.
                if self.objects.contains_key(&format!("{kind}/{name}")) {
                    (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                               "message": format!("Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")}),
                    )
                } else {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
                               "message": "resourceVersion should not be set on objects to be created"}),
                    )
                }
            }
            (Method::PATCH, [.., kind, name]) => {
                // Server-side apply: the object keeps its uid, a new one gets one; a
                // resourceVersion sent with a create is dropped.
                let key = format!("{kind}/{name}");
                let uid = self
                    .objects
                    .get(&key)
                    .map_or_else(|| json!(format!("uid-{key}")), |o| o["metadata"]["uid"].clone());
                let mut body = seen.body.clone();
                body["metadata"]["uid"] = uid;
                body["metadata"].as_object_mut().unwrap().remove("resourceVersion");
                self.objects.insert(key, body.clone());
                (StatusCode::OK, body)
            }
            (Method::DELETE, [.., kind, name]) => match self.objects.remove(&format!("{kind}/{name}")) {
                Some(_) => {
                    (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                }
                None => (StatusCode::NOT_FOUND, not_found),
            },
            (Method::POST, [.., "events"]) => (StatusCode::CREATED, seen.body),
            other => panic!("unexpected request {other:?}"),
        }
    }
}

/// The writing ends of the watch caches: tests play the watches.
struct Watches {
    deployments: Writer<Cached<Deployment>>,
    services: Writer<Cached<Service>>,
    budgets: Writer<Cached<PodDisruptionBudget>>,
    pods: Writer<Cached<Pod>>,
    /// The metadata-only watches of every object, each entry slimmed as the real ones are.
    deployment_names: Writer<PartialObjectMeta<Deployment>>,
    service_names: Writer<PartialObjectMeta<Service>>,
    config_map_names: Writer<PartialObjectMeta<ConfigMap>>,
    budget_names: Writer<PartialObjectMeta<PodDisruptionBudget>>,
}

impl Watches {
    /// What the watches would have delivered by now: every object the server holds.
    fn sync(&mut self, server: &Shared) {
        let objects = server.lock().unwrap().objects.clone();
        let typed = |kind: &str| -> Vec<Value> {
            objects
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{kind}/")))
                .map(|(_, v)| v.clone())
                .collect()
        };
        fn apply<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned>(
            w: &mut Writer<K>,
            items: Vec<Value>,
        ) {
            let objects: Vec<K> = items.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
            w.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                w.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            w.apply_watcher_event(&watcher::Event::InitDone);
        }
        apply(&mut self.deployments, typed("deployments"));
        apply(&mut self.services, typed("services"));
        apply(&mut self.pods, typed("pods"));
        apply(&mut self.budgets, typed("poddisruptionbudgets"));
        fn slimmed<K>(items: Vec<Value>) -> Vec<Value> {
            items
                .into_iter()
                .map(|v| {
                    let mut entry: PartialObjectMeta<K> = serde_json::from_value(v).unwrap();
                    cache::slim_look_up_entry(&mut entry);
                    serde_json::to_value(entry).unwrap()
                })
                .collect()
        }
        apply(&mut self.deployment_names, slimmed::<Deployment>(typed("deployments")));
        apply(&mut self.service_names, slimmed::<Service>(typed("services")));
        apply(&mut self.config_map_names, slimmed::<ConfigMap>(typed("configmaps")));
        apply(&mut self.budget_names, slimmed::<PodDisruptionBudget>(typed("poddisruptionbudgets")));
    }
}

/// Empty look-up caches, whose writers are dropped: no test feeds them.
fn no_names() -> NameCaches {
    NameCaches {
        deployments: reflector::store().0,
        services: reflector::store().0,
        config_maps: reflector::store().0,
        budgets: reflector::store().0,
    }
}

fn setup() -> (Shared, KubePort, OmeroCluster) {
    let (server, port, cluster, _) = setup_with_watches();
    (server, port, cluster)
}

fn setup_with_watches() -> (Shared, KubePort, OmeroCluster, Watches) {
    let cluster = cluster_from_yaml(CLUSTER);
    let server = Shared::default();
    server.lock().unwrap().cluster = serde_json::to_value(&cluster).unwrap();
    let (deployments, dw) = reflector::store();
    let (services, sw) = reflector::store();
    let (pods, pw) = reflector::store();
    // The ConfigMap cache stays empty here: its writer is dropped, as no test feeds it.
    let (config_maps, _) = reflector::store();
    // Nodes are not watched here (`--watch-nodes` off).
    let (budgets, bw) = reflector::store();
    let (deployment_names, dnw) = reflector::store();
    let (service_names, snw) = reflector::store();
    let (config_map_names, cnw) = reflector::store();
    let (budget_names, bnw) = reflector::store();
    let names = NameCaches {
        deployments: deployment_names,
        services: service_names,
        config_maps: config_map_names,
        budgets: budget_names,
    };
    let port = KubePort::new(
        client(server.clone()),
        Caches { deployments, services, config_maps, budgets, pods, names, nodes: None },
    );
    let watches = Watches {
        deployments: dw,
        services: sw,
        budgets: bw,
        pods: pw,
        deployment_names: dnw,
        service_names: snw,
        config_map_names: cnw,
        budget_names: bnw,
    };
    (server, port, cluster, watches)
}

fn seen(server: &Shared) -> Vec<Seen> {
    std::mem::take(&mut server.lock().unwrap().seen)
}

#[tokio::test]
async fn children_are_applied_server_side_with_one_field_manager() {
    let (server, port, cluster) = setup();
    let desired = render::render(&cluster);
    port.apply("omero", Child::Deployment(&desired.deployments[0]), None).await.unwrap();
    port.apply("omero", Child::Service(&desired.services[0]), Some("uid-of-existing")).await.unwrap();
    let requests = seen(&server);
    assert_eq!(requests.len(), 2);
    let d = &requests[0];
    assert_eq!(d.method, Method::PATCH);
    assert_eq!(d.path, "/apis/apps/v1/namespaces/omero/deployments/omero-rw");
    assert!(d.query.contains("fieldManager=omero-operator") && d.query.contains("force=true"), "{}", d.query);
    assert_eq!(d.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(d.body["apiVersion"], "apps/v1");
    assert_eq!(d.body["kind"], "Deployment");
    assert_eq!(d.body["metadata"]["ownerReferences"][0]["uid"], cluster.metadata.uid.clone().unwrap());
    assert_eq!(d.body["spec"]["strategy"]["type"], "Recreate");
    assert!(d.body["metadata"].get("uid").is_none(), "a new object carries no uid precondition");
    assert_eq!(
        d.body["metadata"]["resourceVersion"], CREATE_ONLY,
        "an apply of a name seen free only creates"
    );
    let s = &requests[1];
    assert_eq!(
        s.path,
        format!("/api/v1/namespaces/omero/services/{}", desired.services[0].metadata.name.clone().unwrap())
    );
    assert_eq!((s.body["apiVersion"].as_str(), s.body["kind"].as_str()), (Some("v1"), Some("Service")));
    assert!(s.query.contains("fieldManager=omero-operator"));
    assert_eq!(s.body["metadata"]["uid"], "uid-of-existing", "the existing object's uid is a precondition");
    assert!(s.body["metadata"].get("resourceVersion").is_none(), "an update is not conditional on a version");
}

/// A look-up by name is answered from the metadata caches of every object, the operator's or
/// not, in the namespace asked: no request at all.
#[tokio::test]
async fn find_answers_from_the_look_up_caches_without_a_request() {
    let (server, port, _, mut watches) = setup_with_watches();
    let web = |ns: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web-main", "namespace": ns, "uid": uid,
                            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]}})
    };
    server.lock().unwrap().objects.insert("services/web-main".into(), web("omero", "u-web"));
    server.lock().unwrap().objects.insert("services/web-main-elsewhere".into(), web("elsewhere", "u-other"));
    watches.sync(&server);
    let found = port.find("omero", ChildKind::Service, "web-main").await.unwrap().unwrap();
    assert_eq!(found.uid.as_deref(), Some("u-web"));
    assert_eq!(found.owner_references.unwrap()[0].name, "web");
    assert_eq!(found.annotations, None, "kept as a look-up reads it");
    assert!(port.find("omero", ChildKind::Deployment, "web-main").await.unwrap().is_none(), "another kind");
    assert!(port.find("lab", ChildKind::Service, "web-main").await.unwrap().is_none(), "another namespace");
    assert!(port.find("omero", ChildKind::Service, "nothing").await.unwrap().is_none());
    assert!(seen(&server).is_empty(), "no request at all");
}

#[tokio::test]
async fn status_replaces_the_status_subresource_on_the_clusters_resource_version() {
    let (server, port, mut cluster) = setup();
    cluster.metadata.resource_version = Some("41".into());
    server.lock().unwrap().cluster["metadata"]["resourceVersion"] = json!("41");
    let status = OmeroClusterStatus { observed_generation: Some(1), node_count: 3, ..Default::default() };
    assert_eq!(port.write_status(&cluster, &status).await.unwrap(), StatusWrite::Written(Some("42".into())));
    let requests = seen(&server);
    let r = &requests[0];
    assert_eq!(r.method, Method::PUT);
    assert_eq!(r.path, "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters/omero/status");
    assert!(r.query.contains("fieldManager=omero-operator"), "{}", r.query);
    assert_eq!(r.body["metadata"]["resourceVersion"], "41", "the precondition");
    assert_eq!(r.body["status"]["observedGeneration"], 1);
    assert_eq!(r.body["status"]["nodeCount"], 3);

    // The cluster moved on since it was read (a lagging watch cache): refused, and said so.
    let stale = OmeroCluster {
        metadata: kube::api::ObjectMeta { resource_version: Some("41".into()), ..cluster.metadata.clone() },
        ..cluster.clone()
    };
    assert_eq!(port.write_status(&stale, &status).await.unwrap(), StatusWrite::Stale);
}

#[tokio::test]
async fn the_routable_label_is_merge_patched_on_the_pod() {
    let (server, port, _) = setup();
    server.lock().unwrap().objects.insert("pods/p".into(), json!({"metadata": {"name": "p", "labels": {}}}));
    port.set_routable("omero", "p", true).await.unwrap();
    port.set_routable("omero", "p", false).await.unwrap();
    let requests = seen(&server);
    assert_eq!(requests[0].path, "/api/v1/namespaces/omero/pods/p");
    assert_eq!(requests[0].content_type.as_deref(), Some("application/merge-patch+json"));
    assert!(requests[0].query.contains("fieldManager=omero-operator"));
    assert_eq!(
        requests[0].body,
        json!({"metadata": {"labels": {"omero.openmicroscopy.org/routable": "true"}}})
    );
    assert_eq!(
        requests[1].body,
        json!({"metadata": {"labels": {"omero.openmicroscopy.org/routable": null}}})
    );
}

#[tokio::test]
async fn deleting_a_child_that_is_already_gone_is_fine() {
    let (server, port, _) = setup();
    server.lock().unwrap().objects.insert("deployments/omero-old".into(), json!({}));
    port.delete_child("omero", ChildKind::Deployment, "omero-old", "u-old").await.unwrap();
    port.delete_child("omero", ChildKind::Service, "omero-old", "u-svc").await.unwrap();
    let requests = seen(&server);
    assert_eq!(requests[0].method, Method::DELETE);
    assert_eq!(requests[0].path, "/apis/apps/v1/namespaces/omero/deployments/omero-old");
    assert_eq!(requests[0].body["preconditions"]["uid"], "u-old", "only the object we checked is deleted");
    assert_eq!(requests[1].path, "/api/v1/namespaces/omero/services/omero-old");
}

#[tokio::test]
async fn children_come_from_the_caches_by_the_cluster_labels_without_a_request() {
    let (server, port, cluster, mut watches) = setup_with_watches();
    {
        let mut s = server.lock().unwrap();
        let labelled = |name: &str, cluster: &str, ns: &str| {
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "omero-operator",
                         "omero.openmicroscopy.org/cluster": cluster}}})
        };
        s.objects.insert("services/a".into(), labelled("omero-rw", "omero", "omero"));
        s.objects.insert("services/b".into(), labelled("other-rw", "other", "omero"));
        s.objects.insert("services/c".into(), labelled("omero-rw", "omero", "elsewhere"));
    }
    watches.sync(&server);
    let children = port.children(&cluster).await.unwrap();
    let names: Vec<_> = children.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["omero-rw"], "this cluster's labels, in its namespace");
    assert!(seen(&server).is_empty(), "no request at all");
}

#[tokio::test]
async fn secrets_are_read_and_decoded() {
    let (server, port, _) = setup();
    server
        .lock()
        .unwrap()
        .objects
        .insert("secrets/omero-db".into(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "omero-db"}, "data": {"password": "czNjcmV0"}}));
    let key = SecretKeyRef { name: "omero-db".into(), key: "password".into() };
    assert_eq!(port.secret_value("omero", &key).await.unwrap(), "s3cret");
    let wrong = SecretKeyRef { name: "omero-db".into(), key: "pass".into() };
    assert_eq!(
        port.secret_value("omero", &wrong).await.unwrap_err().to_string(),
        "Secret omero-db has no key pass"
    );
    let absent = SecretKeyRef { name: "nope".into(), key: "password".into() };
    assert!(port.secret_value("omero", &absent).await.is_err());
}

#[tokio::test]
async fn events_are_created_about_the_cluster() {
    let (server, port, cluster) = setup();
    let event = Event {
        type_: EventType::Warning,
        reason: "DrainRefused".into(),
        note: "why".into(),
        action: "Drain".into(),
        related: Some(Related::Node("ro-1".into())),
    };
    port.publish(&cluster, &event).await.unwrap();
    let requests = seen(&server);
    let r = &requests[0];
    assert_eq!(
        (r.method.clone(), r.path.as_str()),
        (Method::POST, "/apis/events.k8s.io/v1/namespaces/omero/events")
    );
    assert_eq!(r.body["type"], "Warning");
    assert_eq!(r.body["reason"], "DrainRefused");
    assert_eq!(r.body["note"], "why");
    assert_eq!(r.body["regarding"]["kind"], "OmeroCluster");
    assert_eq!(r.body["regarding"]["name"], "omero");
    assert_eq!(r.body["reportingController"], "omero-operator");
    assert_eq!(
        (r.body["related"]["kind"].as_str(), r.body["related"]["name"].as_str()),
        (Some("Deployment"), Some("omero-ro-1"))
    );

    // The same reason about another node is an Event of its own, not a count on the first
    // (kube's Recorder folds Events with the same reason and objects into one series).
    let other =
        Event { related: Some(Related::Node("ro-2".into())), note: "why not".into(), ..event.clone() };
    port.publish(&cluster, &other).await.unwrap();
    let requests = seen(&server);
    assert_eq!(requests[0].method, Method::POST, "a new Event, not a series update");
    assert_eq!(requests[0].body["note"], "why not");
    // Only a repeat about the same node is folded into the first.
    port.publish(&cluster, &event).await.unwrap();
    assert_eq!(seen(&server)[0].method, Method::PATCH);
}

/// The measure of the core issue: API write requests sent by a second, unchanged reconcile of
/// a 3-node cluster, counted at the HTTP layer through the real adapter.
#[tokio::test]
async fn an_unchanged_reconcile_sends_no_write_request() {
    let (server, port, _, mut watches) = setup_with_watches();
    let sessions = FakeOmero::default();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        sessions.set(ip, Ok(0));
    }
    let ctx = Arc::new(Context::new(port, sessions, Clock::system()));
    let current = |server: &Shared| -> Arc<OmeroCluster> {
        Arc::new(serde_json::from_value(server.lock().unwrap().cluster.clone()).unwrap())
    };

    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.unwrap();
    let first = seen(&server);
    assert!(
        first.iter().filter(|r| r.is_write()).count() >= 10,
        "creates 3 Deployments, 4 Services and 3 PodDisruptionBudgets"
    );
    let lookups = first.iter().filter(|r| r.method == Method::GET).count();
    assert_eq!(lookups, 0, "each name is looked up in the metadata caches before it is first created");
    // The pods come up, ready; the next reconcile labels them routable.
    for (node, ip) in [("rw", "10.0.0.1"), ("ro-1", "10.0.0.2"), ("ro-2", "10.0.0.3")] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("omero-{node}-x"), "namespace": "omero",
                         "labels": {"omero.openmicroscopy.org/cluster": "omero", "omero.openmicroscopy.org/node": node,
                                    "app.kubernetes.io/managed-by": "omero-operator", "pod-template-hash": "h"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("omero-{node}-h"),
                                              "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "omero-server", "image": "openmicroscopy/omero-server:5.6"}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        });
        server.lock().unwrap().objects.insert(format!("pods/omero-{node}-x"), pod);
    }
    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.unwrap();
    let second = seen(&server);
    assert_eq!(second.iter().filter(|r| r.path.contains("/pods/")).count(), 3, "three label patches");

    // Serving now: the first serving-session counts are recorded, one status write.
    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.unwrap();
    let counted: Vec<String> =
        seen(&server).iter().filter(|r| r.is_write()).map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        counted,
        ["PUT /apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters/omero/status"]
    );

    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.unwrap();
    let third = seen(&server);
    let writes: Vec<String> =
        third.iter().filter(|r| r.is_write()).map(|r| format!("{} {}", r.method, r.path)).collect();
    println!("unchanged reconcile of a 3-node cluster: {} requests, {} writes", third.len(), writes.len());
    assert_eq!(writes, Vec::<String>::new());
    assert_eq!(third.len(), 0, "no request at all: children come from the watch caches");
}

/// The cluster as the scripted server holds it now.
fn current(server: &Shared) -> Arc<OmeroCluster> {
    Arc::new(serde_json::from_value(server.lock().unwrap().cluster.clone()).unwrap())
}

/// The object problems of the status the scripted server holds: kind, name, reason.
fn problems(server: &Shared) -> Vec<(String, String, ObjectProblemReason)> {
    let status: OmeroClusterStatus =
        serde_json::from_value(server.lock().unwrap().cluster["status"].clone()).unwrap();
    status.object_problems.into_iter().map(|p| (p.kind, p.name, p.reason)).collect()
}

/// A Service someone else made, holding the name of the cluster's rw node Service.
fn foreign_service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "omero-rw", "namespace": "omero", "uid": "u-foreign",
                        "labels": {"app.kubernetes.io/managed-by": "Helm"}},
           "spec": {"ports": [{"port": 80}]}})
}

/// The issue's measure: once the metadata caches are synced, a new cluster's reconcile sends
/// no look-up request (no GET at all); the foreign Service that holds one of its names, seen
/// only by the metadata cache (it lacks the operator's labels), is reported and never written.
#[tokio::test]
async fn a_new_clusters_reconcile_looks_up_no_name_by_request_and_reports_a_foreign_holder() {
    let (server, port, _, mut watches) = setup_with_watches();
    server.lock().unwrap().objects.insert("services/omero-rw".into(), foreign_service());
    watches.sync(&server);
    let ctx = Arc::new(Context::new(port, FakeOmero::default(), Clock::system()));
    reconcile(current(&server), ctx).await.unwrap();

    let requests = seen(&server);
    let gets: Vec<&str> =
        requests.iter().filter(|r| r.method == Method::GET).map(|r| r.path.as_str()).collect();
    assert_eq!(gets, Vec::<&str>::new(), "no name is looked up by a request");
    let applied: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .map(|r| r.path.rsplit_once("/namespaces/omero/").unwrap().1)
        .collect();
    assert!(!applied.contains(&"services/omero-rw"), "{applied:?}");
    assert_eq!(applied.len(), 3 + 3 + 3, "3 Deployments, the other 3 Services, 3 budgets: {applied:?}");
    assert_eq!(server.lock().unwrap().objects["services/omero-rw"], foreign_service(), "left as it was");
    assert_eq!(problems(&server), [("Service".into(), "omero-rw".into(), ObjectProblemReason::NotOwned)]);
}

/// A foreign Service takes the rw node Service's name after the caches last heard of it: the
/// apply of the name they saw free only creates, so the API server refuses it (409) and nothing
/// is written over; the reconcile goes on without an error. Once the caches have heard of the
/// Service, the next reconcile reports it and sends it nothing.
#[tokio::test]
async fn a_name_taken_after_the_caches_last_heard_is_not_written_over() {
    let (server, port, _, mut watches) = setup_with_watches();
    watches.sync(&server);
    server.lock().unwrap().objects.insert("services/omero-rw".into(), foreign_service());
    let ctx = Arc::new(Context::new(port, FakeOmero::default(), Clock::system()));
    reconcile(current(&server), ctx.clone()).await.expect("a taken name is no reconcile error");
    let requests = seen(&server);
    let to_foreign: Vec<&Seen> = requests
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with("/services/omero-rw"))
        .collect();
    assert_eq!(to_foreign.len(), 1, "tried once, as a create");
    assert_eq!(to_foreign[0].body["metadata"]["resourceVersion"], CREATE_ONLY);
    assert_eq!(server.lock().unwrap().objects["services/omero-rw"], foreign_service(), "not written over");
    assert_eq!(problems(&server), [], "nothing known to report yet");

    watches.sync(&server);
    reconcile(current(&server), ctx).await.unwrap();
    let again = seen(&server);
    assert!(!again.iter().any(|r| r.method == Method::PATCH && r.path.ends_with("/services/omero-rw")));
    assert_eq!(problems(&server), [("Service".into(), "omero-rw".into(), ObjectProblemReason::NotOwned)]);
}

/// An API server that refuses the create-only resourceVersion on a create (not a taken name,
/// which is a 409): the apply is sent once more without it and creates the object. A name
/// taken by then is answered `NameTaken`, whatever the server.
#[tokio::test]
async fn a_create_only_apply_refused_for_its_version_is_sent_again_without_it() {
    let (server, port, cluster) = setup();
    server.lock().unwrap().refuse_version_on_create = true;
    let desired = render::render(&cluster);
    let service = Child::Service(&desired.services[0]);
    port.apply("omero", service, None).await.unwrap();
    let requests = seen(&server);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].body["metadata"]["resourceVersion"], CREATE_ONLY);
    assert!(requests[1].body["metadata"].get("resourceVersion").is_none());
    assert!(server.lock().unwrap().objects.contains_key(&format!("services/{}", service.name())));

    let taken = port.apply("omero", service, None).await.unwrap_err();
    assert!(matches!(taken, omero_operator::Error::NameTaken { .. }), "{taken:?}");
    assert_eq!(seen(&server).len(), 1, "no second try over an object that exists");
}

/// A restart facing hundreds of clusters: however many requests are made at once, at most the
/// limit wait for their response; the others queue and all complete.
#[tokio::test]
async fn api_requests_in_flight_are_limited() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client =
        omero_operator::controller::limited_client(kube::client::ClientBuilder::new(service, "omero"), 4);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), "omero");
        requests.spawn(async move { secrets.get_opt(&format!("s{i}")).await });
    }
    let not_found = || {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from(
                serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))
                    .unwrap(),
            ))
            .unwrap()
    };
    let (mut waiting, mut most, mut answered) = (Vec::new(), 0, 0);
    while answered < 20 {
        while let Ok(Some((_, respond))) =
            tokio::time::timeout(std::time::Duration::from_millis(20), handle.next_request()).await
        {
            waiting.push(respond);
        }
        most = most.max(waiting.len());
        if let Some(respond) = waiting.pop() {
            respond.send_response(not_found());
            answered += 1;
        }
    }
    while let Some(result) = requests.join_next().await {
        assert_eq!(result.unwrap().unwrap(), None, "every request completes");
    }
    assert_eq!(most, 4, "at most the limit wait for a response at once");
}

/// The API server refuses two applies (a 422 for an invalid Deployment, a 403 for a Service):
/// the reconcile does not fail into a retry loop; status names each object with the API
/// server's own message, written on top of the status it recorded first (its new
/// resourceVersion), with one Event each; a second reconcile announces nothing again.
#[tokio::test]
async fn api_refusals_go_into_status_and_one_event_each() {
    let (server, port, _, mut watches) = setup_with_watches();
    let invalid = "Deployment.apps \"omero-ro-2\" is invalid: spec.template.spec.containers[0].resources.limits[cpu]: \
                   Invalid value: \"lots\": quantities must match the regular expression";
    let forbidden = "services \"omero\" is forbidden: User \"system:serviceaccount:omero:omero-operator\" cannot patch resource \"services\"";
    {
        let mut s = server.lock().unwrap();
        s.cluster["metadata"]["resourceVersion"] = json!("1");
        s.refuse.insert("deployments/omero-ro-2".into(), (StatusCode::UNPROCESSABLE_ENTITY, invalid.into()));
        s.refuse.insert("services/omero".into(), (StatusCode::FORBIDDEN, forbidden.into()));
    }
    let ctx = Arc::new(Context::new(port, FakeOmero::default(), Clock::system()));
    let current = |server: &Shared| -> Arc<OmeroCluster> {
        Arc::new(serde_json::from_value(server.lock().unwrap().cluster.clone()).unwrap())
    };
    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.expect("reported, not an error to retry");
    let requests = seen(&server);
    let status_writes: Vec<&Seen> = requests.iter().filter(|r| r.path.ends_with("/status")).collect();
    assert_eq!(status_writes.len(), 2, "the decisions, then the refusals");
    assert_eq!(status_writes[0].body["metadata"]["resourceVersion"], "1");
    assert_eq!(
        status_writes[1].body["metadata"]["resourceVersion"], "2",
        "on the version the first write made"
    );
    let status: OmeroClusterStatus =
        serde_json::from_value(server.lock().unwrap().cluster["status"].clone()).unwrap();
    let refused: Vec<(&str, &str)> =
        status.object_problems.iter().map(|p| (p.kind.as_str(), p.name.as_str())).collect();
    assert_eq!(refused, [("Deployment", "omero-ro-2"), ("Service", "omero")]);
    assert!(status.object_problems[0].message.contains("\"lots\""), "{:?}", status.object_problems);
    // The 403 names the verb (an apply of an object not yet seen may create), the resource,
    // the namespace and what to grant, and keeps the API server's own words.
    let forbidden_problem = &status.object_problems[1];
    assert_eq!(forbidden_problem.reason, omero_operator::api::ObjectProblemReason::Forbidden);
    assert!(
        forbidden_problem.message.starts_with("the operator's account may not create services in namespace ")
            && forbidden_problem.message.contains("give it the chart's RBAC")
            && forbidden_problem.message.contains("cannot patch resource"),
        "{forbidden_problem:?}"
    );
    let degraded = status.condition("Degraded").unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ApplyRefused"));
    let refusal_events = |requests: &[Seen]| {
        requests
            .iter()
            .filter(|r| {
                r.path.ends_with("/events")
                    && (r.body["reason"] == "ApplyRefused" || r.body["reason"] == "WriteForbidden")
            })
            .count()
    };
    assert_eq!(refusal_events(&requests), 2, "one Event per refusal");

    watches.sync(&server);
    reconcile(current(&server), ctx.clone()).await.unwrap();
    let again = seen(&server);
    assert_eq!(refusal_events(&again), 0, "not announced again");
    let status: OmeroClusterStatus =
        serde_json::from_value(server.lock().unwrap().cluster["status"].clone()).unwrap();
    assert_eq!(status.object_problems.len(), 2, "still reported while they are refused");
    let applies = again.iter().filter(|r| r.method == Method::PATCH && r.path.contains("omero-ro-2")).count();
    assert_eq!(applies, 1, "tried again once per reconcile, not in a loop");
}

/// One reconcile of a new cluster with the session counter, through the real adapter and the
/// client's request limit: the counter's ConfigMap is answered before any Deployment is sent
/// (a pod that mounts it would not start), and the other applies are in flight together,
/// never more than the limit.
#[tokio::test]
async fn a_new_clusters_applies_overlap_after_its_config_map_within_the_limit() {
    const LIMIT: usize = 6;
    let yaml = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  sessionCounter: {credentialsSecret: {name: omero-monitor}}
  nodes:
  - name: rw
  - name: ro-1
    readOnly: {db: true, repo: true}
  - name: ro-2
    readOnly: {db: true, repo: true}
"#;
    let cluster = cluster_from_yaml(yaml);
    let server = Shared::default();
    server.lock().unwrap().cluster = serde_json::to_value(&cluster).unwrap();
    // A server that lets requests gather for a moment before answering each batch in order.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client =
        omero_operator::controller::limited_client(kube::client::ClientBuilder::new(service, "omero"), LIMIT);
    let batches: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let (answering, recorded) = (server.clone(), batches.clone());
    tokio::spawn(async move {
        loop {
            let mut batch = Vec::new();
            while let Ok(Some(request)) =
                tokio::time::timeout(std::time::Duration::from_millis(30), handle.next_request()).await
            {
                batch.push(request);
            }
            if batch.is_empty() {
                continue;
            }
            let mut names = Vec::new();
            for (request, respond) in batch {
                let seen = Seen::of(request).await;
                names.push(format!("{} {}", seen.method, seen.path));
                let (status, reply) = answering.lock().unwrap().answer(seen);
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
            recorded.lock().unwrap().push(names);
        }
    });
    let stores =
        (reflector::store(), reflector::store(), reflector::store(), reflector::store(), reflector::store());
    let caches = Caches {
        deployments: stores.0.0,
        services: stores.1.0,
        config_maps: stores.2.0,
        budgets: stores.3.0,
        pods: stores.4.0,
        names: no_names(),
        nodes: None,
    };
    let ctx = Arc::new(Context::new(KubePort::new(client, caches), FakeOmero::default(), Clock::system()));
    reconcile(Arc::new(cluster), ctx).await.unwrap();

    let batches = batches.lock().unwrap().clone();
    let applies = |batch: &Vec<String>| batch.iter().filter(|r| r.starts_with("PATCH")).count();
    let position = |what: &str| {
        batches.iter().position(|b| b.iter().any(|r| r.starts_with("PATCH") && r.contains(what)))
    };
    let config_map = position("/configmaps/").expect("the counter's ConfigMap is applied");
    let first_deployment = position("/deployments/").expect("Deployments are applied");
    assert!(
        config_map < first_deployment,
        "the ConfigMap is answered before any Deployment is sent: {batches:#?}"
    );
    let most = batches.iter().map(applies).max().unwrap();
    println!(
        "applies of a new 3-node cluster, by batch answered together: {:?}",
        batches.iter().map(applies).collect::<Vec<_>>()
    );
    assert_eq!(most, LIMIT, "applies overlap up to the limit: {batches:#?}");
    let total: usize = batches.iter().map(applies).sum();
    assert_eq!(total, 1 + 3 + 4 + 3, "the ConfigMap, 3 Deployments, 4 Services, 3 budgets");
}
