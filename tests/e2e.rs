//! End to end on a real cluster: runs the built `omero-operator` against the API server of
//! `OMERO_OPERATOR_E2E_KUBECONFIG` in a fresh namespace, and checks what it creates, how it
//! reports, what the API server refuses (CEL), node removal, drains and garbage collection.
//! Skipped, with a message, when the variable is unset (as in CI, which has no cluster).
//!
//! OMERO itself needs a database to become ready; these checks hold whether or not the pods
//! become ready (`OMERO_OPERATOR_E2E_IMAGE` picks the image, default the official one).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Node, Pod, Secret, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use omero_operator::{
    api::{NodePhase, OmeroCluster},
    request::{DRAIN_ANNOTATION, RESTART_ANNOTATION},
};
use serde_json::json;

const KUBECONFIG: &str = "OMERO_OPERATOR_E2E_KUBECONFIG";

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn client(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("the e2e kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Polls `check` every second until it returns Some, or fails after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..secs {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// The CRD applied, a fresh namespace named after `purpose`, and the built operator watching it.
async fn start(client: &Client, path: &str, purpose: &str) -> (String, Operator) {
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("omeroclusters.omero.openmicroscopy.org", &ssa, &Patch::Apply(omero_operator::api::crd()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ns = format!("omero-e2e-{purpose}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_omero-operator"))
            .args(["run", "--namespace", &ns, "--log-level", "omero_operator=debug"])
            .env("KUBECONFIG", path)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the operator starts"),
    );
    (ns, operator)
}

fn cluster_manifest(ns: &str, image: &str, nodes: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1",
        "kind": "OmeroCluster",
        "metadata": {"name": "omero", "namespace": ns},
        "spec": {
            "image": image,
            "database": {"host": "omero-db", "passwordSecret": {"name": "omero-db", "key": "password"}},
            "repository": {"claimName": "omero-data"},
            "drain": {"timeout": "2m"},
            "nodes": nodes
        }
    })
}

/// An object another application owns under a node's name survives the OmeroCluster's creation
/// and deletion unchanged, and the cluster says who holds it.
#[tokio::test]
async fn a_foreign_service_survives_the_cluster() {
    let Ok(path) = std::env::var(KUBECONFIG) else {
        eprintln!("skipped: set {KUBECONFIG} to run the end-to-end suite");
        return;
    };
    let client = client(&path).await;
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let (ns, _operator) = start(&client, &path, "foreign").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let foreign = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-main", "labels": {"app": "web"}},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);
    let mut manifest = cluster_manifest(&ns, "openmicroscopy/omero-server:5.6", json!([{"name": "main"}]));
    manifest["metadata"]["name"] = json!("web");
    clusters.patch("web", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let problem = eventually(60, "the foreign Service reported", || async {
        let status = clusters.get("web").await.ok()?.status?;
        status.object_problems.into_iter().find(|p| p.name == "web-main")
    })
    .await;
    assert!(problem.message.contains("created outside the operator"), "{}", problem.message);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("web-main").await.unwrap().is_some(), "the free name is used");
    let unchanged = |s: &Service| {
        assert_eq!(s.resource_version(), foreign.resource_version(), "never written");
        assert!(s.owner_references().is_empty(), "never adopted");
    };
    unchanged(&services.get("web-main").await.unwrap());

    clusters.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(120, "the cluster's Deployment garbage-collected", || async {
        deployments.get_opt("web-main").await.ok()?.is_none().then_some(())
    })
    .await;
    unchanged(&services.get("web-main").await.unwrap());
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn operator_on_a_real_cluster() {
    let Ok(path) = std::env::var(KUBECONFIG) else {
        eprintln!(
            "skipped: set {KUBECONFIG} to a kubeconfig of a disposable cluster to run the end-to-end suite"
        );
        return;
    };
    let image = std::env::var("OMERO_OPERATOR_E2E_IMAGE")
        .unwrap_or_else(|_| "openmicroscopy/omero-server:5.6".into());
    let client = client(&path).await;
    let ssa = PatchParams::apply("omero-operator-e2e").force();

    // The CRD, as `omero-operator crd` prints it, and the operator.
    let (ns, _operator) = start(&client, &path, "core").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "omero-db"}, "stringData": {"password": "e2e"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);
    let nodes = json!([
        {"name": "rw"},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": {"type": "none"}}
    ]);
    clusters.patch("omero", &ssa, &Patch::Apply(cluster_manifest(&ns, &image, nodes.clone()))).await.unwrap();

    // Objects, labelled and owned.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let owned = ListParams::default().labels("omero.openmicroscopy.org/cluster=omero");
    eventually(60, "2 Deployments and 3 Services", || async {
        let d = deployments.list(&owned).await.ok()?.items.len();
        let s = services.list(&owned).await.ok()?.items.len();
        (d == 2 && s == 3).then_some(())
    })
    .await;
    let rw = deployments.get("omero-rw").await.unwrap();
    assert_eq!(rw.owner_references()[0].kind, "OmeroCluster");
    assert_eq!(rw.spec.as_ref().unwrap().replicas, Some(1));
    assert!(rw.managed_fields().iter().any(|m| m.manager.as_deref() == Some("omero-operator")));
    let entry = services.get("omero").await.unwrap();
    assert_eq!(entry.spec.unwrap().selector.unwrap()["omero.openmicroscopy.org/routable"], "true");

    // Status.
    let status = eventually(60, "status with 2 nodes", || async {
        clusters.get("omero").await.ok()?.status.filter(|s| s.node_count == 2)
    })
    .await;
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready"));

    // The API server itself refuses a second read-write node (CEL).
    let two_rw = json!([{"name": "rw"}, {"name": "rw-2"}]);
    let refused = clusters.patch("omero", &ssa, &Patch::Apply(cluster_manifest(&ns, &image, two_rw))).await;
    let message = refused.expect_err("two read-write nodes are refused").to_string();
    assert!(message.contains("at most one read-write node"), "{message}");

    // A drain of a node whose pod is not ready (no database here) completes at once; a ready
    // one is drained by sessions (type none: at the 2m deadline).
    clusters
        .patch(
            "omero",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {DRAIN_ANNOTATION: "ro-1"}}})),
        )
        .await
        .unwrap();
    eventually(200, "ro-1 Drained or Draining", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        s.node("ro-1").filter(|n| matches!(n.phase, NodePhase::Drained | NodePhase::Draining)).map(drop)
    })
    .await;

    // Removing a node removes its objects.
    let only_rw = json!([{"name": "rw"}]);
    clusters.patch("omero", &ssa, &Patch::Apply(cluster_manifest(&ns, &image, only_rw))).await.unwrap();
    eventually(60, "omero-ro-1 gone", || async {
        let gone = deployments.get_opt("omero-ro-1").await.ok()?.is_none()
            && services.get_opt("omero-ro-1").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;

    // Deleting the cluster lets the garbage collector take its children.
    clusters.delete("omero", &DeleteParams::default()).await.unwrap();
    eventually(120, "children garbage-collected", || async {
        deployments.list(&owned).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}

/// The kubelet and scheduler a bare API server lacks: binds every pod of `ns` to `node`, marks
/// it Running and Ready with a loopback IP (the operator may connect to a pod IP: never a
/// private-range one), and finishes the deletion of terminating pods. Runs until aborted.
async fn play_kubelet(client: Client, ns: String, node: String) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut next_ip = 1u32;
    loop {
        for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
                    .await;
                continue;
            }
            if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                                     "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                let _: Result<serde_json::Value, _> =
                    pods.create_subresource("binding", &name, &PostParams::default(), &binding).await;
                continue;
            }
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if !ready {
                next_ip += 1;
                let ip = format!("127.0.{}.{}", next_ip / 250, next_ip % 250 + 1);
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let status = json!({"status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now,
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                                   {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                                   {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": [{"name": "omero-server", "image": "x", "imageID": "x", "ready": true,
                                           "started": true, "restartCount": 0, "containerID": format!("containerd://{name}"),
                                           "state": {"running": {"startedAt": now}}}]}});
                let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a rollout is done, from the cluster and its Deployments.
type RolledOut = dyn Fn(&OmeroCluster, &[Deployment]) -> bool + Send + Sync;

/// A rolling restart and an image change on a real API server: node by node, read-only first,
/// each node's pod replaced exactly once, never fewer than N-1 routable and ready pods.
#[tokio::test]
async fn rolling_restart_and_image_change_on_a_real_cluster() {
    let Ok(path) = std::env::var(KUBECONFIG) else {
        eprintln!("skipped: set {KUBECONFIG} to run the end-to-end suite");
        return;
    };
    let client = client(&path).await;
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let (ns, _operator) = start(&client, &path, "rollout").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let node_name = format!("omero-e2e-{}", std::process::id());
    let k8s_nodes: Api<Node> = Api::all(client.clone());
    k8s_nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node_name}})).unwrap(),
        )
        .await
        .unwrap();
    let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.clone(), node_name.clone()));
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);
    // No database here: every probe is `none`, so each drain ends at its (short) deadline.
    let none = json!({"type": "none"});
    let nodes = json!([
        {"name": "rw", "sessionProbe": none},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": none},
        {"name": "ro-2", "readOnly": {"db": true, "repo": true}, "sessionProbe": none}
    ]);
    let mut manifest = cluster_manifest(&ns, "openmicroscopy/omero-server:5.6", nodes);
    manifest["spec"]["drain"] = json!({"timeout": "10s"});
    clusters.patch("omero", &ssa, &Patch::Apply(manifest.clone())).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let serving_pods = || async {
        pods.list(&ListParams::default().labels("omero.openmicroscopy.org/routable=true"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    eventually(120, "3 nodes serving", || async { (serving_pods().await == 3).then_some(()) }).await;

    // Rolls the cluster towards what `done` says, watching it every half second.
    let roll = |what: &'static str, done: Box<RolledOut>| {
        let (clusters, pods, deployments) =
            (clusters.clone(), pods.clone(), Api::<Deployment>::namespaced(client.clone(), &ns));
        async move {
            let mut pods_per_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut fewest = usize::MAX;
            for _ in 0..600 {
                for pod in pods.list(&ListParams::default()).await.unwrap().items {
                    if let Some(node) = pod.labels().get("omero.openmicroscopy.org/node") {
                        pods_per_node.entry(node.clone()).or_default().insert(pod.uid().unwrap_or_default());
                    }
                }
                let serving = serving_pods().await;
                fewest = fewest.min(serving);
                let cluster = clusters.get("omero").await.unwrap();
                let ds = deployments.list(&ListParams::default()).await.unwrap().items;
                if done(&cluster, &ds) && serving == 3 {
                    return (pods_per_node, fewest);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!("{what}: not done in 300 s; status: {:#?}", clusters.get("omero").await.unwrap().status);
        }
    };
    let up_to_date = |c: &OmeroCluster| {
        c.status.as_ref().is_some_and(|s| {
            s.observed_generation == c.metadata.generation
                && s.nodes.len() == 3
                && s.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.up_to_date)
                && s.rollout.as_ref().is_some_and(|r| r.pending.is_empty())
        })
    };

    clusters
        .patch(
            "omero",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {RESTART_ANNOTATION: "e2e-1"}}})),
        )
        .await
        .unwrap();
    let (replaced, fewest) = roll(
        "rolling restart",
        Box::new(move |c, ds| {
            up_to_date(c)
                && ds.len() == 3
                && ds.iter().all(|d| omero_operator::render::restart_token_of(d) == Some("e2e-1"))
        }),
    )
    .await;
    assert!(fewest >= 2, "never fewer than 2 of 3 serving: {fewest}");
    for (node, uids) in &replaced {
        assert_eq!(uids.len(), 2, "{node}: replaced exactly once: {uids:?}");
    }

    manifest["spec"]["image"] = json!("openmicroscopy/omero-server:5.6.17");
    clusters.patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let (replaced, fewest) = roll(
        "image change",
        Box::new(move |c, ds| {
            up_to_date(c)
                && ds.iter().all(|d| {
                    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.as_deref()
                        == Some("openmicroscopy/omero-server:5.6.17")
                })
        }),
    )
    .await;
    assert!(fewest >= 2, "never fewer than 2 of 3 serving: {fewest}");
    assert!(replaced.values().all(|uids| uids.len() == 2), "{replaced:?}");

    kubelet.abort();
    clusters.delete("omero", &DeleteParams::default()).await.unwrap();
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    k8s_nodes.delete(&node_name, &DeleteParams::default()).await.unwrap();
}
