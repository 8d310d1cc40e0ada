//! `decide` driven directly, without a port double: a cluster as read, an observation, a time;
//! the decision asserted. `World` plays the API server and the kubelet between decisions only
//! as far as carrying out what was decided (objects stored with uids, the pod of each
//! Deployment's revision started and ready at once, labels set), so each table row starts
//! from a state the operator itself reached.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use omero_operator::{
    api::{DrainReason, NodePhase, ObjectProblem, ObjectProblemReason, OmeroCluster, keys},
    controller::{
        decide::{Decision, Outcome, decide},
        observe::Observation,
        port::{ChildKind, ChildObject},
        probe_memory::ProbeMemory,
    },
    lifecycle::ProbeOutcome,
    render,
    request::{DRAIN_ANNOTATION, PAUSE_ANNOTATION},
};

/// `rw` and `ro-1`, `maxUnavailable: 1`, each counted every 10 s.
const TWO_NODES: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero, namespace: omero, uid: 4f7e1c2a-0000-4000-8000-000000000001, generation: 1, resourceVersion: "1"}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m, maxUnavailable: 1}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-1
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
"#;

/// A grid: the master and one worker.
const GRID: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero, namespace: omero, uid: 4f7e1c2a-0000-4000-8000-000000000001, generation: 1, resourceVersion: "1"}
spec:
  image: openmicroscopy/omero-server:5.6
  topology: Grid
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - name: main
    master: true
    sessionProbe: {type: Database, interval: 10s}
  - name: worker
    sessionProbe: {type: Database, interval: 10s}
"#;

struct World {
    cluster: OmeroCluster,
    observation: Observation,
    now: Timestamp,
    /// Open sessions per node, as every probe this step counts them.
    sessions: BTreeMap<String, u64>,
    /// The Kubernetes node each OMERO node's pods are bound to.
    hosts: BTreeMap<String, String>,
    next_uid: u32,
    /// What the operator remembers of the probes between reconciles.
    probe_memory: ProbeMemory,
}

impl World {
    fn new(yaml: &str) -> Self {
        let cluster: OmeroCluster = serde_saphyr::from_str(yaml).unwrap();
        let credentials = (cluster.spec.database.primary(), "s3cret".to_string());
        Self {
            cluster,
            observation: Observation { database: Some(Ok(credentials)), ..Observation::default() },
            now: "2026-11-25T10:00:00Z".parse().unwrap(),
            sessions: BTreeMap::new(),
            hosts: BTreeMap::new(),
            next_uid: 0,
            probe_memory: ProbeMemory::default(),
        }
    }

    /// Every node of the spec running and serving, as the operator brings them up.
    fn running(yaml: &str) -> Self {
        let mut world = Self::new(yaml);
        for name in ["omero-rw", "omero-ro-1", "omero-main", "omero-worker", "omero"] {
            for kind in ChildKind::ALL {
                world.observation.found.entry(kind).or_default().insert(name.into(), None);
            }
        }
        world.settle();
        let status = world.cluster.status.clone().unwrap();
        assert_eq!(status.nodes.len(), world.cluster.spec.nodes.len(), "{status:#?}");
        assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable), "{status:#?}");
        world
    }

    fn annotate(&mut self, key: &str, value: &str) {
        self.cluster.metadata.annotations.get_or_insert_default().insert(key.into(), value.into());
    }

    fn decide(&mut self) -> Decision {
        // Every node is counted each step, as if its probe were due.
        let nodes = self.cluster.spec.nodes.iter().map(|n| n.name.clone());
        self.observation.probes = nodes
            .map(|n| {
                let count = self.sessions.get(&n).copied().unwrap_or(0);
                (n, (ProbeOutcome::Count(count), None))
            })
            .collect();
        decide(&self.cluster, &self.observation, self.now).expect("a decision")
    }

    /// The decision recorded and carried out with every write accepted, then the kubelet.
    fn carry_out(&mut self, decision: &Decision) {
        if decision.record {
            // As the API server stores it: what is only remembered is not in it.
            let stored = serde_json::from_value(serde_json::to_value(&decision.status).unwrap()).unwrap();
            self.cluster.status = Some(stored);
        }
        self.probe_memory.remember(&self.cluster, &decision.status);
        self.observation.remembered = self.probe_memory.recall(&self.cluster);
        let children = &mut self.observation.children;
        for apply in &decision.actions.applies {
            self.next_uid += 1;
            let uid = apply.uid.clone().unwrap_or_else(|| format!("uid-{}", self.next_uid));
            fn store<K: kube::Resource>(list: &mut Vec<K>, mut object: K, uid: String) {
                object.meta_mut().uid = Some(uid);
                list.retain(|o| o.meta().name != object.meta().name);
                list.push(object);
            }
            match apply.object.clone() {
                ChildObject::Deployment(d) => store(&mut children.deployments, *d, uid),
                ChildObject::Service(s) => store(&mut children.services, *s, uid),
                ChildObject::ConfigMap(c) => store(&mut children.config_maps, *c, uid),
                ChildObject::PodDisruptionBudget(b) => store(&mut children.budgets, *b, uid),
            }
        }
        for (pod, _) in &decision.actions.pod_deletes {
            children.pods.retain(|p| p.metadata.name.as_ref() != Some(pod));
        }
        for (pod, routable) in &decision.actions.labels {
            let pod = children.pods.iter_mut().find(|p| p.metadata.name.as_ref() == Some(pod)).unwrap();
            let labels = pod.metadata.labels.get_or_insert_default();
            if *routable {
                labels.insert(keys::ROUTABLE_LABEL.into(), "true".into());
            } else {
                labels.remove(keys::ROUTABLE_LABEL);
            }
        }
        // What the names looked up found is now in the children.
        self.observation.found.clear();
        self.kubelet();
        self.now += std::time::Duration::from_secs(10);
    }

    /// Each Deployment's pod runs its revision, ready: a replaced pod is gone at once.
    fn kubelet(&mut self) {
        let deployments = self.observation.children.deployments.clone();
        for deployment in deployments {
            let name = deployment.metadata.name.clone().unwrap();
            let template = deployment.spec.as_ref().unwrap().template.clone();
            let revision = render::revision_of(template.metadata.as_ref().unwrap()).unwrap().to_string();
            let hash = &revision[..6];
            let pods = &mut self.observation.children.pods;
            let current = pods.iter().any(|p| render::revision_of(&p.metadata) == Some(revision.as_str()));
            let node = deployment.metadata.labels.as_ref().unwrap()[keys::NODE_LABEL].clone();
            if current {
                continue;
            }
            pods.retain(|p| p.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)) != Some(&node));
            self.next_uid += 1;
            let mut labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
            labels.insert("pod-template-hash".into(), hash.into());
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{name}-{hash}-{}", self.next_uid), "namespace": "omero",
                             "uid": format!("pod-{}", self.next_uid), "labels": labels,
                             "annotations": template.metadata.as_ref().unwrap().annotations,
                             "creationTimestamp": self.now.to_string(),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": "rs",
                                                  "name": format!("{name}-{hash}"), "controller": true}]},
                "spec": {"containers": template.spec.as_ref().unwrap().containers,
                         "nodeName": self.hosts.get(&node)},
                "status": {"phase": "Running", "podIP": format!("127.0.0.{}", self.next_uid),
                           "conditions": [{"type": "Ready", "status": "True"}],
                           "containerStatuses": [{"name": "omero-server", "image": "x", "imageID": "",
                                                  "containerID": format!("containerd://{}", self.next_uid),
                                                  "restartCount": 0, "ready": true, "started": true}]}
            }))
            .unwrap();
            pods.push(pod);
        }
    }

    /// Decides and carries out until a decision writes nothing to the API server and every
    /// node serves (each count recorded still changes status).
    fn settle(&mut self) {
        for _ in 0..30 {
            let decision = self.decide();
            let serving = decision.status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable);
            self.carry_out(&decision);
            if decision.actions.writes_nothing() && serving && !decision.status.nodes.is_empty() {
                return;
            }
        }
        panic!("no steady state after 30 decisions: {:#?}", self.cluster.status);
    }

    fn phase(&self, node: &str) -> NodePhase {
        self.cluster.status.as_ref().unwrap().node(node).unwrap().phase
    }

    fn pod_of(&self, node: &str) -> String {
        self.observation
            .children
            .pods
            .iter()
            .find(|p| p.metadata.labels.as_ref().unwrap()[keys::NODE_LABEL] == node)
            .and_then(|p| p.metadata.name.clone())
            .unwrap()
    }
}

fn serving(decision: &Decision) -> usize {
    decision.status.nodes.iter().filter(|n| n.phase == NodePhase::Serving && !n.leaving).count()
}

fn applied(decision: &Decision) -> Vec<String> {
    decision
        .actions
        .applies
        .iter()
        .map(|a| format!("{}/{}", a.object.as_child().kind().as_str(), a.object.as_child().name()))
        .collect()
}

/// A node mid-drain stays out while its count is above zero, and is drained at zero: the
/// label comes off once, at the start, and nothing else is written meanwhile.
#[test]
fn a_drain_ends_when_its_count_reaches_zero() {
    let mut world = World::running(TWO_NODES);
    world.annotate(DRAIN_ANNOTATION, "ro-1");
    world.sessions.insert("ro-1".into(), 3);
    let started = world.decide();
    let ro = started.status.node("ro-1").unwrap();
    assert_eq!((ro.phase, ro.drain_reason), (NodePhase::Draining, Some(DrainReason::Requested)));
    assert_eq!(started.actions.labels, [(world.pod_of("ro-1"), false)], "no new sessions at once");
    assert!(started.record);
    world.carry_out(&started);

    let draining = world.decide();
    assert_eq!(draining.status.node("ro-1").unwrap().phase, NodePhase::Draining, "3 sessions still open");
    assert_eq!(draining.status.node("ro-1").unwrap().sessions, Some(3));
    assert!(draining.actions.writes_nothing());
    world.carry_out(&draining);

    // Drained once zero is counted twice in a row (one probe could race a login).
    world.sessions.insert("ro-1".into(), 0);
    let first_zero = world.decide();
    assert_eq!(first_zero.status.node("ro-1").unwrap().phase, NodePhase::Draining);
    world.carry_out(&first_zero);
    let drained = world.decide();
    assert_eq!(drained.status.node("ro-1").unwrap().phase, NodePhase::Drained);
    assert_eq!(drained.status.node("rw").unwrap().phase, NodePhase::Serving);
}

/// A write the API server refused stays reported while it is tried again, and goes from the
/// record only when acting finds it accepted: the first write of each reconcile does not
/// flicker, and a refusal met again needs no second write.
#[test]
fn a_refused_write_stays_reported_while_it_is_retried() {
    let mut world = World::running(TWO_NODES);
    // Someone changed the node's Service; the operator's apply of it was refused last time.
    let service = &mut world.observation.children.services[0];
    let name = service.metadata.name.clone().unwrap();
    service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 1;
    let refusal = ObjectProblem {
        kind: "Service".into(),
        name: name.clone(),
        reason: ObjectProblemReason::Refused,
        message: "the API server refused the write of Service omero-rw: admission webhook said no".into(),
    };
    world.cluster.status.as_mut().unwrap().object_problems = vec![refusal.clone()];

    let retry = world.decide();
    assert_eq!(applied(&retry), [format!("Service/{name}")], "tried again");
    assert_eq!(retry.status.object_problems, std::slice::from_ref(&refusal), "kept while it is tried");
    let refused_again = Outcome { refusals: vec![refusal.clone()], redirect: None };
    assert_eq!(retry.settle(&refused_again, world.now), None, "the record already says it");
    let accepted = retry.settle(&Outcome::default(), world.now).expect("a second write");
    assert!(accepted.object_problems.is_empty(), "{:?}", accepted.object_problems);
}

/// A paused cluster takes no node out for a new image and writes nothing at all, not even
/// the repair of a changed Service; status says what waits.
#[test]
fn a_paused_cluster_restarts_nothing_and_writes_nothing() {
    let mut world = World::running(TWO_NODES);
    world.annotate(PAUSE_ANNOTATION, "true");
    world.cluster.spec.image = "openmicroscopy/omero-server:5.6.16".into();
    world.observation.children.services[0].spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 1;
    for _ in 0..3 {
        let decision = world.decide();
        assert!(decision.actions.writes_nothing(), "{:?}", decision.actions);
        assert_eq!(serving(&decision), 2);
        let rollout = decision.status.rollout.clone().unwrap();
        assert!(rollout.paused);
        assert_eq!(rollout.pending.len(), 2, "both nodes wait for the new image: {rollout:?}");
        world.carry_out(&decision);
    }
}

/// A node whose Kubernetes node is cordoned is drained, then its pod deleted so the
/// Deployment starts it elsewhere; the other node serves throughout.
#[test]
fn a_cordoned_host_moves_its_node_once_drained() {
    let mut world = World::new(TWO_NODES);
    world.hosts = BTreeMap::from([("rw".into(), "k1".into()), ("ro-1".into(), "k2".into())]);
    let node = |name: &str, cordoned: bool| {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "spec": {"unschedulable": cordoned}}),
        )
        .unwrap()
    };
    world.observation.children.kube_nodes = Some(vec![node("k1", false), node("k2", false)]);
    for name in ["omero-rw", "omero-ro-1", "omero"] {
        for kind in ChildKind::ALL {
            world.observation.found.entry(kind).or_default().insert(name.into(), None);
        }
    }
    world.settle();
    world.observation.children.kube_nodes = Some(vec![node("k1", true), node("k2", false)]);
    world.sessions.insert("rw".into(), 2);

    let moving = world.decide();
    let rw = moving.status.node("rw").unwrap();
    assert_eq!((rw.phase, rw.drain_reason), (NodePhase::Draining, Some(DrainReason::Maintenance)));
    assert_eq!(moving.status.node("ro-1").unwrap().phase, NodePhase::Serving);
    assert!(moving.actions.pod_deletes.is_empty(), "not while it has sessions");
    world.carry_out(&moving);

    world.sessions.insert("rw".into(), 0);
    let pod = world.pod_of("rw");
    let mut deleted = false;
    for _ in 0..5 {
        let decision = world.decide();
        assert_eq!(decision.status.node("ro-1").unwrap().phase, NodePhase::Serving);
        deleted |= decision.actions.pod_deletes.iter().any(|(p, _)| *p == pod);
        world.carry_out(&decision);
    }
    assert!(deleted, "the drained node's pod is deleted so it moves off k1");
}

/// One edit with a new image and a drain request: the requested drain goes first and the
/// rollout waits for it; some node serves at every step.
#[test]
fn a_new_image_and_a_drain_in_one_edit_leave_a_node_serving() {
    let mut world = World::running(TWO_NODES);
    world.cluster.spec.image = "openmicroscopy/omero-server:5.6.16".into();
    world.annotate(DRAIN_ANNOTATION, "rw");
    world.sessions = BTreeMap::from([("rw".into(), 2), ("ro-1".into(), 2)]);
    for _ in 0..5 {
        let decision = world.decide();
        assert!(serving(&decision) >= 1, "no node serves: {:#?}", decision.status.nodes);
        world.carry_out(&decision);
    }
    assert_eq!(world.phase("rw"), NodePhase::Draining);
    assert_eq!(world.phase("ro-1"), NodePhase::Serving);
}

/// An invalid spec is recorded as such and nothing that runs is touched.
#[test]
fn an_invalid_spec_changes_nothing_that_runs() {
    let mut world = World::running(TWO_NODES);
    world.cluster.spec.nodes[1].name = "rw".into();
    let decision = world.decide();
    assert_eq!(decision.actions, Default::default());
    assert!(decision.record);
    let invalid = decision.status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(invalid.reason, "InvalidSpec", "{invalid:?}");
    let as_they_were = world.observation.old_status(&world.cluster).nodes;
    assert_eq!(decision.status.nodes, as_they_were, "nodes as they were");
}

/// A name the cluster wants that something else holds is reported, never written; a name
/// nothing holds is created; a name not looked up is not written at all.
#[test]
fn only_names_looked_up_and_free_are_created() {
    let mut world = World::new(TWO_NODES);
    let foreign =
        ObjectMeta { name: Some("omero-rw".into()), uid: Some("someone-else".into()), ..Default::default() };
    for kind in ChildKind::ALL {
        for name in ["omero-rw", "omero-ro-1", "omero"] {
            world.observation.found.entry(kind).or_default().insert(name.into(), None);
        }
    }
    world.observation.found.get_mut(&ChildKind::Service).unwrap().insert("omero-rw".into(), Some(foreign));
    world.observation.found.get_mut(&ChildKind::Service).unwrap().remove("omero");
    let decision = world.decide();
    let services: Vec<String> =
        applied(&decision).into_iter().filter(|a| a.starts_with("Service/")).collect();
    assert_eq!(services, ["Service/omero-ro-1"]);
    let problem = &decision.status.object_problems[0];
    assert_eq!((problem.name.as_str(), problem.reason), ("omero-rw", ObjectProblemReason::NotOwned));
}

/// A grid's new sessions are pointed at the master once the decision is recorded; a redirect
/// that fails is recorded after acting, and stays recorded as failing while it is retried.
#[test]
fn the_grid_redirect_is_recorded_from_what_acting_found() {
    let mut world = World::running(GRID);
    let decision = world.decide();
    let redirect = decision.actions.redirect.clone().expect("a redirect");
    assert_eq!(redirect.node, "main");
    assert_eq!(
        redirect.query.pod_ip,
        world.observation.children.pods[0].status.as_ref().unwrap().pod_ip.clone().unwrap()
    );
    assert_eq!(decision.status.redirect_node.as_deref(), Some("main"));

    let failed = Outcome { redirect: Some(Err("connection refused".into())), ..Outcome::default() };
    let recorded = decision.settle(&failed, world.now).expect("the failure is recorded");
    assert_eq!(recorded.redirect_error.as_deref(), Some("connection refused"));
    assert_eq!(recorded.redirect_node, None);
    world.cluster.status = Some(recorded);

    let retry = world.decide();
    assert!(retry.actions.redirect.is_some(), "tried again");
    assert_eq!(retry.status.redirect_error.as_deref(), Some("connection refused"), "kept while retried");
    assert_eq!(retry.settle(&failed, world.now), None);
    let works = Outcome { redirect: Some(Ok("main".into())), ..Outcome::default() };
    assert_eq!(retry.settle(&works, world.now).unwrap().redirect_node.as_deref(), Some("main"));
}
