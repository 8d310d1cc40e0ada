//! `kubectl omero ... --wait`: the time from a status change on the API server to the line
//! that shows it (watch latency), through a scripted API server in this process: the change
//! goes out on the watch's HTTP body, kube's watcher decodes it, the plugin works out what
//! changed and hands the line to its display. No network and no real API server: what is
//! measured is the plugin's own share of the latency.
//!
//!     cargo bench --bench watch_latency            # 500 changes
//!     OMERO_BENCH_CHANGES=2000 cargo bench --bench watch_latency

#[path = "../tests/support/watch_api.rs"]
mod watch_api;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Api;
use omero_operator::{
    api::OmeroCluster,
    plugin::{self, Display, FollowOptions, NodeProgress, Operation},
};
use serde_json::json;
use watch_api::WatchApi;

/// When each change's line was shown.
struct Timed(Arc<Mutex<Vec<Instant>>>);

impl Display for Timed {
    fn show(&mut self, _: &[NodeProgress], changed: &[String]) {
        if !changed.is_empty() {
            self.0.lock().unwrap().push(Instant::now());
        }
    }
    fn say(&mut self, _: &str) {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let changes: usize =
        std::env::var("OMERO_BENCH_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let nodes: Vec<_> = ["rw", "ro-1", "ro-2"]
        .iter()
        .map(|n| json!({"name": n, "phase": "Serving", "ready": true, "routable": true, "upToDate": true}))
        .collect();
    let cluster = json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": "omero", "namespace": "omero", "resourceVersion": "1",
                     "annotations": {"omero.openmicroscopy.org/drain": "ro-1"}},
        "spec": {"image": "openmicroscopy/omero-server:5.6",
                 "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                 "repository": {"claimName": "omero-data"},
                 "nodes": [{"name": "rw"}, {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
                           {"name": "ro-2", "readOnly": {"db": true, "repo": true}}]},
        "status": {"nodes": nodes}
    });
    let server = WatchApi::new(cluster);
    let api: Api<OmeroCluster> = Api::namespaced(server.client(), "omero");
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut display = Timed(shown.clone());
    let options =
        FollowOptions { wait: true, ack_timeout: Duration::from_secs(30), ..FollowOptions::default() };
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn({
        let shown = shown.clone();
        async move {
            // The first line (the state at start) comes from the watch's initial list.
            // Changes sent before the watch itself starts would be lost (the test server keeps no
            // history), so begin once it is open.
            while shown.lock().unwrap().is_empty() || server.watching() == 0 {
                tokio::task::yield_now().await;
            }
            let mut latencies = Vec::with_capacity(changes);
            for i in 0..changes {
                let before = shown.lock().unwrap().len();
                let sent = Instant::now();
                server.publish(|c| {
                    c["status"]["nodes"][1]["phase"] = json!("Draining");
                    c["status"]["nodes"][1]["sessions"] = json!(changes - i);
                });
                loop {
                    if let Some(at) = shown.lock().unwrap().get(before).copied() {
                        latencies.push(at.duration_since(sent));
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            let _ = done.send(());
            latencies
        }
    });
    let stop = async {
        let _ = finished.await;
    };
    plugin::follow(api, "omero", Operation::Drain(vec!["ro-1".into()]), &options, &mut display, stop)
        .await
        .expect("the watch runs");
    let mut latencies = publisher.await.expect("the publisher finishes");
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "watch latency over {changes} status changes (scripted API in-process): median {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap()
    );
}
