//! The controller's two ports: the cluster (Kubernetes objects, status, events) and OMERO
//! (session counts, the grid redirect). The reconcile pipeline talks only through these, so scenario
//! tests run it against in-memory doubles, and `kube_port` / `omero` are the real adapters.

use std::future::Future;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Node, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    Error,
    api::{DatabaseEndpoint, OmeroCluster, OmeroClusterStatus, SecretKeyRef, SessionProbe},
};

/// What exists of one cluster: objects labelled as its children, and its nodes' pods.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub budgets: Vec<PodDisruptionBudget>,
    pub pods: Vec<Pod>,
    /// The Kubernetes Nodes the cluster's pods run on (metadata and spec), from the Node
    /// cache; `None` when the operator does not watch Nodes (`--watch-nodes` off).
    pub kube_nodes: Option<Vec<Node>>,
}

impl Children {
    /// Whether the caches hold an object of `kind` named `name`.
    pub fn holds(&self, kind: ChildKind, name: &str) -> bool {
        fn named<K: kube::Resource>(objects: &[K], name: &str) -> bool {
            objects.iter().any(|o| o.meta().name.as_deref() == Some(name))
        }
        match kind {
            ChildKind::Deployment => named(&self.deployments, name),
            ChildKind::Service => named(&self.services, name),
            ChildKind::ConfigMap => named(&self.config_maps, name),
            ChildKind::PodDisruptionBudget => named(&self.budgets, name),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChildKind {
    Deployment,
    Service,
    ConfigMap,
    PodDisruptionBudget,
}

impl ChildKind {
    /// Every kind the operator writes by server-side apply.
    pub const ALL: [ChildKind; 4] =
        [Self::Deployment, Self::Service, Self::ConfigMap, Self::PodDisruptionBudget];

    /// The kind's API group ("" for the core group) and resource, as RBAC names them.
    pub fn api_resource(self) -> (&'static str, &'static str) {
        fn of<K: k8s_openapi::Resource>() -> (&'static str, &'static str) {
            (K::GROUP, K::URL_PATH_SEGMENT)
        }
        match self {
            Self::Deployment => of::<Deployment>(),
            Self::Service => of::<Service>(),
            Self::ConfigMap => of::<ConfigMap>(),
            Self::PodDisruptionBudget => of::<PodDisruptionBudget>(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Service => "Service",
            Self::ConfigMap => "ConfigMap",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }
}

/// An object the operator writes.
#[derive(Clone, Copy, Debug)]
pub enum Child<'a> {
    Deployment(&'a Deployment),
    Service(&'a Service),
    ConfigMap(&'a ConfigMap),
    PodDisruptionBudget(&'a PodDisruptionBudget),
}

impl Child<'_> {
    pub fn kind(&self) -> ChildKind {
        match self {
            Self::Deployment(_) => ChildKind::Deployment,
            Self::Service(_) => ChildKind::Service,
            Self::ConfigMap(_) => ChildKind::ConfigMap,
            Self::PodDisruptionBudget(_) => ChildKind::PodDisruptionBudget,
        }
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Self::Deployment(d) => &d.metadata,
            Self::Service(s) => &s.metadata,
            Self::ConfigMap(c) => &c.metadata,
            Self::PodDisruptionBudget(b) => &b.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// An object the operator writes, owned: what a decision holds until it is acted on.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildObject {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
}

impl ChildObject {
    pub fn as_child(&self) -> Child<'_> {
        match self {
            Self::Deployment(d) => Child::Deployment(d),
            Self::Service(s) => Child::Service(s),
            Self::ConfigMap(c) => Child::ConfigMap(c),
            Self::PodDisruptionBudget(b) => Child::PodDisruptionBudget(b),
        }
    }
}

/// The outcome of a status write with a `resourceVersion` precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// Written; the cluster's new resourceVersion.
    Written(Option<String>),
    /// The cluster changed since it was read (409 Conflict): nothing was written.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event about the OmeroCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// PascalCase, e.g. `DrainStarted`.
    pub reason: String,
    pub note: String,
    /// PascalCase action the operator took or refused, e.g. `Drain`.
    pub action: String,
    /// The object the Event is about besides the cluster (its `related`). kube's Recorder
    /// folds Events with the same reason and objects into one series, keeping the first
    /// note: without this, a second node's `DrainStarted` would only count up the first's.
    pub related: Option<Related>,
}

/// What an Event is about, besides the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Related {
    /// A node, by name (its Deployment, `<cluster>-<node>`).
    Node(String),
    /// One of the cluster's objects, by kind and name.
    Object { kind: String, name: String },
}

pub trait ClusterPort: Send + Sync + 'static {
    /// The cluster's children and pods (by the cluster label), as they are now.
    fn children(&self, cluster: &OmeroCluster) -> impl Future<Output = Result<Children, Error>> + Send;
    /// The metadata of whatever object of this kind has this name, the operator's or not:
    /// `children` only sees objects carrying the cluster's labels. At least the name, the uid,
    /// the controller owner reference and the `app.kubernetes.io/managed-by` label.
    fn find(
        &self,
        ns: &str,
        kind: ChildKind,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObjectMeta>, Error>> + Send;
    /// Server-side apply with the operator's field manager and `force`. Only ever called for
    /// an object that does not exist or that this cluster controls; `uid` is the existing
    /// object's, sent as a precondition so that an object replaced meanwhile is not taken over.
    /// Without a `uid` the apply only creates: when the name is held by then, nothing is
    /// written and the answer is [`Error::NameTaken`].
    fn apply(
        &self,
        ns: &str,
        child: Child<'_>,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes the object only if it is still the one with `uid` (a precondition).
    fn delete_child(
        &self,
        ns: &str,
        kind: ChildKind,
        name: &str,
        uid: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes a node's pod only if it is still the one with `uid` (a precondition), so that
    /// its Deployment's new pod is scheduled elsewhere (a maintenance move). A pod already
    /// gone is no error.
    fn delete_pod(&self, ns: &str, pod: &str, uid: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Adds or removes `omero.openmicroscopy.org/routable=true` on the pod itself.
    fn set_routable(
        &self,
        ns: &str,
        pod: &str,
        routable: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    fn secret_value(
        &self,
        ns: &str,
        secret: &SecretKeyRef,
    ) -> impl Future<Output = Result<String, Error>> + Send;
    /// Replaces the status subresource, on the condition that the cluster is still at the
    /// `resourceVersion` of `cluster`: a reconcile that started from a stale copy is told so
    /// ([`StatusWrite::Stale`]) and must not act on what it decided.
    fn write_status(
        &self,
        cluster: &OmeroCluster,
        status: &OmeroClusterStatus,
    ) -> impl Future<Output = Result<StatusWrite, Error>> + Send;
    fn publish(
        &self,
        cluster: &OmeroCluster,
        event: &Event,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// One node's session count request.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionQuery {
    pub pod_ip: String,
    /// The node's probe with defaults filled in.
    pub probe: SessionProbe,
    /// For `database` probes: where to connect and the password.
    pub database: Option<(DatabaseEndpoint, String)>,
}

/// Points a grid's new sessions at one node.
#[derive(Clone, Debug, PartialEq)]
pub struct RedirectQuery {
    pub pod_ip: String,
    /// The read-write endpoint and its password: the redirect is a row OMERO reads.
    pub database: (DatabaseEndpoint, String),
}

pub use crate::omero::SessionCount;

/// OMERO itself: its sessions and, in grid topology, where it sends new ones.
pub trait OmeroPort: Send + Sync + 'static {
    /// `Ok(None)` when the node has no probe (`none`); an error is never a count.
    fn count_sessions(
        &self,
        query: &SessionQuery,
    ) -> impl Future<Output = Result<Option<SessionCount>, String>> + Send;
    /// Makes `omero.cluster.redirect` name the node at `pod_ip`; `Ok(true)` when it changed.
    fn redirect_new_sessions(
        &self,
        query: &RedirectQuery,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}
