//! The cluster port on a real API server: server-side apply with one field manager, the
//! status subresource, label patches on pods, Events.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Node, ObjectReference, Pod, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    core::PartialObjectMeta,
    runtime::{
        events::{self, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tracing::warn;

use super::{
    cache::{Cacheable, Cached},
    port::{Child, ChildKind, Children, ClusterPort, Event, EventType, Related, StatusWrite},
};
use crate::{
    Error,
    api::{OmeroCluster, OmeroClusterStatus, SecretKeyRef, keys},
    render,
};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = keys::MANAGER;

/// The watch caches a reconcile reads children from: reflector stores of the objects that
/// carry the operator's label, kept by the controller's own watches in their cached form
/// (`cache`: metadata, and the rest as text).
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Cached<Deployment>>,
    pub services: Store<Cached<Service>>,
    pub config_maps: Store<Cached<ConfigMap>>,
    pub budgets: Store<Cached<PodDisruptionBudget>>,
    pub pods: Store<Cached<Pod>>,
    /// What holds each name: every object of the kinds the operator writes, labelled or not.
    pub names: NameCaches,
    /// Kubernetes Nodes (metadata and spec), when the operator watches them (`--watch-nodes`).
    pub nodes: Option<Store<Node>>,
}

/// Every Deployment, Service, ConfigMap and PodDisruptionBudget of the watched namespace(s),
/// the operator's or anyone's, kept by metadata-only watches as only what a look-up by name
/// reads (`cache::slim_look_up_entry`): [`KubePort::find`] answers from them, never by a request.
#[derive(Clone)]
pub struct NameCaches {
    pub deployments: Store<PartialObjectMeta<Deployment>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
}

/// The `resourceVersion` an apply carries when it must only create: no stored object can have
/// it (it is the largest signed 64-bit number, where etcd's revisions count up from 1 by one
/// per write), so the API server refuses the apply with 409 Conflict when anything holds the
/// name, and creates the object when nothing does (on create the resourceVersion sent is
/// dropped before the object is stored). Read in the API server's source (apiserver
/// `registry/generic/registry/store.go` `Store.Update`: the version check is made only
/// against an existing object; `storage/etcd3/store.go` `updateState` clears the version
/// before storing), and reported by a user doing the same (kubernetes/kubernetes#106745);
/// not observed here. Were it refused on create, [`KubePort::apply`] falls back to a plain
/// apply.
pub const CREATE_ONLY: &str = "9223372036854775807";

#[derive(Clone)]
pub struct KubePort {
    client: Client,
    recorder: Recorder,
    caches: Caches,
}

impl KubePort {
    pub fn new(client: Client, caches: Caches) -> Self {
        let reporter =
            Reporter { controller: keys::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client.clone(), reporter), client, caches }
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        &self,
        ns: &str,
    ) -> Api<K> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// One server-side apply of `child`, with `uid` as a precondition and, when `create_only`,
    /// [`CREATE_ONLY`] as its resourceVersion.
    async fn send_apply(
        &self,
        ns: &str,
        child: Child<'_>,
        uid: Option<&str>,
        create_only: bool,
    ) -> Result<(), kube::Error> {
        let with_preconditions = |meta: &ObjectMeta| ObjectMeta {
            uid: uid.map(Into::into),
            resource_version: create_only.then(|| CREATE_ONLY.into()),
            ..meta.clone()
        };
        let name = child.name();
        match child {
            Child::Deployment(d) => {
                let body = Deployment { metadata: with_preconditions(&d.metadata), ..d.clone() };
                self.api::<Deployment>(ns).patch(name, &Self::apply_params(), &Patch::Apply(body)).await?;
            }
            Child::Service(s) => {
                let body = Service { metadata: with_preconditions(&s.metadata), ..s.clone() };
                self.api::<Service>(ns).patch(name, &Self::apply_params(), &Patch::Apply(body)).await?;
            }
            Child::ConfigMap(c) => {
                let body = ConfigMap { metadata: with_preconditions(&c.metadata), ..c.clone() };
                self.api::<ConfigMap>(ns).patch(name, &Self::apply_params(), &Patch::Apply(body)).await?;
            }
            Child::PodDisruptionBudget(b) => {
                let body = PodDisruptionBudget { metadata: with_preconditions(&b.metadata), ..b.clone() };
                self.api::<PodDisruptionBudget>(ns)
                    .patch(name, &Self::apply_params(), &Patch::Apply(body))
                    .await?;
            }
        }
        Ok(())
    }
}

/// The look-up cache entry of `name` in namespace `ns`, if any: its metadata as kept.
fn held<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<PartialObjectMeta<K>>,
    ns: &str,
    name: &str,
) -> Option<ObjectMeta> {
    store.get(&ObjectRef::new(name).within(ns)).map(|entry| entry.metadata.clone())
}

/// The object reference of what an Event is about.
fn related_reference(cluster: &OmeroCluster, related: &Related) -> ObjectReference {
    let (api_version, kind, name) = match related {
        Related::Node(node) => ("apps/v1", "Deployment", render::node_object_name(&cluster.name_any(), node)),
        Related::Object { kind, name } => {
            let api_version = match kind.as_str() {
                "Deployment" => "apps/v1",
                "PodDisruptionBudget" => "policy/v1",
                _ => "v1", // Service, ConfigMap
            };
            (api_version, kind.as_str(), name.clone())
        }
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name),
        namespace: cluster.namespace(),
        ..ObjectReference::default()
    }
}

/// The cached objects of one namespace that carry every label of `selector`, decoded.
pub(crate) fn of_cluster<K: Cacheable>(
    store: &Store<Cached<K>>,
    ns: &str,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<K>, Error> {
    store
        .state()
        .into_iter()
        .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
        .filter(|o| selector.iter().all(|(k, v)| o.selected_label(k) == Some(v.as_str())))
        .map(|o| {
            o.object().map_err(|source| Error::Serialize {
                what: format!(
                    "the cached {} {}",
                    K::kind(&()),
                    o.metadata.name.as_deref().unwrap_or_default()
                ),
                source,
            })
        })
        .collect()
}

fn namespace(cluster: &OmeroCluster) -> Result<String, Error> {
    cluster.namespace().ok_or_else(|| Error::MissingNamespace(cluster.name_any()))
}

impl ClusterPort for KubePort {
    /// From the watch caches, never a LIST: a cache can lag behind the API server, which the
    /// decisions tolerate (revisions, not readiness alone; uid preconditions on writes).
    async fn children(&self, cluster: &OmeroCluster) -> Result<Children, Error> {
        let ns = namespace(cluster)?;
        let selector = render::cluster_selector(&cluster.name_any());
        let pods = of_cluster(&self.caches.pods, &ns, &selector)?;
        // Only the Nodes the cluster's pods are bound to, by name from the cache.
        let kube_nodes = self.caches.nodes.as_ref().map(|nodes| {
            let names: std::collections::BTreeSet<&str> =
                pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.as_deref()).collect();
            names
                .into_iter()
                .filter_map(|name| nodes.get(&kube::runtime::reflector::ObjectRef::new(name)))
                .map(|n| (*n).clone())
                .collect()
        });
        Ok(Children {
            deployments: of_cluster(&self.caches.deployments, &ns, &selector)?,
            services: of_cluster(&self.caches.services, &ns, &selector)?,
            config_maps: of_cluster(&self.caches.config_maps, &ns, &selector)?,
            budgets: of_cluster(&self.caches.budgets, &ns, &selector)?,
            pods,
            kube_nodes,
        })
    }

    /// From the look-up caches (metadata-only watches of every object of the kind), never a
    /// request. They can lag: an object created since the cache last heard of its name is not
    /// seen here, the window a GET had between its answer and the apply, plus the watch's lag.
    /// It is closed at the write: an apply of a name found free only creates ([`CREATE_ONLY`]),
    /// so an object that took the name meanwhile, the operator's own or anyone's, is refused
    /// by the API server and never written over. The other way round, an object deleted since
    /// the cache last heard is still found: a foreign one is reported until the cache catches
    /// up; one of the cluster's own is applied with its uid, which the API server refuses.
    async fn find(&self, ns: &str, kind: ChildKind, name: &str) -> Result<Option<ObjectMeta>, Error> {
        let names = &self.caches.names;
        Ok(match kind {
            ChildKind::Deployment => held(&names.deployments, ns, name),
            ChildKind::Service => held(&names.services, ns, name),
            ChildKind::ConfigMap => held(&names.config_maps, ns, name),
            ChildKind::PodDisruptionBudget => held(&names.budgets, ns, name),
        })
    }

    async fn apply(&self, ns: &str, child: Child<'_>, uid: Option<&str>) -> Result<(), Error> {
        // With the existing object's uid in the applied metadata, the API server refuses the
        // patch if the name now belongs to another object. Without one (the name was found
        // free) the apply only creates: [`CREATE_ONLY`].
        let create_only = uid.is_none();
        match self.send_apply(ns, child, uid, create_only).await {
            Err(kube::Error::Api(e)) if create_only && e.code == 409 => {
                Err(Error::NameTaken { kind: child.kind().as_str().into(), name: child.name().into() })
            }
            // The API server refused the create-only version itself (not a taken name): one
            // that does not take it on create, against what its source says. The plain apply
            // leaves this object's window open, as wide as it was behind a look-up by GET.
            Err(kube::Error::Api(e)) if create_only && e.message.contains("resourceVersion") => {
                warn!(
                    kind = child.kind().as_str(),
                    child = child.name(),
                    refused = %e.message,
                    "the API server refused a create-only apply; applying without the precondition"
                );
                Ok(self.send_apply(ns, child, None, false).await?)
            }
            other => Ok(other?),
        }
    }

    async fn delete_child(&self, ns: &str, kind: ChildKind, name: &str, uid: &str) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..DeleteParams::background()
        };
        let result = match kind {
            ChildKind::Deployment => self.api::<Deployment>(ns).delete(name, &params).await.map(drop),
            ChildKind::Service => self.api::<Service>(ns).delete(name, &params).await.map(drop),
            ChildKind::ConfigMap => self.api::<ConfigMap>(ns).delete(name, &params).await.map(drop),
            ChildKind::PodDisruptionBudget => {
                self.api::<PodDisruptionBudget>(ns).delete(name, &params).await.map(drop)
            }
        };
        match result {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => Ok(other?),
        }
    }

    async fn delete_pod(&self, ns: &str, pod: &str, uid: &str) -> Result<(), Error> {
        // A delete, not an eviction: the node is drained, and its own budget is what keeps
        // `kubectl drain` waiting until then. The uid precondition spares a pod of the same
        // name created meanwhile.
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..DeleteParams::default()
        };
        match self.api::<Pod>(ns).delete(pod, &params).await {
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn set_routable(&self, ns: &str, pod: &str, routable: bool) -> Result<(), Error> {
        // A merge patch on the pod itself: the template is untouched, so nothing restarts.
        let value = if routable { json!("true") } else { json!(null) };
        let patch = json!({"metadata": {"labels": {keys::ROUTABLE_LABEL: value}}});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self.api::<Pod>(ns).patch(pod, &params, &Patch::Merge(&patch)).await {
            // A pod the cache still showed is gone: nothing left to label.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn secret_value(&self, ns: &str, secret: &SecretKeyRef) -> Result<String, Error> {
        let found = self.api::<Secret>(ns).get(&secret.name).await?;
        let missing = || Error::SecretKeyMissing { name: secret.name.clone(), key: secret.key.clone() };
        let bytes = secret.value_in(&found).ok_or_else(missing)?;
        String::from_utf8(bytes)
            .map_err(|_| Error::SecretNotUtf8 { name: secret.name.clone(), key: secret.key.clone() })
    }

    async fn write_status(
        &self,
        cluster: &OmeroCluster,
        status: &OmeroClusterStatus,
    ) -> Result<StatusWrite, Error> {
        let ns = namespace(cluster)?;
        // A replace carries the cluster's resourceVersion: the API server refuses it (409) when
        // the cluster changed since this reconcile read it.
        let mut body = OmeroCluster { status: Some(status.clone()), ..cluster.clone() };
        // Left out, the server keeps the managed fields it has.
        body.metadata.managed_fields = None;
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        match self.api::<OmeroCluster>(&ns).replace_status(&cluster.name_any(), &params, &body).await {
            Ok(written) => Ok(StatusWrite::Written(written.metadata.resource_version)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(StatusWrite::Stale),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish(&self, cluster: &OmeroCluster, event: &Event) -> Result<(), Error> {
        let ev = events::Event {
            type_: match event.type_ {
                EventType::Normal => events::EventType::Normal,
                EventType::Warning => events::EventType::Warning,
            },
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: event.action.clone(),
            secondary: event.related.as_ref().map(|related| related_reference(cluster, related)),
        };
        self.recorder.publish(&ev, &cluster.object_ref(&())).await?;
        Ok(())
    }
}
