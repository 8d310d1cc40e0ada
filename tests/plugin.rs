//! `kubectl omero`: the exact patches it sends to a scripted API server (a drain adds to the
//! list, an undrain removes only the named nodes, a conflict makes it read again and retry),
//! and the table it prints from a status.

mod support;

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::{Api, Client, client::Body};
use omero_operator::{
    api::{NodePhase, NodeStatus, OmeroCluster, OmeroClusterStatus},
    plugin,
    request::DRAIN_ANNOTATION,
};
use serde_json::{Value, json};
use support::cluster_from_yaml;

const CLUSTER: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero, annotations: {omero.openmicroscopy.org/drain: ro-1}}
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

/// The cluster as the server holds it, the patches it received, and how many conflicts to
/// answer (someone else edits the cluster in between).
struct Server {
    cluster: Value,
    patches: Vec<Value>,
    conflicts: usize,
}

fn client(server: Arc<Mutex<Server>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let mut s = server.lock().unwrap();
            let (status, reply) = match parts.method {
                Method::GET => (StatusCode::OK, s.cluster.clone()),
                Method::PATCH => {
                    let patch: Value = serde_json::from_slice(&bytes).unwrap();
                    s.patches.push(patch.clone());
                    if s.conflicts > 0 {
                        // Someone else added a node to the drain list meanwhile.
                        s.conflicts -= 1;
                        s.cluster["metadata"]["annotations"][DRAIN_ANNOTATION] = json!("ro-1,rw");
                        s.cluster["metadata"]["resourceVersion"] = json!("6");
                        (
                            StatusCode::CONFLICT,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
                        )
                    } else {
                        assert_eq!(
                            patch["metadata"]["resourceVersion"], s.cluster["metadata"]["resourceVersion"],
                            "the precondition"
                        );
                        // JSON merge patch: null removes.
                        let annotations = s.cluster["metadata"]["annotations"].as_object_mut().unwrap();
                        for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
                            if v.is_null() {
                                annotations.remove(k);
                            } else {
                                annotations.insert(k.clone(), v.clone());
                            }
                        }
                        (StatusCode::OK, s.cluster.clone())
                    }
                }
                other => panic!("unexpected {other}"),
            };
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

fn server(conflicts: usize) -> Arc<Mutex<Server>> {
    let mut cluster = serde_json::to_value(cluster_from_yaml(CLUSTER)).unwrap();
    cluster["metadata"]["resourceVersion"] = json!("5");
    Arc::new(Mutex::new(Server { cluster, patches: Vec::new(), conflicts }))
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_drain_adds_to_the_list_with_the_resource_version_as_precondition() {
    let server = server(0);
    let api: Api<OmeroCluster> = Api::namespaced(client(server.clone()), "omero");
    plugin::edit_annotations(&api, "omero", |c| plugin::drain(c, &names(&["ro-2"]), false)).await.unwrap();
    let s = server.lock().unwrap();
    assert_eq!(
        s.patches,
        [json!({"metadata": {"resourceVersion": "5", "annotations": {DRAIN_ANNOTATION: "ro-1,ro-2"}}})]
    );
}

#[tokio::test]
async fn a_conflict_reads_again_and_keeps_what_someone_else_added() {
    let server = server(1);
    let api: Api<OmeroCluster> = Api::namespaced(client(server.clone()), "omero");
    plugin::edit_annotations(&api, "omero", |c| plugin::drain(c, &names(&["ro-2"]), false)).await.unwrap();
    let s = server.lock().unwrap();
    assert_eq!(s.patches.len(), 2);
    assert_eq!(
        s.patches[1],
        json!({"metadata": {"resourceVersion": "6", "annotations": {DRAIN_ANNOTATION: "ro-1,rw,ro-2"}}})
    );
    assert_eq!(s.cluster["metadata"]["annotations"][DRAIN_ANNOTATION], "ro-1,rw,ro-2");
}

#[tokio::test]
async fn an_undrain_removes_only_the_named_nodes_and_the_last_removes_the_annotation() {
    let server = server(0);
    server.lock().unwrap().cluster["metadata"]["annotations"][DRAIN_ANNOTATION] = json!("ro-1,ro-2");
    let api: Api<OmeroCluster> = Api::namespaced(client(server.clone()), "omero");
    plugin::edit_annotations(&api, "omero", |c| plugin::undrain(c, &names(&["ro-1"]))).await.unwrap();
    plugin::edit_annotations(&api, "omero", |c| plugin::undrain(c, &names(&["ro-2"]))).await.unwrap();
    let s = server.lock().unwrap();
    assert_eq!(s.patches[0]["metadata"]["annotations"][DRAIN_ANNOTATION], "ro-2");
    assert_eq!(s.patches[1]["metadata"]["annotations"][DRAIN_ANNOTATION], Value::Null, "removed");
}

#[tokio::test]
async fn an_unknown_node_is_refused_with_the_nodes_there_are() {
    let server = server(0);
    let api: Api<OmeroCluster> = Api::namespaced(client(server.clone()), "omero");
    let error = plugin::edit_annotations(&api, "omero", |c| plugin::drain(c, &names(&["ro-9"]), false))
        .await
        .unwrap_err();
    assert_eq!(error, "no node named ro-9; the nodes are rw, ro-1, ro-2");
    assert!(server.lock().unwrap().patches.is_empty(), "nothing sent");
}

#[test]
fn the_status_reads_as_words_and_a_table() {
    let mut cluster = cluster_from_yaml(CLUSTER);
    let at = |s: i64| {
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
        ))
    };
    cluster.status = Some(OmeroClusterStatus {
        nodes: vec![
            NodeStatus {
                name: "rw".into(),
                phase: NodePhase::Serving,
                ready: true,
                routable: true,
                revision: Some("a1".into()),
                up_to_date: true,
                ..Default::default()
            },
            NodeStatus {
                name: "ro-1".into(),
                phase: NodePhase::Draining,
                ready: true,
                sessions: Some(4),
                sessions_since: at(1_000),
                drain_deadline: at(5_000),
                revision: Some("b0".into()),
                message: Some("draining: 4 open sessions".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let table = plugin::node_table(&cluster, k8s_openapi::jiff::Timestamp::from_second(1_030).unwrap());
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE  ROLE        PHASE     READY  ROUTABLE  SESSIONS"), "{table}");
    assert!(lines[1].starts_with("rw    read-write  Serving   yes    yes       -"), "{table}");
    assert!(lines[2].contains("ro-1  read-only   Draining  yes    no        4 (30s ago)  b0 (out of date)  1970-01-01T01:23:20Z  draining: 4 open sessions"), "{table}");
    assert_eq!(plugin::conditions_in_words(&cluster), Vec::<String>::new(), "no conditions yet");
    cluster.status = None;
    assert_eq!(plugin::conditions_in_words(&cluster), ["no status yet: is the operator running?"]);
}
