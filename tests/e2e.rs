//! End to end on a real cluster: runs the built `omero-operator` against the API server of
//! `OMERO_OPERATOR_E2E_KUBECONFIG` in a fresh namespace, and checks what it creates, how it
//! reports, what the API server refuses (CEL), node removal, drains and garbage collection.
//! Skipped, with a message, when the variable is unset (as in CI, which has no cluster).
//!
//! Each test's namespace enforces the `restricted` Pod Security Standard (no `FailedCreate`
//! Event may follow), and the operator runs as the chart's ServiceAccount with the chart's
//! RBAC for that namespace (rendered by `bin/helm`), with no `forbidden` answer in its log.
//!
//! OMERO itself needs a database to become ready; these checks hold whether or not the pods
//! become ready (`OMERO_OPERATOR_E2E_IMAGE` picks the image, default the official one).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authentication::v1::TokenRequest,
        core::v1::{Namespace, Node, Pod, Secret, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
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

/// The operator process, its log, and what it ran as.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Operator {
    /// Stops the operator and checks that the API server refused it nothing: the chart's RBAC
    /// is all it needs (no `forbidden`, no 403, in its whole log).
    fn finish(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let refused: Vec<&str> =
            log.lines().filter(|l| l.to_lowercase().contains("forbidden") || l.contains(" 403")).collect();
        assert!(
            refused.is_empty(),
            "the operator was refused under the chart's RBAC:\n{}",
            refused.join("\n")
        );
    }
}

/// No pod of `ns` was refused by admission (Pod Security `restricted` is enforced there): no
/// `FailedCreate` Event from a ReplicaSet.
async fn assert_no_failed_create(client: &Client, ns: &str) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let failed: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| e.message.unwrap_or_default())
        .collect();
    assert!(failed.is_empty(), "pods refused in a restricted namespace: {failed:?}");
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

/// The CRD applied, a fresh namespace named after `purpose` (Pod Security `restricted`
/// enforced), the chart's ServiceAccount and RBAC for watching that namespace, and the built
/// operator running as that ServiceAccount (a token in a kubeconfig of its own).
async fn start(client: &Client, path: &str, purpose: &str) -> (String, Operator) {
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("omeroclusters.omero.openmicroscopy.org", &ssa, &Patch::Apply(omero_operator::api::crd()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ns = format!("omero-e2e-{purpose}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = json!({"pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest"});
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
    let account = install_chart_rbac(client, &ns).await;
    let kubeconfig = kubeconfig_of(client, path, &ns, &account).await;
    let log = std::env::temp_dir().join(format!("{ns}.log"));
    let operator = Operator {
        child: Command::new(env!("CARGO_BIN_EXE_omero-operator"))
            .args(["run", "--namespace", &ns, "--lease-namespace", &ns, "--apply-crd"])
            .args(["--http-address", "127.0.0.1:0", "--log-level", "omero_operator=debug,kube=info"])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::inherit())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the operator starts"),
        log,
    };
    (ns, operator)
}

/// Renders the chart's ServiceAccount and RBAC for watching `ns` (installed in `ns`) with the
/// repository's helm, applies them, and returns the ServiceAccount's name.
async fn install_chart_rbac(client: &Client, ns: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let helm = std::env::var_os("HELM").map_or_else(|| root.join("bin/helm"), PathBuf::from);
    assert!(helm.is_file(), "no helm at {}: run scripts/test.sh (it installs bin/helm)", helm.display());
    let out = Command::new(helm)
        .current_dir(root)
        .args(["template", ns, "charts/omero-operator", "--namespace", ns, "--kube-version", "1.28.0"])
        .args(["--set", &format!("watchNamespace={ns}")])
        .args(["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"])
        .output()
        .expect("helm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let mut account = None;
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let namespace = doc["metadata"]["namespace"].as_str().map(String::from);
        match doc["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
                api.patch(&name, &ssa, &Patch::Apply(doc)).await.unwrap();
                account = Some(name);
            }
            "Role" => {
                let api: Api<Role> = Api::namespaced(client.clone(), &namespace.unwrap());
                api.patch(&name, &ssa, &Patch::Apply(doc)).await.unwrap();
            }
            "RoleBinding" => {
                let api: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace.unwrap());
                api.patch(&name, &ssa, &Patch::Apply(doc)).await.unwrap();
            }
            "ClusterRole" => {
                Api::<ClusterRole>::all(client.clone()).patch(&name, &ssa, &Patch::Apply(doc)).await.unwrap();
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(client.clone())
                    .patch(&name, &ssa, &Patch::Apply(doc))
                    .await
                    .unwrap();
            }
            other => panic!("the chart's RBAC rendered a {other}"),
        }
    }
    account.expect("the chart renders a ServiceAccount")
}

/// A kubeconfig for the suite's cluster that authenticates as `account` (a one-hour token).
async fn kubeconfig_of(client: &Client, path: &str, ns: &str, account: &str) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap();
    let token = token.status.expect("a token").token;
    let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let context = admin["current-context"].as_str().expect("the e2e kubeconfig has a current context");
    let cluster_name = admin["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == context)
        .map(|c| c["context"]["cluster"].clone())
        .unwrap();
    let cluster =
        admin["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster_name).unwrap().clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster_name, "user": "operator", "namespace": ns}}],
    });
    let file = std::env::temp_dir().join(format!("{ns}.kubeconfig"));
    std::fs::write(&file, serde_saphyr::to_string(&config).unwrap()).unwrap();
    file
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
    let (ns, operator) = start(&client, &path, "foreign").await;
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
    assert_no_failed_create(&client, &ns).await;
    operator.finish();
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
    let (ns, operator) = start(&client, &path, "core").await;
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
    assert_no_failed_create(&client, &ns).await;
    operator.finish();
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

/// A Kubernetes Node the suite plays kubelet for, and a 3-node cluster on it whose probes are
/// all `none` (no database here: each drain ends at its 10 s deadline), applied.
async fn three_nodes_on_a_played_kubelet(
    client: &Client,
    ns: &str,
    purpose: &str,
) -> (String, tokio::task::JoinHandle<()>, serde_json::Value) {
    let node_name = format!("omero-e2e-{purpose}-{}", std::process::id());
    let k8s_nodes: Api<Node> = Api::all(client.clone());
    k8s_nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node_name}})).unwrap(),
        )
        .await
        .unwrap();
    let kubelet = tokio::spawn(play_kubelet(client.clone(), ns.to_string(), node_name.clone()));
    let none = json!({"type": "none"});
    let nodes = json!([
        {"name": "rw", "sessionProbe": none},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": none},
        {"name": "ro-2", "readOnly": {"db": true, "repo": true}, "sessionProbe": none}
    ]);
    let mut manifest = cluster_manifest(ns, "openmicroscopy/omero-server:5.6", nodes);
    manifest["spec"]["drain"] = json!({"timeout": "10s"});
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), ns);
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    clusters.patch("omero", &ssa, &Patch::Apply(manifest.clone())).await.unwrap();
    (node_name, kubelet, manifest)
}

/// Stops playing kubelet, checks no pod was refused, stops the operator, and deletes the
/// cluster, its namespace and the played Node.
async fn tear_down(
    client: &Client,
    ns: &str,
    operator: Operator,
    kubelet: tokio::task::JoinHandle<()>,
    node_name: &str,
) {
    kubelet.abort();
    assert_no_failed_create(client, ns).await;
    operator.finish();
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), ns);
    clusters.delete("omero", &DeleteParams::default()).await.unwrap();
    Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await.unwrap();
    Api::<Node>::all(client.clone()).delete(node_name, &DeleteParams::default()).await.unwrap();
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
    let (ns, operator) = start(&client, &path, "rollout").await;
    let (node_name, kubelet, mut manifest) = three_nodes_on_a_played_kubelet(&client, &ns, "rollout").await;
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);

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

    tear_down(&client, &ns, operator, kubelet, &node_name).await;
}

/// `kubectl omero` against a real API server, the suite playing kubelet: `status`, a drain
/// followed with `--wait` until it ends, and a restart of every node followed to its end.
#[tokio::test]
async fn kubectl_omero_on_a_real_cluster() {
    let Ok(path) = std::env::var(KUBECONFIG) else {
        eprintln!("skipped: set {KUBECONFIG} to run the end-to-end suite");
        return;
    };
    let client = client(&path).await;
    let (ns, operator) = start(&client, &path, "plugin").await;
    let (node_name, kubelet, _) = three_nodes_on_a_played_kubelet(&client, &ns, "plugin").await;
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);
    eventually(120, "3 nodes serving", || async {
        let c = clusters.get("omero").await.ok()?;
        (c.status?.serving_nodes == 3).then_some(())
    })
    .await;

    let plugin = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
            .args(["--kubeconfig", &path, "-n", &ns])
            .args(args)
            .output()
            .expect("kubectl-omero runs");
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        println!("$ kubectl omero {}\n{text}", args.join(" "));
        (text, output.status.code())
    };
    let (status, code) = plugin(&["status", "omero"]);
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains("ro-1  read-only"), "{status}");
    let (drain, code) = plugin(&["drain", "omero", "ro-1", "--wait", "--timeout", "120s"]);
    assert_eq!(code, Some(0), "{drain}");
    assert!(drain.contains("acknowledged by the operator") && drain.contains("drained ro-1 in"), "{drain}");
    let (undrain, code) = plugin(&["undrain", "omero", "ro-1"]);
    assert_eq!(code, Some(0), "{undrain}");
    let (restart, code) = plugin(&["restart", "omero", "--all", "--wait", "--timeout", "300s"]);
    assert_eq!(code, Some(0), "{restart}");
    assert!(restart.contains("rw, ro-1, ro-2 up to date in"), "{restart}");

    tear_down(&client, &ns, operator, kubelet, &node_name).await;
}

/// The per-node PodDisruptionBudget on a real API server: an eviction (what `kubectl drain`
/// sends) of a serving node's pod is refused, and allowed once the node is drained. The suite
/// plays kubelet (bound, Running, Ready): the API server ignores budgets for pods that are not
/// running, so without that this would prove nothing. The budget's status comes from the
/// cluster's disruption controller (kube-controller-manager, which the Deployments need too).
#[tokio::test]
async fn an_eviction_waits_for_the_drain_on_a_real_cluster() {
    let Ok(path) = std::env::var(KUBECONFIG) else {
        eprintln!("skipped: set {KUBECONFIG} to run the end-to-end suite");
        return;
    };
    let client = client(&path).await;
    let (ns, operator) = start(&client, &path, "budget").await;
    let (node_name, kubelet, _) = three_nodes_on_a_played_kubelet(&client, &ns, "budget").await;
    let clusters: Api<OmeroCluster> = Api::namespaced(client.clone(), &ns);

    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let serving = |node: &'static str| {
        let clusters = clusters.clone();
        async move {
            let cluster = clusters.get("omero").await.ok()?;
            let status = cluster.status?;
            let n = status.node(node)?;
            (n.phase == NodePhase::Serving && n.ready && n.routable).then(|| n.pod.clone()).flatten()
        }
    };
    let pod = eventually(120, "ro-1 serving", || serving("ro-1")).await;
    eventually(60, "ro-1's budget allows no disruption (disruption controller)", || async {
        let budget = budgets.get("omero-ro-1").await.ok()?;
        let spec = budget.spec?;
        let status = budget.status?;
        (spec.max_unavailable == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
            && spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow")
            && status.observed_generation == budget.metadata.generation
            && status.current_healthy == 1
            && status.disruptions_allowed == 0)
            .then_some(())
    })
    .await;
    match pods.evict(&pod, &kube::api::EvictParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 429, "refused by the budget: {e:?}"),
        other => panic!("the eviction of a serving node's pod went through: {other:?}"),
    }
    assert!(pods.get(&pod).await.unwrap().metadata.deletion_timestamp.is_none(), "still there");

    // Drained (on request; the probe is `none`, so at its 10 s deadline): the budget opens and
    // the same eviction goes through.
    clusters
        .patch(
            "omero",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {DRAIN_ANNOTATION: "ro-1"}}})),
        )
        .await
        .unwrap();
    eventually(90, "the eviction allowed once ro-1 is drained", || async {
        pods.evict(&pod, &kube::api::EvictParams::default()).await.ok().map(drop)
    })
    .await;
    let cluster = clusters.get("omero").await.unwrap();
    let ro1 = cluster.status.as_ref().and_then(|s| s.node("ro-1")).cloned().unwrap();
    assert!(matches!(ro1.phase, NodePhase::Drained | NodePhase::Pending | NodePhase::Starting), "{ro1:?}");
    // The other node's budget stayed closed throughout.
    let rw = budgets.get("omero-rw").await.unwrap();
    assert_eq!(
        rw.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );

    tear_down(&client, &ns, operator, kubelet, &node_name).await;
}
