//! A scripted API server for one OmeroCluster that `kubectl omero` reads, patches and
//! watches: GET, a merge PATCH with its `resourceVersion` precondition, the LIST and the
//! streaming WATCH a `watch_object` makes. `publish` changes the cluster as the operator
//! would and sends the change to every open watch at once.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use kube::{Client, client::Body};
use serde_json::{Value, json};

pub type WatchBody = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;

#[derive(Default)]
pub struct State {
    /// `None`: no such cluster (404); the list then is empty.
    pub cluster: Option<Value>,
    pub patches: Vec<Value>,
    watches: Vec<mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>>,
    /// Called after each accepted patch, with the cluster as patched: plays the operator.
    #[allow(clippy::type_complexity)]
    pub on_patch: Option<Box<dyn FnMut(&Value) + Send>>,
    /// Answer 404 "could not find the requested resource" to everything: no CRD.
    pub no_crd: bool,
    /// Answer this many of the next watch requests with a 500.
    pub failing_watches: usize,
}

#[derive(Clone, Default)]
pub struct WatchApi(pub Arc<Mutex<State>>);

fn body(value: &Value) -> WatchBody {
    let (tx, rx) = mpsc::unbounded();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(serde_json::to_vec(value).unwrap())))).unwrap();
    StreamBody::new(rx)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message})
}

fn bump(cluster: &mut Value) {
    let rv: u64 = cluster["metadata"]["resourceVersion"].as_str().unwrap_or("1").parse().unwrap();
    cluster["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}

impl WatchApi {
    pub fn new(cluster: Value) -> Self {
        Self(Arc::new(Mutex::new(State { cluster: Some(cluster), ..State::default() })))
    }

    /// Changes the cluster (as the operator's status write would) and sends it to the watches.
    pub fn publish(&self, change: impl FnOnce(&mut Value)) {
        let mut state = self.0.lock().unwrap();
        let cluster = state.cluster.as_mut().expect("a cluster");
        change(cluster);
        bump(cluster);
        let event = json!({"type": "MODIFIED", "object": cluster});
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        state.watches.retain(|w| w.unbounded_send(Ok(Frame::data(Bytes::from(line.clone())))).is_ok());
    }

    /// Ends every open watch, as an API server does at its timeout or on restart.
    #[allow(dead_code)] // not every test binary that includes this file breaks watches
    pub fn close_watches(&self) {
        self.0.lock().unwrap().watches.clear();
    }

    /// Tells every open watch that its resourceVersion is too old (410 Gone), then ends it.
    #[allow(dead_code)] // not every test binary that includes this file breaks watches
    pub fn expire_watches(&self) {
        let mut state = self.0.lock().unwrap();
        let event = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        for watch in state.watches.drain(..) {
            let _ = watch.unbounded_send(Ok(Frame::data(Bytes::from(line.clone()))));
        }
    }

    pub fn watching(&self) -> usize {
        self.0.lock().unwrap().watches.len()
    }

    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<WatchBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, request_body) = request.into_parts();
                let bytes = request_body.collect_bytes().await.unwrap();
                let query = parts.uri.query().unwrap_or_default().to_string();
                let named = !parts.uri.path().ends_with("/omeroclusters");
                let mut state = api.0.lock().unwrap();
                if state.no_crd {
                    let reply = status(404, "NotFound", "the server could not find the requested resource");
                    respond.send_response(Response::builder().status(404).body(body(&reply)).unwrap());
                    continue;
                }
                let last = parts.uri.path().rsplit('/').next().unwrap_or_default().to_string();
                let cluster =
                    state.cluster.clone().filter(|c| !named || c["metadata"]["name"] == last.as_str());
                let (code, reply) = match (parts.method, named, cluster) {
                    (Method::GET, false, _) if query.contains("watch=true") && state.failing_watches > 0 => {
                        state.failing_watches -= 1;
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            status(500, "InternalError", "etcdserver: request timed out"),
                        )
                    }
                    (Method::GET, false, _) if query.contains("watch=true") => {
                        let (tx, rx) = mpsc::unbounded();
                        state.watches.push(tx);
                        respond.send_response(
                            Response::builder().status(200).body(StreamBody::new(rx)).unwrap(),
                        );
                        continue;
                    }
                    (Method::GET, false, cluster) => {
                        let rv =
                            cluster.as_ref().map_or(json!("1"), |c| c["metadata"]["resourceVersion"].clone());
                        let items: Vec<Value> = cluster.into_iter().collect();
                        (
                            StatusCode::OK,
                            json!({"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroClusterList",
                                   "metadata": {"resourceVersion": rv}, "items": items}),
                        )
                    }
                    (_, true, None) => (
                        StatusCode::NOT_FOUND,
                        status(
                            404,
                            "NotFound",
                            &format!("omeroclusters.omero.openmicroscopy.org \"{last}\" not found"),
                        ),
                    ),
                    (Method::GET, true, Some(cluster)) => (StatusCode::OK, cluster),
                    (Method::PATCH, true, Some(_)) => {
                        let patch: Value = serde_json::from_slice(&bytes).unwrap();
                        state.patches.push(patch.clone());
                        let cluster = state.cluster.as_mut().unwrap();
                        // A merge patch carries a precondition only when it names a resourceVersion.
                        let precondition = &patch["metadata"]["resourceVersion"];
                        if !precondition.is_null() && *precondition != cluster["metadata"]["resourceVersion"]
                        {
                            (StatusCode::CONFLICT, status(409, "Conflict", "the object has been modified"))
                        } else {
                            if cluster["metadata"]["annotations"].is_null() {
                                cluster["metadata"]["annotations"] = json!({});
                            }
                            let annotations = cluster["metadata"]["annotations"].as_object_mut().unwrap();
                            for (k, v) in patch["metadata"]["annotations"].as_object().into_iter().flatten() {
                                if v.is_null() {
                                    annotations.remove(k);
                                } else {
                                    annotations.insert(k.clone(), v.clone());
                                }
                            }
                            // A change of the spec is a new generation, as the API server counts them.
                            let mut spec_changed = false;
                            for (k, v) in patch["spec"].as_object().into_iter().flatten() {
                                spec_changed |= cluster["spec"][k] != *v;
                                cluster["spec"][k] = v.clone();
                            }
                            if spec_changed {
                                let generation = cluster["metadata"]["generation"].as_i64().unwrap_or(1);
                                cluster["metadata"]["generation"] = json!(generation + 1);
                            }
                            bump(cluster);
                            let patched = cluster.clone();
                            if let Some(mut operator) = state.on_patch.take() {
                                drop(state);
                                operator(&patched);
                                api.0.lock().unwrap().on_patch = Some(operator);
                            }
                            (StatusCode::OK, patched)
                        }
                    }
                    (method, _, _) => panic!("unexpected {method} {}", parts.uri),
                };
                respond.send_response(Response::builder().status(code).body(body(&reply)).unwrap());
            }
        });
        Client::new(service, "omero")
    }
}
