//! `OmeroCluster` spec. Field docs become `kubectl explain` text; CEL rules here are checked by
//! the API server at `kubectl apply`, and again (with field paths and fixes) by `validate`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, OmeroClusterStatus};

/// An OMERO.server cluster: one Deployment per node sharing one database and one binary
/// repository, with session-aware drains, rolling restarts and read-only nodes.
///
/// Annotations on the cluster drive operations:
/// `omero.openmicroscopy.org/drain: "backup,ro-2"` drains those nodes (new sessions stop
/// reaching them; Drained when the session probe counts zero twice in a row, or at
/// `drain.timeout`); remove a name to put it back. `omero.openmicroscopy.org/drain-force:
/// "true"` allows draining the last serving node. `omero.openmicroscopy.org/restart:
/// "<token>"` restarts every node, one at a time, each drained first (`"ro-1,ro-2@<token>"`:
/// those nodes); each token is carried out once, a new token (e.g. the time) asks again.
/// `omero.openmicroscopy.org/paused: "true"` stops every change to running objects.
/// `omero.openmicroscopy.org/allow-downtime: "true"` consents to restarting the last serving
/// node or a grid master. Spec changes that alter a node's pod are rolled out the same way:
/// read-only nodes (grid workers) first, the read-write node (grid master) last.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "omero.openmicroscopy.org",
    version = "v1alpha1",
    kind = "OmeroCluster",
    namespaced,
    shortname = "omc",
    category = "omero",
    doc = "An OMERO.server cluster: one Deployment per OMERO node behind one entry Service. \
           The operator drains a node (no new sessions; open ones end) before it restarts, \
           upgrades, moves or leaves, and stops the whole cluster when spec.stopped is true. \
           Drains and restarts are asked for with annotations (see spec); status says what \
           goes on, node by node, before the operator acts on it.",
    status = "OmeroClusterStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"The Ready condition: every node ready and at least one serving"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Progressing\")].reason","description":"What is going on (Progressing's reason): Stable, NodesStarting, RollingOut, Draining, RolloutWaiting, Paused, Stopping, Stopped or Starting"}"#,
    printcolumn = r#"{"name":"Problem","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].reason","description":"What is wrong (Degraded's reason): AsExpected when nothing is"}"#,
    printcolumn = r#"{"name":"Serving","type":"integer","jsonPath":".status.servingNodes","description":"Nodes that take new sessions"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount","description":"Nodes in the spec"}"#,
    printcolumn = r#"{"name":"Up-To-Date","type":"integer","jsonPath":".status.rollout.upToDateNodes","description":"Nodes whose pod runs the revision the spec asks for"}"#,
    printcolumn = r#"{"name":"Pool","type":"integer","jsonPath":".spec.readOnlyPool.replicas","description":"Nodes the read-only pool is asked to have (spec.readOnlyPool.replicas, the scale subresource)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Image","type":"string","priority":1,"jsonPath":".spec.image","description":"The OMERO.server image the spec asks for"}"#,
    printcolumn = r#"{"name":"Draining","type":"integer","priority":1,"jsonPath":".status.drainingNodes","description":"Nodes waiting for their sessions to end"}"#,
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("the cluster name prefixes Service names: use lower-case letters, digits and '-', starting with a letter"),
    validation = Rule::new("self.spec.nodes.all(n, size(self.metadata.name) + size(n.name) < 63)").message("'<cluster>-<node>' names a Service and must be at most 63 characters: shorten the cluster or node name").field_path(".spec.nodes"),
    scale(
        spec_replicas_path = ".spec.readOnlyPool.replicas",
        status_replicas_path = ".status.readOnlyPool.replicas",
        label_selector_path = ".status.readOnlyPool.selector"
    ),
    validation = Rule::new("!has(self.spec.readOnlyPool) || size(self.metadata.name) + (has(self.spec.readOnlyPool.namePrefix) ? size(self.spec.readOnlyPool.namePrefix) : 2) <= 59").message("'<cluster>-<namePrefix>-<index>' names a read-only pool node's Service and must be at most 63 characters: shorten the cluster name or spec.readOnlyPool.namePrefix").field_path(".spec.readOnlyPool"),
    validation = Rule::new("self.spec.topology != 'Grid' || size(self.metadata.name) <= 55").message("in grid topology '<cluster>-icegrid' names the Service that gives the grid master's pod a DNS name and must be at most 63 characters: shorten the cluster name to at most 55 characters")
)]
#[x_kube(
    validation = Rule::new("self.topology != 'Independent' || self.nodes.filter(n, !has(n.readOnly) || !n.readOnly.db || !n.readOnly.repo).size() <= 1").message("independent topology allows at most one read-write node: two read-write OMERO servers on one database close each other's sessions; set readOnly.db and readOnly.repo on the others").field_path(".nodes"),
    validation = Rule::new("self.topology != 'Grid' || self.nodes.filter(n, has(n.master) && n.master).size() == 1").message("grid topology needs exactly one node with master: true").field_path(".nodes"),
    validation = Rule::new("self.topology == 'Grid' || self.nodes.all(n, !has(n.master) || !n.master)").message("master is only meaningful in grid topology; remove it or set topology: Grid").field_path(".nodes"),
    validation = Rule::new("self.topology != 'Grid' || (!has(self.sessionCounter) && self.nodes.all(n, !has(n.sessionProbe) || n.sessionProbe.type != 'Counter'))").message("the session counter is not offered in grid topology: a worker has no Glacier2 of its own, and a login through the master's is steered by configRedirector to another node; grid nodes write session rows, so use sessionProbe.type Database").field_path(".sessionCounter"),
    validation = Rule::new("has(self.sessionCounter) || self.nodes.all(n, !has(n.sessionProbe) || n.sessionProbe.type != 'Counter')").message("a counter session probe needs spec.sessionCounter.credentialsSecret: the OMERO user the counter logs in as").field_path(".nodes"),
    validation = Rule::new("self.topology != 'Grid' || self.nodes.all(n, !has(n.servers) || size(n.servers) == 0)").message("servers is for independent topology: in grid topology the operator places every server (the master runs OMERO's set, each worker one Blitz); remove it").field_path(".nodes"),
    validation = Rule::new("self.topology != 'Grid' || self.nodes.all(n, n.name != 'icegrid')").message("in grid topology '<cluster>-icegrid' names the Service that gives the grid master's pod a DNS name: no node may be named icegrid").field_path(".nodes"),
    validation = Rule::new("!has(self.readOnlyPool) || self.topology == 'Independent'").message("readOnlyPool is for independent topology: in grid topology every worker is listed in the master's application descriptor, so each scale would restart the master; list grid workers in nodes").field_path(".readOnlyPool"),
    validation = Rule::new("!has(self.readOnlyPool) || !has(self.readOnlyPool.template.readOnly) || (self.readOnlyPool.template.readOnly.db && self.readOnlyPool.template.readOnly.repo)").message("a read-only pool's nodes are read-only: set readOnly.db and readOnly.repo to true, or leave readOnly out").field_path(".readOnlyPool.template.readOnly"),
    validation = Rule::new("!has(self.readOnlyPool) || self.nodes.all(n, !n.name.matches('^' + (has(self.readOnlyPool.namePrefix) ? self.readOnlyPool.namePrefix : 'ro') + '-[0-9]+$'))").message("a node in nodes has a name of the read-only pool's form (<namePrefix>-<index>, namePrefix ro unless set): rename it, or set readOnlyPool.namePrefix").field_path(".nodes"),
    validation = Rule::new("!has(self.readOnlyPool) || size(self.nodes) + self.readOnlyPool.replicas <= 64").message("nodes and the read-only pool's replicas make more than 64 nodes: at most 64 are supported").field_path(".readOnlyPool.replicas"),
    validation = Rule::new("!has(self.readOnlyPool) || !has(self.readOnlyPool.template.sessionProbe) || self.readOnlyPool.template.sessionProbe.type != 'Counter' || has(self.sessionCounter)").message("a counter session probe needs spec.sessionCounter.credentialsSecret: the OMERO user the counter logs in as").field_path(".readOnlyPool.template.sessionProbe"),
    validation = Rule::new("self.topology == oldSelf.topology").message("topology cannot change on an existing cluster (a per-node Service's clusterIP is immutable, and every node would have to restart at once): create a new OmeroCluster with the other topology and move to it").field_path(".topology")
)]
#[serde(rename_all = "camelCase")]
pub struct OmeroClusterSpec {
    /// OMERO.server image, e.g. `openmicroscopy/omero-server:5.6`: one with omero-py 5.9.0 or
    /// later (the first to read `omero.server.nodedescriptors`). Official images older than
    /// that (tags before 5.6.3) are refused where the cluster needs it (grid topology, or
    /// `omero.server.nodedescriptors` in config), and before 5.6 (Python 2, no
    /// `/opt/omero/server/venv3`) always.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy for every node (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// `Independent` (default): every node is a full OMERO.server, at most one read-write.
    /// `Grid`: one IceGrid application, a master plus workers.
    #[serde(default)]
    pub topology: Topology,
    /// The OMERO database (PostgreSQL).
    pub database: DatabaseSpec,
    /// The binary repository (`/OMERO`).
    pub repository: RepositorySpec,
    /// OMERO properties for every node, e.g. `omero.jvmcfg.percent.blitz: "50"`. Passed
    /// through the image's `CONFIG_*` environment convention.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Session lifetimes. `maxLifetime` also caps the lifetime users may give their own
    /// sessions, which OMERO otherwise leaves unlimited; it is the default drain deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsSpec>,
    /// The OMERO nodes; each becomes one Deployment with one replica.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<NodeSpec>,
    /// How nodes leave service, for drains and rollouts. Drains are asked for with the
    /// annotation `omero.openmicroscopy.org/drain: "<node>,<node>"` on the OmeroCluster;
    /// `omero.openmicroscopy.org/drain-force: "true"` allows draining the last serving node
    /// and ends drains held past their deadline; `omero.openmicroscopy.org/restart: "<token>"`
    /// (or `"<node>,<node>@<token>"`) asks for a rolling restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// The entry Service and the per-node Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// The built-in session counter: a small script the operator ships (in a ConfigMap it
    /// owns), run beside the server in a node's pod from the node's own image. It logs in to
    /// that server and counts the sessions of people on it, which the `counter` session probe
    /// reads during a drain. With this set, it is the default probe of read-only database nodes
    /// (whose sessions the database cannot see); other nodes use it with `sessionProbe.type:
    /// counter` (or `defaultFor: All`). Not offered in grid topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_counter: Option<SessionCounterSpec>,
    /// Kubernetes node maintenance: which taints, besides a cordon, make the operator move
    /// OMERO nodes off a Kubernetes node (needs the operator's `--watch-nodes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceSpec>,
    /// OMERO's own log files (`var/log/Blitz-0.log`, `Tables-0.log`, `master.err`, ...) in the
    /// container log stream: by default a small `omero-logs` container in every node's pod
    /// follows them, one line per record with the file's name first, for `kubectl logs`,
    /// `kubectl omero logs` and log collectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_logs: Option<super::ServerLogsSpec>,
    /// `true` stops the whole cluster, a downtime asked for (an OMERO upgrade that migrates the
    /// database, a restore, a storage move): every serving node is drained at once (no new
    /// sessions anywhere; open ones end by `drain.timeout`, then per `drain.onDeadline`), and
    /// each drained node's Deployment is scaled to zero. Services, budgets, claims and status
    /// are kept. `false` again starts the nodes: the grid master first, then read-only nodes,
    /// the read-write node last, each group once the one before it serves (or failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// Read-only nodes made from one template, as many as `replicas` says: `<prefix>-0` to
    /// `<prefix>-<replicas - 1>` (prefix `ro` unless `namePrefix` says otherwise), beside the
    /// nodes listed in `nodes`. `replicas` is the cluster's scale subresource, so `kubectl
    /// scale omc/<name> --replicas=N`, a HorizontalPodAutoscaler or KEDA can set it. A node
    /// leaving the pool (the highest names first) is drained like a node removed from `nodes`:
    /// no new sessions at once, deleted once its sessions end (or at `drain.timeout`, per
    /// `drain.onDeadline`); raising `replicas` again while it drains puts it back in service.
    /// Independent topology only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_pool: Option<ReadOnlyPoolSpec>,
    /// How many of `nodes`, at their end, were made from `readOnlyPool` by
    /// [`crate::pool::resolved`]: 0 as read from the API server. Never serialised.
    // Not `serde(skip)`: KubeSchema's copy of this struct (made to build the schema, keeping
    // only serde and schemars attributes) would never read the field, a dead-code warning.
    #[serde(skip_deserializing, skip_serializing_if = "never")]
    #[schemars(skip)]
    pub pool_nodes_listed: usize,
}

/// For `skip_serializing_if`: the field is never written out.
fn never<T>(_: &T) -> bool {
    true
}

/// A pool of read-only nodes made from one template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.minReplicas) || self.replicas >= self.minReplicas").message("replicas is below minReplicas: the pool never has fewer nodes than minReplicas; scale to at least minReplicas, or lower minReplicas").field_path(".replicas")
)]
#[serde(rename_all = "camelCase")]
pub struct ReadOnlyPoolSpec {
    /// How many nodes the pool has. Lowering it drains the highest-numbered nodes out.
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// The fewest nodes the pool may have: `replicas` below it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub min_replicas: Option<i32>,
    /// The pool's node names are `<namePrefix>-<index>` (default `ro`). No node in `nodes` may
    /// have a name of that form. Cannot change while the pool has nodes: every node would be
    /// replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name_prefix: Option<String>,
    /// What every node of the pool runs: the fields of a node in `nodes`, but no `name`,
    /// `master` or `varClaimName` (one claim cannot serve many pods). Read-only: `readOnly.db`
    /// and `readOnly.repo` default to true and may not be false.
    #[serde(default)]
    pub template: PoolNodeTemplate,
}

/// The node every member of the read-only pool is made from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeTemplate {
    /// Left out: both true. Either false is refused (a pool node is read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnlySpec>,
    /// OMERO properties for the pool's nodes; they override the cluster's `config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// The OMERO servers each pool node runs (see `nodes[].servers`; default `[Blitz-0,
    /// Tables-0]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^((Blitz|Indexer|PixelData|Processor|Tables)-[0-9]+|DropBox|MonitorServer|FileServer|Storm|TestDropBox)$"
    )))]
    #[schemars(inner(length(max = 32)), length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub servers: Vec<String>,
    /// Compute resources of each pool node's OMERO container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Labels of the Kubernetes nodes the pool's pods may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pool's pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pool's pods (e.g. anti-affinity spreading them over Kubernetes nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment variables of each pool node's OMERO container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra containers in each pool node's pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Container>,
    /// How each pool node's open sessions are counted (see `nodes[].sessionProbe`; default
    /// `Counter` with `spec.sessionCounter`, else `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_probe: Option<SessionProbe>,
}

/// Kubernetes node maintenance. A cordoned Kubernetes node (`spec.unschedulable`, which
/// `kubectl drain` sets first) always makes the operator drain the OMERO nodes on it and move
/// them elsewhere; so does a `NoSchedule` taint whose key is listed here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceSpec {
    /// Keys of `NoSchedule` taints that mean "moving off for maintenance", e.g.
    /// `example.com/maintenance`. `NoExecute` taints are not listed: Kubernetes evicts pods at
    /// once for those, bypassing PodDisruptionBudgets and the operator's drain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taint_keys: Vec<String>,
}

/// The built-in session counter (`sessionProbe.type: Counter`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCounterSpec {
    /// The Secret with the OMERO user the counter logs in as, passed to the counter container
    /// by reference (the operator never reads it). Not root. On read-only database nodes a
    /// plain user is enough: OMERO serves their sessions from memory with no permission check.
    /// Where it counts a read-write node, a light admin with only the `ReadSession` privilege
    /// (made through the API: `counter/create_counter_user.py`): there a plain user sees only
    /// other users' names, so every session of another user is counted, shares included, and
    /// `guest` sees only itself.
    pub credentials_secret: CounterCredentials,
    /// Which nodes use the counter when their `sessionProbe` is not set: `ReadOnly` (default:
    /// read-only database nodes, whose sessions no database query sees) or `All` (every node;
    /// on a read-write node it also sees expired-but-unswept sessions as gone, which the
    /// database does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_for: Option<CounterDefault>,
    /// Compute resources of the counter container (default: requests cpu 10m, memory 64Mi;
    /// limit memory 256Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The keys of one Secret holding an OMERO user name and password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterCredentials {
    /// Name of the Secret, in the cluster's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the OMERO user name (default `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user_key: Option<String>,
    /// Key holding the password (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub password_key: Option<String>,
}

impl CounterCredentials {
    pub fn user_key(&self) -> &str {
        self.user_key.as_deref().unwrap_or("username")
    }

    pub fn password_key(&self) -> &str {
        self.password_key.as_deref().unwrap_or("password")
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CounterDefault {
    /// Read-only database nodes.
    #[default]
    ReadOnly,
    /// Every node.
    All,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Topology {
    /// Every node is its own OMERO.server (as IDR runs them); the entry Service spreads new
    /// sessions over routable nodes with client-IP affinity.
    #[default]
    Independent,
    /// One IceGrid application: the master runs the registry and Glacier2; OMERO's
    /// configRedirector steers new sessions.
    Grid,
}

/// A reference to one key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret that holds the value.
    #[schemars(length(min = 1))]
    pub key: String,
}

impl SecretKeyRef {
    /// The key's value in `secret` (read from the API server, so in `data`; `stringData` too,
    /// as a double or an unsaved object holds it), or `None` when it has no such key.
    pub fn value_in(&self, secret: &k8s_openapi::api::core::v1::Secret) -> Option<Vec<u8>> {
        secret.data.as_ref().and_then(|d| d.get(&self.key)).map(|b| b.0.clone()).or_else(|| {
            secret.string_data.as_ref().and_then(|d| d.get(&self.key)).map(|s| s.clone().into_bytes())
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Host name of PostgreSQL.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Port (default 5432).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Database name (default `omero`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub name: Option<String>,
    /// Database user (default `omero`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
    /// The Secret key holding the user's password. It is passed to the pods by reference,
    /// never copied into an object.
    pub password_secret: SecretKeyRef,
    /// OMERO root's password, used only when the read-write node's image initialises an
    /// empty database (`omego db init`). Without it the image's default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_secret: Option<SecretKeyRef>,
    /// A separate endpoint and credentials for read-only nodes (a SELECT-only role or a
    /// streaming replica). Fields left out fall back to the ones above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnlyDatabaseSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadOnlyDatabaseSpec {
    /// Host of the read-only nodes' database (e.g. a streaming replica); default: `database.host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub host: Option<String>,
    /// Its port; default: `database.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Its database name; default: `database.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub name: Option<String>,
    /// The role read-only nodes log in as (e.g. one with SELECT only); default: `database.user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
}

pub const DEFAULT_DB_PORT: u16 = 5432;
pub const DEFAULT_DB_NAME: &str = "omero";
pub const DEFAULT_DB_USER: &str = "omero";

/// A database endpoint with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DatabaseEndpoint {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password_secret: SecretKeyRef,
}

impl DatabaseSpec {
    /// The endpoint read-write nodes (and the session probe) use.
    pub fn primary(&self) -> DatabaseEndpoint {
        DatabaseEndpoint {
            host: self.host.clone(),
            port: self.port.unwrap_or(DEFAULT_DB_PORT),
            name: self.name.clone().unwrap_or_else(|| DEFAULT_DB_NAME.into()),
            user: self.user.clone().unwrap_or_else(|| DEFAULT_DB_USER.into()),
            password_secret: self.password_secret.clone(),
        }
    }

    /// The endpoint read-only nodes use: `readOnly` overrides, field by field.
    pub fn for_read_only(&self) -> DatabaseEndpoint {
        let primary = self.primary();
        let Some(ro) = &self.read_only else {
            return primary;
        };
        DatabaseEndpoint {
            host: ro.host.clone().unwrap_or(primary.host),
            port: ro.port.unwrap_or(primary.port),
            name: ro.name.clone().unwrap_or(primary.name),
            user: ro.user.clone().unwrap_or(primary.user),
            password_secret: ro.password_secret.clone().unwrap_or(primary.password_secret),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// An existing PersistentVolumeClaim holding the binary repository, mounted at `/OMERO`
    /// on every node. The operator never owns or deletes it.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// An existing claim for a shared Bio-Formats memo cache, mounted at
    /// `/OMERO/BioFormatsCache` (`omero.pixeldata.memoizer.dir`). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo_cache_claim_name: Option<String>,
    /// Let the kubelet make the claims group-owned by OMERO's group (gid 1000, `fsGroup`).
    /// Off by default: on volume types that support it, the first mount walks and re-owns
    /// every file of the repository (terabytes at a real facility: hours before the node
    /// starts). Leave it off when the repository is already writable by uid 1000 (the image's
    /// `omero-server` user), as an existing OMERO repository is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_ownership: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.maxUserLifetime) || (has(self.maxLifetime) && duration(self.maxUserLifetime) >= duration(self.maxLifetime))").message("maxUserLifetime caps what users may give their own sessions: it needs maxLifetime (every login's time to live, which OMERO does not check against the cap) and must be at least maxLifetime").field_path(".maxUserLifetime")
)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// Default idle timeout of a session (`omero.sessions.timeout`; OMERO's default is 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Time to live of every new login (`omero.sessions.maximum`), and, unless
    /// `maxUserLifetime` says otherwise, the longest time to live a user may give their own
    /// session (`omero.sessions.max_user_time_to_live`). OMERO's defaults are none for both:
    /// a session in steady use never ends, and any user may make their own session unlimited.
    /// With it set, sessions people open for themselves end by then. OMERO does not cap
    /// sessions an administrator or group owner opens for someone else (`omero login --sudo`
    /// asks for an unlimited one), nor an administrator's change of a session's timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Duration>,
    /// The longest time to live a user may give their own session
    /// (`omero.sessions.max_user_time_to_live`; OMERO then also caps the idle timeout a user
    /// asks for at `omero.sessions.max_user_time_to_idle`). Default: `maxLifetime`. At least
    /// `maxLifetime`, and only with it: without it logins would still be unlimited. Administrators
    /// changing a session's timeouts with `UpdateSessionTimeoutRequest`, and sessions opened for
    /// another user, are not capped by OMERO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_user_lifetime: Option<Duration>,
}

/// OMERO's property capping the idle timeout a user asks for (omero-server
/// `omero-server.properties`: 6000000 ms by default).
pub const MAX_USER_IDLE_PROPERTY: &str = "omero.sessions.max_user_time_to_idle";
/// OMERO's default of [`MAX_USER_IDLE_PROPERTY`], in milliseconds.
pub const OMERO_DEFAULT_MAX_USER_IDLE_MS: u64 = 6_000_000;
/// OMERO's default idle timeout (`omero.sessions.timeout`), in milliseconds.
pub const OMERO_DEFAULT_IDLE_MS: u64 = 600_000;

impl SessionsSpec {
    /// The longest time to live OMERO lets a user give their own session
    /// (`omero.sessions.max_user_time_to_live`): `maxUserLifetime`, else `maxLifetime`; none
    /// (OMERO's 0, unlimited) without `maxLifetime`.
    pub fn user_lifetime_cap(&self) -> Option<Duration> {
        self.max_lifetime.map(|max| self.max_user_lifetime.unwrap_or(max))
    }
}

/// One OMERO node: one Deployment, one pod, one per-node Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.sessionProbe) || self.sessionProbe.type != 'Database' || !has(self.readOnly) || !self.readOnly.db").message("a read-only database node writes no session rows, so the database probe cannot count its sessions; use sessionProbe.type Counter, Metrics or None").field_path(".sessionProbe.type"),
    validation = Rule::new("!has(self.servers) || size(self.servers) == 0 || 'Blitz-0' in self.servers").message("servers must include Blitz-0: every client of the node is served through it").field_path(".servers")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Node name: a DNS label, unique in the cluster. Objects are named `<cluster>-<name>`.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Grid topology only: this node runs the IceGrid registry and Glacier2. Exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<bool>,
    /// Run this node read-only: `db` (no writes to the database) and/or `repo` (repository
    /// mounted read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnlySpec>,
    /// OMERO properties for this node; they override the cluster's `config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// The OMERO servers this node runs, independent topology only: its
    /// `omero.server.nodedescriptors` (`master:<servers>`; Glacier2 always runs). Names as
    /// OMERO's templates give them: `Blitz-0` (required), `Tables-0`, `Processor-0`,
    /// `Indexer-0`, `PixelData-0` (any index), `DropBox`, `MonitorServer`, `FileServer`,
    /// `Storm`, `TestDropBox`. Default on a read-only node (`readOnly.db` and `readOnly.repo`):
    /// `[Blitz-0, Tables-0]`, as IDR runs its read-only servers, since the others can do
    /// nothing there (no indexing, pyramids, imports or scripts) and the Indexer's and
    /// PixelData's JVMs would take a quarter of the node's memory; elsewhere OMERO's whole set.
    /// When the operator chooses the servers, Blitz also gets the heap share of the JVMs that do
    /// not run (`omero.jvmcfg.percent.blitz`, up to the 40 % OMERO's whole set takes), unless
    /// `config` sizes the JVMs itself (`omero.jvmcfg.percent*`, `heap_size*`, `strategy*`).
    /// `omero.server.nodedescriptors` in the cluster's `config` replaces the default too; in this
    /// node's `config` it cannot go with `servers`. Needs omero-py 5.9.0 or later in the image:
    /// older ones ignore the property and run every server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^((Blitz|Indexer|PixelData|Processor|Tables)-[0-9]+|DropBox|MonitorServer|FileServer|Storm|TestDropBox)$"
    )))]
    #[schemars(inner(length(max = 32)), length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub servers: Vec<String>,
    /// Compute resources of the OMERO container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Labels of the Kubernetes nodes the node's pod may run on (the pod's `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the node's pod tolerates (the pod's `tolerations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// An existing claim (ReadWriteOnce is enough: one pod at a time) for this node's
    /// `OMERO.server/var`: logs and, on a grid master, the IceGrid registry's database. Without
    /// it `var` is an emptyDir, and a grid master that restarts forgets its workers: its Blitz
    /// then marks every worker's node down and closes their sessions. Set it on a grid master.
    /// It must be writable by uid 1000 (the image's `omero-server` user): a fresh claim often
    /// is not, so prepare it, or set `repository.setOwnership` (which re-owns the repository
    /// too). The operator never owns or deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var_claim_name: Option<String>,
    /// Extra environment variables of the OMERO container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra containers in the node's pod, e.g. a sessions exporter (omero-prometheus-tools)
    /// for a `Metrics` session probe on a read-only node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Container>,
    /// How this node's open sessions are counted during a drain. Default: `Counter` where
    /// `spec.sessionCounter` says so (read-only database nodes, or all), else `Database` for
    /// nodes that write to the database and `None` for read-only database nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_probe: Option<SessionProbe>,
}

impl NodeSpec {
    pub fn read_only_db(&self) -> bool {
        self.read_only.as_ref().is_some_and(|r| r.db)
    }

    pub fn read_only_repo(&self) -> bool {
        self.read_only.as_ref().is_some_and(|r| r.repo)
    }

    /// A node that can write either the database or the repository.
    pub fn is_read_write(&self) -> bool {
        !(self.read_only_db() && self.read_only_repo())
    }

    /// The memory limit of the OMERO container, in MiB, when one is set and readable.
    pub fn memory_limit_mib(&self) -> Option<u64> {
        let limit = self.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        super::quantity::mebibytes(&limit.0)
    }

    /// The index of the Blitz a grid worker hosts (`Blitz-<index>` in the master's
    /// `omero.server.nodedescriptors`): derived from the node's name alone, so adding or
    /// removing another worker never renames this one's server (a server's name is its
    /// identity in the grid). 1 to 99999 (`Blitz-0` is the master's); digits only, since
    /// OMERO splits a descriptor at its `-`. Validation refuses two workers with one index.
    pub fn blitz_index(&self) -> u32 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.name.as_bytes());
        1 + u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 99_999
    }

    pub fn is_master(&self) -> bool {
        self.master == Some(true)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ReadOnlySpec {
    /// `omero.cluster.read_only.db`: the node never writes the database.
    #[serde(default)]
    pub db: bool,
    /// `omero.cluster.read_only.repo`: the repository is mounted read-only.
    #[serde(default)]
    pub repo: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type != 'Metrics' || has(self.port)").message("a metrics probe needs port: the port of the node's Prometheus endpoint").field_path(".port")
)]
#[serde(rename_all = "camelCase")]
pub struct SessionProbe {
    /// `Database` (SQL on the OMERO database; read-write nodes), `Counter` (the built-in
    /// session counter beside the server: any node of an independent topology; needs
    /// `spec.sessionCounter`), `Metrics` (a Prometheus text endpoint on the node's pod, e.g. a
    /// home-built exporter) or `None` (only the drain deadline ends a drain).
    #[serde(rename = "type")]
    pub kind: SessionProbeKind,
    /// metrics: port on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// metrics: HTTP path (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// metrics: name of the gauge holding the open session count (default
    /// `omero_sessions_active`); samples with several label sets are summed, except those
    /// whose `username` is `root` (OMERO's own services) or `exporterUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// How often to probe while draining (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How often to count sessions while the node serves, so status (and `kubectl omero
    /// status`) shows where people are before an admin chooses what to drain (default 60s;
    /// `0s` counts only while draining). Slower than `interval`: a serving node's count is
    /// for people to read, not a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_interval: Option<Duration>,
    /// metrics: the OMERO user the exporter logs in as (required). Its sessions, like root's,
    /// are not counted. Not `guest`: a guest sees only its own session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter_user: Option<String>,
    /// No longer supported (validation says what to write instead): a fixed number could not
    /// tell OMERO's service sessions and the exporter's login from people's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_sessions: Option<u32>,
}

pub const DEFAULT_METRICS_PATH: &str = "/metrics";
pub const DEFAULT_SESSIONS_METRIC: &str = "omero_sessions_active";
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_SERVING_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// OMERO's administrator, the user its own services log in as.
pub const ROOT_USER: &str = "root";

impl SessionProbe {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_PROBE_INTERVAL)
    }

    /// How often to count a serving node's sessions; `None` when never (no probe, or `0s`).
    pub fn serving_interval(&self) -> Option<Duration> {
        let interval = self.serving_interval.unwrap_or(DEFAULT_SERVING_PROBE_INTERVAL);
        (self.kind != SessionProbeKind::None && !interval.is_zero()).then_some(interval)
    }

    /// Users whose sessions a metrics probe leaves out: root (Processor-0's and Tables-0's
    /// service sessions) and the exporter's own login.
    pub fn excluded_users(&self) -> Vec<&str> {
        std::iter::once(ROOT_USER).chain(self.exporter_user.as_deref()).collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionProbeKind {
    #[default]
    Database,
    Counter,
    Metrics,
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long a drain may take. Default: the longest lifetime users may give their own
    /// sessions (`sessions.maxUserLifetime`, else `sessions.maxLifetime`) if set, else 1h. By
    /// then every session a user opened for themselves before the drain has reached its time
    /// to live (OMERO closes it at its next sweep); sessions opened for another user (`omero
    /// login --sudo`) or extended by an administrator may not have: OMERO does not cap them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What happens at the deadline: `Proceed` (default; the node counts as drained and the
    /// sessions still open are reported) or `Hold` (the node stays Draining until its
    /// sessions end or the drain is forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_deadline: Option<OnDeadline>,
    /// How many nodes may be out of service at once for rollouts, restarts and moves off
    /// Kubernetes nodes under maintenance (default 1); nodes drained on request, starting or
    /// failed count too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_unavailable: Option<u32>,
    /// How long a restarted node may take to become ready and answer its session probe
    /// before the rollout stops (default 40m: OMERO's start-up budget plus ten minutes); also
    /// how long a new pod may stay unready before it counts as not serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<Duration>,
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The Deployment's own progress deadline: the startup probe's budget plus ten minutes.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(2400);

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnDeadline {
    #[default]
    Proceed,
    Hold,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Type of the entry Service (`ClusterIP` default, `NodePort`, `LoadBalancer`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Annotations of the entry Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Client-IP affinity timeout of the entry Service in seconds (default 10800, 3 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub session_affinity_timeout_seconds: Option<i32>,
}

pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10800;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

impl OmeroClusterSpec {
    pub fn drain_timeout(&self) -> Duration {
        self.drain
            .as_ref()
            .and_then(|d| d.timeout)
            .or_else(|| self.sessions.as_ref().and_then(SessionsSpec::user_lifetime_cap))
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT)
    }

    pub fn on_deadline(&self) -> OnDeadline {
        self.drain.as_ref().and_then(|d| d.on_deadline).unwrap_or_default()
    }

    pub fn ready_timeout(&self) -> Duration {
        self.drain.as_ref().and_then(|d| d.ready_timeout).unwrap_or(DEFAULT_READY_TIMEOUT)
    }

    /// The `NoSchedule` taint keys that mean maintenance.
    pub fn maintenance_taint_keys(&self) -> &[String] {
        self.maintenance.as_ref().map_or(&[], |m| m.taint_keys.as_slice())
    }

    pub fn max_unavailable(&self) -> u32 {
        self.drain.as_ref().and_then(|d| d.max_unavailable).unwrap_or(1).max(1)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The probe in force for `node`, with the default filled in: its own `sessionProbe`, else
    /// the session counter where `sessionCounter` makes it the default (never in grid
    /// topology), else `Database` for nodes that write to the database and `None` for
    /// read-only database nodes.
    pub fn session_probe_of(&self, node: &NodeSpec) -> SessionProbe {
        if let Some(probe) = &node.session_probe {
            return probe.clone();
        }
        let counter = self.topology == Topology::Independent
            && self.session_counter.as_ref().is_some_and(|c| {
                node.read_only_db() || c.default_for.unwrap_or_default() == CounterDefault::All
            });
        let kind = if counter {
            SessionProbeKind::Counter
        } else if node.read_only_db() {
            SessionProbeKind::None
        } else {
            SessionProbeKind::Database
        };
        SessionProbe { kind, ..SessionProbe::default() }
    }

    /// The master of a `Grid` topology; none in `Independent` (where `master` is refused).
    pub fn grid_master(&self) -> Option<&NodeSpec> {
        (self.topology == Topology::Grid).then(|| self.nodes.iter().find(|n| n.is_master())).flatten()
    }
}
