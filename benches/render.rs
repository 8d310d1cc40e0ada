//! Time of one `render` of a 50-node cluster (1 read-write + 49 read-only), the largest
//! realistic shape, and of reading one of its Deployments back from the watch cache's form
//! (`controller::cache`): `cargo bench --bench render`. Plain `Instant`, no harness.

use std::{fmt::Write, hint::black_box, time::Instant};

use omero_operator::{api::OmeroCluster, render::render};

const NODES: usize = 50;
const WARMUP: usize = 50;
const RUNS: usize = 2_000;

fn cluster() -> OmeroCluster {
    let mut yaml = String::from(
        r#"apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: bench, namespace: imaging, uid: 0a1b2c3d-0000-4000-8000-000000000001}
spec:
  image: openmicroscopy/omero-server:5.6.11
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
    readOnly: {user: reader, passwordSecret: {name: reader-db, key: password}}
  repository: {claimName: omero-repo, memoCacheClaimName: omero-memo}
  sessions: {idleTimeout: 30m, maxLifetime: 8h}
  config:
    omero.jvmcfg.percent.blitz: "50"
    omero.policy.binary_access: "-read,-write,-image,-plate"
    omero.search.batch: "100"
  service: {type: LoadBalancer, annotations: {example.com/owner: imaging}}
  nodes:
    - name: rw
      resources: {requests: {cpu: "4", memory: 16Gi}, limits: {memory: 16Gi}}
"#,
    );
    for i in 1..NODES {
        write!(
            yaml,
            "    - name: ro-{i}\n      readOnly: {{db: true, repo: true}}\n      \
             sessionProbe: {{type: Metrics, port: 9449, exporterUser: monitor}}\n      config: {{omero.jvmcfg.percent.blitz: \"60\"}}\n"
        )
        .unwrap();
    }
    let cluster: OmeroCluster = serde_saphyr::from_str(&yaml).expect("bench cluster parses");
    omero_operator::api::validate(&cluster).expect("bench cluster is valid");
    cluster
}

fn main() {
    let cluster = cluster();
    for _ in 0..WARMUP {
        black_box(render(black_box(&cluster)));
    }
    let start = Instant::now();
    let mut objects = 0;
    for _ in 0..RUNS {
        let desired = render(black_box(&cluster));
        objects = desired.deployments.len() + desired.services.len();
        black_box(desired);
    }
    let mean = start.elapsed() / RUNS as u32;
    println!(
        "render: {NODES} nodes, {objects} objects per render, mean {:.1} us per render ({:.2} us per object) over {RUNS} runs",
        mean.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6 / objects as f64
    );

    // What a reconcile pays for the caches keeping text: one decode per cached object it reads.
    use omero_operator::controller::cache::Cached;
    let deployment = render(&cluster).deployments.swap_remove(1);
    let json = serde_json::to_string(&deployment).unwrap();
    let cached: Cached<k8s_openapi::api::apps::v1::Deployment> = serde_json::from_str(&json).unwrap();
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(black_box(&cached).object().unwrap());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "cached Deployment ({} bytes of JSON) read back: median {:.1} us, p99 {:.1} us over {RUNS} reads",
        json.len(),
        times[RUNS / 2],
        times[RUNS * 99 / 100]
    );
}
