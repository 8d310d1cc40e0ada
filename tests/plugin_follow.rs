//! `kubectl omero ... --wait` and `kubectl omero wait`, through a scripted API server whose
//! watch streams the statuses the operator would write: the request acknowledged in
//! `status.observedRequests`, progress lines per change, and each ending (done, refused, the
//! rollout stuck, not acknowledged, timed out, interrupted), with the errors a user meets.

#[path = "support/watch_api.rs"]
mod watch_api;

use std::time::Duration;

use kube::Api;
use omero_operator::{
    api::OmeroCluster,
    plugin::{self, Display, Ending, FollowOptions, NodeProgress, Operation},
    request::{DRAIN_ANNOTATION, FORCE_ANNOTATION, RESTART_ANNOTATION},
};
use serde_json::{Value, json};
use watch_api::WatchApi;

fn cluster() -> Value {
    json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": "omero", "namespace": "omero", "resourceVersion": "5", "generation": 1},
        "spec": {
            "image": "openmicroscopy/omero-server:5.6",
            "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
            "repository": {"claimName": "omero-data"},
            "nodes": [{"name": "rw"}, {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
                      {"name": "ro-2", "readOnly": {"db": true, "repo": true}}]
        },
        "status": {"nodes": [node("rw", "Serving", None), node("ro-1", "Serving", None), node("ro-2", "Serving", None)]}
    })
}

fn node(name: &str, phase: &str, sessions: Option<i64>) -> Value {
    json!({"name": name, "phase": phase, "ready": true, "routable": phase == "Serving", "sessions": sessions,
           "revision": "r1", "targetRevision": "r1", "upToDate": true})
}

/// Sets node `name`'s status fields.
fn set_node(cluster: &mut Value, name: &str, fields: Value) {
    let nodes = cluster["status"]["nodes"].as_array_mut().unwrap();
    let node = nodes.iter_mut().find(|n| n["name"] == name).unwrap();
    for (k, v) in fields.as_object().unwrap() {
        node[k] = v.clone();
    }
}

/// The operator's acknowledgement: the annotations as read, in status.
fn acknowledge(cluster: &mut Value) {
    cluster["status"]["observedRequests"] = cluster["metadata"]["annotations"].clone();
}

/// Records what a display is given.
#[derive(Default)]
struct Recorded {
    changed: Vec<String>,
    said: Vec<String>,
}

impl Display for Recorded {
    fn show(&mut self, _: &[NodeProgress], changed: &[String]) {
        self.changed.extend(changed.iter().cloned());
    }
    fn say(&mut self, line: &str) {
        self.said.push(line.into());
    }
}

fn options(edit: Option<plugin::AnnotationChange>, wait: bool) -> FollowOptions {
    FollowOptions {
        ack: edit,
        ack_generation: None,
        ack_timeout: Duration::from_secs(30),
        wait,
        timeout: None,
        redraw: None,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs `steps` as the operator once the plugin watches, one status change each.
/// Plays the operator's answer to each patch: one status write, made once the patch is in.
fn answer_patches_with(server: &WatchApi, change: fn(&mut Value)) {
    let answering = server.clone();
    server.0.lock().unwrap().on_patch = Some(Box::new(move |_| {
        let server = answering.clone();
        tokio::spawn(async move { server.publish(change) });
    }));
}

/// One status change the operator makes.
type Step = Box<dyn FnOnce(&mut Value) + Send>;

fn operator_after_watch(server: &WatchApi, steps: Vec<Step>) {
    let server = server.clone();
    tokio::spawn(async move {
        while server.watching() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for step in steps {
            tokio::time::sleep(Duration::from_millis(5)).await;
            server.publish(step);
        }
    });
}

#[tokio::test]
async fn drain_wait_follows_the_drain_to_its_end_from_the_watch() {
    let server = WatchApi::new(cluster());
    // The operator reads the request and starts the drain in the same status write.
    answer_patches_with(&server, |c| {
        acknowledge(c);
        set_node(
            c,
            "ro-1",
            json!({"phase": "Draining", "routable": false, "sessions": 3,
                                       "message": "draining: 3 open sessions"}),
        );
    });
    operator_after_watch(
        &server,
        vec![
            Box::new(|c| set_node(c, "ro-1", json!({"sessions": 1, "message": "draining: 1 open sessions"}))),
            // A status write that changes nothing about ro-1 prints nothing.
            Box::new(|c| set_node(c, "rw", json!({"sessions": 7}))),
            Box::new(|c| {
                set_node(
                    c,
                    "ro-1",
                    json!({"phase": "Drained", "sessions": 0, "message": "drained: no open sessions"}),
                )
            }),
        ],
    );
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let edit =
        plugin::edit_annotations(&api, "omero", |c| plugin::drain(c, &names(&["ro-1"]), true)).await.unwrap();
    assert_eq!(edit[DRAIN_ANNOTATION].as_deref(), Some("ro-1"));
    assert_eq!(edit[FORCE_ANNOTATION].as_deref(), Some("ro-1"), "--force names the node");

    let mut shown = Recorded::default();
    let ending = plugin::follow(
        api,
        "omero",
        Operation::Drain(names(&["ro-1"])),
        &options(Some(edit), true),
        &mut shown,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(ending, Ending::Done("drained ro-1".into()));
    assert_eq!(shown.said, ["acknowledged by the operator"]);
    assert_eq!(
        shown.changed,
        [
            "ro-1: Draining, 3 sessions: draining: 3 open sessions",
            "ro-1: Draining, 1 session: draining: 1 open sessions",
            "ro-1: Drained, 0 sessions: drained: no open sessions",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_the_operator_never_shows_is_not_acknowledged() {
    let server = WatchApi::new(cluster());
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let edit = plugin::edit_annotations(&api, "omero", |c| plugin::drain(c, &names(&["ro-1"]), false))
        .await
        .unwrap();
    let mut shown = Recorded::default();
    let ending = plugin::follow(
        api,
        "omero",
        Operation::Drain(names(&["ro-1"])),
        &options(Some(edit), true),
        &mut shown,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(ending, Ending::NotAcknowledged(Duration::from_secs(30)));
    assert!(shown.said.is_empty() && shown.changed.is_empty());
}

#[tokio::test]
async fn a_refused_drain_ends_the_wait_with_the_reason() {
    let mut start = cluster();
    start["metadata"]["annotations"] = json!({DRAIN_ANNOTATION: "ro-1"});
    acknowledge(&mut start);
    set_node(&mut start, "ro-1", json!({"message": "drain refused: it is the last serving node: ..."}));
    let server = WatchApi::new(start);
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let mut shown = Recorded::default();
    let ending = plugin::follow(
        api,
        "omero",
        Operation::Drain(names(&["ro-1"])),
        &options(None, true),
        &mut shown,
        std::future::pending(),
    )
    .await
    .unwrap();
    let Ending::Failed(why) = ending else { panic!("{ending:?}") };
    assert!(why.starts_with("ro-1: drain refused: it is the last serving node"), "{why}");
}

#[tokio::test]
async fn a_restart_waits_for_the_new_revision_and_only_a_wait_for_consent_ends_it() {
    let server = WatchApi::new(cluster());
    answer_patches_with(&server, |c| {
        acknowledge(c);
        for n in ["rw", "ro-1", "ro-2"] {
            set_node(c, n, json!({"targetRevision": "r2", "upToDate": false}));
        }
        set_node(c, "ro-1", json!({"phase": "Draining", "message": "draining: 0 open sessions"}));
    });
    operator_after_watch(
        &server,
        vec![
            Box::new(|c| {
                set_node(c, "ro-1", json!({"phase": "Restarting", "message": "restarting with revision r2"}))
            }),
            Box::new(|c| {
                set_node(
                    c,
                    "ro-1",
                    json!({"phase": "Serving", "revision": "r2", "upToDate": true, "message": null}),
                )
            }),
            // ro-2 would be next, but a node is out: a wait that frees itself goes on...
            Box::new(|c| {
                c["status"]["rollout"] = json!({"targetRevision": "r2", "upToDateNodes": 1, "pending": ["ro-2", "rw"],
                    "waiting": "at most 1 node(s) may be out of service at once (drain.maxUnavailable); out now: rw"});
            }),
            // ...one that only consent ends does not.
            Box::new(|c| {
                c["status"]["rollout"] = json!({"targetRevision": "r2", "upToDateNodes": 1, "pending": ["ro-2", "rw"],
                    "waiting": "node ro-2 is the last serving node: restarting it interrupts service; annotate allow-downtime",
                    "waitingForConsent": true});
            }),
        ],
    );
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let value = "ro-1,ro-2@2026-11-30T10.00.00Z".to_string();
    let edit = plugin::edit_annotations(&api, "omero", |_| {
        Ok([(RESTART_ANNOTATION.to_string(), Some(value.clone()))].into())
    })
    .await
    .unwrap();
    let mut shown = Recorded::default();
    let ending = plugin::follow(
        api,
        "omero",
        Operation::Settle(names(&["ro-1", "ro-2"])),
        &options(Some(edit), true),
        &mut shown,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(
        ending,
        Ending::Failed(
            "the rollout waits: node ro-2 is the last serving node: restarting it interrupts service; annotate allow-downtime"
                .into()
        )
    );
    assert!(
        shown.changed.contains(
            &"rollout waits: at most 1 node(s) may be out of service at once (drain.maxUnavailable); out now: rw"
                .to_string()
        ),
        "the wait that frees itself is shown, and the wait goes on: {:?}",
        shown.changed
    );
    assert!(shown.changed.contains(&"ro-1: Serving".to_string()), "{:?}", shown.changed);
    assert!(shown.changed.contains(&"ro-2: Serving, revision r2 to come".to_string()), "{:?}", shown.changed);
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_or_stops_on_interrupt_and_the_operation_goes_on() {
    let mut start = cluster();
    start["metadata"]["annotations"] = json!({DRAIN_ANNOTATION: "ro-1"});
    set_node(&mut start, "ro-1", json!({"phase": "Draining", "sessions": 2}));
    let server = WatchApi::new(start);
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let op = Operation::Drain(names(&["ro-1"]));
    let mut shown = Recorded::default();
    let timeout = FollowOptions { timeout: Some(Duration::from_secs(90)), ..options(None, true) };
    let ending =
        plugin::follow(api.clone(), "omero", op.clone(), &timeout, &mut shown, std::future::pending())
            .await
            .unwrap();
    assert!(matches!(ending, Ending::TimedOut(d) if d >= Duration::from_secs(90)), "{ending:?}");
    assert_eq!(shown.changed, ["ro-1: Draining, 2 sessions"]);

    let interrupt = tokio::time::sleep(Duration::from_secs(5));
    let ending = plugin::follow(api, "omero", op, &options(None, true), &mut shown, interrupt).await.unwrap();
    assert_eq!(ending, Ending::Interrupted);
    assert!(server.0.lock().unwrap().patches.is_empty(), "watching never writes");
}

#[tokio::test]
async fn no_such_cluster_lists_the_ones_there_and_a_missing_crd_says_so() {
    let server = WatchApi::default();
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let error = plugin::get(&api, "omero").await.unwrap_err();
    assert_eq!(
        error,
        "no OmeroCluster named omero: there is none in this namespace (-n NAMESPACE to look elsewhere)"
    );

    let server = WatchApi::new(cluster());
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let error = plugin::get(&api, "omero-2").await.unwrap_err();
    assert_eq!(error, "no OmeroCluster named omero-2; the ones here are omero");
    assert_eq!(plugin::get(&api, "omero").await.unwrap().metadata.name.as_deref(), Some("omero"));

    let server = WatchApi::new(cluster());
    server.0.lock().unwrap().no_crd = true;
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let error = plugin::get(&api, "omero").await.unwrap_err();
    assert!(error.starts_with("the OmeroCluster resource is not installed on this cluster"), "{error}");
}

#[test]
fn a_failed_node_or_an_invalid_spec_ends_a_wait_as_failed_and_the_lines_say_where_each_node_is() {
    let now = k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap();
    let mut value = cluster();
    set_node(
        &mut value,
        "ro-1",
        json!({"phase": "Failed", "upToDate": false, "targetRevision": "r2",
                                       "message": "not ready with revision r2 within 40m of its restart"}),
    );
    set_node(
        &mut value,
        "ro-2",
        json!({"phase": "Draining", "sessions": 1, "drainDeadline": "1970-01-01T00:30:00Z"}),
    );
    let failed: OmeroCluster = serde_json::from_value(value.clone()).unwrap();
    let (nodes, outcome) = plugin::progress(&failed, &Operation::Settle(Vec::new()), now);
    assert_eq!(
        outcome,
        plugin::Outcome::Failed("ro-1: not ready with revision r2 within 40m of its restart".into())
    );
    let lines: Vec<&str> = nodes.iter().map(|n| n.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "Serving",
            "Failed, revision r2 to come: not ready with revision r2 within 40m of its restart",
            "Draining, 1 session (deadline in 13m)",
        ]
    );

    value["status"]["conditions"] = json!([{"type": "Degraded", "status": "True", "reason": "InvalidSpec",
        "message": "invalid spec, nothing changed: spec.nodes[1].name: ...", "lastTransitionTime": "2026-11-30T00:00:00Z"}]);
    set_node(&mut value, "ro-1", json!({"phase": "Serving", "upToDate": true}));
    let invalid: OmeroCluster = serde_json::from_value(value).unwrap();
    let (_, outcome) = plugin::progress(&invalid, &Operation::Drain(names(&["ro-2"])), now);
    assert_eq!(
        outcome,
        plugin::Outcome::Failed("invalid spec, nothing changed: spec.nodes[1].name: ...".into())
    );
}

/// A cluster whose operator has acknowledged `drain: ro-1` and is draining it (2 sessions).
fn draining_ro1() -> Value {
    let mut start = cluster();
    start["metadata"]["annotations"] = json!({DRAIN_ANNOTATION: "ro-1"});
    acknowledge(&mut start);
    set_node(&mut start, "ro-1", json!({"phase": "Draining", "routable": false, "sessions": 2}));
    start
}

/// Waits until the plugin has a watch open.
async fn watched(server: &WatchApi) {
    while server.watching() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A long drain under `--wait` outlives its watch closing, expiring (410) and failing (500s):
/// each time the plugin says so, watches again, and follows the drain to its end.
#[tokio::test]
async fn drain_wait_survives_a_closed_an_expired_and_a_failing_watch() {
    let server = WatchApi::new(draining_ro1());
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let operator = server.clone();
    tokio::spawn(async move {
        watched(&operator).await;
        operator.close_watches();
        watched(&operator).await;
        operator.publish(|c| set_node(c, "ro-1", json!({"sessions": 1})));
        operator.expire_watches();
        watched(&operator).await;
        operator.0.lock().unwrap().failing_watches = 2;
        operator.close_watches();
        watched(&operator).await;
        operator.publish(|c| set_node(c, "ro-1", json!({"phase": "Drained", "sessions": 0})));
    });
    let mut shown = Recorded::default();
    let ending = tokio::time::timeout(
        Duration::from_secs(60),
        plugin::follow(
            api,
            "omero",
            Operation::Drain(names(&["ro-1"])),
            &options(None, true),
            &mut shown,
            std::future::pending(),
        ),
    )
    .await
    .expect("followed to its end, not stuck")
    .expect("not ended by a watch error");
    assert_eq!(ending, Ending::Done("drained ro-1".into()));
    let retried = shown.said.iter().filter(|s| s.starts_with("the watch failed")).count();
    assert!(retried >= 2, "said each failure: {:?}", shown.said);
}

/// A watch that keeps failing ends `--wait` with the reason and what to do, not silently.
#[tokio::test(start_paused = true)]
async fn drain_wait_gives_up_on_a_watch_that_keeps_failing_and_says_so() {
    let server = WatchApi::new(draining_ro1());
    server.0.lock().unwrap().failing_watches = usize::MAX;
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let mut shown = Recorded::default();
    let error = plugin::follow(
        api,
        "omero",
        Operation::Drain(names(&["ro-1"])),
        &options(None, true),
        &mut shown,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("gave up following after 10 failed watches") && error.contains("kubectl omero wait"),
        "{error}"
    );
}

/// `kubectl omero stop --wait`: a merge patch of `spec.stopped` (a new generation), taken in
/// once the operator's status observed that generation (an older status, even one showing
/// nodes draining for another reason, is not the acknowledgement), then followed until every
/// node is Stopped.
#[tokio::test]
async fn stop_wait_is_acknowledged_by_the_generation_and_follows_every_node_to_stopped() {
    let mut start = cluster();
    start["status"]["observedGeneration"] = json!(1);
    let server = WatchApi::new(start);
    operator_after_watch(
        &server,
        vec![
            // A status write of the old generation: not the acknowledgement.
            Box::new(|c| set_node(c, "rw", json!({"sessions": 2}))),
            Box::new(|c| {
                c["status"]["observedGeneration"] = c["metadata"]["generation"].clone();
                for name in ["rw", "ro-1", "ro-2"] {
                    set_node(c, name, json!({"phase": "Draining", "routable": false}));
                }
            }),
            Box::new(|c| {
                for name in ["ro-1", "ro-2"] {
                    set_node(c, name, json!({"phase": "Stopped", "ready": false, "message": "stopped"}));
                }
            }),
            Box::new(|c| {
                set_node(
                    c,
                    "rw",
                    json!({"phase": "Stopped", "ready": false, "sessions": null, "message": "stopped"}),
                )
            }),
        ],
    );
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let generation = plugin::set_stopped(&api, "omero", true).await.unwrap();
    assert_eq!(generation, 2, "a spec change is a new generation");
    let patch = server.0.lock().unwrap().patches.last().cloned().unwrap();
    assert_eq!(patch, json!({"spec": {"stopped": true}}), "only spec.stopped, with no precondition");

    let mut shown = Recorded::default();
    let stop = FollowOptions { ack_generation: Some(generation), ..options(None, true) };
    let ending = plugin::follow(api, "omero", Operation::Stop, &stop, &mut shown, std::future::pending())
        .await
        .unwrap();
    assert_eq!(ending, Ending::Done("stopped rw, ro-1, ro-2".into()));
    assert_eq!(shown.said, ["acknowledged by the operator"]);
    assert!(
        !shown.changed.iter().any(|l| l.contains("Serving")),
        "nothing shown before the acknowledgement: {:?}",
        shown.changed
    );
    assert_eq!(shown.changed.last().map(String::as_str), Some("rw: Stopped: stopped"), "{:?}", shown.changed);
}
