//! Rollout planning: which serving nodes leave service now to be restarted (a new revision) or
//! removed (gone from the spec). Pure: from every node's state, the limits and the consent,
//! to the nodes that move next and, when none can, why.
//!
//! Rules, in the order they are checked:
//! - nothing moves while paused, or while a node has failed (a restart that did not become
//!   ready stops the rollout until the node is ready or the spec changes);
//! - nodes leaving the spec go first, then read-only nodes (independent) or workers (grid),
//!   then the read-write node, then the grid master: a node waits until every node of an
//!   earlier rank is done;
//! - at most `maxUnavailable` nodes are out of service at once, counting every node that is not
//!   serving for whatever reason (drained on request, starting, failed); removals are exempt
//!   (they are decided before, with requested drains: `crate::departures`);
//! - never the last serving node, and never a grid master, without consent to downtime.
//!
//! Nodes that are not serving are not planned: they have nothing to protect and the lifecycle
//! gives them their new template at once.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api::{DrainReason, NodePhase},
    request::{ALLOW_DOWNTIME_ANNOTATION, Request},
};

/// The restart token each node's pod template carries: the request's, for the nodes it
/// covers (a new token is a new revision, so the node restarts once for it), else the token
/// its Deployment already has (so removing the annotation restarts nothing).
pub fn restart_tokens<'a>(
    request: &Request,
    nodes: impl IntoIterator<Item = &'a str>,
    current: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    nodes
        .into_iter()
        .filter_map(|node| {
            let token = request.restart_token(node).map(str::to_string).or_else(|| current(node))?;
            Some((node.to_string(), token))
        })
        .collect()
}

/// A node's part in the order of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Left the spec: drained, then deleted.
    Leaving,
    /// `independent` read-only node, or `grid` worker.
    Replica,
    /// The read-write node of an `independent` cluster.
    ReadWrite,
    /// The grid master: registry and Glacier2, every client's way in.
    GridMaster,
}

/// What the planner needs of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    pub phase: NodePhase,
    pub ready: bool,
    pub drain_reason: Option<DrainReason>,
    /// The spec asks for a revision the node's Deployment has not been given.
    pub out_of_date: bool,
}

impl NodeView {
    /// The view once this reconcile takes the node out of service for `reason`: what the
    /// planners deciding after that see.
    pub fn taken_out(&mut self, reason: DrainReason) {
        self.phase = NodePhase::Draining;
        self.drain_reason = Some(reason);
    }

    fn serving(&self) -> bool {
        self.phase == NodePhase::Serving && self.ready
    }

    /// In the middle of this rollout: out of service to be restarted or removed.
    fn moving(&self) -> bool {
        matches!(self.phase, NodePhase::Draining | NodePhase::Drained | NodePhase::Restarting)
            && matches!(self.drain_reason, Some(DrainReason::Rollout | DrainReason::Removal))
    }

    /// Still has to go through the rollout.
    fn to_do(&self) -> bool {
        self.out_of_date || self.role == Role::Leaving || self.moving()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_unavailable: u32,
    pub allow_downtime: bool,
    pub paused: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Serving nodes to take out of service now.
    pub selected: BTreeSet<String>,
    /// Nodes still to restart or remove, in the order they go.
    pub pending: Vec<String>,
    /// Why nothing moves although nodes wait, when that is so.
    pub waiting: Option<String>,
    /// What it waits for is consent (`allow-downtime`): nothing but a person ends that wait.
    pub needs_consent: bool,
}

pub fn plan_restarts(nodes: &[NodeView], limits: &Limits) -> Plan {
    let mut order: Vec<&NodeView> = nodes.iter().filter(|n| n.to_do()).collect();
    order.sort_by_key(|n| n.role); // stable: spec order within a rank
    let mut plan = Plan { pending: order.iter().map(|n| n.name.clone()).collect(), ..Plan::default() };
    let candidates: Vec<&NodeView> =
        order.iter().copied().filter(|n| n.phase == NodePhase::Serving && !n.moving()).collect();
    if candidates.is_empty() {
        return plan;
    }
    if limits.paused {
        plan.waiting = Some("paused (omero.openmicroscopy.org/paused)".into());
        return plan;
    }
    if let Some(failed) = nodes.iter().find(|n| n.phase == NodePhase::Failed) {
        plan.waiting = Some(format!(
            "node {} has failed; the rollout waits until it is ready or the spec changes",
            failed.name
        ));
        return plan;
    }
    let unavailable = nodes.iter().filter(|n| !n.serving()).count();
    let mut serving = nodes.iter().filter(|n| n.serving()).count();
    let first_rank = order.iter().map(|n| n.role).min();
    let moving = nodes.iter().any(NodeView::moving);
    let mut blocked = None;
    let mut needs_consent = false;
    for node in candidates {
        if Some(node.role) != first_rank {
            let earlier: Vec<&str> =
                order.iter().filter(|n| n.role < node.role).map(|n| n.name.as_str()).collect();
            blocked = Some(format!("node {} goes after {}", node.name, earlier.join(", ")));
            break;
        }
        if node.role == Role::GridMaster && !limits.allow_downtime {
            needs_consent = true;
            blocked = Some(format!(
                "node {} is the grid master: restarting it drops every client connection (Glacier2 and the \
                 registry run there); annotate {ALLOW_DOWNTIME_ANNOTATION}=\"true\" to allow it",
                node.name
            ));
            break;
        }
        // Removals are exempt (see `crate::departures`): one reaching here waits for consent.
        if node.role != Role::Leaving && unavailable + plan.selected.len() >= limits.max_unavailable as usize
        {
            let out: Vec<&str> = nodes.iter().filter(|n| !n.serving()).map(|n| n.name.as_str()).collect();
            blocked = Some(format!(
                "at most {} node(s) may be out of service at once (drain.maxUnavailable); out now: {}",
                limits.max_unavailable,
                out.join(", ")
            ));
            break;
        }
        let serving_after = serving - usize::from(node.serving());
        if serving_after == 0 && !limits.allow_downtime {
            needs_consent = true;
            blocked = Some(format!(
                "node {} is the last serving node: restarting it interrupts service; annotate \
                 {ALLOW_DOWNTIME_ANNOTATION}=\"true\" to allow that",
                node.name
            ));
            break;
        }
        plan.selected.insert(node.name.clone());
        serving = serving_after;
    }
    if plan.selected.is_empty() && !moving {
        plan.needs_consent = needs_consent && blocked.is_some();
        plan.waiting = blocked;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, role: Role, out_of_date: bool) -> NodeView {
        NodeView {
            name: name.into(),
            role,
            phase: NodePhase::Serving,
            ready: true,
            drain_reason: None,
            out_of_date,
        }
    }

    const LIMITS: Limits = Limits { max_unavailable: 1, allow_downtime: false, paused: false };

    #[test]
    fn read_only_nodes_go_first_one_at_a_time_and_the_read_write_node_last() {
        let nodes = [
            view("rw", Role::ReadWrite, true),
            view("ro-1", Role::Replica, true),
            view("ro-2", Role::Replica, true),
        ];
        let p = plan_restarts(&nodes, &LIMITS);
        assert_eq!(p.selected, BTreeSet::from(["ro-1".to_string()]));
        assert_eq!(p.pending, ["ro-1", "ro-2", "rw"]);
        assert_eq!(p.waiting, None);
    }

    #[test]
    fn the_read_write_node_waits_for_the_replicas_even_with_room() {
        let nodes = [view("rw", Role::ReadWrite, true), view("ro-1", Role::Replica, true)];
        let p = plan_restarts(&nodes, &Limits { max_unavailable: 2, ..LIMITS });
        assert_eq!(p.selected, BTreeSet::from(["ro-1".to_string()]));
    }

    #[test]
    fn the_only_serving_node_waits_for_consent() {
        let nodes = [view("rw", Role::ReadWrite, true)];
        let p = plan_restarts(&nodes, &LIMITS);
        assert!(p.selected.is_empty());
        assert!(p.waiting.as_deref().unwrap().contains("last serving node"), "{p:?}");
        assert!(p.needs_consent, "only consent ends this wait");
        let p = plan_restarts(&nodes, &Limits { allow_downtime: true, ..LIMITS });
        assert_eq!(p.selected.len(), 1);
    }

    #[test]
    fn the_grid_master_waits_for_consent_even_with_workers_serving() {
        let nodes = [view("master", Role::GridMaster, true), view("w1", Role::Replica, false)];
        let p = plan_restarts(&nodes, &LIMITS);
        assert!(p.waiting.as_deref().unwrap().contains("grid master"), "{p:?}");
        assert!(p.needs_consent);
        assert!(
            plan_restarts(&nodes, &Limits { allow_downtime: true, ..LIMITS }).selected.contains("master")
        );
    }

    #[test]
    fn a_manual_drain_uses_the_budget_and_a_failed_node_stops_everything() {
        let mut drained = view("ro-1", Role::Replica, false);
        drained.phase = NodePhase::Drained;
        drained.drain_reason = Some(DrainReason::Requested);
        let nodes = [view("rw", Role::ReadWrite, false), drained.clone(), view("ro-2", Role::Replica, true)];
        let p = plan_restarts(&nodes, &LIMITS);
        assert!(p.selected.is_empty());
        assert!(p.waiting.as_deref().unwrap().contains("out now: ro-1"), "{p:?}");
        assert!(!p.needs_consent, "the budget frees itself");
        let mut failed = drained;
        failed.phase = NodePhase::Failed;
        let p = plan_restarts(
            &[view("rw", Role::ReadWrite, false), failed, view("ro-2", Role::Replica, true)],
            &Limits { max_unavailable: 3, ..LIMITS },
        );
        assert!(p.waiting.as_deref().unwrap().contains("has failed"), "{p:?}");
    }

    #[test]
    fn leaving_nodes_go_first_and_paused_moves_nothing() {
        let nodes = [view("ro-1", Role::Replica, true), view("old", Role::Leaving, false)];
        assert_eq!(plan_restarts(&nodes, &LIMITS).selected, BTreeSet::from(["old".to_string()]));
        let p = plan_restarts(&nodes, &Limits { paused: true, ..LIMITS });
        assert!(p.selected.is_empty() && p.waiting.as_deref().unwrap().starts_with("paused"));
    }
}
