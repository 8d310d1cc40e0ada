//! A cluster that runs, on top of the port double: the Deployment controller and the kubelet
//! (a Deployment whose pod template changed gets its pod replaced, Recreate-style, by one with
//! a new name and a new IP that is ready after a delay) and OMERO's sessions per pod (a pod
//! deleted with sessions still open kills them, and they are counted). With Kubernetes Nodes
//! (`with_kube_nodes`), the scheduler too: a new pod is bound to the schedulable Node with the
//! fewest pods (pending while there is none), and `kubectl drain` (cordon, then evictions
//! that respect the PodDisruptionBudgets as the API server does).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
    jiff::Timestamp,
};
use omero_operator::{
    api::keys,
    controller::{
        Clock, Context,
        port::{OmeroPort, RedirectQuery, SessionCount, SessionQuery},
    },
    render,
};

use super::{FakeCluster, START};

/// What runs in the simulated cluster besides the API objects.
#[derive(Default)]
pub struct World {
    /// Open sessions per pod: when each ends on its own.
    pub sessions: BTreeMap<String, Vec<Timestamp>>,
    /// Sessions that were open on a pod when it was deleted.
    pub killed: u64,
    /// When each starting pod becomes ready.
    pub ready_at: BTreeMap<String, Timestamp>,
    /// Terminating pods (the Deployment controller replaced them): when each is gone.
    pub gone_at: BTreeMap<String, Timestamp>,
    /// Pods created per node after the first one: restarts.
    pub restarts: BTreeMap<String, u32>,
    pub pods_created: u32,
    /// Round-robin position of new sessions over routable pods.
    pub next_arrival: usize,
    /// Evictions the API server refused (a budget allowed no disruption).
    pub evictions_refused: u32,
    pub evictions: u32,
}

#[derive(Clone)]
pub struct Sim {
    pub fake: FakeCluster,
    pub world: Arc<Mutex<World>>,
    pub clock: Clock,
    /// How long a new pod takes to become ready.
    pub ready_after: Duration,
    /// How long a newly arriving client session lasts.
    pub session_length: Duration,
}

/// How long a replaced pod terminates before it is gone (the OMERO server stopping).
pub const TERMINATION: Duration = Duration::from_secs(10);

pub fn start() -> Timestamp {
    START.parse().unwrap()
}

impl Sim {
    pub fn new(fake: &FakeCluster, ready_after: Duration) -> Self {
        Self {
            fake: fake.clone(),
            world: Arc::default(),
            clock: Clock::starting_at(start()),
            ready_after,
            session_length: Duration::from_secs(180),
        }
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The Deployment controller and the kubelet, once: replace pods whose template changed,
    /// create missing ones, delete those of deleted Deployments, make due pods ready.
    pub fn kubelet(&self) {
        let now = self.now();
        let mut state = self.fake.state();
        let mut world = self.world();
        // Pods deleted since (by the operator, an eviction): their open sessions died.
        let deleted: Vec<String> =
            world.sessions.keys().filter(|p| !state.pods.contains_key(*p)).cloned().collect();
        for pod in deleted {
            world.killed +=
                world.sessions.remove(&pod).map_or(0, |s| s.iter().filter(|end| **end > now).count() as u64);
        }
        let deployments: Vec<_> = state.deployments.values().cloned().collect();
        // Pods whose Deployment is gone (garbage collection).
        let orphaned: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, p)| {
                let node = p.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL));
                !deployments
                    .iter()
                    .any(|d| d.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)) == node)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for pod in orphaned {
            state.pods.remove(&pod);
            world.killed +=
                world.sessions.remove(&pod).map_or(0, |s| s.iter().filter(|end| **end > now).count() as u64);
        }
        for deployment in deployments {
            let labels = deployment.metadata.labels.clone().unwrap_or_default();
            let Some(node) = labels.get(keys::NODE_LABEL).cloned() else { continue };
            let template = deployment.spec.as_ref().unwrap().template.clone();
            let revision =
                render::revision_of(template.metadata.as_ref().unwrap()).unwrap_or_default().to_string();
            let current: Option<(String, Pod)> = state
                .pods
                .iter()
                .find(|(_, p)| {
                    p.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)) == Some(&node)
                })
                .map(|(n, p)| (n.clone(), p.clone()));
            if let Some((name, pod)) = &current {
                if render::revision_of(&pod.metadata) == Some(revision.as_str())
                    && pod.metadata.deletion_timestamp.is_none()
                {
                    continue;
                }
                // Recreate: the old pod is stopped first. It terminates (a deletion timestamp,
                // not ready, its server's sessions gone with it) and stays until its process
                // has exited; only then does the new pod come.
                if pod.metadata.deletion_timestamp.is_none() {
                    let old = state.pods.get_mut(name).unwrap();
                    old.metadata.deletion_timestamp = Some(Time(now));
                    let status = old.status.as_mut().unwrap();
                    status.conditions.as_mut().unwrap()[0].status = "False".into();
                    status.container_statuses.as_mut().unwrap()[0].ready = false;
                    world.gone_at.insert(name.clone(), now + TERMINATION);
                    world.ready_at.remove(name);
                    world.killed += world
                        .sessions
                        .remove(name)
                        .map_or(0, |s| s.iter().filter(|end| **end > now).count() as u64);
                    *world.restarts.entry(node.clone()).or_default() += 1;
                }
                if world.gone_at.get(name).is_some_and(|at| *at > now) {
                    continue;
                }
                world.gone_at.remove(name);
                state.pods.remove(name);
            }
            world.pods_created += 1;
            let n = world.pods_created;
            let deployment_name = deployment.metadata.name.clone().unwrap();
            let name = format!("{deployment_name}-{}-{n}", &revision[..5.min(revision.len())]);
            let mut pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap_or_default();
            pod_labels.insert("pod-template-hash".into(), revision.clone());
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "omero", "uid": format!("pod-uid-{n}"),
                             "creationTimestamp": now.to_string(),
                             "labels": pod_labels,
                             "annotations": template.metadata.as_ref().unwrap().annotations,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": format!("{deployment_name}-{revision}"), "uid": "rs", "controller": true}]},
                "spec": template.spec,
                "status": {"phase": "Running", "podIP": format!("127.0.{}.{}", n / 250, n % 250 + 1),
                           "conditions": [{"type": "Ready", "status": "False"}],
                           "containerStatuses": [{"name": "omero-server", "image": "x", "imageID": "",
                                                  "containerID": format!("containerd://{n}"), "restartCount": 0,
                                                  "ready": false, "started": false}]}
            }))
            .unwrap();
            if state.kube_nodes.is_none() {
                world.ready_at.insert(name.clone(), now + self.ready_after);
            }
            state.pods.insert(name, pod);
        }
        // The scheduler: pods not bound yet go to the schedulable Node with the fewest pods,
        // then start (the kubelet).
        if state.kube_nodes.is_some() {
            let unbound: Vec<String> = state
                .pods
                .iter()
                .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
                .map(|(n, _)| n.clone())
                .collect();
            for name in unbound {
                let Some(host) = schedulable_host(&state) else {
                    state.pods.get_mut(&name).unwrap().status.as_mut().unwrap().phase =
                        Some("Pending".into());
                    continue;
                };
                let pod = state.pods.get_mut(&name).unwrap();
                pod.spec.as_mut().unwrap().node_name = Some(host);
                pod.status.as_mut().unwrap().phase = Some("Running".into());
                world.ready_at.insert(name, now + self.ready_after);
            }
        }
        // Pods whose start-up is done become ready.
        let due: Vec<String> =
            world.ready_at.iter().filter(|(_, at)| **at <= now).map(|(n, _)| n.clone()).collect();
        for name in due {
            world.ready_at.remove(&name);
            if let Some(pod) = state.pods.get_mut(&name) {
                let status = pod.status.as_mut().unwrap();
                status.conditions.as_mut().unwrap()[0].status = "True".into();
                let container = &mut status.container_statuses.as_mut().unwrap()[0];
                container.ready = true;
                container.started = Some(true);
            }
        }
    }

    /// Opens `count` sessions on `node`'s current pod, each lasting `length`.
    pub fn open_sessions(&self, node: &str, count: usize, length: Duration) {
        let now = self.now();
        let pod = self.pod_of(node).expect("a pod");
        self.world().sessions.entry(pod).or_default().extend((0..count).map(|_| now + length));
    }

    /// A new client session, as the entry Service would place it: on a pod that is routable
    /// and ready, taking each in turn.
    pub fn new_session(&self, length: Duration) {
        let now = self.now();
        let routable: Vec<String> = {
            let state = self.fake.state();
            state.pods.iter().filter(|(_, p)| routable_and_ready(p)).map(|(n, _)| n.clone()).collect()
        };
        if routable.is_empty() {
            return;
        }
        let mut world = self.world();
        let pick = routable[world.next_arrival % routable.len()].clone();
        world.next_arrival += 1;
        world.sessions.entry(pick).or_default().push(now + length);
    }

    /// Pods the entry Service sends new sessions to now.
    pub fn serving(&self) -> usize {
        self.fake.state().pods.values().filter(|p| routable_and_ready(p)).count()
    }

    pub fn pod_of(&self, node: &str) -> Option<String> {
        let state = self.fake.state();
        state
            .pods
            .iter()
            .find(|(_, p)| {
                p.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)).map(String::as_str)
                    == Some(node)
            })
            .map(|(n, _)| n.clone())
    }

    /// Kubernetes Nodes, all schedulable; pods are scheduled on them from now on.
    pub fn with_kube_nodes(self, names: &[&str]) -> Self {
        let nodes = names
            .iter()
            .map(|name| {
                let node: Node = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "uid": format!("node-uid-{name}")},
                    "spec": {}
                }))
                .unwrap();
                (name.to_string(), node)
            })
            .collect();
        self.fake.state().kube_nodes = Some(nodes);
        self
    }

    /// `kubectl cordon` (`true`) or `kubectl uncordon` (`false`).
    pub fn cordon(&self, kube_node: &str, cordoned: bool) {
        let mut state = self.fake.state();
        let node = state.kube_nodes.as_mut().unwrap().get_mut(kube_node).expect("a Kubernetes node");
        node.spec.get_or_insert_default().unschedulable = cordoned.then_some(true);
    }

    /// Adds a taint to a Kubernetes node.
    pub fn taint(&self, kube_node: &str, key: &str, effect: &str) {
        let mut state = self.fake.state();
        let node = state.kube_nodes.as_mut().unwrap().get_mut(kube_node).expect("a Kubernetes node");
        node.spec
            .get_or_insert_default()
            .taints
            .get_or_insert_default()
            .push(serde_json::from_value(serde_json::json!({"key": key, "effect": effect})).unwrap());
    }

    /// The Kubernetes node a node's pod is bound to.
    pub fn host_of(&self, node: &str) -> Option<String> {
        let pod = self.pod_of(node)?;
        self.fake.state().pods.get(&pod)?.spec.as_ref()?.node_name.clone()
    }

    /// The pods bound to a Kubernetes node.
    pub fn pods_on(&self, kube_node: &str) -> Vec<String> {
        let state = self.fake.state();
        state
            .pods
            .iter()
            .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(kube_node))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// An eviction (`POST pods/<pod>/eviction`) as the API server decides it: refused (429)
    /// while a PodDisruptionBudget selecting the pod allows no disruption, unless the pod is not
    /// running (budgets are ignored for those) or not ready under `AlwaysAllow`.
    pub fn evict(&self, pod: &str) -> Result<(), String> {
        let mut state = self.fake.state();
        let Some(found) = state.pods.get(pod) else { return Ok(()) };
        let labels = found.metadata.labels.clone().unwrap_or_default();
        let running = found.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let blocking = state.budgets.values().find(|b| {
            let spec = b.spec.as_ref().unwrap();
            let selects = spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
            let unhealthy_allowed =
                spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow") && !ready;
            // One pod per budget: maxUnavailable 0 allows no disruption of a healthy pod.
            selects && spec.max_unavailable == Some(IntOrString::Int(0)) && !unhealthy_allowed
        });
        if running && let Some(budget) = blocking {
            let message = format!(
                "Cannot evict pod as it would violate the pod's disruption budget {}",
                budget.metadata.name.as_deref().unwrap_or_default()
            );
            drop(state);
            self.world().evictions_refused += 1;
            return Err(message);
        }
        state.pods.remove(pod);
        drop(state);
        self.world().evictions += 1;
        Ok(())
    }

    /// One pass of `kubectl drain`: cordon, then try to evict every pod on the node (it retries
    /// the refused ones every 5 s until they go). Returns the pods still there.
    pub fn kubectl_drain(&self, kube_node: &str) -> Vec<String> {
        self.cordon(kube_node, true);
        for pod in self.pods_on(kube_node) {
            let _ = self.evict(&pod);
        }
        self.pods_on(kube_node)
    }

    /// A fresh operator context on this simulation's clock (the operator restarts).
    pub fn context(&self) -> Arc<Context<FakeCluster, Sim>> {
        Arc::new(Context::new(self.fake.clone(), self.clone(), Clock::starting_at(self.now())))
    }
}

/// The schedulable Node with the fewest pods (by name on a tie): not cordoned, no `NoSchedule`
/// or `NoExecute` taint (the simulated pods tolerate none).
fn schedulable_host(state: &super::State) -> Option<String> {
    let nodes = state.kube_nodes.as_ref()?;
    nodes
        .iter()
        .filter(|(_, n)| {
            let spec = n.spec.as_ref();
            spec.and_then(|s| s.unschedulable) != Some(true)
                && !spec
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.effect != "PreferNoSchedule"))
        })
        .map(|(name, _)| {
            let pods = state
                .pods
                .values()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
                .count();
            (pods, name.clone())
        })
        .min()
        .map(|(_, name)| name)
}

fn routable_and_ready(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    labels.and_then(|l| l.get(keys::ROUTABLE_LABEL)).is_some_and(|v| v == "true")
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// OMERO as the session probe sees it: the sessions still open on the pod with that IP.
impl OmeroPort for Sim {
    async fn count_sessions(&self, query: &SessionQuery) -> Result<Option<SessionCount>, String> {
        if query.probe.kind == omero_operator::api::SessionProbeKind::None {
            return Ok(None);
        }
        let now = self.now();
        let pod = {
            let state = self.fake.state();
            state
                .pods
                .iter()
                .find(|(_, p)| {
                    p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(query.pod_ip.as_str())
                })
                .map(|(n, _)| n.clone())
        };
        let pod = pod.ok_or_else(|| format!("no route to {}", query.pod_ip))?;
        let world = self.world();
        let sessions =
            world.sessions.get(&pod).map_or(0, |s| s.iter().filter(|end| **end > now).count() as u64);
        Ok(Some(SessionCount { sessions, sample: None }))
    }

    async fn redirect_new_sessions(&self, _query: &RedirectQuery) -> Result<bool, String> {
        Ok(false)
    }
}
