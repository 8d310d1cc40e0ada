//! Many clusters on one operator, through the port double: N OmeroClusters of M nodes are
//! reconciled the way the controller does it (at most `--concurrency` at once), their pods come
//! up, and they are reconciled again until steady. Prints the time until all are reconciled,
//! the port calls per cluster by kind, and the process's peak memory.
//!
//!     cargo bench --bench scale                       # 300 clusters of 3 nodes
//!     OMERO_BENCH_CLUSTERS=100 OMERO_BENCH_NODES=5 cargo bench --bench scale
//!
//! Only the port double is measured here. The operator's process against an API server (its
//! requests by verb, LISTs, connections, memory), played or real, is `operator_process`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use futures::StreamExt;
use support::{FakeCluster, FakeOmero, Write, cluster_from_yaml, context};

/// Reconciles at once, as `omero-operator run --concurrency` (default 4).
const CONCURRENCY: usize = 4;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn yaml(name: &str, nodes: usize) -> String {
    let mut yaml = format!(
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {{name: {name}}}\nspec:\n  \
         image: openmicroscopy/omero-server:5.6\n  database: {{host: db, passwordSecret: {{name: omero-db, key: password}}}}\n  \
         repository: {{claimName: omero-data}}\n  nodes:\n  - name: rw\n"
    );
    for i in 1..nodes {
        yaml.push_str(&format!(
            "  - name: ro-{i}\n    readOnly: {{db: true, repo: true}}\n    sessionProbe: {{type: None}}\n"
        ));
    }
    yaml
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 =
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn reconciled(fake: &FakeCluster, nodes: usize) -> bool {
    let cluster = fake.cluster();
    let state = fake.state();
    cluster.status.as_ref().is_some_and(|s| s.observed_generation == cluster.metadata.generation)
        && state.deployments.len() == nodes
        && state.services.len() == nodes + 1
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let clusters = env("OMERO_BENCH_CLUSTERS", 300);
    let nodes = env("OMERO_BENCH_NODES", 3);
    let world: Vec<(FakeCluster, Arc<support::Ctx>)> = (0..clusters)
        .map(|i| {
            let mut cluster = cluster_from_yaml(&yaml(&format!("c{i}"), nodes));
            cluster.metadata.uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
            let fake = FakeCluster::new(cluster);
            fake.state().secrets.insert(("omero-db".into(), "password".into()), "pw".into());
            let ctx = context(&fake, &FakeOmero::default());
            (fake, ctx)
        })
        .collect();

    let pass = |world: &[(FakeCluster, Arc<support::Ctx>)]| {
        let jobs: Vec<_> = world.iter().map(|(fake, ctx)| (fake.clone(), ctx.clone())).collect();
        async move {
            futures::stream::iter(jobs)
                .for_each_concurrent(CONCURRENCY, |(fake, ctx)| async move {
                    support::reconcile_once(&fake, &ctx).await.expect("reconciles");
                })
                .await;
        }
    };

    let start = Instant::now();
    pass(&world).await;
    let created = start.elapsed();
    assert!(world.iter().all(|(fake, _)| reconciled(fake, nodes)), "every cluster reconciled");

    // The pods come up; the next passes label them and record the first session count of each
    // serving node (`sessionProbe.servingInterval`); then a pass has nothing to do.
    for (fake, _) in &world {
        fake.set_pod("rw", "127.0.0.1", true);
        for i in 1..nodes {
            fake.set_pod(&format!("ro-{i}"), "127.0.0.1", true);
        }
    }
    let total_writes = |world: &[(FakeCluster, Arc<support::Ctx>)]| -> usize {
        world.iter().map(|(fake, _)| fake.writes().len()).sum()
    };
    let mut settling = 0;
    loop {
        let before = total_writes(&world);
        pass(&world).await;
        settling += 1;
        if total_writes(&world) == before || settling == 5 {
            break;
        }
    }
    let before_steady = total_writes(&world);
    let steady_start = Instant::now();
    pass(&world).await;
    let steady = steady_start.elapsed();
    let after_steady = total_writes(&world);

    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut calls = 0;
    for (fake, _) in &world {
        calls += fake.state().calls;
        for write in fake.writes() {
            let kind = match write {
                Write::ApplyDeployment(_) => "apply Deployment",
                Write::ApplyService(_) => "apply Service",
                Write::ApplyConfigMap(_) => "apply ConfigMap",
                Write::ApplyBudget(_) => "apply PodDisruptionBudget",
                Write::DeletePod(_) => "delete pod",
                Write::Delete(..) => "delete",
                Write::Label { .. } => "label pod",
                Write::Status => "status",
                Write::Event(_) => "event",
            };
            *by_kind.entry(kind).or_default() += 1;
        }
    }
    let writes: usize = by_kind.values().sum();
    println!("scale (port double): {clusters} clusters x {nodes} nodes, {CONCURRENCY} reconciles at once");
    println!("  all reconciled (objects created, status written): {:.1} ms", created.as_secs_f64() * 1e3);
    println!(
        "  a steady pass over all clusters: {:.1} ms, {} writes",
        steady.as_secs_f64() * 1e3,
        after_steady - before_steady
    );
    println!("  passes after the pods came up until one wrote nothing: {settling}");
    println!(
        "  port calls per cluster over all passes: {:.1} ({:.1} reads, {:.1} writes)",
        calls as f64 / clusters as f64,
        (calls - writes) as f64 / clusters as f64,
        writes as f64 / clusters as f64
    );
    for (kind, n) in &by_kind {
        println!("    {kind}: {:.1} per cluster", *n as f64 / clusters as f64);
    }
    if let Some(peak) = peak_rss_mib() {
        println!("  peak resident memory of the benchmark process: {peak:.1} MiB");
    }
}
