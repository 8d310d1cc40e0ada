//! End to end on a real API server: runs the built `omero-operator` against the API server of
//! `OMERO_OPERATOR_E2E_KUBECONFIG` (a cluster admin's) in a fresh namespace, and checks what it
//! creates, how it reports, what the API server refuses (CEL), drains, rollouts, removals,
//! maintenance moves, garbage collection, and what the chart lets users do.
//! Skipped, with a message, when the variable is unset (as in CI, which has no API server).
//! `scripts/e2e.sh KUBECONFIG` runs every test one after another with its time, then checks
//! that nothing was left behind.
//!
//! Each test's namespace enforces the `restricted` Pod Security Standard (no `FailedCreate`
//! Event may follow), and the operator runs as the chart's ServiceAccount with exactly the
//! chart's RBAC (rendered by `bin/helm`) for a one-namespace or a cluster-wide install, with no
//! `forbidden` answer in its whole log.
//!
//! There may be no kubelet or scheduler (`shared/k8s-rig` has none): the suite plays both on
//! Nodes it creates. It binds each pod to an uncordoned one, marks it Running and Ready with
//! a loopback IP (the operator connects to pod IPs: never a private-range address), serves
//! the session counter's answer on that IP with the count the test sets, and finishes the
//! deletion of terminating pods. OMERO itself never runs (`OMERO_OPERATOR_E2E_IMAGE` picks the
//! image written into the pods, default the official one).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authentication::v1::TokenRequest,
        core::v1::{Namespace, Node, Pod, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
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
    api::{NodePhase, OmeroCluster, conditions},
    request::{DRAIN_ANNOTATION, RESTART_ANNOTATION},
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};

const KUBECONFIG: &str = "OMERO_OPERATOR_E2E_KUBECONFIG";
/// Every name the suite gives a namespace, a played Node or a user starts with this.
const PREFIX: &str = "omero-e2e-";
const CLUSTER_LABEL: &str = "omero.openmicroscopy.org/cluster";
const NODE_LABEL: &str = "omero.openmicroscopy.org/node";
const ROUTABLE_LABEL: &str = "omero.openmicroscopy.org/routable";

/// A cluster-wide operator reconciles every namespace's clusters, so a test that runs one
/// holds this exclusively; the others share it.
static WHOLE_CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The kubeconfig of the suite's API server, or None (skipped) with a message.
fn kubeconfig() -> Option<String> {
    let path = std::env::var(KUBECONFIG).ok();
    if path.is_none() {
        eprintln!(
            "skipped: set {KUBECONFIG} to a kubeconfig of a disposable API server to run the e2e suite"
        );
    }
    path
}

async fn client(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("the e2e kubeconfig reads");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    // The suite checks the API server's own answers: a 429 (an eviction a budget refuses) is
    // one, not a reason to retry for minutes.
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// Polls `check` every half second until it returns Some, or fails after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// How the chart installs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Install {
    /// `watchNamespace` set to the test's namespace: a Role there.
    OneNamespace,
    /// Every namespace: a ClusterRole, and the Node watch (`maintenance.watchNodes` defaults on).
    ClusterWide,
}

/// The operator process and its log.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// The port the operator serves `/metrics` and its routes on, as its log says (it binds
    /// `127.0.0.1:0`).
    async fn http_port(&self) -> u16 {
        eventually(60, "the operator's HTTP address in its log", || async {
            let text = std::fs::read_to_string(&self.log).ok()?;
            let line = text.lines().find(|l| l.contains("serving /metrics"))?;
            let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
            line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u16>().ok()
        })
        .await
    }

    /// The operator's `/metrics` text, or none when it does not answer.
    async fn metrics(&self, port: u16) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// Stops the operator and returns its log.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Cluster-scoped objects a test made, deleted when it ends, whatever the outcome.
#[derive(Clone, Debug, Default)]
struct ClusterScoped {
    cluster_roles: Vec<String>,
    cluster_role_bindings: Vec<String>,
    nodes: Vec<String>,
}

/// One test's world: its namespace, the chart's operator running in it, the kubelet the suite
/// plays, and what it made outside the namespace. Dropped without [`Suite::finish`] (a failed
/// test), it prints the operator's log and still deletes everything it made.
struct Suite {
    client: Client,
    path: String,
    ns: String,
    install: Install,
    operator: Option<Operator>,
    kubelet: Option<Kubelet>,
    made: Arc<Mutex<ClusterScoped>>,
    finished: bool,
    _lock: Box<dyn Send + Sync>,
}

impl Drop for Suite {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(mut operator) = self.operator.take() {
            let log = operator.stop();
            eprintln!("--- operator log ({}) ---\n{log}", operator.log.display());
        }
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.task.abort();
        }
        // A panicking test's runtime cannot be awaited on here: clean up from another thread.
        let (path, ns, made) = (self.path.clone(), self.ns.clone(), self.made.lock().unwrap().clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move { clean_up(&client(&path).await, &ns, &made).await });
        })
        .join();
    }
}

impl Suite {
    /// The CRD applied (as `helm install` does from `crds/`), a fresh namespace named after
    /// `purpose` (Pod Security `restricted` enforced), the chart's ServiceAccount and RBAC for
    /// `install`, and the built operator running as that ServiceAccount (a token in a
    /// kubeconfig of its own).
    async fn start(purpose: &str, install: Install) -> Option<Suite> {
        let path = kubeconfig()?;
        let lock: Box<dyn Send + Sync> = match install {
            Install::OneNamespace => Box::new(WHOLE_CLUSTER.read().await),
            Install::ClusterWide => Box::new(WHOLE_CLUSTER.write().await),
        };
        let client = client(&path).await;
        let ssa = PatchParams::apply("omero-operator-e2e").force();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(omero_operator::rbac::CRD_NAME, &ssa, &Patch::Apply(omero_operator::api::crd()))
            .await
            .unwrap();
        eventually(30, "the CRD established", || async {
            let crd = crds.get(omero_operator::rbac::CRD_NAME).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
        let ns = format!("{PREFIX}{purpose}-{}", std::process::id());
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
        let mut suite = Suite {
            client: client.clone(),
            path: path.clone(),
            ns: ns.clone(),
            install,
            operator: None,
            kubelet: None,
            made: Arc::default(),
            finished: false,
            _lock: lock,
        };
        let account = suite.install_chart_rbac().await;
        let kubeconfig = kubeconfig_of(&client, &path, &ns, &account).await;
        let log = std::env::temp_dir().join(format!("{ns}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_omero-operator"));
        command.args(["run", "--lease-namespace", &ns, "--apply-crd"]);
        match install {
            Install::OneNamespace => command.args(["--namespace", &ns]),
            Install::ClusterWide => command.arg("--watch-nodes"),
        };
        command
            .args(["--http-address", "127.0.0.1:0", "--log-level", "omero_operator=debug,kube=info"])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::inherit())
            .stderr(std::fs::File::create(&log).unwrap());
        suite.operator = Some(Operator { child: command.spawn().expect("the operator starts"), log });
        Some(suite)
    }

    fn clusters(&self) -> Api<OmeroCluster> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Renders the chart for this install with the repository's helm (release named after the
    /// namespace, installed in it) and applies what `show` names of it (as a cluster admin);
    /// remembers every cluster-scoped object for the end. Returns the rendered documents.
    async fn apply_chart(&self, set: &[String], show: &[&str]) -> Vec<serde_json::Value> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let helm = std::env::var_os("HELM").map_or_else(|| root.join("bin/helm"), PathBuf::from);
        assert!(helm.is_file(), "no helm at {}: run scripts/test.sh (it installs bin/helm)", helm.display());
        let mut command = Command::new(helm);
        command
            .current_dir(root)
            .args(["template", &self.ns, "charts/omero-operator", "--namespace", &self.ns])
            .args(["--kube-version", "1.28.0"]);
        let watch = match self.install {
            Install::OneNamespace => self.ns.as_str(),
            Install::ClusterWide => "",
        };
        command.args(["--set", &format!("watchNamespace={watch}")]);
        for value in set {
            command.args(["--set", value]);
        }
        for template in show {
            command.args(["--show-only", &format!("templates/{template}")]);
        }
        let out = command.output().expect("helm runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let docs: Vec<serde_json::Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        let ssa = PatchParams::apply("omero-operator-e2e").force();
        let client = self.client.clone();
        for doc in &docs {
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or(&self.ns).to_string();
            let apply = Patch::Apply(doc.clone());
            match doc["kind"].as_str().unwrap() {
                "ServiceAccount" => {
                    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
                        .patch(&name, &ssa, &apply)
                        .await
                }
                .map(drop),
                "Role" => Api::<Role>::namespaced(client.clone(), &namespace)
                    .patch(&name, &ssa, &apply)
                    .await
                    .map(drop),
                "RoleBinding" => {
                    Api::<RoleBinding>::namespaced(client.clone(), &namespace)
                        .patch(&name, &ssa, &apply)
                        .await
                }
                .map(drop),
                "ClusterRole" => {
                    self.made.lock().unwrap().cluster_roles.push(name.clone());
                    Api::<ClusterRole>::all(client.clone()).patch(&name, &ssa, &apply).await.map(drop)
                }
                "ClusterRoleBinding" => {
                    self.made.lock().unwrap().cluster_role_bindings.push(name.clone());
                    Api::<ClusterRoleBinding>::all(client.clone()).patch(&name, &ssa, &apply).await.map(drop)
                }
                "PodDisruptionBudget" => Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
                    .patch(&name, &ssa, &apply)
                    .await
                    .map(drop),
                other => panic!("the chart rendered a {other} here"),
            }
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", doc["kind"]));
        }
        docs
    }

    /// The chart's ServiceAccount and operator RBAC; returns the ServiceAccount's name.
    async fn install_chart_rbac(&self) -> String {
        let docs = self.apply_chart(&[], &["serviceaccount.yaml", "rbac.yaml"]).await;
        let account =
            docs.iter().find(|d| d["kind"] == "ServiceAccount").expect("the chart renders a ServiceAccount");
        account["metadata"]["name"].as_str().unwrap().to_string()
    }

    /// Starts playing kubelet and scheduler on `nodes` new Kubernetes Nodes (named
    /// `<namespace>-<i>`); returns their names.
    async fn play_kubelet(&mut self, nodes: usize) -> Vec<String> {
        let k8s_nodes: Api<Node> = Api::all(self.client.clone());
        let mut names = Vec::new();
        for i in 0..nodes {
            let name = format!("{}-{i}", self.ns);
            self.made.lock().unwrap().nodes.push(name.clone());
            k8s_nodes
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
                )
                .await
                .unwrap();
            names.push(name);
        }
        let sessions = Sessions::default();
        let task =
            tokio::spawn(play_kubelet(self.client.clone(), self.ns.clone(), names.clone(), sessions.clone()));
        self.kubelet = Some(Kubelet { task, sessions });
        names
    }

    /// The session count the played counter answers for `node` (0 until set).
    fn set_sessions(&self, node: &str, count: u64) {
        self.kubelet.as_ref().expect("a played kubelet").sessions.lock().unwrap().insert(node.into(), count);
    }

    /// Ends the test: stops the kubelet and the operator, asserts that no pod was refused by
    /// admission and that the operator was refused nothing under the chart's RBAC (no
    /// `forbidden`, no 403 in its whole log), and deletes everything the test made.
    async fn finish(mut self) {
        assert_no_failed_create(&self.client, &self.ns).await;
        let log = self.operator.take().map(|mut o| o.stop()).unwrap_or_default();
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.task.abort();
        }
        self.finished = true;
        let made = self.made.lock().unwrap().clone();
        clean_up(&self.client, &self.ns, &made).await;
        let refused: Vec<&str> =
            log.lines().filter(|l| l.to_lowercase().contains("forbidden") || l.contains(" 403")).collect();
        assert!(
            refused.is_empty(),
            "the operator was refused under the chart's RBAC:\n{}",
            refused.join("\n")
        );
    }
}

/// Deletes the namespace (finishing its pods' deletion, as a kubelet would) and every
/// cluster-scoped object the test made, and waits until the namespace is gone.
async fn clean_up(client: &Client, ns: &str, made: &ClusterScoped) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if namespaces.get_opt(ns).await.ok().flatten().is_none() {
            break;
        }
        for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let _ = pods.delete(&pod.name_any(), &now).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in &made.cluster_role_bindings {
        let _ = Api::<ClusterRoleBinding>::all(client.clone()).delete(name, &DeleteParams::default()).await;
    }
    for name in &made.cluster_roles {
        let _ = Api::<ClusterRole>::all(client.clone()).delete(name, &DeleteParams::default()).await;
    }
    for name in &made.nodes {
        let _ = Api::<Node>::all(client.clone()).delete(name, &DeleteParams::default()).await;
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

/// A kubeconfig for the suite's API server: the admin's cluster entry, authenticating as
/// `user`.
fn kubeconfig_as(path: &str, ns: &str, file: &str, user: serde_json::Value) -> PathBuf {
    let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let context = admin["current-context"].as_str().expect("the e2e kubeconfig has a current context");
    let context =
        admin["contexts"].as_array().unwrap().iter().find(|c| c["name"] == context).unwrap()["context"]
            .clone();
    let cluster_name = context["cluster"].clone();
    let cluster =
        admin["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster_name).unwrap().clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [cluster],
        "users": [{"name": "e2e", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": cluster_name, "user": "e2e", "namespace": ns}}],
    });
    let file = std::env::temp_dir().join(format!("{ns}-{file}.kubeconfig"));
    std::fs::write(&file, serde_saphyr::to_string(&config).unwrap()).unwrap();
    file
}

/// A kubeconfig that authenticates as the ServiceAccount `account` (a one-hour token).
async fn kubeconfig_of(client: &Client, path: &str, ns: &str, account: &str) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap();
    let token = token.status.expect("a token").token;
    kubeconfig_as(path, ns, "operator", json!({"token": token}))
}

/// A kubeconfig with the admin's credentials that acts as the user `user` (impersonation:
/// the API server authorizes each request as that user alone).
fn kubeconfig_impersonating(path: &str, ns: &str, user: &str) -> PathBuf {
    let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let context = admin["current-context"].as_str().unwrap();
    let context =
        admin["contexts"].as_array().unwrap().iter().find(|c| c["name"] == context).unwrap()["context"]
            .clone();
    let mut credentials =
        admin["users"].as_array().unwrap().iter().find(|u| u["name"] == context["user"]).unwrap()["user"]
            .clone();
    credentials["as"] = json!(user);
    kubeconfig_as(path, ns, user, credentials)
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

/// The session counts the played counters answer, by OMERO node name.
type Sessions = Arc<Mutex<BTreeMap<String, u64>>>;

struct Kubelet {
    task: JoinHandle<()>,
    sessions: Sessions,
}

/// Pod IPs handed out in this process: 127.42.x.y, never twice.
static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// The kubelet and scheduler a bare API server lacks: binds every pod of `ns` to the first of
/// `nodes` that is not cordoned, marks it Running and Ready with a loopback IP, serves the
/// session counter's answer there (the count from `sessions` for the pod's OMERO node, a new
/// sample at every request), and finishes the deletion of terminating pods. Runs until
/// aborted; its counters stop with it.
async fn play_kubelet(client: Client, ns: String, nodes: Vec<String>, sessions: Sessions) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let k8s_nodes: Api<Node> = Api::all(client);
    let mut counters = tokio::task::JoinSet::new();
    loop {
        let mut schedulable = Vec::new();
        for name in &nodes {
            if let Ok(node) = k8s_nodes.get(name).await
                && !node.spec.and_then(|s| s.unschedulable).unwrap_or(false)
            {
                schedulable.push(name.clone());
            }
        }
        for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
                    .await;
                continue;
            }
            if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                let Some(node) = schedulable.first() else { continue };
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
            if ready {
                continue;
            }
            let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
            let ip = format!("127.42.{}.{}", n / 250, n % 250 + 1);
            if let Some(node) = pod.labels().get(NODE_LABEL) {
                let listener =
                    tokio::net::TcpListener::bind((ip.as_str(), omero_operator::omero::COUNTER_PORT))
                        .await
                        .unwrap_or_else(|e| panic!("the played counter binds {ip}: {e}"));
                counters.spawn(serve_counter(listener, node.clone(), sessions.clone()));
            }
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The session counter's HTTP answer (`counter/omero_session_counter.py`'s format) for `node`.
async fn serve_counter(listener: tokio::net::TcpListener, node: String, sessions: Sessions) {
    let mut sample = 0u64;
    while let Ok((mut stream, _)) = listener.accept().await {
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        sample += 1;
        let count = sessions.lock().unwrap().get(&node).copied().unwrap_or(0);
        let now = k8s_openapi::jiff::Timestamp::now();
        // `/sessions/list` (what `kubectl omero sessions` reads through the pod proxy): the
        // count's sessions, `<node>-person-<i>`, each i minutes old and idle i seconds.
        let body = if request.starts_with(b"GET /sessions/list ") {
            let ago = |secs: u64| (now - std::time::Duration::from_secs(secs)).to_string();
            let listed: Vec<serde_json::Value> = (1..=count)
                .map(|i| {
                    json!({"user": format!("{node}-person-{i}"), "agent": "OMERO.web", "started": ago(60 * i),
                           "lastAccess": ago(i), "idleSeconds": i, "timeToIdleSeconds": 600.0,
                           "timeToLiveSeconds": 0.0, "restricted": false})
                })
                .collect();
            json!({"format": omero_operator::omero::session_list::COUNTER_LIST_FORMAT, "ok": true, "count": count,
                   "truncated": false, "sessions": listed, "sample": format!("{node}-{sample}"), "ageSeconds": 0.5,
                   "takenAt": now.to_string()})
        } else {
            json!({"format": omero_operator::omero::COUNTER_FORMAT, "ok": true, "sessions": count,
                   "sample": format!("{node}-{sample}"), "ageSeconds": 0.5, "takenAt": now.to_string()})
        }
        .to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The pods of `ns` that are routable and Ready and not terminating.
async fn serving_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("{ROUTABLE_LABEL}=true")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// The reasons of the Events about the cluster `name` in `ns` (events.k8s.io, as the operator
/// publishes them), with their notes.
async fn cluster_events(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("OmeroCluster") && r.name.as_deref() == Some(name))
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// An object another application owns under a node's name survives the OmeroCluster's creation
/// and deletion unchanged, and the cluster says who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_service_survives_the_cluster() {
    let Some(suite) = Suite::start("foreign", Install::OneNamespace).await else { return };
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let services: Api<Service> = suite.api();
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
    let clusters = suite.clusters();
    let mut manifest =
        cluster_manifest(&suite.ns, "openmicroscopy/omero-server:5.6", json!([{"name": "main"}]));
    manifest["metadata"]["name"] = json!("web");
    clusters.patch("web", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let problem = eventually(60, "the foreign Service reported", || async {
        let status = clusters.get("web").await.ok()?.status?;
        status.object_problems.into_iter().find(|p| p.name == "web-main")
    })
    .await;
    assert!(problem.message.contains("created outside the operator"), "{}", problem.message);
    let deployments: Api<Deployment> = suite.api();
    eventually(30, "the free name used", || async { deployments.get_opt("web-main").await.ok()? }).await;
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
    suite.finish().await;
}

/// The objects of a 2-node cluster, labelled and owned, its status, a CEL refusal by the API
/// server, a drain of a node whose pod never runs, a removal, and garbage collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_on_a_real_cluster() {
    let Some(suite) = Suite::start("core", Install::OneNamespace).await else { return };
    let image = std::env::var("OMERO_OPERATOR_E2E_IMAGE")
        .unwrap_or_else(|_| "openmicroscopy/omero-server:5.6".into());
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let ns = suite.ns.clone();
    let secrets: Api<Secret> = suite.api();
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
    let clusters = suite.clusters();
    let nodes = json!([
        {"name": "rw"},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": {"type": "None"}}
    ]);
    clusters.patch("omero", &ssa, &Patch::Apply(cluster_manifest(&ns, &image, nodes.clone()))).await.unwrap();

    // Objects, labelled and owned.
    let deployments: Api<Deployment> = suite.api();
    let services: Api<Service> = suite.api();
    let budgets: Api<PodDisruptionBudget> = suite.api();
    let owned = ListParams::default().labels(&format!("{CLUSTER_LABEL}=omero"));
    eventually(60, "2 Deployments, 3 Services, 2 budgets", || async {
        let d = deployments.list(&owned).await.ok()?.items.len();
        let s = services.list(&owned).await.ok()?.items.len();
        let b = budgets.list(&owned).await.ok()?.items.len();
        (d == 2 && s == 3 && b == 2).then_some(())
    })
    .await;
    let rw = deployments.get("omero-rw").await.unwrap();
    assert_eq!(rw.owner_references()[0].kind, "OmeroCluster");
    assert_eq!(rw.spec.as_ref().unwrap().replicas, Some(1));
    assert!(rw.managed_fields().iter().any(|m| m.manager.as_deref() == Some("omero-operator")));
    let entry = services.get("omero").await.unwrap();
    assert_eq!(entry.spec.unwrap().selector.unwrap()[ROUTABLE_LABEL], "true");

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

    // A drain of a node whose pod never runs (no kubelet here) has nothing to wait for.
    annotate(&clusters, json!({DRAIN_ANNOTATION: "ro-1"})).await;
    eventually(60, "ro-1 Drained", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        s.node("ro-1").filter(|n| n.phase == NodePhase::Drained).map(drop)
    })
    .await;

    // The metrics say what the status written to the API server says: ro-1's one-hot phase, and
    // each condition's status once.
    let operator = suite.operator.as_ref().unwrap();
    let port = operator.http_port().await;
    let cluster_labels = format!("namespace=\"{ns}\",omerocluster=\"omero\"");
    let phases_of =
        |node: &str| format!("omero_operator_node_phase{{{cluster_labels},node=\"{node}\",phase=");
    let drained = format!("{}\"Drained\"}} 1\n", phases_of("ro-1"));
    let text = eventually(30, "ro-1 Drained in /metrics", || async {
        let text = operator.metrics(port).await?;
        text.contains(&drained).then_some(text)
    })
    .await;
    let ro_1: Vec<&str> = text.lines().filter(|l| l.starts_with(&phases_of("ro-1"))).collect();
    assert_eq!(ro_1.len(), 8, "a series per phase: {ro_1:?}");
    assert_eq!(ro_1.iter().filter(|l| l.ends_with(" 1")).count(), 1, "one phase at 1: {ro_1:?}");
    let ready = clusters.get("omero").await.unwrap().status.unwrap();
    let ready = ready.conditions.iter().find(|c| c.type_ == "Ready").unwrap().status.to_lowercase();
    for status in ["true", "false", "unknown"] {
        let line = format!(
            "omero_operator_cluster_condition{{{cluster_labels},condition=\"Ready\",status=\"{status}\"}}"
        );
        let value = if status == ready { 1 } else { 0 };
        assert!(text.contains(&format!("{line} {value}\n")), "{line} {value} not in:\n{text}");
    }

    // Removing a node removes its objects.
    let only_rw = json!([{"name": "rw"}]);
    clusters.patch("omero", &ssa, &Patch::Apply(cluster_manifest(&ns, &image, only_rw))).await.unwrap();
    eventually(60, "omero-ro-1 gone", || async {
        let gone = deployments.get_opt("omero-ro-1").await.ok()?.is_none()
            && services.get_opt("omero-ro-1").await.ok()?.is_none()
            && budgets.get_opt("omero-ro-1").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    // And its series with them; rw's stay.
    let ro_1_series = format!("{cluster_labels},node=\"ro-1\"");
    eventually(30, "ro-1's series gone from /metrics", || async {
        let text = operator.metrics(port).await?;
        (!text.contains(&ro_1_series) && text.contains(&phases_of("rw"))).then_some(())
    })
    .await;

    // Deleting the cluster lets the garbage collector take its children.
    clusters.delete("omero", &DeleteParams::default()).await.unwrap();
    eventually(120, "children garbage-collected", || async {
        deployments.list(&owned).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    // A deleted cluster's series go with it.
    eventually(30, "the cluster's series gone from /metrics", || async {
        let text = operator.metrics(port).await?;
        (!text.contains(&cluster_labels)).then_some(())
    })
    .await;
    suite.finish().await;
}

/// A 3-node cluster whose probes are all `none` (each drain ends at its 10 s deadline),
/// applied; returns the manifest.
async fn three_nodes(suite: &Suite) -> serde_json::Value {
    let none = json!({"type": "None"});
    let nodes = json!([
        {"name": "rw", "sessionProbe": none},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": none},
        {"name": "ro-2", "readOnly": {"db": true, "repo": true}, "sessionProbe": none}
    ]);
    let mut manifest = cluster_manifest(&suite.ns, "openmicroscopy/omero-server:5.6", nodes);
    manifest["spec"]["drain"] = json!({"timeout": "10s"});
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    suite.clusters().patch("omero", &ssa, &Patch::Apply(manifest.clone())).await.unwrap();
    manifest
}

/// Whether a rollout is done, from the cluster and its Deployments.
type RolledOut = dyn Fn(&OmeroCluster, &[Deployment]) -> bool + Send + Sync;

/// Follows the cluster every half second until `done` and every node serves; returns the pod
/// uids each node had, and the fewest routable Ready pods seen.
async fn follow_rollout(
    suite: &Suite,
    nodes: usize,
    what: &str,
    done: Box<RolledOut>,
) -> (BTreeMap<String, BTreeSet<String>>, usize) {
    let (clusters, pods, deployments) = (suite.clusters(), suite.api::<Pod>(), suite.api::<Deployment>());
    let mut pods_per_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut fewest = usize::MAX;
    for _ in 0..600 {
        for pod in pods.list(&ListParams::default()).await.unwrap().items {
            if let Some(node) = pod.labels().get(NODE_LABEL) {
                pods_per_node.entry(node.clone()).or_default().insert(pod.uid().unwrap_or_default());
            }
        }
        let serving = serving_pods(&pods).await.len();
        fewest = fewest.min(serving);
        let cluster = clusters.get("omero").await.unwrap();
        let ds = deployments.list(&ListParams::default()).await.unwrap().items;
        if done(&cluster, &ds) && serving == nodes {
            return (pods_per_node, fewest);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not done in 300 s; status: {:#?}", clusters.get("omero").await.unwrap().status);
}

/// Every one of `nodes` nodes serves the revision the spec asks for, nothing pending.
fn up_to_date(c: &OmeroCluster, nodes: usize) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.observed_generation == c.metadata.generation
            && s.nodes.len() == nodes
            && s.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.up_to_date)
            && s.rollout.as_ref().is_some_and(|r| r.pending.is_empty())
    })
}

fn images_are(ds: &[Deployment], image: &str) -> bool {
    ds.iter().all(|d| {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
    })
}

/// A rolling restart and an image change on a real API server: node by node, read-only first,
/// each node's pod replaced exactly once, never fewer than N-1 routable and ready pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_image_change_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("rollout", Install::OneNamespace).await else { return };
    suite.play_kubelet(1).await;
    let mut manifest = three_nodes(&suite).await;
    let clusters = suite.clusters();
    let pods: Api<Pod> = suite.api();
    eventually(120, "3 nodes serving", || async { (serving_pods(&pods).await.len() == 3).then_some(()) })
        .await;

    annotate(&clusters, json!({RESTART_ANNOTATION: "e2e-1"})).await;
    let (replaced, fewest) = follow_rollout(
        &suite,
        3,
        "rolling restart",
        Box::new(move |c, ds| {
            up_to_date(c, 3)
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
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    clusters.patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let (replaced, fewest) = follow_rollout(
        &suite,
        3,
        "image change",
        Box::new(move |c, ds| up_to_date(c, 3) && images_are(ds, "openmicroscopy/omero-server:5.6.17")),
    )
    .await;
    assert!(fewest >= 2, "never fewer than 2 of 3 serving: {fewest}");
    assert!(replaced.values().all(|uids| uids.len() == 2), "{replaced:?}");
    suite.finish().await;
}

/// Runs `kubectl-omero` with `kubeconfig` in the suite's namespace; its output and exit code.
/// Awaited, not blocking: the played kubelet must go on while the plugin waits.
async fn plugin(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> (String, Option<i32>) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .expect("kubectl-omero runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ kubectl omero {}\n{text}", args.join(" "));
    (text, output.status.code())
}

/// The suite playing kubelet, [`three_nodes`] applied and all three serving; the admin's
/// kubeconfig, for the plugin.
async fn three_nodes_serving(suite: &mut Suite) -> PathBuf {
    suite.play_kubelet(1).await;
    three_nodes(suite).await;
    let clusters = suite.clusters();
    eventually(120, "3 nodes serving", || async {
        let c = clusters.get("omero").await.ok()?;
        (c.status?.serving_nodes == 3).then_some(())
    })
    .await;
    PathBuf::from(&suite.path)
}

/// `kubectl omero` against a real API server, the suite playing kubelet: `status`, a drain
/// followed with `--wait` until it ends, and a restart of every node followed to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_omero_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("plugin", Install::OneNamespace).await else { return };
    let admin = three_nodes_serving(&mut suite).await;
    let (status, code) = plugin(&admin, &suite.ns, &["status", "omero"]).await;
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains("ro-1  read-only"), "{status}");
    let (drain, code) =
        plugin(&admin, &suite.ns, &["drain", "omero", "ro-1", "--wait", "--timeout", "120s"]).await;
    assert_eq!(code, Some(0), "{drain}");
    assert!(drain.contains("acknowledged by the operator") && drain.contains("drained ro-1 in"), "{drain}");
    let (undrain, code) = plugin(&admin, &suite.ns, &["undrain", "omero", "ro-1"]).await;
    assert_eq!(code, Some(0), "{undrain}");
    let (restart, code) =
        plugin(&admin, &suite.ns, &["restart", "omero", "--all", "--wait", "--timeout", "300s"]).await;
    assert_eq!(code, Some(0), "{restart}");
    assert!(restart.contains("rw, ro-1, ro-2 up to date in"), "{restart}");
    suite.finish().await;
}

/// The chart's operator Deployment (`templates/deployment.yaml`, rendered by `bin/helm` for
/// this release as [`Suite::apply_chart`] renders the rest) created in the suite's namespace
/// with no replica: what `kubectl omero version` finds by the chart's own labels. Returns its
/// name and image.
async fn chart_operator_deployment(suite: &Suite) -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let helm = std::env::var_os("HELM").map_or_else(|| root.join("bin/helm"), PathBuf::from);
    let out = Command::new(helm)
        .current_dir(root)
        .args(["template", &suite.ns, "charts/omero-operator", "--namespace", &suite.ns])
        .args(["--kube-version", "1.28.0", "--show-only", "templates/deployment.yaml"])
        .output()
        .expect("helm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut deployment: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    deployment["spec"]["replicas"] = json!(0);
    let created = suite
        .api::<Deployment>()
        .create(&PostParams::default(), &serde_json::from_value(deployment).unwrap())
        .await
        .unwrap();
    let image = created.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap();
    (created.metadata.name.unwrap(), image)
}

/// Runs `kubectl_complete-omero ARGS` as kubectl would (the plugin's arguments, the word being
/// completed last); its output, with nothing on stderr.
async fn complete(args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl_complete-omero"))
        .args(args)
        .output()
        .await
        .expect("kubectl_complete-omero runs");
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ kubectl_complete-omero {}\n{out}", args.join(" "));
    assert!(output.status.success() && err.is_empty(), "{err}");
    out.into_owned()
}

/// `kubectl omero version` (the chart's Deployment found by its labels), `status` with the
/// address users log in to, the image, each node's pod and Kubernetes node, a problem and its
/// Warning Event, `--as` a user of the namespace's built-in `view` role (and one of none), and
/// completion of cluster and node names through `kubectl_complete-omero`, on a real API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_omero_version_status_as_and_completion_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("basics", Install::OneNamespace).await else { return };
    suite.apply_chart(&[], &["user-roles.yaml"]).await;
    let admin = three_nodes_serving(&mut suite).await;
    let ns = suite.ns.clone();
    let (deployment, image) = chart_operator_deployment(&suite).await;
    let version = env!("CARGO_PKG_VERSION");

    let (out, code) = plugin(&admin, &ns, &["version"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with(&format!("Plugin Version: {version}")), "{out}");
    assert!(out.contains("Kubernetes Version: v1.28.7\n"), "{out}");
    assert!(
        out.contains(&format!(
            "Operator Version: {version} ({ns}/{deployment}, 0 of 0 ready, image {image})"
        )),
        "{out}"
    );
    assert!(!out.contains("WARNING"), "the chart's appVersion is the plugin's: {out}");

    // A drain request naming no node: a problem and a Warning Event.
    let clusters = suite.clusters();
    annotate(&clusters, json!({DRAIN_ANNOTATION: "ro-9"})).await;
    eventually(60, "an InvalidDrainRequest Warning Event", || async {
        let events = cluster_events(&suite.client, &ns, "omero").await;
        events.iter().any(|(reason, _)| reason == "InvalidDrainRequest").then_some(())
    })
    .await;
    let k8s_node = format!("{ns}-0");
    let check_status = |status: &str| {
        assert!(
            status.contains(&format!(
                "Entry:     omero.{ns}.svc, ports 4063 (glacier2-tcp), 4064 (glacier2-ssl) (ClusterIP 10.0."
            )),
            "{status}"
        );
        assert!(status.contains("Image:     openmicroscopy/omero-server:5.6\n"), "{status}");
        for node in ["rw", "ro-1", "ro-2"] {
            let placed = status.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() == 3
                    && words[0] == node
                    && words[1].starts_with(&format!("omero-{node}-"))
                    && words[2] == k8s_node
            });
            assert!(placed, "{node}'s pod on {k8s_node}: {status}");
        }
        assert!(status.contains("Problems:\n  Degraded (InvalidDrainRequest): "), "{status}");
        assert!(
            status.contains("Warnings:\n  LAST SEEN  REASON") && status.contains("InvalidDrainRequest  "),
            "{status}"
        );
    };
    let (status, code) = plugin(&admin, &ns, &["status", "omero", "--request-timeout", "10s"]).await;
    assert_eq!(code, Some(0), "{status}");
    check_status(&status);

    // `kubectl get omero -o wide`: the category in discovery, and the columns as the API server
    // prints them (kubectl asks for a Table; the cells are the CRD's printer columns).
    let discovery: serde_json::Value = suite
        .client
        .request(http::Request::get("/apis/omero.openmicroscopy.org/v1alpha1").body(vec![]).unwrap())
        .await
        .unwrap();
    let resource = discovery["resources"].as_array().unwrap().iter().find(|r| r["name"] == "omeroclusters");
    assert_eq!(resource.unwrap()["categories"], json!(["omero"]), "{discovery}");
    let table: serde_json::Value = suite
        .client
        .request(
            http::Request::get(format!(
                "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/{ns}/omeroclusters?includeObject=None"
            ))
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(vec![])
            .unwrap(),
        )
        .await
        .unwrap();
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Ready",
            "Status",
            "Problem",
            "Serving",
            "Nodes",
            "Up-To-Date",
            "Pool",
            "Age",
            "Image",
            "Draining"
        ],
        "{table}"
    );
    let cells = table["rows"][0]["cells"].as_array().unwrap();
    println!("Table row: {cells:?}");
    assert_eq!(cells[0], "omero");
    assert_eq!(
        (&cells[1], &cells[3], &cells[4], &cells[5]),
        (&json!("True"), &json!("InvalidDrainRequest"), &json!(3), &json!(3))
    );
    assert_eq!(cells[9], "openmicroscopy/omero-server:5.6");
    match kubectl_on_path() {
        Some(kubectl) => {
            // A discovery cache of its own, as a new user's kubectl has: one written before the
            // CRD existed holds no category `omero` (`kubectl api-resources` refreshes it).
            let cache = std::env::temp_dir().join(format!("{ns}-kubectl-cache"));
            let output = tokio::process::Command::new(&kubectl)
                .args(["get", "omero", "-o", "wide", "-n", &ns, "--cache-dir"])
                .arg(&cache)
                .env("KUBECONFIG", &admin)
                .output()
                .await
                .unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            println!("$ kubectl get omero -o wide -n {ns}\n{out}{}", String::from_utf8_lossy(&output.stderr));
            let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
            assert_eq!(
                header,
                [
                    "NAME",
                    "READY",
                    "STATUS",
                    "PROBLEM",
                    "SERVING",
                    "NODES",
                    "UP-TO-DATE",
                    "POOL",
                    "AGE",
                    "IMAGE",
                    "DRAINING"
                ]
            );
            assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("omero ")), "{out}");
            let _ = std::fs::remove_dir_all(&cache);
        }
        None => eprintln!(
            "no kubectl on the PATH: `kubectl get omero -o wide` checked through the Table API only"
        ),
    }

    // A user with the built-in view role in the namespace, by --as on the admin's credentials.
    let viewer = format!("{ns}-viewer");
    let binding = json!({"metadata": {"name": viewer},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": viewer}]});
    suite
        .api::<RoleBinding>()
        .create(&PostParams::default(), &serde_json::from_value(binding).unwrap())
        .await
        .unwrap();
    let roles: Api<ClusterRole> = Api::all(suite.client.clone());
    eventually(60, "view aggregates omeroclusters", || async {
        let rules = roles.get("view").await.ok()?.rules?;
        rules.iter().any(|r| r.resources.iter().flatten().any(|x| x == "omeroclusters")).then_some(())
    })
    .await;
    let (status, code) = plugin(&admin, &ns, &["--as", &viewer, "status", "omero"]).await;
    assert_eq!(code, Some(0), "{status}");
    check_status(&status);
    let (out, code) = plugin(&admin, &ns, &["--as", &viewer, "undrain", "omero", "ro-1"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("User \"{viewer}\" cannot patch")), "refused as the viewer: {out}");
    let (out, code) = plugin(&admin, &ns, &["--as", &viewer, "version"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "Operator Version: unknown: you may not list Deployments in every namespace; may not list \
                      Deployments in omero-system"
        ),
        "{out}"
    );
    let (out, code) = plugin(&admin, &ns, &["--as", &viewer, "version", "--operator-namespace", &ns]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("({ns}/{deployment}, 0 of 0 ready")), "{out}");
    let nobody = format!("{ns}-nobody");
    let (out, code) = plugin(&admin, &ns, &["--as", &nobody, "status", "omero"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("forbidden") && out.contains(&nobody), "{out}");

    // Completion as kubectl runs it, namespace and user on the line.
    let kubeconfig = admin.to_string_lossy().into_owned();
    let line = |words: &[&str]| -> Vec<String> {
        ["--kubeconfig", kubeconfig.as_str(), "-n", ns.as_str()]
            .iter()
            .chain(words)
            .map(|w| w.to_string())
            .collect()
    };
    let run =
        async |words: &[&str]| complete(&line(words).iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(run(&["drain", ""]).await, "omero\t3 nodes, 3 serving\n:4\n");
    assert_eq!(run(&["--as", &viewer, "restart", "o"]).await, "omero\t3 nodes, 3 serving\n:4\n");
    assert_eq!(
        run(&["drain", "omero", "ro-1", ""]).await,
        "rw\tread-write, Serving\nro-2\tread-only, Serving\n:4\n"
    );
    assert_eq!(run(&["--as", &nobody, "drain", ""]).await, ":4\n", "refused: nothing to offer");
    // And through kubectl itself (1.26 and later): `kubectl __complete` is what its shell
    // scripts run; it finds both binaries on the PATH.
    match kubectl_on_path() {
        Some(kubectl) => {
            let bin = std::env::temp_dir().join(format!("{ns}-bin"));
            std::fs::create_dir_all(&bin).unwrap();
            for binary in [env!("CARGO_BIN_EXE_kubectl-omero"), env!("CARGO_BIN_EXE_kubectl_complete-omero")]
            {
                let link = bin.join(std::path::Path::new(binary).file_name().unwrap());
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(binary, &link).unwrap();
            }
            let path = std::env::join_paths(
                std::iter::once(bin.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
            )
            .unwrap();
            let output = tokio::process::Command::new(&kubectl)
                .args(["__complete", "omero", "-n", &ns, "drain", "omero", "ro-1", ""])
                .env("PATH", path)
                .env("KUBECONFIG", &admin)
                .output()
                .await
                .unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            println!("$ {} __complete omero -n {ns} drain omero ro-1 ''\n{out}", kubectl.display());
            assert_eq!(out, "rw\tread-write, Serving\nro-2\tread-only, Serving\n:4\n");
            std::fs::remove_dir_all(&bin).unwrap();
        }
        None => eprintln!("no kubectl on the PATH: completion through kubectl itself not tried"),
    }
    annotate(&clusters, json!({DRAIN_ANNOTATION: null})).await;
    suite.finish().await;
}

/// The `kubectl` on the PATH, if any.
fn kubectl_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("kubectl")).find(|k| k.is_file())
}

/// `kubectl omero stop --wait` and `start --wait` against a real API server, the suite playing
/// kubelet: every node leaves service at once and is scaled to zero once drained (here at its
/// 10 s deadline: no probe), Services and budgets stay, the cluster says Stopped; started
/// again, the read-write node's pod is made only after the read-only nodes' pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_omero_stop_and_start_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("stop", Install::OneNamespace).await else { return };
    let admin = three_nodes_serving(&mut suite).await;
    let clusters = suite.clusters();
    let (stop, code) = plugin(&admin, &suite.ns, &["stop", "omero", "--wait", "--timeout", "120s"]).await;
    assert_eq!(code, Some(0), "{stop}");
    assert!(
        stop.contains("acknowledged by the operator") && stop.contains("stopped rw, ro-1, ro-2 in"),
        "{stop}"
    );
    let deployments = suite.api::<Deployment>().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(deployments.len(), 3);
    assert!(deployments.iter().all(|d| d.spec.as_ref().unwrap().replicas == Some(0)), "{deployments:?}");
    let pods: Api<Pod> = suite.api();
    eventually(60, "every pod gone", || async {
        pods.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let services = suite.api::<Service>().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(services.len(), 4, "3 node Services and the entry Service stay");
    let budgets = suite.api::<PodDisruptionBudget>().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(budgets.len(), 3, "the budgets stay");
    let status = clusters.get("omero").await.unwrap().status.unwrap();
    let ready = status.condition(conditions::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Stopped"), "{status:#?}");

    let (start, code) = plugin(&admin, &suite.ns, &["start", "omero", "--wait", "--timeout", "180s"]).await;
    assert_eq!(code, Some(0), "{start}");
    assert!(start.contains("started rw, ro-1, ro-2 in"), "{start}");
    let created = |pods: &[Pod], node: &str| {
        pods.iter()
            .find(|p| p.labels().get(NODE_LABEL).map(String::as_str) == Some(node))
            .and_then(|p| p.metadata.creation_timestamp.clone())
            .unwrap_or_else(|| panic!("a pod of {node}"))
            .0
    };
    let running = pods.list(&ListParams::default()).await.unwrap().items;
    let read_only = created(&running, "ro-1").max(created(&running, "ro-2"));
    assert!(created(&running, "rw") >= read_only, "the read-write node's pod came last: {running:?}");
    let events = cluster_events(&suite.client, &suite.ns, "omero").await;
    for reason in ["NodeStopped", "NodeStarting"] {
        assert_eq!(events.iter().filter(|(r, _)| r == reason).count(), 3, "{reason}: {events:?}");
    }
    suite.finish().await;
}

/// The per-node PodDisruptionBudget on a real API server: an eviction (what `kubectl drain`
/// sends) of a serving node's pod is refused, and allowed once the node is drained. The suite
/// plays kubelet (bound, Running, Ready): the API server ignores budgets for pods that are not
/// running, so without that this would prove nothing. The budget's status comes from the
/// cluster's disruption controller (kube-controller-manager, which the Deployments need too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_waits_for_the_drain_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("budget", Install::OneNamespace).await else { return };
    suite.play_kubelet(1).await;
    three_nodes(&suite).await;
    let clusters = suite.clusters();
    let budgets: Api<PodDisruptionBudget> = suite.api();
    let pods: Api<Pod> = suite.api();
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
    annotate(&clusters, json!({DRAIN_ANNOTATION: "ro-1"})).await;
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
    suite.finish().await;
}

/// `examples/read-only-replicas.yaml` as a new user applies it, with what a test needs: drains
/// of 10 minutes (a drain that ends sooner ended on its count) and the session counter on
/// every node (there is no database here for the read-write node's default probe).
fn read_only_replicas_example(ns: &str) -> Vec<serde_json::Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/read-only-replicas.yaml")).unwrap();
    let mut docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.retain(|d| !d.is_null());
    for doc in &mut docs {
        doc["metadata"]["namespace"] = json!(ns);
        if doc["kind"] == "OmeroCluster" {
            doc["spec"]["drain"]["timeout"] = json!("10m");
            doc["spec"]["sessionCounter"]["defaultFor"] = json!("All");
            // No load balancer here: a LoadBalancer Service would wait for one for ever.
            doc["spec"]["service"]["type"] = json!("ClusterIP");
        }
    }
    docs
}

/// The chart's operator, as a new user installs it, runs a cluster from nothing: creates every
/// object, drains a node on request until its sessions end, rolls an image node by node,
/// removes a node once its count is zero (long before its deadline), and with
/// `cluster_wide`, moves every node off a cordoned Kubernetes node. Not one refusal.
async fn chart_operator_runs_a_cluster(install: Install) {
    let purpose = match install {
        Install::OneNamespace => "chart-ns",
        Install::ClusterWide => "chart-all",
    };
    let Some(mut suite) = Suite::start(purpose, install).await else { return };
    // The operator's own budget (two replicas by default), as the API server takes it: every
    // field kept, unhealthyPodEvictionPolicy included (beta and on by default in 1.28).
    let rendered = suite.apply_chart(&[], &["poddisruptionbudget.yaml"]).await;
    let name = rendered[0]["metadata"]["name"].as_str().unwrap();
    let operator_budget = suite.api::<PodDisruptionBudget>().get(name).await.unwrap().spec.unwrap();
    assert_eq!(serde_json::to_value(&operator_budget).unwrap(), rendered[0]["spec"]);
    let kube_nodes = suite.play_kubelet(2).await;
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let mut cluster = serde_json::Value::Null;
    for doc in read_only_replicas_example(&suite.ns) {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match doc["kind"].as_str().unwrap() {
            "Secret" => {
                suite.api::<Secret>().patch(&name, &ssa, &Patch::Apply(doc)).await.unwrap();
            }
            "OmeroCluster" => cluster = doc,
            other => panic!("the example has a {other}"),
        }
    }
    let clusters = suite.clusters();
    clusters.patch("omero", &ssa, &Patch::Apply(cluster.clone())).await.unwrap();

    // Every object, from nothing.
    let (deployments, services, budgets, pods) = (
        suite.api::<Deployment>(),
        suite.api::<Service>(),
        suite.api::<PodDisruptionBudget>(),
        suite.api::<Pod>(),
    );
    let config_maps = suite.api::<k8s_openapi::api::core::v1::ConfigMap>();
    let owned = ListParams::default().labels(&format!("{CLUSTER_LABEL}=omero"));
    eventually(120, "3 nodes serving", || async { (serving_pods(&pods).await.len() == 3).then_some(()) })
        .await;
    assert_eq!(deployments.list(&owned).await.unwrap().items.len(), 3);
    assert_eq!(
        services.list(&owned).await.unwrap().items.len(),
        4,
        "a Service per node and the entry Service"
    );
    assert_eq!(budgets.list(&owned).await.unwrap().items.len(), 3);
    assert_eq!(config_maps.list(&owned).await.unwrap().items.len(), 1, "the session counter's script");
    let status = eventually(60, "status: 3 serving, each counted", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        (s.serving_nodes == 3 && s.nodes.iter().all(|n| n.sessions == Some(0))).then_some(s)
    })
    .await;
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{status:#?}");

    // A drain on request waits for the sessions the counter reports, and ends at zero.
    suite.set_sessions("ro-1", 2);
    annotate(&clusters, json!({DRAIN_ANNOTATION: "ro-1"})).await;
    eventually(60, "ro-1 draining with its 2 sessions counted", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        let n = s.node("ro-1")?;
        (n.phase == NodePhase::Draining && !n.routable && n.sessions == Some(2)).then_some(())
    })
    .await;
    let ro1_pod =
        pods.list(&ListParams::default().labels(&format!("{NODE_LABEL}=ro-1"))).await.unwrap().items;
    assert!(
        ro1_pod.iter().all(|p| p.labels().get(ROUTABLE_LABEL).map(String::as_str) != Some("true")),
        "ro-1 no longer routable"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let n = clusters.get("omero").await.unwrap().status.unwrap().node("ro-1").cloned().unwrap();
    assert_eq!(n.phase, NodePhase::Draining, "still draining while 2 sessions are open: {n:?}");
    let budget = budgets.get("omero-ro-1").await.unwrap();
    assert_eq!(
        budget.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
        "an eviction still waits while sessions are open"
    );
    suite.set_sessions("ro-1", 0);
    let drained = Instant::now();
    eventually(90, "ro-1 drained at zero", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        (s.node("ro-1")?.phase == NodePhase::Drained).then_some(())
    })
    .await;
    println!("ro-1 drained {:?} after its count reached zero", drained.elapsed());
    let n = clusters.get("omero").await.unwrap().status.unwrap().node("ro-1").cloned().unwrap();
    assert!(!n.deadline_reached, "ended on its count, not its deadline: {n:?}");
    annotate(&clusters, json!({DRAIN_ANNOTATION: null})).await;
    eventually(60, "ro-1 serving again", || async { (serving_pods(&pods).await.len() == 3).then_some(()) })
        .await;
    let events = cluster_events(&suite.client, &suite.ns, "omero").await;
    for reason in ["DrainStarted", "DrainCompleted"] {
        assert!(
            events.iter().any(|(r, note)| r == reason && note.contains("ro-1")),
            "no {reason} Event for ro-1: {events:?}"
        );
    }

    // An image rolls node by node, each drained (at zero) first.
    cluster["spec"]["image"] = json!("openmicroscopy/omero-server:5.6.17");
    clusters.patch("omero", &ssa, &Patch::Apply(cluster.clone())).await.unwrap();
    let (replaced, fewest) = follow_rollout(
        &suite,
        3,
        "image change",
        Box::new(|c, ds| up_to_date(c, 3) && images_are(ds, "openmicroscopy/omero-server:5.6.17")),
    )
    .await;
    assert!(fewest >= 2, "never fewer than 2 of 3 serving: {fewest}");
    assert!(replaced.values().all(|uids| uids.len() == 2), "each pod replaced once: {replaced:?}");

    // A removed node is counted with the probe it had: gone once its count is zero, not
    // after its 10-minute deadline.
    let removed = Instant::now();
    cluster["spec"]["nodes"].as_array_mut().unwrap().retain(|n| n["name"] != "ro-2");
    clusters.patch("omero", &ssa, &Patch::Apply(cluster.clone())).await.unwrap();
    eventually(120, "ro-2's objects gone", || async {
        let gone = deployments.get_opt("omero-ro-2").await.ok()?.is_none()
            && services.get_opt("omero-ro-2").await.ok()?.is_none()
            && budgets.get_opt("omero-ro-2").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    println!("ro-2 removed in {:?} (deadline 10m)", removed.elapsed());
    let status = eventually(30, "ro-2 out of status", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        s.node("ro-2").is_none().then_some(s)
    })
    .await;
    assert_eq!(status.node_count, 2);

    if install == Install::ClusterWide {
        // A cordoned Kubernetes node: its OMERO nodes drain one at a time and move.
        let on = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let first = serving_pods(&pods).await.iter().filter_map(on).next().unwrap();
        assert!(kube_nodes.contains(&first));
        Api::<Node>::all(suite.client.clone())
            .patch(&first, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
            .await
            .unwrap();
        let (mut fewest, start) = (usize::MAX, Instant::now());
        loop {
            let serving = serving_pods(&pods).await;
            fewest = fewest.min(serving.len());
            if serving.len() == 2 && serving.iter().all(|p| on(p).as_deref() != Some(first.as_str())) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(240), "not every node moved off {first} in 240 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(fewest >= 1, "never no node serving during the move");
        let events = cluster_events(&suite.client, &suite.ns, "omero").await;
        assert!(
            events.iter().any(|(_, note)| note.contains(&first)),
            "an Event names the cordoned node: {events:?}"
        );
    }
    suite.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_operator_runs_a_cluster_in_one_namespace() {
    chart_operator_runs_a_cluster(Install::OneNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_operator_runs_a_cluster_cluster_wide() {
    chart_operator_runs_a_cluster(Install::ClusterWide).await;
}

/// The chart's aggregated roles: a user bound only to the namespace's built-in `edit` role
/// runs every `kubectl omero` command; one bound to `view` sees status and is refused the
/// rest, with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_users_drive_clusters_through_the_built_in_roles() {
    let Some(mut suite) = Suite::start("users", Install::OneNamespace).await else { return };
    suite.apply_chart(&[], &["user-roles.yaml"]).await;
    suite.play_kubelet(1).await;
    three_nodes(&suite).await;
    let (editor, viewer) = (format!("{}-editor", suite.ns), format!("{}-viewer", suite.ns));
    let bindings: Api<RoleBinding> = suite.api();
    for (user, role) in [(&editor, "edit"), (&viewer, "view")] {
        let binding = json!({"metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]});
        bindings.create(&PostParams::default(), &serde_json::from_value(binding).unwrap()).await.unwrap();
    }
    // The clusterrole-aggregation controller folds the chart's roles into edit and view.
    let roles: Api<ClusterRole> = Api::all(suite.client.clone());
    for role in ["edit", "view"] {
        eventually(60, &format!("{role} aggregates omeroclusters"), || async {
            let rules = roles.get(role).await.ok()?.rules?;
            rules.iter().any(|r| r.resources.iter().flatten().any(|x| x == "omeroclusters")).then_some(())
        })
        .await;
    }
    let clusters = suite.clusters();
    eventually(120, "3 nodes serving", || async {
        (clusters.get("omero").await.ok()?.status?.serving_nodes == 3).then_some(())
    })
    .await;
    let ns = suite.ns.clone();
    let as_editor = kubeconfig_impersonating(&suite.path, &ns, &editor);
    let as_viewer = kubeconfig_impersonating(&suite.path, &ns, &viewer);

    let (out, code) = plugin(&as_editor, &ns, &["status", "omero"]).await;
    assert_eq!(code, Some(0), "{out}");
    let (out, code) =
        plugin(&as_editor, &ns, &["drain", "omero", "ro-1", "--wait", "--timeout", "120s"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("drained ro-1 in"), "{out}");
    let (out, code) = plugin(&as_editor, &ns, &["undrain", "omero", "ro-1"]).await;
    assert_eq!(code, Some(0), "{out}");
    let (out, code) =
        plugin(&as_editor, &ns, &["restart", "omero", "ro-2", "--wait", "--timeout", "180s"]).await;
    assert_eq!(code, Some(0), "{out}");
    let (out, code) = plugin(&as_editor, &ns, &["pause", "omero"]).await;
    assert_eq!(code, Some(0), "{out}");
    let paused = clusters.get("omero").await.unwrap();
    assert!(
        paused.annotations().contains_key(omero_operator::request::PAUSE_ANNOTATION),
        "{:?}",
        paused.annotations()
    );
    let (out, code) = plugin(&as_editor, &ns, &["resume", "omero"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !clusters
            .get("omero")
            .await
            .unwrap()
            .annotations()
            .contains_key(omero_operator::request::PAUSE_ANNOTATION)
    );

    let (out, code) = plugin(&as_viewer, &ns, &["status", "omero"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ro-1"), "{out}");
    let before = clusters.get("omero").await.unwrap().annotations().clone();
    for args in [&["drain", "omero", "ro-1"][..], &["restart", "omero", "--all"], &["pause", "omero"]] {
        let (out, code) = plugin(&as_viewer, &ns, args).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("forbidden") && out.contains("its edit (or admin) role"),
            "a clear refusal: {out}"
        );
    }
    assert_eq!(clusters.get("omero").await.unwrap().annotations(), &before, "the viewer changed nothing");
    suite.finish().await;
}

/// Sets (a value) or removes (null) annotations of the cluster `omero`, as
/// `kubectl annotate` does.
async fn annotate(clusters: &Api<OmeroCluster>, annotations: serde_json::Value) {
    let patch = Patch::Merge(json!({"metadata": {"annotations": annotations}}));
    clusters.patch("omero", &PatchParams::default(), &patch).await.unwrap();
}

/// `rw` and `ro-1`, probes `none` (each drain ends at its 10 s deadline), applied; returns the
/// manifest once both serve.
async fn two_nodes_serving(suite: &Suite) -> serde_json::Value {
    let none = json!({"type": "None"});
    let nodes = json!([
        {"name": "rw", "sessionProbe": none},
        {"name": "ro-1", "readOnly": {"db": true, "repo": true}, "sessionProbe": none}
    ]);
    let mut manifest = cluster_manifest(&suite.ns, "openmicroscopy/omero-server:5.6", nodes);
    manifest["spec"]["drain"] = json!({"timeout": "10s", "maxUnavailable": 1});
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    suite.clusters().patch("omero", &ssa, &Patch::Apply(manifest.clone())).await.unwrap();
    let pods: Api<Pod> = suite.api();
    eventually(120, "2 nodes serving", || async { (serving_pods(&pods).await.len() == 2).then_some(()) })
        .await;
    manifest
}

/// Watches the routable Ready pods for `secs`; the fewest seen.
async fn fewest_serving_for(pods: &Api<Pod>, secs: u64) -> usize {
    let (mut fewest, start) = (usize::MAX, Instant::now());
    while start.elapsed() < Duration::from_secs(secs) {
        fewest = fewest.min(serving_pods(pods).await.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    fewest
}

/// Where the one edit leaves a 2-node cluster: `rw` drained as asked (restarted to the new
/// image while out), `ro-1` serving, its rollout waiting rather than take the last node.
async fn assert_rw_drained_and_ro1_serving(suite: &Suite) {
    let clusters = suite.clusters();
    let status = eventually(90, "rw drained, ro-1 serving", || async {
        let s = clusters.get("omero").await.ok()?.status?;
        (s.node("rw")?.phase == NodePhase::Drained && s.node("ro-1")?.phase == NodePhase::Serving)
            .then_some(s)
    })
    .await;
    let rollout = status.rollout.unwrap();
    assert_eq!(rollout.pending, ["ro-1"], "{rollout:?}");
    assert!(rollout.waiting.is_some(), "says why ro-1 waits: {rollout:?}");
    let pods: Api<Pod> = suite.api();
    let serving: Vec<String> =
        serving_pods(&pods).await.iter().filter_map(|p| p.labels().get(NODE_LABEL).cloned()).collect();
    assert_eq!(serving, ["ro-1"]);
}

/// One `kubectl apply` that changes the image and adds `drain: rw` on a 2-node cluster: at
/// least one node serves throughout (it used to drain both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edit_with_a_new_image_and_a_drain_keeps_a_node_serving() {
    let Some(mut suite) = Suite::start("one-edit", Install::OneNamespace).await else { return };
    suite.play_kubelet(1).await;
    let mut manifest = two_nodes_serving(&suite).await;
    manifest["spec"]["image"] = json!("openmicroscopy/omero-server:5.6.17");
    manifest["metadata"]["annotations"] = json!({DRAIN_ANNOTATION: "rw"});
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    suite.clusters().patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let fewest = fewest_serving_for(&suite.api(), 45).await;
    assert!(fewest >= 1, "no node served for a while: {fewest}");
    assert_rw_drained_and_ro1_serving(&suite).await;
    suite.finish().await;
}

/// A pause that ends with a drain request and a new image queued: nothing moves while paused,
/// and at least one node serves once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_ending_with_a_drain_and_a_new_image_queued_keeps_a_node_serving() {
    let Some(mut suite) = Suite::start("unpause", Install::OneNamespace).await else { return };
    suite.play_kubelet(1).await;
    let mut manifest = two_nodes_serving(&suite).await;
    let clusters = suite.clusters();
    annotate(&clusters, json!({omero_operator::request::PAUSE_ANNOTATION: "true"})).await;
    eventually(30, "paused in status", || async {
        clusters.get("omero").await.ok()?.status?.rollout?.paused.then_some(())
    })
    .await;
    manifest["spec"]["image"] = json!("openmicroscopy/omero-server:5.6.17");
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    clusters.patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    annotate(&clusters, json!({DRAIN_ANNOTATION: "rw"})).await;
    assert_eq!(fewest_serving_for(&suite.api(), 10).await, 2, "nothing moves while paused");
    annotate(&clusters, json!({omero_operator::request::PAUSE_ANNOTATION: null})).await;
    let fewest = fewest_serving_for(&suite.api(), 45).await;
    assert!(fewest >= 1, "no node served for a while: {fewest}");
    assert_rw_drained_and_ro1_serving(&suite).await;
    suite.finish().await;
}

/// The cluster-scoped objects of kind `K` whose names start with the suite's prefix.
async fn suite_names<K>(client: &Client) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let all = Api::<K>::all(client.clone()).list(&ListParams::default()).await.unwrap().items;
    all.iter().map(|o| o.name_any()).filter(|n| n.starts_with(PREFIX)).collect()
}

/// Run last, alone (`scripts/e2e.sh` does): no namespace, played Node, ClusterRole or binding
/// of the suite is left on the API server. Skipped unless `OMERO_OPERATOR_E2E_LEFTOVERS=1`,
/// since tests running beside it would make it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_behind() {
    let Some(path) = kubeconfig() else { return };
    if std::env::var("OMERO_OPERATOR_E2E_LEFTOVERS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set OMERO_OPERATOR_E2E_LEFTOVERS=1 to check for leftovers once every other test ended"
        );
        return;
    }
    let client = client(&path).await;
    let left = || async {
        let mut left = suite_names::<Namespace>(&client).await;
        left.extend(suite_names::<Node>(&client).await);
        left.extend(suite_names::<ClusterRole>(&client).await);
        left.extend(suite_names::<ClusterRoleBinding>(&client).await);
        left
    };
    let start = Instant::now();
    let mut remaining = left().await;
    while !remaining.is_empty() && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        remaining = left().await;
    }
    assert!(remaining.is_empty(), "left behind: {remaining:?}");
}

/// The read-only pool on a real API server: scaled 2 -> 5 -> 2 through the `/scale`
/// subresource (what `kubectl scale omc/omero --replicas=N` patches), with the suite playing
/// kubelet and the session counter: the new nodes serve, the highest names leave through
/// drains (one held by a session until it ends), `minReplicas` is refused by the API server,
/// and a HorizontalPodAutoscaler targeting the cluster reads its scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_pool_scales_through_the_scale_subresource_on_a_real_cluster() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let Some(mut suite) = Suite::start("pool", Install::OneNamespace).await else { return };
    suite.play_kubelet(1).await;
    let mut manifest = cluster_manifest(
        &suite.ns,
        "openmicroscopy/omero-server:5.6",
        json!([{"name": "rw", "sessionProbe": {"type": "None"}}]),
    );
    manifest["spec"]["drain"] = json!({"timeout": "5m"});
    manifest["spec"]["sessionCounter"] = json!({"credentialsSecret": {"name": "omero-counter"}});
    manifest["spec"]["readOnlyPool"] = json!({"replicas": 2, "minReplicas": 1, "template": {"sessionProbe": {"type": "Counter", "interval": "2s"}}});
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let clusters = suite.clusters();
    clusters.patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    let pool_replicas =
        |c: &OmeroCluster| c.status.as_ref().and_then(|s| s.read_only_pool.as_ref()).map(|p| p.replicas);
    let serving = |want: i32| {
        let clusters = clusters.clone();
        async move {
            let c = clusters.get("omero").await.ok()?;
            let status = c.status.as_ref()?;
            (status.serving_nodes == want && status.observed_generation == c.metadata.generation).then_some(c)
        }
    };
    let c = eventually(120, "rw and a pool of 2 serving", || serving(3)).await;
    assert_eq!(pool_replicas(&c), Some(2));

    // Scaled up through the scale subresource, as `kubectl scale --replicas=5` does.
    let scale_to = |replicas: i32| {
        let clusters = clusters.clone();
        async move {
            clusters
                .patch_scale(
                    "omero",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
        }
    };
    scale_to(5).await.unwrap();
    let c = eventually(120, "rw and a pool of 5 serving", || serving(6)).await;
    assert_eq!(pool_replicas(&c), Some(5));
    let scale = clusters.get_scale("omero").await.unwrap();
    let (spec, status) = (scale.spec.unwrap(), scale.status.unwrap());
    assert_eq!((spec.replicas, status.replicas), (Some(5), 5));
    let selector = status.selector.expect("the scale subresource gives the pool's selector");
    let pods: Api<Pod> = suite.api();
    let pool_pods = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    assert_eq!(pool_pods.len(), 5, "the selector selects the pool's pods: {selector}");

    // Below minReplicas: the API server refuses the scale with the rule's message.
    let refused = scale_to(0).await.expect_err("replicas below minReplicas is refused");
    assert!(refused.to_string().contains("minReplicas"), "{refused}");

    // Scaled down: ro-2 and ro-3 (no sessions) go; ro-4 drains until its session ends.
    suite.set_sessions("ro-4", 1);
    eventually(30, "ro-4's session counted", || async {
        let c = clusters.get("omero").await.ok()?;
        (c.status?.node("ro-4")?.sessions == Some(1)).then_some(())
    })
    .await;
    scale_to(2).await.unwrap();
    let deployments: Api<Deployment> = suite.api();
    let names = || async {
        let list = deployments.list(&ListParams::default()).await.ok()?;
        Some(list.items.iter().map(|d| d.name_any()).collect::<BTreeSet<_>>())
    };
    eventually(120, "ro-2 and ro-3 removed, ro-4 draining", || async {
        let c = clusters.get("omero").await.ok()?;
        let ro4 = c.status.as_ref()?.node("ro-4")?.clone();
        let left = names().await?;
        let pool = c.status.as_ref()?.read_only_pool.clone()?;
        let gone = !left.contains("omero-ro-2") && !left.contains("omero-ro-3");
        let recorded = (pool.replicas, pool.leaving) == (3, vec!["ro-4".to_string()]);
        (gone && recorded && ro4.leaving && ro4.phase == NodePhase::Draining && !ro4.routable).then_some(())
    })
    .await;
    // `kubectl omero status` shows the pool: wanted, existing, serving, and who leaves.
    let (status, code) = plugin(&PathBuf::from(&suite.path), &suite.ns, &["status", "omero"]).await;
    assert_eq!(code, Some(0), "{status}");
    assert!(
        status.contains(
            "\nPool:      2 wanted (at least 1), 3 exist, 2 serving, leaving (draining first): ro-4"
        ),
        "{status}"
    );
    suite.set_sessions("ro-4", 0);
    eventually(120, "ro-4 removed once its session ended", || async {
        let left = names().await?;
        (left == BTreeSet::from(["omero-rw".to_string(), "omero-ro-0".to_string(), "omero-ro-1".to_string()]))
            .then_some(())
    })
    .await;
    let removed = eventually(30, "a NodeRemoved Event for each of the three", || async {
        let removed: Vec<String> = cluster_events(&suite.client, &suite.ns, "omero")
            .await
            .into_iter()
            .filter(|(reason, _)| reason == "NodeRemoved")
            .map(|(_, note)| note)
            .collect();
        (removed.len() == 3).then_some(removed)
    })
    .await;
    let ro4_event = removed.iter().find(|n| n.contains("ro-4")).expect("ro-4's removal");
    assert!(
        !ro4_event.contains("deadline"),
        "ro-4 left when its session ended, not at its deadline: {ro4_event}"
    );

    // A HorizontalPodAutoscaler targeting the cluster reads its scale subresource (no metrics
    // API here, so it cannot compute a recommendation, and does not scale).
    let hpas: Api<HorizontalPodAutoscaler> = suite.api();
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "omero-pool"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster", "name": "omero"},
            "minReplicas": 2, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    });
    hpas.create(&PostParams::default(), &serde_json::from_value(hpa).unwrap()).await.unwrap();
    let conditions = eventually(90, "the HPA read the cluster's scale", || async {
        let hpa = hpas.get("omero-pool").await.ok()?;
        let status = hpa.status?;
        let able = status.conditions.clone()?.into_iter().find(|c| c.type_ == "AbleToScale")?;
        (able.status == "True" && able.reason.as_deref() == Some("SucceededGetScale"))
            .then_some((status.current_replicas, status.conditions))
    })
    .await;
    println!("HPA status: current replicas {:?}, conditions {:#?}", conditions.0, conditions.1);
    assert_eq!(conditions.0, Some(2), "the HPA read status.replicas through the scale subresource");
    suite.finish().await;
}

/// What the played kubelet's log endpoint was asked: the path, the query (percent-decoded) and
/// the protocol the API server spoke to it (ALPN).
#[derive(Clone, Debug)]
struct ContainerLogRequest {
    path: String,
    query: BTreeMap<String, String>,
    protocol: String,
}

/// The kubelet's container log endpoint (`GET /containerLogs/{ns}/{pod}/{container}`, which
/// the API server calls for `pods/log`), played over TLS on a loopback port with a certificate
/// made here that no CA vouches for. `omero-logs` answers records as the log container writes
/// them, `omero-server` the image's start-up output; each line with its time when asked
/// (`timestamps`), from `sinceTime` on (whole seconds, as the kubelet reads it), and with
/// `follow` one more record half a second later, the stream then held open. Returns the port
/// and the requests seen.
async fn play_container_logs() -> (u16, Arc<Mutex<Vec<ContainerLogRequest>>>) {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.into())
            .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<ContainerLogRequest>>> = Arc::default();
    // The times the played runtime gave the lines: within one second, so a resumed stream
    // (sinceTime in whole seconds) gets them all again.
    let base =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second() - 30)
            .unwrap();
    let at = move |millis: i64| base + k8s_openapi::jiff::SignedDuration::from_millis(millis);
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let protocol = stream
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map_or("none".to_string(), |p| String::from_utf8_lossy(p).into_owned());
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (seen, protocol) = (seen.clone(), protocol.clone());
                            async move {
                                let path = request.uri().path().to_string();
                                let query: BTreeMap<String, String> = request
                                    .uri()
                                    .query()
                                    .unwrap_or_default()
                                    .split('&')
                                    .filter_map(|p| p.split_once('='))
                                    .map(|(k, v)| (k.to_string(), v.replace("%3A", ":")))
                                    .collect();
                                seen.lock().unwrap().push(ContainerLogRequest {
                                    path: path.clone(),
                                    query: query.clone(),
                                    protocol,
                                });
                                let lines: Vec<(k8s_openapi::jiff::Timestamp, &str)> = if path
                                    .ends_with("/omero-logs")
                                {
                                    vec![
                                        (
                                            at(0),
                                            "omero-logs: following /opt/omero/server/OMERO.server/var/log/*.log, *.out, *.err",
                                        ),
                                        (
                                            at(100),
                                            "Blitz-0.log: 2024-01-02 13:45:10,000 INFO  [ome.services.blitz.Entry] (main) Blitz up",
                                        ),
                                        (
                                            at(200),
                                            "Tables-0.log: 2024-01-02 13:45:11,000 INFO  [omero.tables] (MainThread) Tables up",
                                        ),
                                        (
                                            at(300),
                                            "Blitz-0.log: 2024-01-02 13:45:12,000 ERROR [ome.services.X] (l.Server-7) failed\\n\tat ome.X.y(X.java:1)",
                                        ),
                                    ]
                                } else {
                                    vec![(at(0), "Running /startup/99-run.sh")]
                                };
                                let since = query
                                    .get("sinceTime")
                                    .map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap());
                                let line = |(time, text): &(k8s_openapi::jiff::Timestamp, &str)| {
                                    let text = if query.contains_key("timestamps") {
                                        format!("{time} {text}\n")
                                    } else {
                                        format!("{text}\n")
                                    };
                                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                        bytes::Bytes::from(text),
                                    ))
                                };
                                let mut frames: Vec<_> = lines
                                    .iter()
                                    .filter(|(t, _)| since.is_none_or(|s| *t >= s))
                                    .map(line)
                                    .collect();
                                if query.get("follow").map(String::as_str) == Some("true")
                                    && path.ends_with("/omero-logs")
                                {
                                    frames.push(line(&(at(900), "Blitz-0.log: 2024-01-02 13:45:13,000 INFO  [ome.services.X] (main) a followed record")));
                                }
                                let follow = query.get("follow").map(String::as_str) == Some("true");
                                let (tx, rx) = futures::channel::mpsc::unbounded();
                                tokio::spawn(async move {
                                    let last = frames.pop();
                                    for frame in frames {
                                        let _ = tx.unbounded_send(frame);
                                    }
                                    if let Some(last) = last {
                                        if follow {
                                            tokio::time::sleep(Duration::from_millis(500)).await;
                                        }
                                        let _ = tx.unbounded_send(last);
                                    }
                                    if follow {
                                        // Held open, as a running container's followed log is.
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                    }
                                });
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::StreamBody::new(rx),
                                ))
                            }
                        },
                    );
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                });
            }
        }
    });
    (port, seen)
}

/// `kubectl omero logs` against a real API server, the suite playing the kubelet and its log
/// endpoint: the node's pod (found by the operator's labels) passes restricted Pod Security
/// with its `omero-logs` container, and the plugin reads that container's log through the API
/// server's `pods/log` (which connects to the Node's InternalIP and kubelet port over TLS): one
/// file's last record whole, a followed log that resumes without repeating a line, and a
/// cluster with the log container off, whose server log is shown with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_omero_logs_on_a_real_cluster() {
    let Some(mut suite) = Suite::start("logs", Install::OneNamespace).await else { return };
    let nodes = suite.play_kubelet(1).await;
    let (port, requests) = play_container_logs().await;
    // Where the API server finds the kubelet: the Node's InternalIP and kubelet port.
    let k8s_nodes: Api<Node> = Api::all(suite.client.clone());
    let endpoint = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                     "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    k8s_nodes.patch_status(&nodes[0], &PatchParams::default(), &Patch::Merge(endpoint)).await.unwrap();
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let none = json!({"type": "None"});
    let image = "openmicroscopy/omero-server:5.6";
    suite
        .clusters()
        .patch(
            "omero",
            &ssa,
            &Patch::Apply(cluster_manifest(&suite.ns, image, json!([{"name": "rw", "sessionProbe": none}]))),
        )
        .await
        .unwrap();
    let mut plain = cluster_manifest(&suite.ns, image, json!([{"name": "rw", "sessionProbe": none}]));
    plain["metadata"]["name"] = json!("plain");
    plain["spec"]["serverLogs"] = json!({"mode": "None"});
    suite.clusters().patch("plain", &ssa, &Patch::Apply(plain)).await.unwrap();
    let pods: Api<Pod> = suite.api();
    let pod = eventually(120, "both nodes' pods bound and running", || async {
        let running: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == 2).then_some(())?;
        running.into_iter().find(|p| p.labels().get(CLUSTER_LABEL).map(String::as_str) == Some("omero"))
    })
    .await;
    let containers = &pod.spec.as_ref().unwrap().containers;
    let logs = containers.iter().find(|c| c.name == "omero-logs").expect("an omero-logs container");
    let var = logs.volume_mounts.iter().flatten().find(|m| m.name == "var").unwrap();
    assert_eq!(var.read_only, Some(true), "var is read-only in the log container");
    let pod_name = pod.name_any();
    let admin = PathBuf::from(&suite.path);

    let started = Instant::now();
    let (out, code) =
        plugin(&admin, &suite.ns, &["logs", "omero", "rw", "--file", "Blitz-0", "--tail", "1"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        "2024-01-02 13:45:12,000 ERROR [ome.services.X] (l.Server-7) failed\n\tat ome.X.y(X.java:1)\n"
    );
    println!("logs --file Blitz-0 --tail 1: {:?}", started.elapsed());

    // Followed: the first read, then a followed stream from the second of its last line, whose
    // lines already shown are skipped; the plugin runs until killed.
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
        .arg("--kubeconfig")
        .arg(&admin)
        .args(["-n", &suite.ns, "logs", "omero", "rw", "-f", "--file", "Blitz-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut followed = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !followed.contains("a followed record") && Instant::now() < deadline {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(1), stdout.read(&mut buffer)).await;
        if let Ok(Ok(n)) = read {
            followed.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    child.kill().await.unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    println!("$ kubectl omero logs omero rw -f --file Blitz-0 ({:?})\n{followed}{err}", started.elapsed());
    assert_eq!(
        followed,
        "2024-01-02 13:45:10,000 INFO  [ome.services.blitz.Entry] (main) Blitz up\n\
         2024-01-02 13:45:12,000 ERROR [ome.services.X] (l.Server-7) failed\n\tat ome.X.y(X.java:1)\n\
         2024-01-02 13:45:13,000 INFO  [ome.services.X] (main) a followed record\n",
        "each record once: {err}"
    );

    let (out, code) = plugin(&admin, &suite.ns, &["logs", "plain", "rw", "--tail", "5"]).await;
    assert_eq!(code, Some(0), "{out}");
    // Its output, then its note (the helper shows stdout, then stderr).
    assert!(out.starts_with("Running /startup/99-run.sh\n"), "{out}");
    assert!(out.contains("spec.serverLogs.mode is None"), "{out}");

    // What the API server asked the kubelet for.
    let seen = requests.lock().unwrap().clone();
    for request in &seen {
        println!("kubelet asked: {} {:?} over {}", request.path, request.query, request.protocol);
    }
    let to_logs: Vec<&ContainerLogRequest> = seen
        .iter()
        .filter(|r| r.path == format!("/containerLogs/{}/{pod_name}/omero-logs", suite.ns))
        .collect();
    assert_eq!(to_logs.len(), 3, "--tail, then -f's first read and its followed stream: {seen:#?}");
    assert!(
        to_logs.iter().all(|r| r.query.get("timestamps").map(String::as_str) == Some("true")),
        "{seen:#?}"
    );
    assert_eq!(to_logs[2].query.get("follow").map(String::as_str), Some("true"), "{seen:#?}");
    assert!(to_logs[2].query.contains_key("sinceTime"), "{seen:#?}");
    assert!(
        seen.iter().any(|r| r.path.ends_with("/omero-server")
            && r.query.get("tailLines").map(String::as_str) == Some("5")),
        "{seen:#?}"
    );
    suite.finish().await;
}

/// A database for the e2e cluster's read-write node, with OMERO's tables, when the run has a
/// PostgreSQL (`scripts/with-postgres.sh` sets `OMERO_OPERATOR_TEST_DATABASE_URL`): (host, port,
/// database, user, password, a client of it, the admin client that drops it).
async fn e2e_database(
    ns: &str,
) -> Option<(String, u16, String, String, String, tokio_postgres::Client, tokio_postgres::Client)> {
    let url = std::env::var("OMERO_OPERATOR_TEST_DATABASE_URL").ok()?;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let connect = |config: tokio_postgres::Config| async move {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    };
    let admin = connect(config.clone()).await;
    let name = ns.replace('-', "_");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut own = config.clone();
    own.dbname(&name);
    let db = connect(own).await;
    db.batch_execute(include_str!("fixtures/omero-sessions-schema.sql")).await.unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("a TCP host") };
    let password = String::from_utf8(config.get_password().unwrap().to_vec()).unwrap();
    Some((host.clone(), config.get_ports()[0], name, config.get_user().unwrap().into(), password, db, admin))
}

/// `kubectl omero sessions` against a real API server, through its real proxies: the played
/// session counter's `/sessions/list` through the pod proxy to the pod's (loopback) IP; the
/// operator's `/sessions/...` route through the service proxy, to the e2e operator process by a
/// selectorless copy of the chart's metrics Service and an Endpoints object at its address. The
/// read-write node's sessions come from a real PostgreSQL when the run has one
/// (`scripts/with-postgres.sh`); without it the operator's failure to reach the database is
/// what must come through. Then as namespace users: one bound to the built-in view role and
/// listed in the chart's `sessionReaders` (the operator's Service answers; the pod proxy is
/// refused, naming pods/proxy), one bound to edit (both proxies answer: the operator runs in
/// the same namespace here), one bound to view alone (the service proxy is refused, naming
/// services/proxy and sessionReaders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_omero_sessions_on_a_real_cluster() {
    use k8s_openapi::api::core::v1::Endpoints;
    let Some(mut suite) = Suite::start("sessions", Install::OneNamespace).await else { return };
    suite.apply_chart(&[], &["user-roles.yaml"]).await;
    suite.play_kubelet(1).await;
    let ns = suite.ns.clone();
    let database = e2e_database(&ns).await;
    let (host, port, name, user, password) = match &database {
        Some((host, port, name, user, password, ..)) => {
            (host.clone(), *port, name.clone(), user.clone(), password.clone())
        }
        // Nothing listens on port 1: the operator's connection is refused at once.
        None => ("127.0.0.1".into(), 1, "omero".into(), "omero".into(), "unused".into()),
    };
    let secret = json!({"metadata": {"name": "omero-db"}, "stringData": {"password": password}});
    suite
        .api::<Secret>()
        .create(&PostParams::default(), &serde_json::from_value(secret).unwrap())
        .await
        .unwrap();
    let mut manifest = cluster_manifest(
        &ns,
        "openmicroscopy/omero-server:5.6",
        json!([
            {"name": "rw"},
            {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
            {"name": "ro-2", "readOnly": {"db": true, "repo": true}, "sessionProbe": {"type": "None"}}
        ]),
    );
    manifest["spec"]["database"] = json!({"host": host, "port": port, "name": name, "user": user,
                                          "passwordSecret": {"name": "omero-db", "key": "password"}});
    manifest["spec"]["sessionCounter"] = json!({"credentialsSecret": {"name": "omero-counter"}});
    let ssa = PatchParams::apply("omero-operator-e2e").force();
    let clusters = suite.clusters();
    clusters.patch("omero", &ssa, &Patch::Apply(manifest)).await.unwrap();
    suite.set_sessions("ro-1", 2);
    let pods: Api<Pod> = suite.api();
    let rw_ip = eventually(120, "ro-1 serving and rw's pod running", || async {
        let c = clusters.get("omero").await.ok()?;
        (c.status?.node("ro-1")?.phase == NodePhase::Serving).then_some(())?;
        let rw = pods.list(&ListParams::default().labels(&format!("{NODE_LABEL}=rw"))).await.ok()?;
        rw.items.iter().find_map(|p| p.status.as_ref()?.pod_ip.clone())
    })
    .await;
    if let Some((.., db, _)) = &database {
        // What rw's Blitz and its users would have written.
        db.batch_execute(&format!(
            "INSERT INTO experimenter (id, omename, firstname, lastname, email) VALUES \
               (2, 'alice', 'Alice', 'Liddell', 'alice@example.org'), (3, 'bob', 'Bob', 'Ross', 'bob@example.org');
             INSERT INTO node (id, conn, uuid) VALUES (1, 'n1 -t -e 1.1:tcp -h {rw_ip} -p 45678 -t 60000', 'node-1');
             INSERT INTO session (id, uuid, node, useragent, owner, started) VALUES
               (1, 'uuid-tables', 1, 'Python service', 0, now()),
               (2, 'uuid-alice', 1, 'OMERO.insight', 2, now() - interval '2 hours'),
               (3, 'uuid-bob', 1, 'OMERO.web', 3, now() - interval '5 minutes')"
        ))
        .await
        .unwrap();
    }

    // The chart's metrics Service, without its selector (the operator runs here as a process on
    // 127.0.0.1, not as the chart's pods), and an Endpoints object at the operator's address.
    let operator_port = suite.operator.as_ref().unwrap().http_port().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let helm = std::env::var_os("HELM").map_or_else(|| root.join("bin/helm"), PathBuf::from);
    let out = Command::new(helm)
        .current_dir(root)
        .args(["template", &ns, "charts/omero-operator", "--namespace", &ns])
        .args(["--kube-version", "1.28.0", "--show-only", "templates/service.yaml"])
        .output()
        .expect("helm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut service: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    service["spec"].as_object_mut().unwrap().remove("selector");
    let service_name = service["metadata"]["name"].as_str().unwrap().to_string();
    suite
        .api::<Service>()
        .create(&PostParams::default(), &serde_json::from_value(service).unwrap())
        .await
        .unwrap();
    let endpoints = json!({"metadata": {"name": service_name},
                           "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": operator_port}]}]});
    suite
        .api::<Endpoints>()
        .create(&PostParams::default(), &serde_json::from_value(endpoints).unwrap())
        .await
        .unwrap();

    let admin = PathBuf::from(&suite.path);
    let rw_in_words = |out: &str| {
        if database.is_some() {
            assert!(
                out.contains("rw (Serving), pod omero-rw-") || out.contains("rw (Starting), pod omero-rw-"),
                "{out}"
            );
            assert!(out.contains(": 2 sessions, from OMERO's database through the operator"), "{out}");
            for user in ["alice  OMERO.insight", "bob    OMERO.web"] {
                assert!(out.contains(user), "{user}: {out}");
            }
        } else {
            assert!(
                out.contains("sessions not read: the operator: database omero@127.0.0.1:1/omero: "),
                "{out}"
            );
        }
    };
    let (out, code) = plugin(&admin, &ns, &["sessions", "omero"]).await;
    assert_eq!(code, Some(if database.is_some() { 0 } else { 1 }), "{out}");
    rw_in_words(&out);
    assert!(out.contains(": 2 sessions, from the session counter (sample ro-1-"), "{out}");
    for person in ["ro-1-person-1  OMERO.web", "ro-1-person-2  OMERO.web"] {
        assert!(out.contains(person), "{person}: {out}");
    }
    assert!(
        out.contains("ro-2 (Serving), pod omero-ro-2-") && out.contains(": not counted: no session probe"),
        "{out}"
    );
    assert!(!out.contains("uuid") && !out.contains("Liddell"), "{out}");
    let (out, code) = plugin(&admin, &ns, &["sessions", "omero", "ro-1", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["list"]["sessions"][1]["user"], "ro-1-person-2");

    // Namespace users: the view role and sessionReaders; the edit role alone.
    let viewer = format!("{ns}-viewer");
    let editor = format!("{ns}-editor");
    let outsider = format!("{ns}-outsider");
    for (user, role) in [(&viewer, "view"), (&editor, "edit"), (&outsider, "view")] {
        let binding = json!({"metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]});
        suite
            .api::<RoleBinding>()
            .create(&PostParams::default(), &serde_json::from_value(binding).unwrap())
            .await
            .unwrap();
    }
    suite.apply_chart(&[format!("sessionReaders.users={{{viewer}}}")], &["session-readers.yaml"]).await;
    let roles: Api<ClusterRole> = Api::all(suite.client.clone());
    eventually(60, "view aggregates omeroclusters", || async {
        let rules = roles.get("view").await.ok()?.rules?;
        rules.iter().any(|r| r.resources.iter().flatten().any(|x| x == "omeroclusters")).then_some(())
    })
    .await;
    let as_user = |user: &str| ["--as".to_string(), user.to_string()];
    let run_as = |user: String| {
        let admin = admin.clone();
        let ns = ns.clone();
        async move {
            let mut args = as_user(&user).to_vec();
            args.extend(["sessions", "omero", "--operator-namespace", &ns].map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            plugin(&admin, &ns, &args).await
        }
    };
    let (out, code) = run_as(viewer.clone()).await;
    assert_eq!(code, Some(1), "{out}");
    rw_in_words(&out);
    assert!(
        out.contains(&format!("User \"{viewer}\" cannot get resource \"pods/proxy\""))
            && out.contains(&format!("it needs get on pods/proxy in namespace {ns}, which the built-in edit and admin roles grant and view does not")),
        "{out}"
    );
    // The edit role grants both proxies in its namespace, here the operator's too.
    let (out, code) = run_as(editor.clone()).await;
    assert_eq!(code, Some(if database.is_some() { 0 } else { 1 }), "{out}");
    assert!(out.contains("ro-1-person-1  OMERO.web"), "the edit role reads the pod proxy: {out}");
    rw_in_words(&out);
    let (out, code) = run_as(outsider.clone()).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("User \"{outsider}\" cannot get resource \"services/proxy\""))
            && out.contains(&format!(
                "it needs get on services/proxy for {service_name}:http in namespace {ns} (the chart's sessionReaders value grants it)"
            )),
        "{out}"
    );
    if let Some((_, _, name, _, _, db, admin)) = database {
        drop(db);
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    }
    suite.finish().await;
}
