//! Puts together, per node, what the lifecycle and the planner decide from: the spec (or its
//! absence, for a node that left it), the last status, the pod, the Deployment, the revision
//! the spec asks for. And, from their decisions, the writes a reconcile may make. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use k8s_openapi::api::{
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::Resource;

use super::{
    diff::{self, Plan, Write},
    port::ChildKind,
};
use crate::{
    api::{
        NodePhase, NodeSpec, NodeStatus, ObjectProblem, ObjectProblemReason, OmeroCluster,
        OmeroClusterStatus, SessionProbe, keys,
    },
    lifecycle::{self, PodObservation},
    render,
    rollout::{NodeView, Role},
};

/// One node as this reconcile sees it.
#[derive(Clone, Debug)]
pub struct NodeFacts<'a> {
    pub name: String,
    /// `None`: the node left the spec.
    pub spec: Option<&'a NodeSpec>,
    pub previous: Option<&'a NodeStatus>,
    pub pod: Option<&'a PodObservation>,
    /// The cluster's own Deployment of the node.
    pub deployment: Option<&'a Deployment>,
    /// The revision the spec asks for (none for a leaving node).
    pub target_revision: Option<&'a str>,
}

/// Records in each node's status the probe it is counted with (see [`NodeFacts::session_probe`]),
/// so that a node leaving the spec keeps it. `statuses` are in `facts` order.
pub fn record_session_probes(cluster: &OmeroCluster, facts: &[NodeFacts<'_>], statuses: &mut [NodeStatus]) {
    for (fact, status) in facts.iter().zip(statuses) {
        status.session_probe = fact.session_probe(cluster);
    }
}

/// Every node of the spec, in spec order, then every node that left the spec and still has a
/// Deployment or a pod of the cluster's own (it is drained before it goes). Their target
/// revisions come from the render ([`with_target_revisions`]).
pub fn facts<'a>(
    cluster: &'a OmeroCluster,
    old: &'a OmeroClusterStatus,
    ours: &'a [&'a Deployment],
    pods: &'a BTreeMap<String, PodObservation>,
) -> Vec<NodeFacts<'a>> {
    let cluster_name = cluster.name_any();
    let deployment_of = |node: &str| {
        let name = render::node_object_name(&cluster_name, node);
        ours.iter().copied().find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
    };
    let mut facts: Vec<NodeFacts<'a>> = cluster
        .spec
        .nodes
        .iter()
        .map(|spec| NodeFacts {
            name: spec.name.clone(),
            spec: Some(spec),
            previous: old.node(&spec.name),
            pod: pods.get(&spec.name),
            deployment: deployment_of(&spec.name),
            target_revision: None,
        })
        .collect();
    // Leaving nodes: known from the last status, or from an orphaned Deployment of ours.
    let mut leaving: Vec<String> = old
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .chain(ours.iter().filter_map(|d| d.labels().get(keys::NODE_LABEL).cloned()))
        .filter(|n| cluster.spec.node(n).is_none())
        .collect();
    leaving.dedup();
    for name in leaving {
        if facts.iter().any(|f| f.name == name) {
            continue;
        }
        let deployment = deployment_of(&name);
        let pod = pods.get(&name);
        if deployment.is_none() && pod.is_none() {
            continue; // gone: its status entry goes too
        }
        facts.push(NodeFacts {
            name: name.clone(),
            spec: None,
            previous: old.node(&name),
            pod,
            deployment,
            target_revision: None,
        });
    }
    facts
}

/// Each node's target revision: the one its rendered Deployment in `desired` carries (none
/// for a node that left the spec).
pub fn with_target_revisions<'a>(
    cluster: &OmeroCluster,
    mut facts: Vec<NodeFacts<'a>>,
    desired: &'a [Deployment],
) -> Vec<NodeFacts<'a>> {
    let cluster_name = cluster.name_any();
    for fact in facts.iter_mut().filter(|f| f.spec.is_some()) {
        let name = render::node_object_name(&cluster_name, &fact.name);
        fact.target_revision = desired
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|d| render::revision_of(&d.metadata));
    }
    facts
}

impl NodeFacts<'_> {
    /// The probe that counts the node's sessions: the spec's, or for a node that left the spec
    /// the one recorded in status while it was there. `None` only for a node that left the
    /// spec before the operator recorded probes (its deadline ends its drain).
    pub fn session_probe(&self, cluster: &OmeroCluster) -> Option<SessionProbe> {
        match self.spec {
            Some(spec) => Some(cluster.spec.session_probe_of(spec)),
            None => self.previous.and_then(|s| s.session_probe.clone()),
        }
    }

    /// How often to count the node's sessions while it serves.
    pub fn serving_probe_interval(&self, cluster: &OmeroCluster) -> Option<crate::api::Duration> {
        self.session_probe(cluster).and_then(|p| p.serving_interval())
    }

    /// How often to count the node's sessions while it drains.
    pub fn probe_interval(&self, cluster: &OmeroCluster) -> crate::api::Duration {
        self.session_probe(cluster).map_or(crate::api::DEFAULT_PROBE_INTERVAL, |p| p.interval())
    }

    pub fn role(&self, cluster: &OmeroCluster) -> Role {
        match self.spec {
            None => Role::Leaving,
            Some(spec) if cluster.spec.grid_master().is_some_and(|m| m.name == spec.name) => Role::GridMaster,
            Some(_) if cluster.spec.grid_master().is_some() => Role::Replica,
            Some(spec) if spec.is_read_write() => Role::ReadWrite,
            Some(_) => Role::Replica,
        }
    }

    pub fn deployment_revision(&self) -> Option<&str> {
        self.deployment.and_then(|d| render::revision_of(&d.metadata))
    }

    /// What the maintenance planner needs: the rollout's view, where the pod runs, and the
    /// Kubernetes node a recorded move is vacating.
    pub fn placement(&self, view: &NodeView) -> crate::maintenance::Placement {
        crate::maintenance::Placement {
            view: view.clone(),
            kube_node: self.pod.and_then(|p| p.kube_node.clone()),
            moving_off: self.previous.and_then(|s| s.moving_off.clone()),
        }
    }

    /// What the planner needs, from the last status and this reconcile's pod.
    pub fn view(&self, cluster: &OmeroCluster) -> NodeView {
        let previous = self.previous.cloned().unwrap_or_default();
        let released = previous.deployment_revision.as_deref().or(self.deployment_revision());
        // A node that has never had a Deployment gets one at its target revision now: it is
        // created, not rolled out (a new cluster is no rollout, and completes none). A
        // Deployment without a revision (an older operator's) is rolled out once.
        let created_now = self.deployment.is_none() && previous.deployment_revision.is_none();
        NodeView {
            name: self.name.clone(),
            role: self.role(cluster),
            phase: previous.phase,
            ready: self.pod.is_some_and(|p| p.ready),
            drain_reason: previous.drain_reason,
            out_of_date: self.target_revision.is_some() && !created_now && released != self.target_revision,
        }
    }
}

/// The writes a reconcile's decisions call for, once they are recorded in status.
#[derive(Debug, Default)]
pub struct Writes<'a> {
    pub deployments: Vec<Write<'a, Deployment>>,
    pub services: Vec<Write<'a, Service>>,
    /// The session counter's script: applied before the Deployments that mount it.
    pub config_maps: Vec<Write<'a, ConfigMap>>,
    /// One PodDisruptionBudget per node, following its phase.
    pub budgets: Vec<Write<'a, PodDisruptionBudget>>,
    /// Pods to delete (name and uid, a precondition): drained nodes moving off a Kubernetes
    /// node for maintenance.
    pub pod_deletes: Vec<(String, String)>,
    /// Kind, name and uid (a precondition) of objects to delete.
    pub deletes: Vec<(ChildKind, String, String)>,
    /// Pod name and the routable label it gets.
    pub labels: Vec<(String, bool)>,
}

impl Writes<'_> {
    /// Problems the API server reported last time for objects tried again now: kept until
    /// the write succeeds, so a retry does not make the report flicker.
    pub fn retried_refusals<'p>(&self, old: &'p [ObjectProblem]) -> impl Iterator<Item = &'p ObjectProblem> {
        let tried: Vec<(&str, &str)> = self
            .deployments
            .iter()
            .map(|w| ("Deployment", w.object.metadata.name.as_deref().unwrap_or_default()))
            .chain(
                self.services
                    .iter()
                    .map(|w| ("Service", w.object.metadata.name.as_deref().unwrap_or_default())),
            )
            .chain(
                self.config_maps
                    .iter()
                    .map(|w| ("ConfigMap", w.object.metadata.name.as_deref().unwrap_or_default())),
            )
            .chain(
                self.budgets
                    .iter()
                    .map(|w| ("PodDisruptionBudget", w.object.metadata.name.as_deref().unwrap_or_default())),
            )
            .chain(self.deletes.iter().map(|(kind, name, _)| (kind.as_str(), name.as_str())))
            .chain(self.pod_deletes.iter().map(|(pod, _)| ("Pod", pod.as_str())))
            .chain(self.labels.iter().map(|(pod, _)| ("Pod", pod.as_str())))
            .collect();
        old.iter().filter(move |p| {
            matches!(p.reason, ObjectProblemReason::Refused | ObjectProblemReason::Forbidden)
                && tried.contains(&(p.kind.as_str(), p.name.as_str()))
        })
    }
}

/// What to write, from the ownership plans, the existing objects and the decided statuses:
/// nothing while paused; a node's Deployment only once its status released the revision; the
/// objects of a node that left the spec only once it is drained; the label patches the
/// lifecycle asked for; the session counter's ConfigMap once no Deployment mounts it.
#[allow(clippy::too_many_arguments)]
pub fn writes<'a>(
    (deployments, services, config_maps): (Plan<'a, Deployment>, Plan<'a, Service>, Plan<'a, ConfigMap>),
    existing: (&[Deployment], &[Service], &[ConfigMap]),
    desired: (&[Deployment], &[Service], &[ConfigMap]),
    (budgets, existing_budgets, desired_budgets): (
        Plan<'a, PodDisruptionBudget>,
        &[PodDisruptionBudget],
        &[PodDisruptionBudget],
    ),
    pods: &[Pod],
    owner_uid: Option<&str>,
    statuses: &[NodeStatus],
    labels: Vec<(String, bool)>,
    paused: bool,
) -> Writes<'a> {
    if paused {
        return Writes::default();
    }
    let deletes = removable_orphans(existing.0, desired.0, ChildKind::Deployment, owner_uid, statuses)
        .chain(removable_orphans(existing.1, desired.1, ChildKind::Service, owner_uid, statuses))
        .chain(removable_orphans(
            existing_budgets,
            desired_budgets,
            ChildKind::PodDisruptionBudget,
            owner_uid,
            statuses,
        ))
        .chain(unmounted_config_maps(existing.2, desired.2, existing.0, owner_uid))
        .collect();
    Writes {
        deployments: releasable(deployments.writes, statuses),
        services: services.writes,
        config_maps: config_maps.writes,
        budgets: budgets.writes,
        pod_deletes: replaced_pods(statuses, pods),
        deletes,
        labels,
    }
}

/// The pods that moving nodes recorded as replaced and that still exist, not yet terminating:
/// deleted (again, idempotently) until they are gone.
pub fn replaced_pods(statuses: &[NodeStatus], pods: &[Pod]) -> Vec<(String, String)> {
    statuses
        .iter()
        .filter(|s| s.phase == NodePhase::Restarting)
        .filter_map(|s| {
            let name = s.replaced_pod.as_ref()?;
            let pod = pods.iter().find(|p| p.metadata.name.as_ref() == Some(name))?;
            if pod.metadata.deletion_timestamp.is_some() {
                return None;
            }
            Some((name.clone(), pod.metadata.uid.clone()?))
        })
        .collect()
}

/// The cluster's own ConfigMaps no longer desired (no node runs the session counter) that no
/// existing Deployment's template mounts any more: a node keeps its old template until it is
/// drained, and a pod of it that starts again needs the ConfigMap to start at all.
fn unmounted_config_maps<'s>(
    existing: &'s [ConfigMap],
    desired: &'s [ConfigMap],
    deployments: &'s [Deployment],
    owner_uid: Option<&str>,
) -> impl Iterator<Item = (ChildKind, String, String)> + 's {
    let mounted = |name: &str| {
        deployments.iter().any(|d| {
            let volumes =
                d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.volumes.as_ref());
            volumes.into_iter().flatten().any(|v| v.config_map.as_ref().is_some_and(|c| c.name == name))
        })
    };
    diff::orphans(existing, desired, owner_uid)
        .into_iter()
        .filter(move |(name, _)| !mounted(name))
        .map(|(name, uid)| (ChildKind::ConfigMap, name, uid))
}

/// The cluster's own objects of nodes that left the spec that may go now (see [`removable`]).
fn removable_orphans<'s, K: Resource>(
    existing: &'s [K],
    desired: &'s [K],
    kind: ChildKind,
    owner_uid: Option<&str>,
    statuses: &'s [NodeStatus],
) -> impl Iterator<Item = (ChildKind, String, String)> + 's {
    diff::orphans(existing, desired, owner_uid).into_iter().filter_map(move |(name, uid)| {
        let object = existing.iter().find(|e| e.meta().name.as_ref() == Some(&name))?;
        let node = object.meta().labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL));
        removable(node.and_then(|n| statuses.iter().find(|s| &s.name == n))).then_some((kind, name, uid))
    })
}

/// The Deployment writes the statuses allow: a node's Deployment gets the rendered template
/// only once its status records that revision as released to it (see `lifecycle::release`);
/// until then the running template is kept.
fn releasable<'a>(writes: Vec<Write<'a, Deployment>>, statuses: &[NodeStatus]) -> Vec<Write<'a, Deployment>> {
    writes
        .into_iter()
        .filter(|w| {
            let node = w.object.labels().get(keys::NODE_LABEL).map(String::as_str);
            let status = node.and_then(|n| statuses.iter().find(|s| s.name == n));
            status
                .is_some_and(|s| s.deployment_revision.as_deref() == render::revision_of(&w.object.metadata))
        })
        .collect()
}

/// Whether the objects of a node that left the spec may be deleted: it is drained or stopped,
/// or it never served (nothing to protect).
pub fn removable(node: Option<&NodeStatus>) -> bool {
    node.is_none_or(|s| {
        s.leaving
            && matches!(
                s.phase,
                NodePhase::Drained | NodePhase::Pending | NodePhase::Failed | NodePhase::Stopped
            )
    })
}

/// The rendered Deployments with the replicas the decided statuses call for: none for a node
/// recorded Stopped (its drain for the cluster's stop has ended), one for every other. The
/// status is recorded before the write, so a node is scaled to zero only once it is drained.
pub fn scaled(desired: &[Deployment], statuses: &[NodeStatus]) -> Vec<Deployment> {
    desired
        .iter()
        .map(|deployment| {
            let node = deployment.labels().get(keys::NODE_LABEL);
            let stopped = node
                .and_then(|n| statuses.iter().find(|s| &s.name == n))
                .is_some_and(|s| s.phase == NodePhase::Stopped);
            let mut deployment = deployment.clone();
            if let Some(spec) = deployment.spec.as_mut() {
                spec.replicas = Some(if stopped { 0 } else { 1 });
            }
            deployment
        })
        .collect()
}

/// Probes due this reconcile, by node name.
pub fn probes_due<'a>(
    cluster: &'a OmeroCluster,
    facts: &'a [NodeFacts<'a>],
    now: k8s_openapi::jiff::Timestamp,
) -> impl Iterator<Item = &'a NodeFacts<'a>> {
    facts.iter().filter(move |f| {
        lifecycle::probe_due(f.previous, f.pod, now)
            || lifecycle::serving_probe_due(f.previous, f.pod, f.serving_probe_interval(cluster), now)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::render::{
        render,
        tests::{BASE, cluster},
    };

    fn status(name: &str, phase: NodePhase, released: Option<&str>, leaving: bool) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            phase,
            deployment_revision: released.map(String::from),
            leaving,
            ..Default::default()
        }
    }

    #[test]
    fn writes_follow_the_recorded_decisions() {
        let c = cluster(BASE);
        let uid = c.metadata.uid.clone();
        let desired = render(&c);
        let revision = |node: &str| {
            let d = desired
                .deployments
                .iter()
                .find(|d| d.labels().get(keys::NODE_LABEL).map(String::as_str) == Some(node));
            render::revision_of(&d.unwrap().metadata).unwrap().to_string()
        };
        // An old node `gone` whose objects are the cluster's own.
        let mut gone = desired.deployments[0].clone();
        gone.metadata.name = Some("omc-gone".into());
        gone.metadata.uid = Some("u-gone".into());
        gone.metadata.labels.as_mut().unwrap().insert(keys::NODE_LABEL.into(), "gone".into());
        let existing = (std::slice::from_ref(&gone), &[] as &[Service], &[] as &[ConfigMap]);
        // Looked up by name: nothing holds any of them.
        fn absent<K: kube::Resource>(objects: &[K]) -> BTreeMap<String, Option<kube::api::ObjectMeta>> {
            objects.iter().map(|o| (o.meta().name.clone().unwrap(), None)).collect()
        }
        let plans = || {
            (
                diff::plan_writes(&desired.deployments, &[], &absent(&desired.deployments), uid.as_deref())
                    .unwrap(),
                diff::plan_writes(&desired.services, &[], &absent(&desired.services), uid.as_deref())
                    .unwrap(),
                diff::plan_writes(&desired.config_maps, &[], &absent(&desired.config_maps), uid.as_deref())
                    .unwrap(),
            )
        };
        let write = |statuses: &[NodeStatus], paused: bool| {
            let w = writes(
                plans(),
                existing,
                (&desired.deployments, &desired.services, &desired.config_maps),
                (diff::plan_writes(&[], &[], &BTreeMap::new(), uid.as_deref()).unwrap(), &[], &[]),
                &[],
                uid.as_deref(),
                statuses,
                vec![("omc-rw-pod".into(), true)],
                paused,
            );
            let names: Vec<String> =
                w.deployments.iter().map(|w| w.object.metadata.name.clone().unwrap()).collect();
            (names, w.deletes, w.labels.len(), w.services.len())
        };

        // `rw` released its revision, `ro` keeps the running one; `gone` still drains.
        let statuses = [
            status("rw", NodePhase::Serving, Some(&revision("rw")), false),
            status("ro", NodePhase::Serving, Some("older"), false),
            status("gone", NodePhase::Draining, None, true),
        ];
        let (deployments, deletes, labels, services) = write(&statuses, false);
        assert_eq!(deployments, ["omc-rw"]);
        assert!(deletes.is_empty(), "a leaving node's objects wait for its drain");
        assert_eq!((labels, services), (1, 3), "label patches and Services (no restart) go at once");

        // Drained: its Deployment goes, with its uid as a precondition.
        let statuses =
            [statuses[0].clone(), statuses[1].clone(), status("gone", NodePhase::Drained, None, true)];
        assert_eq!(
            write(&statuses, false).1,
            [(ChildKind::Deployment, "omc-gone".to_string(), "u-gone".to_string())]
        );

        // Paused: nothing at all.
        assert_eq!(write(&statuses, true), (vec![], vec![], 0, 0));
    }
}
