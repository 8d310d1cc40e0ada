//! In-memory doubles of the controller's ports, and a driver that runs reconciles the way
//! kube-runtime would: with the cluster as last written, on tokio's (paused) clock.

#![allow(dead_code)]

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
    pub deployments: BTreeMap<String, Deployment>,
    pub services: BTreeMap<String, Service>,
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub budgets: BTreeMap<String, PodDisruptionBudget>,
    pub pods: BTreeMap<String, Pod>,
    /// Kubernetes Nodes, as the operator's Node cache holds them; `None`: it does not watch
    /// Nodes (`--watch-nodes` off).
    pub kube_nodes: Option<BTreeMap<String, Node>>,
    /// The Nodes exist (the simulation schedules on them) but the operator does not watch
    /// them: `children` reports no Node cache.
    pub nodes_unwatched: bool,
    pub secrets: BTreeMap<(String, String), String>,
    pub events: Vec<Event>,
    pub writes: Vec<Write>,
    /// Make every write fail (an API outage).
    pub fail_writes: bool,
    /// Make publishing Events fail (e.g. no RBAC for events).
    pub fail_events: bool,
    /// Source of object uids.
    pub next_uid: u64,
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

impl State {
    /// The metadata of the object of `kind` named `name`, whoever holds it.
    fn meta_of(&self, kind: ChildKind, name: &str) -> Option<ObjectMeta> {
        match kind {
            ChildKind::Deployment => self.deployments.get(name).map(|d| d.metadata.clone()),
            ChildKind::Service => self.services.get(name).map(|s| s.metadata.clone()),
            ChildKind::ConfigMap => self.config_maps.get(name).map(|c| c.metadata.clone()),
            ChildKind::PodDisruptionBudget => self.budgets.get(name).map(|b| b.metadata.clone()),
        }
    }

    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.next_uid)
    }
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
        fake.state().cluster = Some(cluster);
        fake
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

    /// The node's pod as the kubelet would report it (created by its Deployment).
    pub fn set_pod(&self, node: &str, ip: &str, ready: bool) {
        let mut state = self.state();
        let cluster = state.cluster.as_ref().unwrap().metadata.name.clone().unwrap();
        let name = format!("{cluster}-{node}-pod");
        let routable = state
            .pods
            .get(&name)
            .and_then(|p| p.metadata.labels.as_ref()?.get(keys::ROUTABLE_LABEL).cloned());
        // Once its startup probe passed, a container stays started through readiness blips.
        let started = ready
            || state.pods.get(&name).is_some_and(|p| {
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
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels, "creationTimestamp": START,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("{cluster}-{node}-5f7d"), "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "omero-server", "image": "openmicroscopy/omero-server:5.6"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                       "containerStatuses": [{"name": "omero-server", "image": "openmicroscopy/omero-server:5.6", "imageID": "",
                                              "containerID": "containerd://1", "restartCount": 0, "ready": ready, "started": started}]}
        }))
        .unwrap();
        state.pods.insert(name, pod);
    }

    /// An object someone else created (`owner`: the controller owner reference as kind, name,
    /// uid; None for a hand-made object), stored as the API server would hold it.
    pub fn seed_service(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Service {
        let mut state = self.state();
        let uid = state.new_uid();
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "omero", "uid": uid, "resourceVersion": "17",
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                         "ownerReferences": owner.map(|(kind, n, u)| vec![serde_json::json!({
                             "apiVersion": if kind == "OmeroCluster" { "omero.openmicroscopy.org/v1alpha1" } else { "apps/v1" },
                             "kind": kind, "name": n, "uid": u, "controller": true})])},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        state.services.insert(name.into(), service.clone());
        service
    }

    /// Like [`seed_service`], a Deployment.
    pub fn seed_deployment(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> Deployment {
        let mut state = self.state();
        let uid = state.new_uid();
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "omero", "uid": uid, "resourceVersion": "18",
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                         "ownerReferences": owner.map(|(kind, n, u)| vec![serde_json::json!({
                             "apiVersion": "apps/v1", "kind": kind, "name": n, "uid": u, "controller": true})])},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
        }))
        .unwrap();
        state.deployments.insert(name.into(), deployment.clone());
        deployment
    }

    /// Like [`seed_service`], a ConfigMap.
    pub fn seed_config_map(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> ConfigMap {
        let mut state = self.state();
        let uid = state.new_uid();
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "omero", "uid": uid, "resourceVersion": "19",
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                         "ownerReferences": owner.map(|(kind, n, u)| vec![serde_json::json!({
                             "apiVersion": if kind == "OmeroCluster" { "omero.openmicroscopy.org/v1alpha1" } else { "v1" },
                             "kind": kind, "name": n, "uid": u, "controller": true})])},
            "data": {"settings.ini": "[web]\nport = 8080\n"}
        }))
        .unwrap();
        state.config_maps.insert(name.into(), config_map.clone());
        config_map
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
        state.deployments.retain(|_, d| !owned(&d.metadata));
        state.services.retain(|_, s| !owned(&s.metadata));
        state.config_maps.retain(|_, c| !owned(&c.metadata));
        state.budgets.retain(|_, b| !owned(&b.metadata));
    }

    /// Like [`seed_service`], a PodDisruptionBudget.
    pub fn seed_budget(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str, &str)>,
    ) -> PodDisruptionBudget {
        let mut state = self.state();
        let uid = state.new_uid();
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "omero", "uid": uid, "resourceVersion": "20",
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                         "ownerReferences": owner.map(|(kind, n, u)| vec![serde_json::json!({
                             "apiVersion": "apps/v1", "kind": kind, "name": n, "uid": u, "controller": true})])},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        state.budgets.insert(name.into(), budget.clone());
        budget
    }

    pub fn remove_pod(&self, node: &str) {
        let mut state = self.state();
        let cluster = state.cluster.as_ref().unwrap().metadata.name.clone().unwrap();
        state.pods.remove(&format!("{cluster}-{node}-pod"));
    }

    pub fn pod_routable(&self, node: &str) -> bool {
        let state = self.state();
        let cluster = state.cluster.as_ref().unwrap().metadata.name.clone().unwrap();
        state.pods[&format!("{cluster}-{node}-pod")]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::ROUTABLE_LABEL))
            .is_some_and(|v| v == "true")
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

impl ClusterPort for FakeCluster {
    async fn children(&self, cluster: &OmeroCluster) -> Result<Children, Error> {
        self.call()?;
        let state = self.state();
        let name = cluster.metadata.name.clone().unwrap();
        if let Some(cache) = &state.cache {
            return Ok(Children {
                deployments: cache
                    .deployments
                    .iter()
                    .filter(|d| labelled_for(&d.metadata, &name))
                    .cloned()
                    .collect(),
                services: cache
                    .services
                    .iter()
                    .filter(|s| labelled_for(&s.metadata, &name))
                    .cloned()
                    .collect(),
                config_maps: cache
                    .config_maps
                    .iter()
                    .filter(|c| labelled_for(&c.metadata, &name))
                    .cloned()
                    .collect(),
                budgets: cache.budgets.iter().filter(|b| labelled_for(&b.metadata, &name)).cloned().collect(),
                pods: cache.pods.iter().filter(|p| labelled_for(&p.metadata, &name)).cloned().collect(),
                kube_nodes: if state.nodes_unwatched { None } else { cache.kube_nodes.clone() },
            });
        }
        Ok(Children {
            deployments: state
                .deployments
                .values()
                .filter(|d| labelled_for(&d.metadata, &name))
                .cloned()
                .collect(),
            services: state.services.values().filter(|s| labelled_for(&s.metadata, &name)).cloned().collect(),
            config_maps: state
                .config_maps
                .values()
                .filter(|c| labelled_for(&c.metadata, &name))
                .cloned()
                .collect(),
            budgets: state.budgets.values().filter(|b| labelled_for(&b.metadata, &name)).cloned().collect(),
            pods: state.pods.values().filter(|p| labelled_for(&p.metadata, &name)).cloned().collect(),
            kube_nodes: if state.nodes_unwatched {
                None
            } else {
                state.kube_nodes.as_ref().map(|nodes| nodes.values().cloned().collect())
            },
        })
    }

    async fn find(&self, _ns: &str, kind: ChildKind, name: &str) -> Result<Option<ObjectMeta>, Error> {
        self.call()?;
        Ok(self.state().meta_of(kind, name))
    }

    async fn apply(&self, _ns: &str, child: Child<'_>, uid: Option<&str>) -> Result<(), Error> {
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
        let existing = state.meta_of(child.kind(), &name);
        check_apply_uid(existing.as_ref(), uid, &name)?;
        let uid = match existing.and_then(|m| m.uid) {
            Some(uid) => uid,
            None => state.new_uid(),
        };
        match child {
            Child::Deployment(d) => {
                let mut d = d.clone();
                d.metadata.uid = Some(uid);
                state.deployments.insert(name, d);
            }
            Child::Service(s) => {
                let mut s = s.clone();
                s.metadata.uid = Some(uid);
                state.services.insert(name, s);
            }
            Child::ConfigMap(c) => {
                let mut c = c.clone();
                c.metadata.uid = Some(uid);
                state.config_maps.insert(name, c);
            }
            Child::PodDisruptionBudget(b) => {
                let mut b = b.clone();
                b.metadata.uid = Some(uid);
                state.budgets.insert(name, b);
            }
        }
        Ok(())
    }

    async fn delete_child(&self, _ns: &str, kind: ChildKind, name: &str, uid: &str) -> Result<(), Error> {
        self.write(Write::Delete(kind, name.into()))?;
        let mut state = self.state();
        let existing = state.meta_of(kind, name);
        if existing.is_none() {
            return Ok(());
        }
        check_uid(existing.as_ref(), Some(uid), name)?;
        match kind {
            ChildKind::Deployment => state.deployments.remove(name).map(drop),
            ChildKind::Service => state.services.remove(name).map(drop),
            ChildKind::ConfigMap => state.config_maps.remove(name).map(drop),
            ChildKind::PodDisruptionBudget => state.budgets.remove(name).map(drop),
        };
        Ok(())
    }

    async fn delete_pod(&self, _ns: &str, pod: &str, uid: &str) -> Result<(), Error> {
        self.write(Write::DeletePod(pod.into()))?;
        let mut state = self.state();
        // Gone, or another pod of that name now: the real adapter takes 404/409 as done.
        if state.pods.get(pod).is_some_and(|p| p.metadata.uid.as_deref() == Some(uid)) {
            state.pods.remove(pod);
        }
        Ok(())
    }

    async fn set_routable(&self, _ns: &str, pod: &str, routable: bool) -> Result<(), Error> {
        self.write(Write::Label { pod: pod.into(), routable })?;
        let mut state = self.state();
        if state.forbid.contains(&format!("Pod/{pod}")) {
            let message = format!(
                "pods \"{pod}\" is forbidden: User \"system:serviceaccount:omero:omero-operator\" cannot patch resource \"pods\""
            );
            return Err(api_error(403, "Forbidden", message));
        }
        // Gone (a lagging cache still showed it): the real adapter takes a 404 as done.
        let Some(found) = state.pods.get_mut(pod) else { return Ok(()) };
        let labels = found.metadata.labels.get_or_insert_default();
        if routable {
            labels.insert(keys::ROUTABLE_LABEL.into(), "true".into());
        } else {
            labels.remove(keys::ROUTABLE_LABEL);
        }
        Ok(())
    }

    async fn secret_value(&self, _ns: &str, secret: &SecretKeyRef) -> Result<String, Error> {
        self.state()
            .secrets
            .get(&(secret.name.clone(), secret.key.clone()))
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
