//! A cluster that runs, on top of the port double: the Deployment controller, its ReplicaSets
//! and the kubelet (a Deployment whose pod template changed gets its pod replaced,
//! Recreate-style, by one with a new name and a new IP that is ready after a delay) and OMERO's
//! sessions per pod. A deleted pod (by the operator, an eviction, the garbage collector or a
//! rollout) terminates as on a real cluster: out of its Services' endpoints at once, its
//! server's sessions killed (and counted), gone once its server has stopped. With Kubernetes Nodes (`with_kube_nodes`),
//! the scheduler too: a new pod is bound to the schedulable Node with the fewest pods (pending
//! while there is none), and `kubectl drain` (cordon, then evictions that respect the
//! PodDisruptionBudgets as the API server does).
//!
//! Pods are named with one sequence for the whole simulation, so the world's records of pods
//! (sessions, readiness, termination) are keyed by name alone.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::util::intstr::IntOrString,
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

use super::{FakeCluster, START, State};

/// What runs in the simulated cluster besides the API objects.
#[derive(Default)]
pub struct World {
    /// Open sessions per pod: when each ends on its own.
    pub sessions: BTreeMap<String, Vec<Timestamp>>,
    /// Sessions that were open on a pod when it was deleted.
    pub killed: u64,
    /// When each starting pod becomes ready.
    pub ready_at: BTreeMap<String, Timestamp>,
    /// Terminating pods the kubelet is stopping: when each is gone.
    pub gone_at: BTreeMap<String, Timestamp>,
    /// Pods replaced per node because their Deployment's template changed: restarts.
    pub restarts: BTreeMap<String, u32>,
    pub pods_created: u32,
    /// Round-robin position of new sessions over routable pods.
    pub next_arrival: usize,
    /// Evictions the API server refused (a budget allowed no disruption).
    pub evictions_refused: u32,
    pub evictions: u32,
}

impl World {
    /// The pod's server is gone: the sessions still open on it at `at` are killed.
    fn kill_sessions(&mut self, pod: &str, at: Timestamp) {
        self.killed +=
            self.sessions.remove(pod).map_or(0, |s| s.iter().filter(|end| **end > at).count() as u64);
    }
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

/// How long a terminating pod takes to stop (the OMERO server shutting down) before it is gone,
/// unless its grace period is shorter (the kubelet kills it then). The operator's pods have
/// 300 s of grace; a drained server stops well within it.
pub const TERMINATION: Duration = Duration::from_secs(10);

pub fn start() -> Timestamp {
    START.parse().unwrap()
}

fn node_of(pod: &Pod) -> Option<&String> {
    pod.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL))
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The namespace of the pod named so (names are unique in a simulation).
fn namespace_of(state: &State, pod: &str) -> Option<String> {
    state.pods.all().find(|(_, name, _)| *name == pod).map(|(ns, _, _)| ns.to_string())
}

impl Sim {
    pub fn new(fake: &FakeCluster, ready_after: Duration) -> Self {
        let clock = Clock::starting_at(start());
        // One clock for the API server's timestamps and the simulation's.
        fake.state().clock = Some(clock.clone());
        Self {
            fake: fake.clone(),
            world: Arc::default(),
            clock,
            ready_after,
            session_length: Duration::from_secs(180),
        }
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// The API objects, the API server on this simulation's clock: a test may set `clock`
    /// after `new`, and deletion timestamps must be on the clock sessions end by.
    fn api(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.fake.state();
        state.clock = Some(self.clock.clone());
        state
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The Deployment controller, the ReplicaSets, the garbage collector, the scheduler and the
    /// kubelet, once: pods deleted since are stopped and go when stopped; pods whose template
    /// changed are replaced; missing pods are created; the pods of deleted Deployments are
    /// deleted; due pods become ready.
    pub fn kubelet(&self) {
        let now = self.now();
        let mut state = self.api();
        let mut world = self.world();
        // Pods gone without terminating (a test removed them): their sessions died with them.
        let vanished: Vec<String> =
            world.sessions.keys().filter(|p| namespace_of(&state, p).is_none()).cloned().collect();
        for pod in vanished {
            world.kill_sessions(&pod, now);
        }
        self.stop_terminating(&mut state, &mut world, now);

        // The garbage collector: the pods of a Deployment that is gone are deleted.
        let orphaned: Vec<(String, String)> = state
            .pods
            .all()
            .filter(|(ns, _, p)| {
                !terminating(p)
                    && !state.deployments.values_in(ns).any(|d| {
                        d.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)) == node_of(p)
                    })
            })
            .map(|(ns, name, _)| (ns.to_string(), name.to_string()))
            .collect();
        for (ns, pod) in orphaned {
            state.delete_pod_gracefully(&ns, &pod);
        }

        let deployments: Vec<_> = state.deployments.all().map(|(_, _, d)| d.clone()).collect();
        for deployment in deployments {
            let ns = deployment.metadata.namespace.clone().unwrap();
            let labels = deployment.metadata.labels.clone().unwrap_or_default();
            let Some(node) = labels.get(keys::NODE_LABEL).cloned() else { continue };
            let template = deployment.spec.as_ref().unwrap().template.clone();
            let revision =
                render::revision_of(template.metadata.as_ref().unwrap()).unwrap_or_default().to_string();
            let pods_of_node = |state: &State| -> Vec<(String, Pod)> {
                state
                    .pods
                    .iter_in(&ns)
                    .filter(|(_, p)| node_of(p) == Some(&node))
                    .map(|(n, p)| (n.clone(), p.clone()))
                    .collect()
            };
            // Scaled to zero: the ReplicaSet deletes its pods and makes none.
            if deployment.spec.as_ref().unwrap().replicas == Some(0) {
                for (name, pod) in pods_of_node(&state) {
                    if !terminating(&pod) {
                        state.delete_pod_gracefully(&ns, &name);
                    }
                }
                continue;
            }
            // Recreate: a new template scales the old ReplicaSet to zero first, which deletes
            // its pods (they terminate, their server's sessions gone with them)...
            for (name, pod) in pods_of_node(&state) {
                if !terminating(&pod) && render::revision_of(&pod.metadata) != Some(revision.as_str()) {
                    state.delete_pod_gracefully(&ns, &name);
                    *world.restarts.entry(node.clone()).or_default() += 1;
                }
            }
            // ...and scales up the new one only once no old pod runs, terminating ones
            // included (`oldPodsRunning`).
            let pods = pods_of_node(&state);
            if pods.iter().any(|(_, p)| render::revision_of(&p.metadata) != Some(revision.as_str())) {
                continue;
            }
            // The ReplicaSet counts only its active pods (`FilterActivePods`: not terminating),
            // so it replaces a pod of its own that was deleted or evicted at once, beside the
            // terminating one: Recreate orders a rollout between ReplicaSets, not a deletion.
            if pods.iter().any(|(_, p)| !terminating(p)) {
                continue;
            }
            world.pods_created += 1;
            let n = world.pods_created;
            let deployment_name = deployment.metadata.name.clone().unwrap();
            let name = format!("{deployment_name}-{}-{n}", &revision[..5.min(revision.len())]);
            let mut pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap_or_default();
            pod_labels.insert("pod-template-hash".into(), revision.clone());
            let pod = serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": now.to_string(),
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
            });
            if state.kube_nodes.is_none() {
                world.ready_at.insert(name.clone(), now + self.ready_after);
            }
            state.store_pod(&ns, pod);
        }
        // The pods the controllers deleted just now stop at once.
        self.stop_terminating(&mut state, &mut world, now);

        // The scheduler: pods not bound yet go to the schedulable Node with the fewest pods,
        // then start (the kubelet).
        if state.kube_nodes.is_some() {
            let unbound: Vec<(String, String)> = state
                .pods
                .all()
                .filter(|(_, _, p)| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
                .map(|(ns, n, _)| (ns.to_string(), n.to_string()))
                .collect();
            for (ns, name) in unbound {
                let Some(host) = schedulable_host(&state) else {
                    state.pods.get_mut_in(&ns, &name).unwrap().status.as_mut().unwrap().phase =
                        Some("Pending".into());
                    continue;
                };
                let pod = state.pods.get_mut_in(&ns, &name).unwrap();
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
            let Some(ns) = namespace_of(&state, &name) else { continue };
            let pod = state.pods.get_mut_in(&ns, &name).unwrap();
            let status = pod.status.as_mut().unwrap();
            status.conditions.as_mut().unwrap()[0].status = "True".into();
            let container = &mut status.container_statuses.as_mut().unwrap()[0];
            container.ready = true;
            container.started = Some(true);
        }
    }

    /// The kubelet's part of a deletion. A pod newly marked for deletion gets SIGTERM: the
    /// OMERO server closes its sessions as it shuts down, so those still open at the deletion
    /// are killed then (counted as of the deletion, not of this look, so a scenario never
    /// misses one). Its Ready condition stays as it was: a 1.28 kubelet keeps probing the
    /// readiness of a terminating pod (only liveness and startup probes stop), and the server
    /// is gone before the readiness probe fails thrice; but its endpoints leave at once
    /// (EndpointSlice: ready only when not terminating), which `routable_and_ready` plays. It
    /// is gone once its server has stopped: after `TERMINATION`, or its grace period if
    /// shorter. A pod whose time is up is removed.
    fn stop_terminating(&self, state: &mut State, world: &mut World, now: Timestamp) {
        let stopping: Vec<(String, Timestamp, Duration)> = state
            .pods
            .all()
            .filter(|(_, name, p)| terminating(p) && !world.gone_at.contains_key(*name))
            .map(|(_, name, p)| {
                let grace =
                    Duration::from_secs(p.metadata.deletion_grace_period_seconds.unwrap_or(0).unsigned_abs());
                let deleted_at = p.metadata.deletion_timestamp.as_ref().unwrap().0 - grace;
                (name.to_string(), deleted_at, grace)
            })
            .collect();
        for (name, deleted_at, grace) in stopping {
            world.ready_at.remove(&name);
            world.kill_sessions(&name, deleted_at);
            world.gone_at.insert(name, deleted_at + TERMINATION.min(grace));
        }
        let gone: Vec<String> =
            world.gone_at.iter().filter(|(_, at)| **at <= now).map(|(n, _)| n.clone()).collect();
        for name in gone {
            world.gone_at.remove(&name);
            if let Some(ns) = namespace_of(state, &name) {
                state.pods.remove_in(&ns, &name);
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
            state
                .pods
                .all()
                .filter(|(_, _, p)| routable_and_ready(p))
                .map(|(_, n, _)| n.to_string())
                .collect()
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
        self.fake.state().pods.all().filter(|(_, _, p)| routable_and_ready(p)).count()
    }

    /// The node's current pod: the live one, else the newest terminating one (a node has one
    /// live pod at most; its replaced pod may still terminate beside it).
    pub fn pod_of(&self, node: &str) -> Option<String> {
        let state = self.fake.state();
        state
            .pods
            .all()
            .filter(|(_, _, p)| node_of(p).map(String::as_str) == Some(node))
            .max_by_key(|(_, _, p)| (!terminating(p), p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
            .map(|(_, n, _)| n.to_string())
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
        let state = self.fake.state();
        let ns = namespace_of(&state, &pod)?;
        state.pods.get_in(&ns, &pod)?.spec.as_ref()?.node_name.clone()
    }

    /// The pods bound to a Kubernetes node, terminating ones included (`kubectl drain` waits
    /// for them too).
    pub fn pods_on(&self, kube_node: &str) -> Vec<String> {
        let state = self.fake.state();
        state
            .pods
            .all()
            .filter(|(_, _, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(kube_node))
            .map(|(_, n, _)| n.to_string())
            .collect()
    }

    /// An eviction (`POST pods/<pod>/eviction`) as the API server decides it: refused (429)
    /// while a PodDisruptionBudget of the pod's namespace selecting it allows no disruption,
    /// unless the pod is not running or already terminating (budgets are ignored for those,
    /// `canIgnorePDB`) or not ready under `AlwaysAllow`. An eviction deletes the pod: it
    /// terminates (a terminating pod's is no change).
    pub fn evict(&self, pod: &str) -> Result<(), String> {
        let mut state = self.api();
        let Some(ns) = namespace_of(&state, pod) else { return Ok(()) };
        let found = state.pods.get_in(&ns, pod).unwrap();
        if terminating(found) {
            return Ok(());
        }
        let labels = found.metadata.labels.clone().unwrap_or_default();
        let running = found.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let blocking = state.budgets.values_in(&ns).find(|b| {
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
        state.delete_pod_gracefully(&ns, pod);
        drop(state);
        self.world().evictions += 1;
        Ok(())
    }

    /// One pass of `kubectl drain`: cordon, then try to evict every pod on the node (it retries
    /// the refused ones every 5 s, and waits for the evicted ones to be gone). Returns the pods
    /// still there, terminating ones included.
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
fn schedulable_host(state: &State) -> Option<String> {
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
                .all()
                .filter(|(_, _, p)| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                })
                .count();
            (pods, name.clone())
        })
        .min()
        .map(|(_, name)| name)
}

/// Whether the entry Service sends new sessions to the pod: it carries the routable label and
/// is one of its ready endpoints (Ready, and not terminating).
fn routable_and_ready(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    !terminating(pod)
        && labels.and_then(|l| l.get(keys::ROUTABLE_LABEL)).is_some_and(|v| v == "true")
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
                .all()
                .find(|(_, _, p)| {
                    p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(query.pod_ip.as_str())
                })
                .map(|(_, n, _)| n.to_string())
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
