//! Puts together, per node, what the lifecycle and the planner decide from: the spec (or its
//! absence, for a node that left it), the last status, the pod, the Deployment, the revision
//! the spec asks for. And, from their decisions, the writes a reconcile may make. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use super::diff::Write;
use crate::{
    api::{NodePhase, NodeSpec, NodeStatus, OmeroCluster, OmeroClusterStatus, keys},
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

/// Every node of the spec, in spec order, then every node that left the spec and still has a
/// Deployment or a pod of the cluster's own (it is drained before it goes).
pub fn facts<'a>(
    cluster: &'a OmeroCluster,
    old: &'a OmeroClusterStatus,
    desired: &'a [Deployment],
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
        .map(|spec| {
            let name = render::node_object_name(&cluster_name, &spec.name);
            NodeFacts {
                name: spec.name.clone(),
                spec: Some(spec),
                previous: old.node(&spec.name),
                pod: pods.get(&spec.name),
                deployment: deployment_of(&spec.name),
                target_revision: desired
                    .iter()
                    .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                    .and_then(|d| render::revision_of(&d.metadata)),
            }
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

impl NodeFacts<'_> {
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

    /// What the planner needs, from the last status and this reconcile's pod.
    pub fn view(&self, cluster: &OmeroCluster) -> NodeView {
        let previous = self.previous.cloned().unwrap_or_default();
        let released = previous.deployment_revision.as_deref().or(self.deployment_revision());
        NodeView {
            name: self.name.clone(),
            role: self.role(cluster),
            phase: previous.phase,
            ready: self.pod.is_some_and(|p| p.ready),
            drain_reason: previous.drain_reason,
            out_of_date: self.target_revision.is_some() && released != self.target_revision,
        }
    }
}

/// The Deployment writes the statuses allow: a node's Deployment gets the rendered template
/// only once its status records that revision as released to it (see `lifecycle::release`);
/// until then the running template is kept.
pub fn releasable<'a>(
    writes: Vec<Write<'a, Deployment>>,
    statuses: &[NodeStatus],
) -> Vec<Write<'a, Deployment>> {
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

/// Whether the objects of a node that left the spec may be deleted: it is drained, or it never
/// served (nothing to protect).
pub fn removable(node: Option<&NodeStatus>) -> bool {
    node.is_none_or(|s| {
        s.leaving && matches!(s.phase, NodePhase::Drained | NodePhase::Pending | NodePhase::Failed)
    })
}

/// Probes due this reconcile, by node name.
pub fn probes_due<'a>(
    facts: &'a [NodeFacts<'a>],
    now: k8s_openapi::jiff::Timestamp,
) -> impl Iterator<Item = &'a NodeFacts<'a>> {
    facts.iter().filter(move |f| lifecycle::probe_due(f.previous, f.pod, now))
}
