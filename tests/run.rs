//! `controller::run` as a whole, against a scripted API server (`tower-test`) and a lease the
//! test grants and takes away: `/healthz` and `/readyz` over real HTTP, ready once the watch
//! caches (the metadata-only look-up caches among them) are filled while still a standby; a
//! standby writes nothing and does not even start the controller; given the lease it
//! reconciles (writes appear, `omero_operator_leader 1`); losing it ends `run` with
//! `LeaseLost` and no write follows.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use omero_operator::{
    Error,
    controller::{RunOptions, leader::LeaderLease, run},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
};

const NS: &str = "omero";

/// A lease the test hands out: `changed` reports each change of the channel.
struct GrantedLease {
    granted: watch::Receiver<bool>,
    reported: Mutex<bool>,
}

impl LeaderLease for GrantedLease {
    async fn changed(&self) -> Result<bool, String> {
        let mut granted = self.granted.clone();
        loop {
            let now = *granted.borrow_and_update();
            {
                let mut reported = self.reported.lock().unwrap();
                if now != *reported {
                    *reported = now;
                    return Ok(now);
                }
            }
            granted.changed().await.map_err(|e| e.to_string())?;
        }
    }

    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Requests seen (method, path, query), and the watches held open.
#[derive(Default)]
struct Seen {
    requests: Vec<(Method, String, String)>,
    /// The same requests' paths and queries when they asked for metadata only (kube's
    /// `PartialObjectMeta` requests: `Accept: ...;as=PartialObjectMetadataList`).
    metadata_requests: Vec<(String, String)>,
}

impl Seen {
    fn writes(&self) -> Vec<String> {
        self.requests.iter().filter(|(m, ..)| m != Method::GET).map(|(m, p, _)| format!("{m} {p}")).collect()
    }
}

/// Whether a request asked for metadata only.
fn metadata_only(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"))
}

fn cluster() -> Value {
    json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": "omero", "namespace": NS, "uid": "00000000-0000-4000-8000-000000000001",
                     "resourceVersion": "1", "generation": 1},
        "spec": {"image": "openmicroscopy/omero-server:5.6",
                 "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                 "repository": {"claimName": "omero-data"}, "nodes": [{"name": "rw"}]}
    })
}

fn api_server(seen: Arc<Mutex<Seen>>) -> Client {
    api_server_withholding(seen, |_, _| false)
}

/// The scripted API server; the requests `withheld` picks (by path, and whether metadata only
/// was asked for) are never answered (a LIST withheld: its watch cache never fills).
fn api_server_withholding(seen: Arc<Mutex<Seen>>, withheld: fn(&str, bool) -> bool) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        // Watches stay open: their responders are kept and never answered.
        let mut open_watches = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or_default().to_string();
            seen.lock().unwrap().requests.push((parts.method.clone(), path.clone(), query.clone()));
            if metadata_only(&parts) {
                seen.lock().unwrap().metadata_requests.push((path.clone(), query.clone()));
            }
            if query.contains("watch=true") || withheld(&path, metadata_only(&parts)) {
                open_watches.push(respond);
                continue;
            }
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (status, reply) = match (&parts.method, segments.last().copied().unwrap_or_default()) {
                (
                    &Method::GET,
                    kind @ ("omeroclusters"
                    | "deployments"
                    | "services"
                    | "configmaps"
                    | "pods"
                    | "poddisruptionbudgets"
                    | "nodes"),
                ) => {
                    let items = if kind == "omeroclusters" { vec![cluster()] } else { Vec::new() };
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                (&Method::GET, _) => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                // Writes: echoed back as the API server's answer, with a new resourceVersion.
                _ => {
                    let mut echoed = body.clone();
                    echoed["metadata"]["resourceVersion"] = json!("2");
                    echoed["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000002");
                    (StatusCode::OK, echoed)
                }
            };
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, NS)
}

/// GET `path` on the operator's HTTP port: the status code and the body.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The operator running against `client`, its lease held only while `grant` says so, and
/// the port of its HTTP endpoints.
struct Running {
    grant: watch::Sender<bool>,
    port: u16,
    operator: tokio::task::JoinHandle<Result<(), Error>>,
}

fn start(client: Client, max_api_requests: u16, watch_nodes: bool) -> Running {
    let (grant, granted) = watch::channel(false);
    let lease = GrantedLease { granted, reported: Mutex::new(false) };
    // A free port for the HTTP endpoints.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = RunOptions {
        namespace: Some(NS.into()),
        concurrency: 2,
        max_api_requests,
        http_address: format!("127.0.0.1:{port}"),
        apply_crd: false,
        watch_nodes,
    };
    let metrics = std::sync::Arc::new(omero_operator::metrics::Metrics::new());
    let operator =
        tokio::spawn(run(client, lease, omero_operator::omero::Client::default(), options, metrics));
    Running { grant, port, operator }
}

#[tokio::test]
async fn a_standby_is_ready_and_writes_nothing_the_leader_reconciles_and_a_lost_lease_stops_it() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let Running { grant, port, operator } = start(api_server(seen.clone()), 8, true);

    assert_eq!(eventually("/healthz", async || get(port, "/healthz").await).await.0, 200);
    eventually("/readyz 200 as a standby", async || get(port, "/readyz").await.filter(|(c, _)| *c == 200))
        .await;
    // Watches of Deployments, Services and Pods are open; the controller's OmeroCluster watch is not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let seen = seen.lock().unwrap();
        assert!(seen.writes().is_empty(), "a standby wrote: {:?}", seen.writes());
        let watching =
            |kind: &str| seen.requests.iter().any(|(_, p, q)| p.ends_with(kind) && q.contains("watch=true"));
        assert!(watching("deployments") && watching("services") && watching("pods"), "{:?}", seen.requests);
        // The budgets in the watched namespace, and (--watch-nodes) every Node, cluster-scoped.
        assert!(watching("poddisruptionbudgets"), "{:?}", seen.requests);
        assert!(
            seen.requests.iter().any(|(_, p, q)| p == "/api/v1/nodes" && q.contains("watch=true")),
            "{:?}",
            seen.requests
        );
        assert!(!watching("omeroclusters"), "the controller runs on a standby");
        // Every object of the kinds the operator writes, metadata only, with no label selector:
        // the look-up caches, on a standby too.
        for kind in ["deployments", "services", "configmaps", "poddisruptionbudgets"] {
            let watched_whole = seen
                .metadata_requests
                .iter()
                .any(|(p, q)| p.ends_with(kind) && q.contains("watch=true") && !q.contains("labelSelector"));
            assert!(watched_whole, "no metadata watch of every {kind}: {:?}", seen.metadata_requests);
        }
    }
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    assert!(metrics.contains("omero_operator_leader 0"), "{metrics}");

    // Leading: the controller starts and reconciles the cluster (status first, then objects).
    grant.send_replace(true);
    let writes = eventually("the leader's writes", async || {
        let writes = seen.lock().unwrap().writes();
        (writes.len() >= 3).then_some(writes)
    })
    .await;
    assert!(
        writes[0].starts_with("PUT ") && writes[0].ends_with("/omeroclusters/omero/status"),
        "{writes:?}"
    );
    assert!(
        writes.iter().any(|w| w.starts_with("PATCH ") && w.ends_with("/deployments/omero-rw")),
        "{writes:?}"
    );
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    assert!(metrics.contains("omero_operator_leader 1"), "{metrics}");

    // The lease is lost: run ends at once with LeaseLost, and nothing more is written.
    grant.send_replace(false);
    let ended = tokio::time::timeout(Duration::from_secs(5), operator).await.expect("run stops").unwrap();
    assert!(matches!(ended, Err(Error::LeaseLost)), "{ended:?}");
    let count = seen.lock().unwrap().writes().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().writes().len(), count, "written after the lease was lost");
}

/// With `--watch-nodes`, `/readyz` waits for the Node cache too: a Node LIST that never
/// answers keeps the replica unready, though every other cache is filled.
#[tokio::test]
async fn with_the_node_watch_readyz_waits_for_the_node_cache() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = api_server_withholding(seen.clone(), |path, _| path == "/api/v1/nodes");
    let Running { port, operator, .. } = start(client, 8, true);
    assert_eq!(eventually("/healthz", async || get(port, "/healthz").await).await.0, 200);
    // Every namespaced cache has listed; the Nodes have been asked for and never answered.
    eventually("the other caches listed and the Nodes asked for", async || {
        let seen = seen.lock().unwrap();
        let listed = |kind: &str| {
            seen.requests
                .iter()
                .any(|(m, p, q)| m == Method::GET && p.ends_with(kind) && !q.contains("watch=true"))
        };
        (["deployments", "services", "configmaps", "pods", "poddisruptionbudgets", "nodes"]
            .iter()
            .all(|k| listed(k)))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(port, "/readyz").await.unwrap().0, 503, "ready without the Node cache");
    operator.abort();
}

/// `/readyz` waits for the look-up caches too: a metadata-only LIST of ConfigMaps that never
/// answers keeps the replica unready, though the operator's own ConfigMaps (and every other
/// cache) are listed.
#[tokio::test]
async fn readyz_waits_for_the_look_up_caches() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client =
        api_server_withholding(seen.clone(), |path, metadata| metadata && path.ends_with("/configmaps"));
    let Running { port, operator, .. } = start(client, 16, false);
    assert_eq!(eventually("/healthz", async || get(port, "/healthz").await).await.0, 200);
    eventually("every cache listed, the ConfigMaps' metadata asked for", async || {
        let seen = seen.lock().unwrap();
        let listed = |kind: &str, metadata: bool| {
            seen.requests.iter().any(|(m, p, q)| {
                m == Method::GET
                    && p.ends_with(kind)
                    && !q.contains("watch=true")
                    && seen.metadata_requests.iter().any(|(mp, mq)| mp == p && mq == q) == metadata
            })
        };
        let all = ["deployments", "services", "configmaps", "pods", "poddisruptionbudgets"]
            .iter()
            .all(|k| listed(k, false));
        let names =
            ["deployments", "services", "configmaps", "poddisruptionbudgets"].iter().all(|k| listed(k, true));
        (all && names).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(port, "/readyz").await.unwrap().0, 503, "ready without the ConfigMaps' look-up cache");
    operator.abort();
}
