//! In-memory doubles of the controller's ports, and a driver that runs reconciles the way
//! kube-runtime would: with the cluster as last written, on tokio's (paused) clock.
//!
//! The cluster port's double answers as a Kubernetes 1.28 API server would: objects live in
//! namespaces (`objects`), what is written is stored as the API server stores it (defaults,
//! allocations, canonical quantities, system metadata: `defaults` and [`State::admit`]), and a
//! deleted pod terminates rather than vanishing ([`State::delete_pod_gracefully`]; the
//! simulation's kubelet, `sim`, ends the termination).

#![allow(dead_code)]

pub mod defaults;
pub mod drive;
pub mod kubeconfig;
pub mod objects;
pub mod sim;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Node, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
pub use objects::{Objects, Secrets, TEST_NAMESPACE};
use omero_operator::{
    Error,
    api::{NodeStatus, OmeroCluster, OmeroClusterStatus, SecretKeyRef, keys},
    controller::{
        Clock, Context,
        port::{
            Child, ChildKind, Children, ClusterPort, Event, OmeroPort, RedirectQuery, SessionCount,
            SessionQuery, StatusWrite,
        },
        reconcile,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// One write the operator made, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    ApplyDeployment(String),
    ApplyService(String),
    ApplyConfigMap(String),
    ApplyBudget(String),
    Delete(ChildKind, String),
    DeletePod(String),
    Label { pod: String, routable: bool },
    Status,
    Event(String),
}

#[derive(Default)]
pub struct State {
    pub cluster: Option<OmeroCluster>,
    pub deployments: Objects<Deployment>,
    pub services: Objects<Service>,
    pub config_maps: Objects<ConfigMap>,
    pub budgets: Objects<PodDisruptionBudget>,
    pub pods: Objects<Pod>,
    /// Kubernetes Nodes, as the operator's Node cache holds them; `None`: it does not watch
    /// Nodes (`--watch-nodes` off).
    pub kube_nodes: Option<BTreeMap<String, Node>>,
    /// The Nodes exist (the simulation schedules on them) but the operator does not watch
    /// them: `children` reports no Node cache.
    pub nodes_unwatched: bool,
    pub secrets: Secrets,
    pub events: Vec<Event>,
    pub writes: Vec<Write>,
    /// Make every write fail (an API outage).
    pub fail_writes: bool,
    /// Make publishing Events fail (e.g. no RBAC for events).
    pub fail_events: bool,
    /// Source of object uids.
    pub next_uid: u64,
    /// The API server's clock (creation and deletion timestamps); `None`: [`START`].
    pub clock: Option<Clock>,
    /// The last resourceVersion handed out: one sequence for every object, as etcd's revision.
    pub resource_version: u64,
    /// The Service registry's cluster IPs and node ports.
    pub allocator: defaults::Allocator,
    /// The cluster as it was before each of the operator's status writes, oldest first.
    pub history: Vec<OmeroCluster>,
    /// Status writes refused because the reconcile started from an older copy.
    pub stale_writes: u32,
    /// Port calls made so far (counted when a crash is armed).
    pub calls: usize,
    /// Kill the operator right after this many port calls: every later call fails.
    pub crash_after: Option<usize>,
    pub crashed: bool,
    /// What a lagging watch cache hands the reconcile instead of the current objects.
    pub cache: Option<Children>,
    /// Objects (by `Kind/name`) whose apply the API server refuses, with its message.
    pub refuse: BTreeMap<String, String>,
    /// Someone else writes the cluster right after the operator's next successful status
    /// write, so the operator's following write of the same reconcile finds it changed.
    pub changed_after_status_write: bool,
    /// Objects (by `Kind/name`) the operator's account may not write: 403, as RBAC answers.
    pub forbid: std::collections::BTreeSet<String>,
}

/// A new resourceVersion, as the API server gives on every write.
pub fn bump(cluster: &mut OmeroCluster) {
    let rv: u64 = cluster.metadata.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    cluster.metadata.resource_version = Some((rv + 1).to_string());
}

/// The system metadata the API server sets and keeps whatever a client sends: the stored
/// object's on an update, fresh ones on a create.
const SYSTEM_METADATA: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

impl State {
    /// The metadata of the object of `kind` named `name` in namespace `ns`, whoever holds it.
    fn meta_of(&self, kind: ChildKind, ns: &str, name: &str) -> Option<ObjectMeta> {
        match kind {
            ChildKind::Deployment => self.deployments.get_in(ns, name).map(|d| d.metadata.clone()),
            ChildKind::Service => self.services.get_in(ns, name).map(|s| s.metadata.clone()),
            ChildKind::ConfigMap => self.config_maps.get_in(ns, name).map(|c| c.metadata.clone()),
            ChildKind::PodDisruptionBudget => self.budgets.get_in(ns, name).map(|b| b.metadata.clone()),
        }
    }

    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.next_uid)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.as_ref().map_or_else(|| START.parse().unwrap(), Clock::now)
    }

    fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// `sent`, an object of `kind` written to namespace `ns` (created, or replacing `existing`),
    /// as the API server stores it: refused (400) when it names another namespace, defaulted
    /// (`defaults`), refused (422) when it changes a field that cannot change, and given the
    /// system metadata: the namespace, a uid and creationTimestamp on a create (the stored
    /// ones on an update), a generation for kinds that keep one (1 on a create, one more on
    /// each change of the spec, or of a Deployment's annotations), the stored status (an empty
    /// one on a create), and a new resourceVersion unless the write changes nothing.
    ///
    /// An apply replaces the stored object: a server-side apply would also keep fields other
    /// managers set, but nothing else writes the operator's objects here.
    pub fn admit<K>(&mut self, kind: &str, ns: &str, sent: &K, existing: Option<&K>) -> Result<K, Error>
    where
        K: kube::Resource + Serialize + DeserializeOwned,
    {
        let mut object = serde_json::to_value(sent).unwrap();
        let before = existing.map(|e| serde_json::to_value(e).unwrap());
        let name = sent.meta().name.clone().unwrap_or_default();
        if sent.meta().namespace.as_deref().is_some_and(|theirs| theirs != ns) {
            let message =
                "the namespace of the provided object does not match the namespace sent on the request";
            return Err(api_error(400, "BadRequest", message.into()));
        }
        match kind {
            "Deployment" => defaults::deployment(&mut object),
            "Service" => defaults::service(&mut object, before.as_ref(), &mut self.allocator),
            _ => defaults::plain(&mut object),
        }
        if let Some(before) = &before {
            immutable_change(kind, &name, &object, before)?;
        }
        let meta = object.as_object_mut().unwrap().entry("metadata").or_insert_with(|| serde_json::json!({}));
        let meta = meta.as_object_mut().unwrap();
        for field in SYSTEM_METADATA {
            meta.remove(field);
        }
        meta.insert("namespace".into(), ns.into());
        match before.as_ref().and_then(|b| b.get("metadata")) {
            Some(stored) => {
                for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                    if let Some(value) = stored.get(field) {
                        meta.insert(field.into(), value.clone());
                    }
                }
            }
            None => {
                meta.insert("uid".into(), self.new_uid().into());
                meta.insert("creationTimestamp".into(), self.now().to_string().into());
            }
        }
        let object = object.as_object_mut().unwrap();
        match (&before, defaults::created_status(kind)) {
            (Some(before), _) => match before.get("status") {
                Some(status) => object.insert("status".into(), status.clone()),
                None => object.remove("status"),
            },
            (None, Some(status)) => object.insert("status".into(), status),
            (None, None) => object.remove("status"),
        };
        // What the typed object holds (fields it does not know are dropped), compared with the
        // stored one below.
        let mut stored: K = serde_json::from_value(Value::Object(object.clone())).unwrap();
        let after = serde_json::to_value(&stored).unwrap();
        if matches!(kind, "Deployment" | "PodDisruptionBudget") {
            let generation = match &before {
                None => 1,
                Some(before) => {
                    let generation =
                        before.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                    let annotations = |v: &Value| v.pointer("/metadata/annotations").cloned();
                    let changed = before.get("spec") != after.get("spec")
                        || (kind == "Deployment" && annotations(before) != annotations(&after));
                    generation + i64::from(changed)
                }
            };
            stored.meta_mut().generation = Some(generation);
        }
        // A write that changes nothing is no write: etcd is not touched, the version stays.
        let unchanged = before.as_ref().is_some_and(|before| {
            let mut before = before.clone();
            let mut now = serde_json::to_value(&stored).unwrap();
            for object in [&mut before, &mut now] {
                object["metadata"].as_object_mut().unwrap().remove("resourceVersion");
            }
            before == now
        });
        stored.meta_mut().resource_version = if unchanged {
            existing.and_then(|e| e.meta().resource_version.clone())
        } else {
            Some(self.next_resource_version())
        };
        Ok(stored)
    }

    /// A pod as the API server stores what its controller (the simulation's ReplicaSets, or a
    /// test playing one) or the kubelet writes: in namespace `ns`, defaulted as a pod, keeping
    /// the system metadata of the pod of that name if there is one (a status update), with a
    /// new resourceVersion when it changed. Its creationTimestamp is the writer's if it gives
    /// one (tests date their pods), else now.
    pub fn store_pod(&mut self, ns: &str, mut pod: Value) {
        defaults::pod(&mut pod);
        let name = pod["metadata"]["name"].as_str().expect("a pod has a name").to_string();
        let before = self.pods.get_in(ns, &name).map(|p| serde_json::to_value(p).unwrap());
        let meta = pod["metadata"].as_object_mut().unwrap();
        meta.insert("namespace".into(), ns.into());
        for field in
            ["uid", "resourceVersion", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"]
        {
            meta.remove(field);
        }
        match before.as_ref().map(|b| &b["metadata"]) {
            Some(stored) => {
                for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                    if let Some(value) = stored.get(field) {
                        meta.insert(field.into(), value.clone());
                    }
                }
            }
            None => {
                meta.insert("uid".into(), self.new_uid().into());
                if !meta.contains_key("creationTimestamp") {
                    meta.insert("creationTimestamp".into(), self.now().to_string().into());
                }
            }
        }
        let mut stored: Pod = serde_json::from_value(pod).unwrap();
        let unchanged = before.as_ref().is_some_and(|before| {
            let mut before = before.clone();
            before["metadata"].as_object_mut().unwrap().remove("resourceVersion");
            before == serde_json::to_value(&stored).unwrap()
        });
        stored.metadata.resource_version = if unchanged {
            before.and_then(|b| b["metadata"]["resourceVersion"].as_str().map(String::from))
        } else {
            Some(self.next_resource_version())
        };
        self.pods.put(stored);
    }

    /// A DELETE of a pod that names no grace period, as the API server answers it
    /// (`rest.BeforeDelete` and the pod strategy's `CheckGracefulDelete`): a pod bound to a node
    /// terminates: it gets a deletionTimestamp (now plus its grace period,
    /// `terminationGracePeriodSeconds`, 30 s by default) and `deletionGracePeriodSeconds`, and
    /// stays until the kubelet has stopped it (the simulation's, or
    /// [`FakeCluster::finish_terminations`]). A pod not bound to a node, one that already ended,
    /// or one with no grace period goes at once. A pod already terminating is left as it is: a
    /// second delete is no change. Taken as bound: a pod with a node, or one running (the
    /// doubles without Kubernetes Nodes do not bind pods, but a running pod always is bound).
    pub fn delete_pod_gracefully(&mut self, ns: &str, name: &str) {
        let now = self.now();
        let Some(pod) = self.pods.get_in(ns, name) else { return };
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) || phase == Some("Running");
        let ended = matches!(phase, Some("Succeeded" | "Failed"));
        let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        if !bound || ended || grace == 0 {
            self.pods.remove_in(ns, name);
            return;
        }
        // A negative grace period is taken as one second.
        let grace = grace.max(1);
        let version = self.next_resource_version();
        let meta = &mut self.pods.get_mut_in(ns, name).unwrap().metadata;
        meta.deletion_timestamp = Some(Time(now + std::time::Duration::from_secs(grace.unsigned_abs())));
        meta.deletion_grace_period_seconds = Some(grace);
        meta.resource_version = Some(version);
    }
}

/// A change the API server refuses (422) because the field cannot change once set.
fn immutable_change(kind: &str, name: &str, after: &Value, before: &Value) -> Result<(), Error> {
    let refused = |field: &str, value: &Value| {
        let message =
            format!("{kind} \"{name}\" is invalid: {field}: Invalid value: {value}: field is immutable");
        Err(api_error(422, "Invalid", message))
    };
    match kind {
        "Deployment" if after.pointer("/spec/selector") != before.pointer("/spec/selector") => {
            refused("spec.selector", &after["spec"]["selector"])
        }
        "Service" if after.pointer("/spec/clusterIP") != before.pointer("/spec/clusterIP") => {
            refused("spec.clusterIPs[0]", &after["spec"]["clusterIP"])
        }
        _ => Ok(()),
    }
}

/// The metadata of an object someone else created (see [`FakeCluster::seed_service`]): its
/// labels, and the controller owner reference `owner` (kind, name, uid) whose apiVersion is
/// the OmeroCluster's or `api_version` (the owner kind's group, for any other kind).
fn seeded_meta(
    name: &str,
    labels: &[(&str, &str)],
    owner: Option<(&str, &str, &str)>,
    api_version: &str,
) -> serde_json::Value {
    let labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let owner = owner.map(|(kind, n, u)| {
        let api_version = if kind == "OmeroCluster" { "omero.openmicroscopy.org/v1alpha1" } else { api_version };
        vec![serde_json::json!({"apiVersion": api_version, "kind": kind, "name": n, "uid": u, "controller": true})]
    });
    serde_json::json!({"name": name, "labels": labels, "ownerReferences": owner})
}

/// The cluster's labels, as the real adapter's label selector reads them.
fn labelled_for(meta: &ObjectMeta, cluster: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| {
        l.get(keys::CLUSTER_LABEL).map(String::as_str) == Some(cluster)
            && l.get(keys::MANAGED_BY_LABEL).map(String::as_str) == Some(keys::MANAGER)
    })
}

/// The API server's check of a uid precondition.
/// The API server's answer to a request with a uid precondition, as a kube error.
fn api_error(code: u16, reason: &str, message: String) -> Error {
    Error::Kube(kube::Error::Api(kube::core::Status::failure(&message, reason).with_code(code).boxed()))
}

/// A delete with a uid precondition, as the API server answers it: 404 when the object is
/// gone, 409 when another object holds the name now.
fn check_uid(meta: Option<&ObjectMeta>, uid: Option<&str>, what: &str) -> Result<(), Error> {
    match (meta.and_then(|m| m.uid.as_deref()), uid) {
        (Some(have), Some(want)) if have != want => Err(api_error(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {want}, UID in object meta: {have} ({what})"),
        )),
        (None, Some(_)) => Err(api_error(404, "NotFound", format!("{what} not found"))),
        _ => Ok(()),
    }
}

/// A server-side apply that carries the uid it last saw, as the API server answers it: 409
/// when the object is gone (the apply would create it), 422 when another object holds the
/// name now (uid is immutable).
fn check_apply_uid(meta: Option<&ObjectMeta>, uid: Option<&str>, what: &str) -> Result<(), Error> {
    match (meta.and_then(|m| m.uid.as_deref()), uid) {
        (Some(have), Some(want)) if have != want => Err(api_error(
            422,
            "Invalid",
            format!("{what} is invalid: metadata.uid: Invalid value: \"{want}\": field is immutable"),
        )),
        (None, Some(want)) => Err(api_error(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what}: uid precondition {want} and the object is gone"
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Default)]
pub struct FakeCluster(pub Arc<Mutex<State>>);

impl FakeCluster {
    pub fn new(cluster: OmeroCluster) -> Self {
        let fake = Self::default();
        let mut state = fake.state();
        state.cluster = Some(cluster);
        state.clock = Some(Clock::starting_at(START.parse().unwrap()));
        drop(state);
        fake
    }

    /// The cluster's namespace, where its children live.
    pub fn namespace(&self) -> String {
        self.cluster().metadata.namespace.unwrap_or_else(|| TEST_NAMESPACE.into())
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn cluster(&self) -> OmeroCluster {
        self.state().cluster.clone().expect("a cluster")
    }

    pub fn status(&self) -> OmeroClusterStatus {
        self.cluster().status.unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> NodeStatus {
        self.status().node(name).cloned().unwrap_or_else(|| panic!("no status for node {name}"))
    }

    /// A node's status as the operator of `ctx` sees it: as recorded, with what it remembers
    /// of the node's probes (next probe, backoff, sample), which status never holds.
    pub fn remembered_node<O>(&self, ctx: &Context<FakeCluster, O>, name: &str) -> NodeStatus {
        let cluster = self.cluster();
        let memory = ctx.probe_memory.recall(&cluster);
        let status = omero_operator::controller::probe_memory::recalled(cluster.status.as_ref(), &memory);
        status.node(name).cloned().unwrap_or_else(|| panic!("no status for node {name}"))
    }

    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    pub fn take_writes(&self) -> Vec<Write> {
        std::mem::take(&mut self.state().writes)
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.state().events.iter().map(|e| e.reason.clone()).collect()
    }

    pub fn set_annotation(&self, key: &str, value: Option<&str>) {
        let mut state = self.state();
        let cluster = state.cluster.as_mut().unwrap();
        let annotations = cluster.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => annotations.insert(key.into(), v.into()),
            None => annotations.remove(key),
        };
        bump(cluster);
    }

    /// Changes the cluster as `kubectl` would: a new generation for a spec change, a new
    /// resourceVersion either way.
    pub fn edit(&self, change: impl FnOnce(&mut OmeroCluster)) {
        let mut state = self.state();
        let cluster = state.cluster.as_mut().unwrap();
        let spec = cluster.spec.clone();
        change(cluster);
        if cluster.spec != spec {
            cluster.metadata.generation = Some(cluster.metadata.generation.unwrap_or(1) + 1);
        }
        bump(cluster);
    }

    /// The node's pod as the kubelet would report it (created by its Deployment), in the
    /// cluster's namespace; the same pod (uid, creation) once it exists.
    pub fn set_pod(&self, node: &str, ip: &str, ready: bool) {
        let mut state = self.state();
        let cluster = state.cluster.as_ref().unwrap();
        let ns = cluster.metadata.namespace.clone().unwrap_or_else(|| TEST_NAMESPACE.into());
        let cluster = cluster.metadata.name.clone().unwrap();
        let name = format!("{cluster}-{node}-pod");
        let existing = state.pods.get_in(&ns, &name);
        let routable = existing.and_then(|p| p.metadata.labels.as_ref()?.get(keys::ROUTABLE_LABEL).cloned());
        // Once its startup probe passed, a container stays started through readiness blips.
        let started = ready
            || existing.is_some_and(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs[0].started == Some(true))
            });
        let mut labels = BTreeMap::from([
            (keys::CLUSTER_LABEL.to_string(), cluster.clone()),
            (keys::NODE_LABEL.to_string(), node.to_string()),
            (keys::MANAGED_BY_LABEL.to_string(), keys::MANAGER.to_string()),
            ("pod-template-hash".to_string(), "5f7d".to_string()),
        ]);
        if let Some(r) = routable {
            labels.insert(keys::ROUTABLE_LABEL.into(), r);
        }
        let pod = serde_json::json!({
            "metadata": {"name": name, "labels": labels, "creationTimestamp": START,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("{cluster}-{node}-5f7d"), "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "omero-server", "image": "openmicroscopy/omero-server:5.6"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                       "containerStatuses": [{"name": "omero-server", "image": "openmicroscopy/omero-server:5.6", "imageID": "",
                                              "containerID": "containerd://1", "restartCount": 0, "ready": ready, "started": started}]}
        });
        state.store_pod(&ns, pod);
    }

    /// An object someone else created (`owner`: the controller owner reference as kind, name,
    /// uid; None for a hand-made object), in the test namespace, stored as the API server
    /// would hold it.
    pub fn seed_service(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Service {
        self.seed_service_in(TEST_NAMESPACE, name, labels, owner)
    }

    /// Like [`seed_service`], in namespace `ns`.
    pub fn seed_service_in(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Service {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": seeded_meta(name, labels, owner, "apps/v1"),
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let mut state = self.state();
        let stored = state.admit(ChildKind::Service.as_str(), ns, &service, None).unwrap();
        state.services.put(stored.clone());
        stored
    }

    /// Like [`seed_service`], a Deployment.
    pub fn seed_deployment(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Deployment {
        self.seed_deployment_in(TEST_NAMESPACE, name, labels, owner)
    }

    /// Like [`seed_deployment`], in namespace `ns`.
    pub fn seed_deployment_in(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Deployment {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": seeded_meta(name, labels, owner, "apps/v1"),
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
        }))
        .unwrap();
        let mut state = self.state();
        let stored = state.admit(ChildKind::Deployment.as_str(), ns, &deployment, None).unwrap();
        state.deployments.put(stored.clone());
        stored
    }

    /// Like [`seed_service`], a ConfigMap.
    pub fn seed_config_map(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> ConfigMap {
        self.seed_config_map_in(TEST_NAMESPACE, name, labels, owner)
    }

    /// Like [`seed_config_map`], in namespace `ns`.
    pub fn seed_config_map_in(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> ConfigMap {
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": seeded_meta(name, labels, owner, "v1"),
            "data": {"settings.ini": "[web]\nport = 8080\n"}
        }))
        .unwrap();
        let mut state = self.state();
        let stored = state.admit(ChildKind::ConfigMap.as_str(), ns, &config_map, None).unwrap();
        state.config_maps.put(stored.clone());
        stored
    }

    /// The garbage collector after the OmeroCluster with `uid` is deleted, as Kubernetes' does
    /// it: an object goes once every owner it names is gone, so one that also names another
    /// owner (which the double takes to exist) stays.
    pub fn collect_garbage_of(&self, uid: &str) {
        let mut state = self.state();
        let owned = |m: &ObjectMeta| {
            let owners = m.owner_references.as_deref().unwrap_or_default();
            !owners.is_empty() && owners.iter().all(|r| r.uid == uid)
        };
        state.deployments.retain_all(|d| !owned(&d.metadata));
        state.services.retain_all(|s| !owned(&s.metadata));
        state.config_maps.retain_all(|c| !owned(&c.metadata));
        state.budgets.retain_all(|b| !owned(&b.metadata));
    }

    /// Like [`seed_service`], a PodDisruptionBudget.
    pub fn seed_budget(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> PodDisruptionBudget {
        self.seed_budget_in(TEST_NAMESPACE, name, labels, owner)
    }

    /// Like [`seed_budget`], in namespace `ns`.
    pub fn seed_budget_in(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> PodDisruptionBudget {
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": seeded_meta(name, labels, owner, "apps/v1"),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        let mut state = self.state();
        let stored = state.admit(ChildKind::PodDisruptionBudget.as_str(), ns, &budget, None).unwrap();
        state.budgets.put(stored.clone());
        stored
    }

    /// The node's pod is gone (its termination, if any, is over).
    pub fn remove_pod(&self, node: &str) {
        let ns = self.namespace();
        let mut state = self.state();
        let cluster = state.cluster.as_ref().unwrap().metadata.name.clone().unwrap();
        state.pods.remove_in(&ns, &format!("{cluster}-{node}-pod"));
    }

    /// The kubelet has stopped every terminating pod: they are gone. (The simulation's kubelet
    /// does this on its clock; a plain double has none.)
    pub fn finish_terminations(&self) {
        self.state().pods.retain_all(|p| p.metadata.deletion_timestamp.is_none());
    }

    pub fn pod_routable(&self, node: &str) -> bool {
        let ns = self.namespace();
        let state = self.state();
        let cluster = state.cluster.as_ref().unwrap().metadata.name.clone().unwrap();
        let pod = state.pods.get_in(&ns, &format!("{cluster}-{node}-pod")).expect("the node's pod");
        pod.metadata.labels.as_ref().and_then(|l| l.get(keys::ROUTABLE_LABEL)).is_some_and(|v| v == "true")
    }

    /// Every port call: fails once the operator is "killed", and arms the kill.
    fn call(&self) -> Result<(), Error> {
        let mut state = self.state();
        if state.crashed {
            return Err(Error::MissingNamespace("the operator was killed".into()));
        }
        state.calls += 1;
        if state.crash_after == Some(state.calls) {
            state.crashed = true;
        }
        Ok(())
    }

    fn write(&self, w: Write) -> Result<(), Error> {
        self.call()?;
        let mut state = self.state();
        if state.fail_writes {
            return Err(Error::MissingNamespace(format!("injected failure of {w:?}")));
        }
        state.writes.push(w);
        Ok(())
    }
}

/// The objects of namespace `ns` that carry the cluster's labels, as the real adapter's
/// namespaced label selector finds them.
fn of_cluster<'a, K: kube::Resource + Clone + 'a>(
    objects: impl IntoIterator<Item = &'a K>,
    ns: &str,
    cluster: &str,
) -> Vec<K> {
    objects
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns) && labelled_for(o.meta(), cluster))
        .cloned()
        .collect()
}

impl ClusterPort for FakeCluster {
    async fn children(&self, cluster: &OmeroCluster) -> Result<Children, Error> {
        self.call()?;
        let state = self.state();
        let name = cluster.metadata.name.clone().unwrap();
        let ns = cluster.metadata.namespace.clone().unwrap();
        if let Some(cache) = &state.cache {
            return Ok(Children {
                deployments: of_cluster(&cache.deployments, &ns, &name),
                services: of_cluster(&cache.services, &ns, &name),
                config_maps: of_cluster(&cache.config_maps, &ns, &name),
                budgets: of_cluster(&cache.budgets, &ns, &name),
                pods: of_cluster(&cache.pods, &ns, &name),
                kube_nodes: if state.nodes_unwatched { None } else { cache.kube_nodes.clone() },
            });
        }
        Ok(Children {
            deployments: of_cluster(state.deployments.values_in(&ns), &ns, &name),
            services: of_cluster(state.services.values_in(&ns), &ns, &name),
            config_maps: of_cluster(state.config_maps.values_in(&ns), &ns, &name),
            budgets: of_cluster(state.budgets.values_in(&ns), &ns, &name),
            pods: of_cluster(state.pods.values_in(&ns), &ns, &name),
            kube_nodes: if state.nodes_unwatched {
                None
            } else {
                state.kube_nodes.as_ref().map(|nodes| nodes.values().cloned().collect())
            },
        })
    }

    async fn find(&self, ns: &str, kind: ChildKind, name: &str) -> Result<Option<ObjectMeta>, Error> {
        self.call()?;
        Ok(self.state().meta_of(kind, ns, name))
    }

    async fn apply(&self, ns: &str, child: Child<'_>, uid: Option<&str>) -> Result<(), Error> {
        let name = child.name().to_string();
        let write = match child.kind() {
            ChildKind::Deployment => Write::ApplyDeployment(name.clone()),
            ChildKind::Service => Write::ApplyService(name.clone()),
            ChildKind::ConfigMap => Write::ApplyConfigMap(name.clone()),
            ChildKind::PodDisruptionBudget => Write::ApplyBudget(name.clone()),
        };
        self.write(write)?;
        let mut state = self.state();
        if let Some(message) = state.refuse.get(&format!("{}/{name}", child.kind().as_str())) {
            let status = kube::core::Status::failure(message, "Invalid").with_code(422);
            return Err(Error::Kube(kube::Error::Api(status.boxed())));
        }
        let existing = state.meta_of(child.kind(), ns, &name);
        check_apply_uid(existing.as_ref(), uid, &name)?;
        let kind = child.kind().as_str();
        match child {
            Child::Deployment(d) => {
                let before = state.deployments.get_in(ns, &name).cloned();
                let stored = state.admit(kind, ns, d, before.as_ref())?;
                state.deployments.put(stored);
            }
            Child::Service(s) => {
                let before = state.services.get_in(ns, &name).cloned();
                let stored = state.admit(kind, ns, s, before.as_ref())?;
                state.services.put(stored);
            }
            Child::ConfigMap(c) => {
                let before = state.config_maps.get_in(ns, &name).cloned();
                let stored = state.admit(kind, ns, c, before.as_ref())?;
                state.config_maps.put(stored);
            }
            Child::PodDisruptionBudget(b) => {
                let before = state.budgets.get_in(ns, &name).cloned();
                let stored = state.admit(kind, ns, b, before.as_ref())?;
                state.budgets.put(stored);
            }
        }
        Ok(())
    }

    async fn delete_child(&self, ns: &str, kind: ChildKind, name: &str, uid: &str) -> Result<(), Error> {
        self.write(Write::Delete(kind, name.into()))?;
        let mut state = self.state();
        let existing = state.meta_of(kind, ns, name);
        if existing.is_none() {
            return Ok(());
        }
        check_uid(existing.as_ref(), Some(uid), name)?;
        match kind {
            ChildKind::Deployment => state.deployments.remove_in(ns, name).map(drop),
            ChildKind::Service => state.services.remove_in(ns, name).map(drop),
            ChildKind::ConfigMap => state.config_maps.remove_in(ns, name).map(drop),
            ChildKind::PodDisruptionBudget => state.budgets.remove_in(ns, name).map(drop),
        };
        Ok(())
    }

    async fn delete_pod(&self, ns: &str, pod: &str, uid: &str) -> Result<(), Error> {
        self.write(Write::DeletePod(pod.into()))?;
        let mut state = self.state();
        // Gone, or another pod of that name now: the real adapter takes 404/409 as done.
        if state.pods.get_in(ns, pod).is_some_and(|p| p.metadata.uid.as_deref() == Some(uid)) {
            state.delete_pod_gracefully(ns, pod);
        }
        Ok(())
    }

    async fn set_routable(&self, ns: &str, pod: &str, routable: bool) -> Result<(), Error> {
        self.write(Write::Label { pod: pod.into(), routable })?;
        let mut state = self.state();
        if state.forbid.contains(&format!("Pod/{pod}")) {
            let message = format!(
                "pods \"{pod}\" is forbidden: User \"system:serviceaccount:omero:omero-operator\" cannot patch resource \"pods\""
            );
            return Err(api_error(403, "Forbidden", message));
        }
        // Gone (a lagging cache still showed it): the real adapter takes a 404 as done.
        let Some(found) = state.pods.get_in(ns, pod) else { return Ok(()) };
        let label = found.metadata.labels.as_ref().and_then(|l| l.get(keys::ROUTABLE_LABEL));
        if label.map(String::as_str) == routable.then_some("true") {
            return Ok(()); // a merge patch that changes nothing is no write
        }
        let version = state.next_resource_version();
        let found = state.pods.get_mut_in(ns, pod).unwrap();
        let labels = found.metadata.labels.get_or_insert_default();
        if routable {
            labels.insert(keys::ROUTABLE_LABEL.into(), "true".into());
        } else {
            labels.remove(keys::ROUTABLE_LABEL);
        }
        found.metadata.resource_version = Some(version);
        Ok(())
    }

    async fn secret_value(&self, ns: &str, secret: &SecretKeyRef) -> Result<String, Error> {
        self.state()
            .secrets
            .get_in(ns, &secret.name, &secret.key)
            .cloned()
            .ok_or_else(|| Error::SecretKeyMissing { name: secret.name.clone(), key: secret.key.clone() })
    }

    async fn write_status(
        &self,
        cluster: &OmeroCluster,
        status: &OmeroClusterStatus,
    ) -> Result<StatusWrite, Error> {
        self.write(Write::Status)?;
        let mut state = self.state();
        let stored_rv = state.cluster.as_ref().unwrap().metadata.resource_version.clone();
        if cluster.metadata.resource_version != stored_rv {
            state.stale_writes += 1;
            return Ok(StatusWrite::Stale);
        }
        // The copy a lagging watch cache would still hand out after this write.
        let before = state.cluster.clone().unwrap();
        state.history.push(before);
        // Round-trip through JSON as the API server stores it.
        let stored = serde_json::from_value(serde_json::to_value(status).unwrap()).unwrap();
        let cluster = state.cluster.as_mut().unwrap();
        cluster.status = Some(stored);
        bump(cluster);
        let written = cluster.metadata.resource_version.clone();
        if std::mem::take(&mut state.changed_after_status_write) {
            bump(state.cluster.as_mut().unwrap());
        }
        Ok(StatusWrite::Written(written))
    }

    async fn publish(&self, _cluster: &OmeroCluster, event: &Event) -> Result<(), Error> {
        self.call()?;
        if self.state().fail_events {
            return Err(Error::MissingNamespace("injected failure of an Event".into()));
        }
        self.write(Write::Event(event.reason.clone()))?;
        self.state().events.push(event.clone());
        Ok(())
    }
}

/// OMERO as the operator sees it: session counts by pod IP (`Ok(n)` or an error message;
/// unset IPs fail), and the grid redirect row.
#[derive(Clone, Default)]
pub struct FakeOmero {
    pub counts: Arc<Mutex<HashMap<String, Result<u64, String>>>>,
    pub queries: Arc<Mutex<Vec<SessionQuery>>>,
    /// The pod IP the redirect row points at.
    pub redirect: Arc<Mutex<Option<String>>>,
    /// Make the redirect fail with this message.
    pub redirect_failure: Arc<Mutex<Option<String>>>,
    /// The exporter sample each pod IP's count comes from (unset: read live).
    pub samples: Arc<Mutex<HashMap<String, String>>>,
}

impl FakeOmero {
    pub fn set(&self, ip: &str, count: Result<u64, &str>) {
        self.counts.lock().unwrap().insert(ip.into(), count.map_err(String::from));
    }

    pub fn queries(&self) -> Vec<SessionQuery> {
        self.queries.lock().unwrap().clone()
    }

    pub fn redirect(&self) -> Option<String> {
        self.redirect.lock().unwrap().clone()
    }
}

impl OmeroPort for FakeOmero {
    async fn count_sessions(&self, query: &SessionQuery) -> Result<Option<SessionCount>, String> {
        self.queries.lock().unwrap().push(query.clone());
        if query.probe.kind == omero_operator::api::SessionProbeKind::None {
            return Ok(None);
        }
        let sample = self.samples.lock().unwrap().get(&query.pod_ip).cloned();
        match self.counts.lock().unwrap().get(&query.pod_ip) {
            Some(Ok(n)) => Ok(Some(SessionCount { sessions: *n, sample })),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("no route to {}", query.pod_ip)),
        }
    }

    async fn redirect_new_sessions(&self, query: &RedirectQuery) -> Result<bool, String> {
        if let Some(e) = self.redirect_failure.lock().unwrap().clone() {
            return Err(e);
        }
        let mut redirect = self.redirect.lock().unwrap();
        let changed = redirect.as_deref() != Some(query.pod_ip.as_str());
        *redirect = Some(query.pod_ip.clone());
        Ok(changed)
    }
}

pub type Ctx = Context<FakeCluster, FakeOmero>;

pub const START: &str = "2026-11-25T10:00:00Z";

pub fn context(fake: &FakeCluster, sessions: &FakeOmero) -> Arc<Ctx> {
    Arc::new(Context::new(fake.clone(), sessions.clone(), Clock::starting_at(START.parse().unwrap())))
}

/// A new operator process: a fresh context whose clock continues from `at`.
pub fn restarted_context(fake: &FakeCluster, sessions: &FakeOmero, at: Timestamp) -> Arc<Ctx> {
    Arc::new(Context::new(fake.clone(), sessions.clone(), Clock::starting_at(at)))
}

pub async fn reconcile_once<O: OmeroPort>(
    fake: &FakeCluster,
    ctx: &Arc<Context<FakeCluster, O>>,
) -> Result<std::time::Duration, Error> {
    reconcile(Arc::new(fake.cluster()), ctx.clone()).await
}

pub fn cluster_from_yaml(yaml: &str) -> OmeroCluster {
    let mut cluster: OmeroCluster = serde_saphyr::from_str(yaml).unwrap();
    cluster.metadata.namespace.get_or_insert_with(|| "omero".into());
    cluster.metadata.uid.get_or_insert_with(|| "4f7e1c2a-0000-4000-8000-000000000001".into());
    cluster.metadata.generation.get_or_insert(1);
    cluster.metadata.resource_version.get_or_insert_with(|| "1".into());
    cluster
}

pub fn time(t: &Option<Time>) -> Timestamp {
    t.as_ref().expect("a timestamp").0
}
