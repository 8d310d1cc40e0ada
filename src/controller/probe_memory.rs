//! What the operator keeps of its session probes in memory instead of in status: when each
//! node's next probe is due, how many failed in a row (the backoff), which exporter sample
//! the last one read, and how many zero counts a drain has confirmed.
//!
//! Why memory: these change at every probe. Recorded in status, every probe of every serving
//! node was a status write (and each write woke a reconcile through the watch), so an idle
//! fleet wrote for ever. Status keeps what a reader needs (the count, since when, the probe's
//! error); a probe that finds what status already says writes nothing.
//!
//! Losing it costs little and errs on the safe side: an operator that restarts (or a standby
//! that takes over) probes every node at once, backs off afresh, and confirms a draining
//! node's zero with two new probes. Nothing here is a decision another
//! reconcile must carry out, so it is not recorded before acting.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use crate::api::{NodeStatus, OmeroCluster, OmeroClusterStatus};

/// One node's probe bookkeeping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Remembered {
    pub next_probe_at: Option<Time>,
    pub probe_failures: u32,
    pub probe_sample: Option<String>,
    pub zero_session_probes: u32,
}

impl Remembered {
    fn of(status: &NodeStatus) -> Self {
        Self {
            next_probe_at: status.next_probe_at.clone(),
            probe_failures: status.probe_failures,
            probe_sample: status.probe_sample.clone(),
            zero_session_probes: status.zero_session_probes,
        }
    }

    /// Writes this bookkeeping into a node's status (the default clears it).
    fn put_into(self, status: &mut NodeStatus) {
        status.next_probe_at = self.next_probe_at;
        status.probe_failures = self.probe_failures;
        status.probe_sample = self.probe_sample;
        status.zero_session_probes = self.zero_session_probes;
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A cluster's bookkeeping, by node name.
pub type ClusterMemory = BTreeMap<String, Remembered>;

/// Each cluster's uid (a cluster created again under its name is another) and bookkeeping.
type Clusters = HashMap<ObjectRef<OmeroCluster>, (Option<String>, ClusterMemory)>;

/// Every cluster's bookkeeping, by cluster; a cluster deleted and created again under the
/// same name (another uid) starts afresh.
#[derive(Debug, Default)]
pub struct ProbeMemory {
    clusters: Mutex<Clusters>,
}

impl ProbeMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clusters> {
        self.clusters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is remembered of this cluster's probes (nothing after a restart).
    pub fn recall(&self, cluster: &OmeroCluster) -> ClusterMemory {
        match self.lock().get(&ObjectRef::from_obj(cluster)) {
            Some((uid, memory)) if *uid == cluster.uid() => memory.clone(),
            _ => ClusterMemory::new(),
        }
    }

    /// Keeps the bookkeeping of the status a reconcile recorded (or found already recorded).
    pub fn remember(&self, cluster: &OmeroCluster, status: &OmeroClusterStatus) {
        let memory: ClusterMemory = status
            .nodes
            .iter()
            .map(|n| (n.name.clone(), Remembered::of(n)))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        let key = ObjectRef::from_obj(cluster);
        let mut clusters = self.lock();
        if memory.is_empty() {
            clusters.remove(&key);
        } else {
            clusters.insert(key, (cluster.uid(), memory));
        }
    }

    /// Forgets a cluster that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&ObjectRef::new(name).within(namespace));
    }

    /// Clusters something is remembered of, as (namespace, name).
    pub fn clusters(&self) -> Vec<(String, String)> {
        self.lock().keys().map(|k| (k.namespace.clone().unwrap_or_default(), k.name.clone())).collect()
    }
}

/// The status as read, with what memory holds of its probes: what a reconcile decides from.
pub fn recalled(status: Option<&OmeroClusterStatus>, memory: &ClusterMemory) -> OmeroClusterStatus {
    let mut status = status.cloned().unwrap_or_default();
    for node in &mut status.nodes {
        memory.get(&node.name).cloned().unwrap_or_default().put_into(node);
    }
    status
}

/// Whether two statuses record the same (what is only remembered aside): whether a status
/// write would change anything.
pub fn same_record(a: &OmeroClusterStatus, b: &OmeroClusterStatus) -> bool {
    let forgotten = |status: &OmeroClusterStatus| {
        let mut status = status.clone();
        for node in &mut status.nodes {
            Remembered::default().put_into(node);
        }
        status
    };
    forgotten(a) == forgotten(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodePhase;

    fn cluster(uid: &str) -> OmeroCluster {
        crate::render::tests::base_with(|c| c.metadata.uid = Some(uid.into()))
    }

    fn probed(next: i64, failures: u32) -> OmeroClusterStatus {
        OmeroClusterStatus {
            nodes: vec![NodeStatus {
                name: "rw".into(),
                phase: NodePhase::Serving,
                sessions: Some(3),
                next_probe_at: Some(Time(k8s_openapi::jiff::Timestamp::from_second(next).unwrap())),
                probe_failures: failures,
                probe_sample: Some("7".into()),
                ..NodeStatus::default()
            }],
            ..OmeroClusterStatus::default()
        }
    }

    #[test]
    fn the_next_probe_is_remembered_not_recorded() {
        let (before, after) = (probed(60, 0), probed(120, 2));
        assert!(same_record(&before, &after), "only the bookkeeping differs: nothing to write");
        let mut counted = after.clone();
        counted.nodes[0].sessions = Some(4);
        assert!(!same_record(&before, &counted), "a new count is a write");

        let memory = ProbeMemory::default();
        let c = cluster("u1");
        memory.remember(&c, &after);
        let read_back: OmeroClusterStatus =
            serde_json::from_value(serde_json::to_value(&after).unwrap()).unwrap();
        assert_eq!(read_back.nodes[0].next_probe_at, None, "status as the API server stores it");
        assert_eq!(recalled(Some(&read_back), &memory.recall(&c)), after);
    }

    #[test]
    fn a_cluster_created_again_starts_afresh() {
        let memory = ProbeMemory::default();
        memory.remember(&cluster("u1"), &probed(120, 2));
        assert!(memory.recall(&cluster("u2")).is_empty());
        memory.forget("imaging", "omc");
        assert!(memory.recall(&cluster("u1")).is_empty());
    }
}
