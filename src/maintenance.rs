//! Kubernetes node maintenance: which OMERO nodes must move off a Kubernetes node now. Pure:
//! from where each OMERO node's pod runs, which Kubernetes nodes are under maintenance and the
//! rollout's limits, to the nodes that start moving, the moves that go on, the moves that are
//! cancelled and the nodes that wait (with which Kubernetes node waits on them, and how to
//! allow it).
//!
//! A Kubernetes node is under maintenance when it is cordoned (`spec.unschedulable`, which
//! `kubectl drain` sets first) or carries a `NoSchedule` taint whose key the cluster lists
//! (`spec.maintenance.taintKeys`). A move is a drain with reason `Maintenance`, through the
//! node lifecycle; once drained, the node's pod is deleted and the Deployment's new pod is
//! scheduled elsewhere. Moves share the rollout's limits:
//! - nothing starts while paused;
//! - at most `drain.maxUnavailable` nodes out of service at once, counting every node that is
//!   not serving for any reason (rollouts, requested drains, failures, other moves);
//! - never the last serving node, and never a grid master, without consent to downtime;
//! - read-only nodes or grid workers first, then the read-write node, then the grid master.
//!
//! A node whose pod runs on a Kubernetes node the operator does not see (deleted, or the pod
//! lost) has nothing to drain here; a node that does not serve has nothing to protect (its
//! PodDisruptionBudget is open, so `kubectl drain` evicts its pod).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;

use crate::{
    api::{DrainReason, NodePhase},
    request::ALLOW_DOWNTIME_ANNOTATION,
    rollout::{Limits, NodeView, Role},
};

/// Why a Kubernetes node is under maintenance, if it is: cordoned, or a listed `NoSchedule`
/// taint. `NoExecute` taints are not considered: the taint manager evicts pods at once for
/// those, whatever the operator does.
pub fn under_maintenance(node: &Node, taint_keys: &[String]) -> Option<String> {
    let spec = node.spec.as_ref()?;
    if spec.unschedulable == Some(true) {
        return Some("cordoned".into());
    }
    spec.taints
        .iter()
        .flatten()
        .find(|t| t.effect == "NoSchedule" && taint_keys.contains(&t.key))
        .map(|t| format!("tainted {}:NoSchedule", t.key))
}

/// The Kubernetes nodes the cluster's pods run on, with why each is under maintenance (`None`:
/// schedulable). Empty when the operator does not watch Nodes: nothing moves by itself then.
pub fn hosts(nodes: Option<&[Node]>, taint_keys: &[String]) -> BTreeMap<String, Option<String>> {
    nodes
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n.metadata.name.clone()?, under_maintenance(n, taint_keys))))
        .collect()
}

/// What the planner knows of one OMERO node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub view: NodeView,
    /// The Kubernetes node its current pod is bound to.
    pub kube_node: Option<String>,
    /// The Kubernetes node a move recorded in status is vacating (`status.movingOff`).
    pub moving_off: Option<String>,
}

impl Placement {
    fn serving(&self) -> bool {
        self.view.phase == NodePhase::Serving && self.view.ready
    }

    /// Out of service to move, in its drain still (an uncordon may cancel it) or drained.
    fn moving(&self) -> bool {
        self.view.drain_reason == Some(DrainReason::Maintenance)
            && matches!(self.view.phase, NodePhase::Draining | NodePhase::Drained)
    }
}

/// One OMERO node a Kubernetes node under maintenance waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub kube_node: String,
    pub node: String,
    pub why: String,
}

impl Wait {
    pub fn message(&self) -> String {
        format!("Kubernetes node {} waits on OMERO node {}: {}", self.kube_node, self.node, self.why)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every OMERO node to be out of service for maintenance now, with the Kubernetes node it
    /// moves off: the moves that start now and those that go on.
    pub moves: BTreeMap<String, String>,
    /// The moves that start now (a subset of `moves`).
    pub started: BTreeSet<String>,
    /// Moves whose Kubernetes node is no longer under maintenance before the drain ended: the
    /// node stays and serves again.
    pub cancelled: BTreeSet<String>,
    /// Serving nodes on a Kubernetes node under maintenance that cannot move now, and why.
    pub waiting: Vec<Wait>,
}

/// Decides the moves. `hosts`: every Kubernetes node the cluster's pods run on that the
/// operator sees, with why it is under maintenance (`None`: schedulable). A Kubernetes node
/// absent from `hosts` is gone.
pub fn plan_moves(nodes: &[Placement], hosts: &BTreeMap<String, Option<String>>, limits: &Limits) -> Plan {
    let maintenance =
        |kube_node: Option<&String>| kube_node.and_then(|k| hosts.get(k)).is_some_and(Option::is_some);
    let mut plan = Plan::default();
    for node in nodes.iter().filter(|n| n.moving()) {
        let vacating = node.moving_off.as_ref().or(node.kube_node.as_ref());
        // A drained node moves whatever happens now; a draining one stops if uncordoned.
        if node.view.phase == NodePhase::Drained || maintenance(vacating) {
            plan.moves.insert(node.view.name.clone(), vacating.cloned().unwrap_or_default());
        } else {
            plan.cancelled.insert(node.view.name.clone());
        }
    }
    let mut candidates: Vec<&Placement> = nodes
        .iter()
        .filter(|n| n.serving() && n.view.role != Role::Leaving && maintenance(n.kube_node.as_ref()))
        .collect();
    candidates.sort_by_key(|n| n.view.role); // stable: spec order within a rank
    let mut unavailable = nodes.iter().filter(|n| !n.serving()).count();
    let mut serving = nodes.iter().filter(|n| n.serving()).count();
    let out_now = || nodes.iter().filter(|n| !n.serving()).map(|n| n.view.name.as_str()).collect::<Vec<_>>();
    let consent = format!("annotate the OmeroCluster {ALLOW_DOWNTIME_ANNOTATION}=\"true\" to allow it");
    let mut blocked: Option<String> = None;
    for node in candidates {
        let kube_node = node.kube_node.clone().unwrap_or_default();
        let why = if let Some(why) = &blocked {
            Some(why.clone())
        } else if limits.paused {
            Some("paused (omero.openmicroscopy.org/paused)".to_string())
        } else if node.view.role == Role::GridMaster && !limits.allow_downtime {
            Some(format!(
                "it is the grid master: moving it drops every client connection (Glacier2 and the registry \
                 run there); {consent}"
            ))
        } else if unavailable >= limits.max_unavailable as usize {
            Some(format!(
                "at most {} node(s) may be out of service at once (drain.maxUnavailable); out now: {}",
                limits.max_unavailable,
                out_now().join(", ")
            ))
        } else if serving <= 1 && !limits.allow_downtime {
            Some(format!(
                "it is the last serving node: moving it interrupts service; add another node or {consent}"
            ))
        } else {
            None
        };
        match why {
            Some(why) => {
                // A later rank waits for an earlier one that waits.
                if blocked.is_none() && node.view.role != Role::Replica {
                    blocked = Some(format!("OMERO node {} goes first", node.view.name));
                }
                plan.waiting.push(Wait { kube_node, node: node.view.name.clone(), why });
            }
            None => {
                plan.moves.insert(node.view.name.clone(), kube_node);
                plan.started.insert(node.view.name.clone());
                unavailable += 1;
                serving -= 1;
            }
        }
    }
    plan
}

/// The views the rollout planner sees once the moves that start now are out of service, so
/// both share `maxUnavailable`.
pub fn with_moves(views: &[NodeView], plan: &Plan) -> Vec<NodeView> {
    views
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if plan.started.contains(&v.name) {
                v.taken_out(DrainReason::Maintenance);
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(name: &str, role: Role, kube_node: &str) -> Placement {
        Placement {
            view: NodeView {
                name: name.into(),
                role,
                phase: NodePhase::Serving,
                ready: true,
                drain_reason: None,
                out_of_date: false,
            },
            kube_node: Some(kube_node.into()),
            moving_off: None,
        }
    }

    fn hosts(cordoned: &[&str], schedulable: &[&str]) -> BTreeMap<String, Option<String>> {
        cordoned
            .iter()
            .map(|k| (k.to_string(), Some("cordoned".to_string())))
            .chain(schedulable.iter().map(|k| (k.to_string(), None)))
            .collect()
    }

    const LIMITS: Limits = Limits { max_unavailable: 1, allow_downtime: false, paused: false };

    #[test]
    fn a_cordon_moves_one_node_at_a_time_and_says_who_waits() {
        let nodes = [placed("rw", Role::ReadWrite, "k1"), placed("ro-1", Role::Replica, "k2"), {
            placed("ro-2", Role::Replica, "k2")
        }];
        let p = plan_moves(&nodes, &hosts(&["k2"], &["k1"]), &LIMITS);
        assert_eq!(p.started, BTreeSet::from(["ro-1".to_string()]));
        assert_eq!(p.moves, BTreeMap::from([("ro-1".to_string(), "k2".to_string())]));
        assert_eq!(p.waiting.len(), 1);
        assert!(p.waiting[0].message().starts_with("Kubernetes node k2 waits on OMERO node ro-2: at most 1"));
    }

    #[test]
    fn the_last_serving_node_and_the_grid_master_wait_for_consent() {
        let nodes = [placed("rw", Role::ReadWrite, "k1")];
        let p = plan_moves(&nodes, &hosts(&["k1"], &[]), &LIMITS);
        assert!(p.moves.is_empty());
        assert!(p.waiting[0].why.contains("last serving node"), "{p:?}");
        assert!(p.waiting[0].why.contains(ALLOW_DOWNTIME_ANNOTATION), "{p:?}");
        let p = plan_moves(&nodes, &hosts(&["k1"], &[]), &Limits { allow_downtime: true, ..LIMITS });
        assert_eq!(p.started.len(), 1);

        let grid = [placed("master", Role::GridMaster, "k1"), placed("w", Role::Replica, "k2")];
        let p = plan_moves(&grid, &hosts(&["k1"], &["k2"]), &LIMITS);
        assert!(p.waiting[0].why.contains("grid master"), "{p:?}");
    }

    #[test]
    fn an_uncordon_cancels_a_draining_move_but_not_a_drained_one() {
        let mut draining = placed("ro-1", Role::Replica, "k2");
        draining.view.phase = NodePhase::Draining;
        draining.view.drain_reason = Some(DrainReason::Maintenance);
        draining.moving_off = Some("k2".into());
        let nodes = [placed("rw", Role::ReadWrite, "k1"), draining.clone()];
        let p = plan_moves(&nodes, &hosts(&[], &["k1", "k2"]), &LIMITS);
        assert_eq!(p.cancelled, BTreeSet::from(["ro-1".to_string()]));
        assert!(p.moves.is_empty());
        let p = plan_moves(&nodes, &hosts(&["k2"], &["k1"]), &LIMITS);
        assert_eq!(p.moves.get("ro-1").map(String::as_str), Some("k2"));
        assert!(p.started.is_empty(), "it goes on; it does not start again");
        let mut drained = draining;
        drained.view.phase = NodePhase::Drained;
        let p =
            plan_moves(&[placed("rw", Role::ReadWrite, "k1"), drained], &hosts(&[], &["k1", "k2"]), &LIMITS);
        assert!(p.cancelled.is_empty() && p.moves.contains_key("ro-1"), "{p:?}");
    }

    #[test]
    fn a_cordon_or_a_listed_noschedule_taint_is_maintenance_noexecute_and_unlisted_are_not() {
        let node = |spec: serde_json::Value| -> Node {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "k1"}, "spec": spec})).unwrap()
        };
        let keys = ["example.com/maintenance".to_string()];
        assert_eq!(
            under_maintenance(&node(serde_json::json!({"unschedulable": true})), &keys).as_deref(),
            Some("cordoned")
        );
        let tainted =
            |key: &str, effect: &str| node(serde_json::json!({"taints": [{"key": key, "effect": effect}]}));
        assert_eq!(
            under_maintenance(&tainted("example.com/maintenance", "NoSchedule"), &keys).as_deref(),
            Some("tainted example.com/maintenance:NoSchedule")
        );
        assert_eq!(under_maintenance(&tainted("example.com/maintenance", "NoExecute"), &keys), None);
        assert_eq!(under_maintenance(&tainted("example.com/other", "NoSchedule"), &keys), None);
        assert_eq!(under_maintenance(&node(serde_json::json!({})), &keys), None);
        let h = super::hosts(Some(&[node(serde_json::json!({"unschedulable": true}))]), &keys);
        assert_eq!(h, BTreeMap::from([("k1".to_string(), Some("cordoned".to_string()))]));
        assert!(super::hosts(None, &keys).is_empty(), "no Node watch: nothing is under maintenance");
    }

    #[test]
    fn pods_on_unknown_nodes_and_nodes_not_serving_are_not_moved() {
        let mut starting = placed("ro-1", Role::Replica, "k2");
        starting.view.phase = NodePhase::Starting;
        let nodes = [placed("rw", Role::ReadWrite, "gone"), starting, placed("ro-2", Role::Replica, "k3")];
        let p = plan_moves(&nodes, &hosts(&["k2"], &["k3"]), &Limits { max_unavailable: 3, ..LIMITS });
        assert_eq!(p, Plan::default());
    }
}
