//! `OmeroCluster` status: conditions, and per node the phase and the drain state. The drain
//! state lives here (not in the operator's memory) so a restarted operator resumes a drain
//! with the same deadline.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and decided, written before it acts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OmeroClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, and kstatus's `Reconciling` and `Stalled` (what
    /// Flux, kpt and cli-utils read), each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per node, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<NodeStatus>,
    /// Nodes in the spec.
    #[serde(default)]
    pub node_count: i32,
    /// Nodes of the spec whose pod is ready.
    #[serde(default)]
    pub ready_nodes: i32,
    /// Nodes of the spec that take new sessions (phase Serving).
    #[serde(default)]
    pub serving_nodes: i32,
    /// Nodes of the spec waiting for their sessions to end (phase Draining).
    #[serde(default)]
    pub draining_nodes: i32,
    /// The rollout: what every node should run, how far it got, why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
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
    /// The request annotations (drain, drain-force, restart, paused, allow-downtime) as the
    /// operator last read them, written with the status that acts on them: `kubectl omero`
    /// waits for its edit to show here, which tells it the operator runs and took it in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed_requests: BTreeMap<String, String>,
    /// The read-only pool, when the spec has one: what the scale subresource reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_pool: Option<ReadOnlyPoolStatus>,
}

/// Where the read-only pool stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadOnlyPoolStatus {
    /// Pool nodes that exist: those the spec asks for and those still draining out (the scale
    /// subresource's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// Pool nodes that take new sessions.
    #[serde(default)]
    pub serving_replicas: i32,
    /// Pool nodes that left the pool (a scale-down) and wait for their sessions to end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
    /// Open sessions on the pool's nodes, as last counted by their probes (absent while none
    /// was counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    /// A label selector of the pool's pods (the scale subresource's selector, which
    /// HorizontalPodAutoscalers read).
    #[serde(default)]
    pub selector: String,
}

/// An object of the cluster that the operator does not write, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectProblem {
    /// `Deployment`, `Service`, ...
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Why it is not written.
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
    /// The API server refused to apply the object (an invalid field).
    Refused,
    /// The operator's account may not write the object (RBAC): its message names the verb and
    /// what to grant.
    Forbidden,
}

impl ObjectProblemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOwned => "ObjectNotOwned",
            Self::ImmutableField => "ImmutableField",
            Self::Refused => "ApplyRefused",
            Self::Forbidden => "WriteForbidden",
        }
    }
}

/// Where the cluster's rollout stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// A digest of every node's target revision: what the whole cluster rolls towards.
    pub target_revision: String,
    /// Nodes that run their target revision.
    #[serde(default)]
    pub up_to_date_nodes: i32,
    /// The nodes still to restart or remove, in the order they go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Why the rollout does not move although nodes are out of date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// What it waits for is consent (`omero.openmicroscopy.org/allow-downtime`): it does not
    /// end by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_consent: bool,
    /// Changes to running objects are paused (`omero.openmicroscopy.org/paused`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Why a node is out of service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DrainReason {
    /// `omero.openmicroscopy.org/drain` names it.
    Requested,
    /// It is restarted with a new revision (a spec change or a restart request).
    Rollout,
    /// It left the spec; its objects are deleted once it is drained.
    Removal,
    /// The Kubernetes node its pod runs on is cordoned (or carries a maintenance taint): once
    /// drained, its pod is deleted so the Deployment's new pod is scheduled elsewhere.
    Maintenance,
    /// The cluster is being stopped (`spec.stopped`): once drained, the node's Deployment is
    /// scaled to zero.
    Stop,
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
    /// Drained (or not serving), its new pod template applied: waiting for the new pod to be
    /// ready and its session probe to answer.
    Restarting,
    /// The pod cannot start (crash loop, image pull failure, rollout deadline).
    Failed,
    /// The cluster is stopped (`spec.stopped`): drained, its Deployment scaled to zero.
    Stopped,
}

impl NodePhase {
    /// The phase as status spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Starting => "Starting",
            Self::Serving => "Serving",
            Self::Draining => "Draining",
            Self::Drained => "Drained",
            Self::Restarting => "Restarting",
            Self::Failed => "Failed",
            Self::Stopped => "Stopped",
        }
    }

    /// Out of service for new sessions on purpose.
    pub fn is_out_of_service(self) -> bool {
        matches!(self, Self::Draining | Self::Drained | Self::Restarting | Self::Stopped)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's name (`spec.nodes[].name`).
    pub name: String,
    /// Where the node is in its life: Pending, Starting, Serving, Draining, Drained,
    /// Restarting, Failed or Stopped.
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
    /// Since when the probe has counted `sessions`: set when the count changes, not at every
    /// probe, so a probe that finds what status already says writes nothing. The count is
    /// the probe's answer at every probe since, unless `probeError` says the probe fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_since: Option<Time>,
    /// Which sample of its source the last probe read (an exporter's refresh counter). Kept in
    /// the operator's memory, never recorded (see `controller::probe_memory`).
    #[serde(skip)]
    #[schemars(skip)]
    pub probe_sample: Option<String>,
    /// Consecutive probes that saw zero sessions in distinct samples (a drain ends at two).
    /// In memory only: an operator that restarts mid-drain confirms its zero afresh.
    #[serde(skip)]
    #[schemars(skip)]
    pub zero_session_probes: u32,
    /// Consecutive failed probes (drives the retry backoff). In memory only.
    #[serde(skip)]
    #[schemars(skip)]
    pub probe_failures: u32,
    /// The last probe's error, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
    /// When the next probe is due. In memory only: the requeue schedules it.
    #[serde(skip)]
    #[schemars(skip)]
    pub next_probe_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_started_at: Option<Time>,
    /// Set once when the drain starts; never moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<Time>,
    /// The deadline passed before the sessions ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_reached: bool,
    /// Why the node is out of service, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<DrainReason>,
    /// The OMERO server container when the drain began (`<pod>/<container id>/<restarts>`): if it
    /// changes, the sessions the drain waited for are gone already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_server: Option<String>,
    /// The revision (a digest of the operator's pod template) the node's pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision the spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// The revision the operator has released to the node's Deployment. It is recorded here
    /// before the Deployment is written, and moves to the target only once the node has
    /// nothing to protect (drained, or not serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_revision: Option<String>,
    /// The pod runs the target revision.
    #[serde(default)]
    pub up_to_date: bool,
    /// When the current restart began (phase Restarting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_started_at: Option<Time>,
    /// The node left the spec and is drained, then deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// The session probe the node is counted with, recorded from the spec at every reconcile
    /// and kept once the node leaves the spec: a removed node is drained like any other, and
    /// its drain ends when this probe counts zero, not only at its deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "recorded_probe_schema")]
    pub session_probe: Option<crate::api::SessionProbe>,
    /// The Kubernetes node this node is moving off for maintenance (drain reason
    /// `Maintenance`), recorded when the drain starts and kept until the new pod serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_off: Option<String>,
    /// The pod the operator deletes to move the node (recorded before it is deleted), so the
    /// new pod is told from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_pod: Option<String>,
    /// Human-readable state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The spec's session probe schema without its validation rules: status records a probe the
/// spec already validated, and rules on status would only cost the API server CEL time.
fn recorded_probe_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut schema = generator.subschema_for::<Option<crate::api::SessionProbe>>();
    let mut value = schema.as_value().clone();
    strip(&mut value);
    if let Ok(stripped) = schemars::Schema::try_from(value) {
        schema = stripped;
    }
    schema
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
    /// kstatus (Flux, kpt, cli-utils): True while anything is under way (as Progressing).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: True while a problem only a person can end holds the cluster back.
    pub const STALLED: &str = "Stalled";
}
