//! A cluster stopped whole and started again (`spec.stopped`): which nodes stop, and which
//! stopped nodes start now. Pure.
//!
//! Stopping is a downtime the user asked for, so it takes every node out of service at once:
//! no `drain.maxUnavailable` (one node at a time would leave the others taking new sessions,
//! and the stop would never end) and no refusal to drain the last serving node (`stopped:
//! true` is the consent). Each node drains as any drain does (its deadline, `onDeadline`), and
//! its Deployment is scaled to zero once it is drained; a node with nothing to protect (no
//! pod, not serving) stops at once.
//!
//! Starting goes in groups, each once every node of the group before it is up (serving, or
//! failed: one broken node must not keep the rest of the cluster down for good):
//! 1. the grid master: grid workers register with its IceGrid registry (OMERO.md) and cannot
//!    start without it;
//! 2. the other read-only nodes (grid workers);
//! 3. the read-write node last, as rollouts restart it last: readers are served again before
//!    anything can be written.

use std::collections::BTreeMap;

use crate::{api::NodePhase, rollout::Role};

/// What one node does about the cluster's `spec.stopped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Power {
    /// Runs as usual (the cluster is not stopped, and the node is not held back).
    Run,
    /// The cluster is stopped: drain, then scale to zero.
    Stop,
    /// The cluster starts, but this stopped node waits for these nodes to come up first.
    StayStopped { after: Vec<String> },
}

/// What [`decide`] reads of one node.
#[derive(Clone, Copy, Debug)]
pub struct NodeState<'a> {
    pub name: &'a str,
    pub role: Role,
    /// The phase recorded before this reconcile.
    pub phase: NodePhase,
}

/// The start group of a role (see the module): lower starts first.
fn group(role: Role) -> u8 {
    match role {
        Role::GridMaster => 0,
        Role::Replica => 1,
        Role::ReadWrite => 2,
        // A node leaving the spec never starts again: it is deleted once stopped.
        Role::Leaving => 3,
    }
}

/// Coming up: started and not yet serving (nor failed).
fn coming_up(phase: NodePhase) -> bool {
    matches!(phase, NodePhase::Pending | NodePhase::Starting | NodePhase::Restarting | NodePhase::Stopped)
}

/// Each node's [`Power`], by name.
pub fn decide(stopped: bool, nodes: &[NodeState<'_>]) -> BTreeMap<String, Power> {
    nodes
        .iter()
        .map(|node| {
            let power = if stopped {
                Power::Stop
            } else if node.phase != NodePhase::Stopped {
                Power::Run
            } else {
                let after: Vec<String> = nodes
                    .iter()
                    .filter(|other| group(other.role) < group(node.role) && coming_up(other.phase))
                    .map(|other| other.name.to_string())
                    .collect();
                if node.role == Role::Leaving {
                    // Stays stopped until its objects are deleted: nothing waits for it.
                    Power::StayStopped { after: Vec::new() }
                } else if after.is_empty() {
                    Power::Run
                } else {
                    Power::StayStopped { after }
                }
            };
            (node.name.to_string(), power)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: Role, phase: NodePhase) -> NodeState<'_> {
        NodeState { name, role, phase }
    }

    #[test]
    fn a_stopped_cluster_stops_every_node_whatever_its_phase() {
        let nodes = [
            node("rw", Role::ReadWrite, NodePhase::Serving),
            node("ro-1", Role::Replica, NodePhase::Draining),
            node("ro-2", Role::Replica, NodePhase::Failed),
        ];
        assert!(decide(true, &nodes).values().all(|p| *p == Power::Stop));
    }

    #[test]
    fn independent_nodes_start_read_only_first_and_read_write_last() {
        let all_stopped = [
            node("rw", Role::ReadWrite, NodePhase::Stopped),
            node("ro-1", Role::Replica, NodePhase::Stopped),
            node("ro-2", Role::Replica, NodePhase::Stopped),
        ];
        let powers = decide(false, &all_stopped);
        assert_eq!(powers["ro-1"], Power::Run);
        assert_eq!(powers["ro-2"], Power::Run);
        assert_eq!(powers["rw"], Power::StayStopped { after: vec!["ro-1".into(), "ro-2".into()] });

        // One read-only node up, one failed: the read-write node goes.
        let up = [
            node("rw", Role::ReadWrite, NodePhase::Stopped),
            node("ro-1", Role::Replica, NodePhase::Serving),
            node("ro-2", Role::Replica, NodePhase::Failed),
        ];
        assert_eq!(decide(false, &up)["rw"], Power::Run);
        let one_starting = [
            node("rw", Role::ReadWrite, NodePhase::Stopped),
            node("ro-1", Role::Replica, NodePhase::Serving),
            node("ro-2", Role::Replica, NodePhase::Starting),
        ];
        assert_eq!(decide(false, &one_starting)["rw"], Power::StayStopped { after: vec!["ro-2".into()] });
    }

    #[test]
    fn a_grid_starts_with_its_master() {
        let grid = [
            node("master", Role::GridMaster, NodePhase::Stopped),
            node("w1", Role::Replica, NodePhase::Stopped),
        ];
        let powers = decide(false, &grid);
        assert_eq!(powers["master"], Power::Run);
        assert_eq!(powers["w1"], Power::StayStopped { after: vec!["master".into()] });
        let master_up = [
            node("master", Role::GridMaster, NodePhase::Serving),
            node("w1", Role::Replica, NodePhase::Stopped),
        ];
        assert_eq!(decide(false, &master_up)["w1"], Power::Run);
    }

    #[test]
    fn running_nodes_and_leaving_nodes_are_left_alone_when_the_cluster_starts() {
        let nodes =
            [node("rw", Role::ReadWrite, NodePhase::Serving), node("old", Role::Leaving, NodePhase::Stopped)];
        let powers = decide(false, &nodes);
        assert_eq!(powers["rw"], Power::Run);
        assert_eq!(powers["old"], Power::StayStopped { after: Vec::new() });
    }
}
