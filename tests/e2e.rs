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

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, CustomResourceExt, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use omero_operator::{
    api::{NodePhase, OmeroCluster},
    drain::DRAIN_ANNOTATION,
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
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("omeroclusters.omero.openmicroscopy.org", &ssa, &Patch::Apply(OmeroCluster::crd()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ns = format!("omero-e2e-foreign-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
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
    let _operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_omero-operator"))
            .args(["run", "--namespace", &ns])
            .env("KUBECONFIG", &path)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the operator starts"),
    );
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

    // The CRD, as `omero-operator crd` prints it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("omeroclusters.omero.openmicroscopy.org", &ssa, &Patch::Apply(OmeroCluster::crd()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ns = format!("omero-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();

    let _operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_omero-operator"))
            .args(["run", "--namespace", &ns, "--log-level", "omero_operator=debug"])
            .env("KUBECONFIG", &path)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the operator starts"),
    );

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
