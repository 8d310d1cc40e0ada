//! `OmeroCluster` status: conditions, and per node the phase and the drain state. The drain
//! state lives here (not in the operator's memory) so a restarted operator resumes a drain
//! with the same deadline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OmeroClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per node, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<NodeStatus>,
    #[serde(default)]
    pub node_count: i32,
    #[serde(default)]
    pub ready_nodes: i32,
    #[serde(default)]
    pub serving_nodes: i32,
    #[serde(default)]
    pub draining_nodes: i32,
    /// Grid topology, while a node is out of service: the node `omero.cluster.redirect` sends
    /// new sessions to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_node: Option<String>,
    /// Why the redirect could not be set, while it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_error: Option<String>,
    /// Objects the cluster needs but that the operator leaves alone: another owner holds the
    /// name, or a field that cannot change would have to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub object_problems: Vec<ObjectProblem>,
}

/// An object of the cluster that the operator does not write, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectProblem {
    /// `Deployment`, `Service`, ...
    pub kind: String,
    pub name: String,
    pub reason: ObjectProblemReason,
    /// What is wrong and what to do about it.
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum ObjectProblemReason {
    /// An object of that kind and name exists and this cluster does not control it.
    NotOwned,
    /// The cluster's own object would need a field changed that the API server does not allow
    /// to change.
    ImmutableField,
}

impl ObjectProblemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOwned => "ObjectNotOwned",
            Self::ImmutableField => "ImmutableField",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodePhase {
    /// Objects not created yet, or no pod scheduled.
    #[default]
    Pending,
    /// The pod exists and is not ready yet.
    Starting,
    /// Ready and routable: the entry Service sends it new sessions.
    Serving,
    /// Not routable; waiting for its sessions to end.
    Draining,
    /// Not routable; sessions ended (or the deadline passed).
    Drained,
    /// Being restarted after a drain.
    Restarting,
    /// The pod cannot start (crash loop, image pull failure, rollout deadline).
    Failed,
}

impl NodePhase {
    /// Out of service for new sessions on purpose.
    pub fn is_out_of_service(self) -> bool {
        matches!(self, Self::Draining | Self::Drained | Self::Restarting)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    #[serde(default)]
    pub phase: NodePhase,
    /// The node's pod is ready.
    #[serde(default)]
    pub ready: bool,
    /// The node's pod carries `omero.openmicroscopy.org/routable=true`.
    #[serde(default)]
    pub routable: bool,
    /// Image of the running pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of the node's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Open sessions at the last successful probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    /// When `sessions` was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_observed_at: Option<Time>,
    /// Consecutive probes that saw zero sessions (a drain ends at two).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero_session_probes: u32,
    /// Consecutive failed probes (drives the retry backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probe_failures: u32,
    /// The last probe's error, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
    /// When the next probe is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_probe_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_started_at: Option<Time>,
    /// Set once when the drain starts; never moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<Time>,
    /// The deadline passed before the sessions ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_reached: bool,
    /// Human-readable state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl OmeroClusterStatus {
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Condition types and reasons.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}
