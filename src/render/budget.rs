//! One PodDisruptionBudget per node: evictions (`kubectl drain`) wait while the node serves or
//! holds sessions, and go ahead once it is drained or does not serve. One budget for the whole
//! cluster would not do: opening it for one pod would let any other pod be evicted.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::ResourceExt;

use super::labels::{node_labels, node_object_name, node_selector_labels, object_meta};
use crate::api::{NodePhase, NodeStatus, OmeroCluster};

/// Lets a pod that is not ready be evicted even while the budget allows no disruption: a
/// crash-looping pod holds no sessions and must not block `kubectl drain` for ever.
pub const UNHEALTHY_POD_EVICTION_POLICY: &str = "AlwaysAllow";

/// Whether the node's pod may hold sessions: it serves, or it drains (sessions still open).
/// A node without a status yet (offline `render`) counts as serving.
pub fn protects(status: Option<&NodeStatus>) -> bool {
    status.is_none_or(|s| matches!(s.phase, NodePhase::Serving | NodePhase::Draining))
}

/// The budgets of every node of the spec, from the nodes' statuses as decided by this reconcile.
pub fn budgets(cluster: &OmeroCluster, statuses: &[NodeStatus]) -> Vec<PodDisruptionBudget> {
    let cluster = &*crate::pool::resolved(cluster);
    let name = cluster.name_any();
    cluster
        .spec
        .nodes
        .iter()
        .map(|node| {
            let status = statuses.iter().find(|s| s.name == node.name);
            let max_unavailable = if protects(status) { 0 } else { 1 };
            PodDisruptionBudget {
                metadata: object_meta(
                    cluster,
                    node_object_name(&name, &node.name),
                    node_labels(&name, &node.name),
                ),
                spec: Some(PodDisruptionBudgetSpec {
                    selector: Some(LabelSelector {
                        match_labels: Some(node_selector_labels(&name, &node.name)),
                        match_expressions: None,
                    }),
                    max_unavailable: Some(IntOrString::Int(max_unavailable)),
                    min_available: None,
                    unhealthy_pod_eviction_policy: Some(UNHEALTHY_POD_EVICTION_POLICY.into()),
                }),
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::{BASE, cluster};

    #[test]
    fn one_budget_per_node_closed_while_it_serves_or_drains_and_open_otherwise() {
        let c = cluster(BASE);
        let nodes: Vec<String> = c.spec.nodes.iter().map(|n| n.name.clone()).collect();
        assert!(nodes.len() >= 2, "the base cluster has several nodes");
        let status = |name: &str, phase| NodeStatus { name: name.into(), phase, ..Default::default() };
        for (phase, max) in [
            (NodePhase::Serving, 0),
            (NodePhase::Draining, 0),
            (NodePhase::Drained, 1),
            (NodePhase::Restarting, 1),
            (NodePhase::Starting, 1),
            (NodePhase::Pending, 1),
            (NodePhase::Failed, 1),
        ] {
            let statuses = [status(&nodes[0], phase), status(&nodes[1], NodePhase::Serving)];
            let budgets = budgets(&c, &statuses);
            assert_eq!(budgets.len(), nodes.len());
            let spec = budgets[0].spec.as_ref().unwrap();
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(max)), "{phase:?}");
            assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
            assert_eq!(budgets[1].spec.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(0)));
        }
        let budget = &budgets(&c, &[])[0];
        let name = c.name_any();
        assert_eq!(budget.metadata.name.as_deref(), Some(node_object_name(&name, &nodes[0]).as_str()));
        // Exactly this node's pods: the Deployment's own selector.
        assert_eq!(
            budget.spec.as_ref().unwrap().selector.as_ref().unwrap().match_labels,
            Some(node_selector_labels(&name, &nodes[0]))
        );
        assert_eq!(
            budget.spec.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(0)),
            "no status: serving"
        );
    }
}
