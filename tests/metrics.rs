//! `/metrics` after reconciles through the port double: a bring-up, a drain with a failing
//! probe, a failed reconcile. Every metric the operator declares (`metrics::METRICS`) shows
//! with exactly its labels, nothing else shows, and the README lists the same; the HTTP
//! endpoints answer as the chart's probes expect.

mod support;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode};
use omero_operator::{
    api::NodePhase,
    controller::reconcile_and_reset,
    http::{Endpoints, router},
    metrics::METRICS,
    request::DRAIN_ANNOTATION,
};
use support::*;
use tower::ServiceExt;

const CLUSTER: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-1
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
  readOnlyPool:
    replicas: 1
    namePrefix: pool
    template:
      sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
"#;

async fn reconcile(fake: &FakeCluster, ctx: &Arc<Ctx>) -> bool {
    reconcile_and_reset(Arc::new(fake.cluster()), ctx.clone()).await.is_ok()
}

/// The metric family and label names of each sample line of the text format.
fn samples(text: &str) -> BTreeSet<(String, Vec<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest.split_once('}').expect("closed labels").0;
                    let names: Vec<String> = labels
                        .split("\",")
                        .filter(|l| !l.is_empty())
                        .map(|l| l.split_once('=').expect("name=value").0.to_string())
                        .filter(|l| l != "le")
                        .collect();
                    (name.to_string(), names)
                }
                None => (line.split_once(' ').expect("name value").0.to_string(), Vec::new()),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|base| base.ends_with("_seconds")))
                .unwrap_or(&name)
                .to_string();
            (family, labels)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_produces_every_declared_metric_with_its_labels() {
    let fake = FakeCluster::new(cluster_from_yaml(CLUSTER));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    let sessions = FakeOmero::default();
    let ctx = context(&fake, &sessions);
    ctx.metrics.set_leader(true);

    // Bring-up.
    assert!(reconcile(&fake, &ctx).await);
    for (node, ip) in [("rw", "10.0.0.1"), ("ro-1", "10.0.0.2"), ("pool-0", "10.0.0.3")] {
        fake.set_pod(node, ip, true);
        sessions.set(ip, Ok(2));
    }
    assert!(reconcile(&fake, &ctx).await);

    // A drain whose probe fails once, then sees the sessions end.
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    sessions.set("10.0.0.2", Err("connection refused"));
    assert!(reconcile(&fake, &ctx).await);
    let while_draining = ctx.metrics.encode();
    assert!(
        while_draining.contains(
            "omero_operator_node_drain_deadline_timestamp_seconds{namespace=\"omero\",omerocluster=\"omero\",node=\"ro-1\"}"
        ),
        "{while_draining}"
    );
    let mut rounds = 0;
    while fake.node("ro-1").phase != NodePhase::Drained {
        rounds += 1;
        assert!(rounds < 60, "ro-1 never drained: {:?}", fake.node("ro-1"));
        tokio::time::advance(Duration::from_secs(10)).await;
        if rounds == 2 {
            sessions.set("10.0.0.2", Ok(0));
        }
        assert!(reconcile(&fake, &ctx).await);
    }

    // A reconcile that fails (the API server refuses every write).
    fake.state().fail_writes = true;
    fake.set_annotation(DRAIN_ANNOTATION, None);
    assert!(!reconcile(&fake, &ctx).await);
    fake.state().fail_writes = false;

    let text = ctx.metrics.encode();
    println!("/metrics after the scenario:\n{text}");
    assert!(text.contains("omero_operator_reconciles_total{result=\"error\"} 1\n"), "{text}");
    assert!(text.contains(
        "omero_operator_drains_started_total{namespace=\"omero\",omerocluster=\"omero\",reason=\"Requested\"} 1\n"
    ));
    assert!(text.contains(
        "omero_operator_node_phase{namespace=\"omero\",omerocluster=\"omero\",node=\"ro-1\",phase=\"Drained\"} 1\n"
    ));
    assert!(
        text.contains(
            "omero_operator_session_probe_failures_total{namespace=\"omero\",omerocluster=\"omero\",node=\"ro-1\"}"
        ),
        "{text}"
    );
    assert!(text.contains("omero_operator_leader 1\n"));
    assert!(
        text.contains("omero_operator_pool_sessions{namespace=\"omero\",omerocluster=\"omero\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "omero_operator_pool_nodes{namespace=\"omero\",omerocluster=\"omero\",state=\"serving\"} 1\n"
        ),
        "{text}"
    );

    assert!(!text.contains("drain_deadline_timestamp_seconds{"), "no deadline once drained: {text}");
    assert!(text.contains(
        "omero_operator_cluster_condition{namespace=\"omero\",omerocluster=\"omero\",condition=\"Ready\",status=\"true\"} 1\n"
    ), "{text}");
    let produced: BTreeSet<_> = samples(&text).union(&samples(&while_draining)).cloned().collect();
    // The API requests are counted by the real client's layer, which the port double has not:
    // tests/api_client.rs counts them through a real HTTP/2 client.
    let declared: BTreeSet<(String, Vec<String>)> = METRICS
        .iter()
        .filter(|(name, _)| *name != "omero_operator_api_requests_total")
        .map(|(name, labels)| (name.to_string(), labels.iter().map(|l| l.to_string()).collect()))
        .collect();
    let missing: Vec<_> = declared.difference(&produced).collect();
    let undeclared: Vec<_> = produced.difference(&declared).collect();
    assert!(missing.is_empty(), "declared but not produced by the scenario: {missing:?}\n{text}");
    assert!(undeclared.is_empty(), "produced but not declared in metrics::METRICS: {undeclared:?}");
}

#[test]
fn the_readme_lists_every_metric_with_its_labels() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n### Metrics and health\n")
        .nth(1)
        .expect("README has a '### Metrics and health' section");
    let section = section.split("\n#").next().unwrap();
    let listed: BTreeSet<(String, Vec<String>)> = section
        .lines()
        .filter(|l| l.starts_with("| `omero_operator_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_string();
            let labels = cells[2]
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty() && s != "none")
                .collect();
            (name, labels)
        })
        .collect();
    let declared: BTreeSet<(String, Vec<String>)> = METRICS
        .iter()
        .map(|(name, labels)| (name.to_string(), labels.iter().map(|l| l.to_string()).collect()))
        .collect();
    assert_eq!(listed, declared, "README's metrics table and metrics::METRICS differ");
}

#[tokio::test]
async fn health_is_the_process_readiness_the_caches_and_metrics_the_registry() {
    let endpoints = Endpoints::new(Arc::default());
    endpoints.metrics.reconciled(omero_operator::metrics::ReconcileResult::Success, Duration::from_millis(3));
    let get = |path: &'static str| {
        let app = router(endpoints.clone());
        async move {
            let response = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            let content_type =
                response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, content_type, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    let (status, _, body) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready before the caches are filled");
    assert!(body.contains("watch caches"));
    endpoints.set_ready();
    assert_eq!(get("/readyz").await.0, StatusCode::OK, "ready whether or not this replica leads");
    let (status, content_type, body) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.unwrap().starts_with("application/openmetrics-text"));
    assert!(body.contains("# TYPE omero_operator_reconciles counter"), "{body}");
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(get("/nothing").await.0, StatusCode::NOT_FOUND);
}
