//! What the watch caches keep of each object: the few metadata fields kube's machinery reads
//! and the labels the caches select on, as structs, and the rest (spec, status, data, the
//! rest of the metadata) as compact JSON, compressed, decoded again only when a reconcile
//! reads the object.
//!
//! Why text: k8s-openapi's structs hold every optional field inline, set or not. A `Volume` is
//! 3.2 KiB and a `Container` 2.1 KiB whatever they say, so one cached OMERO Deployment (a 4 to 6
//! KiB JSON object) took about 25 KiB, and 300 clusters of 3 nodes kept about 25 MB of mostly
//! empty fields. As text the same Deployment is its JSON length; compressed (LZ4, fast enough
//! that a read is still mostly the JSON decoding), about a third of that. Reading one back
//! costs about 20 us (a 4 KiB Deployment, `cargo bench --bench render`), paid for the dozen
//! objects of the one cluster a reconcile reads.

use std::{borrow::Cow, collections::BTreeMap, fmt, marker::PhantomData};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Container, Pod, PodSpec, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, core::PartialObjectMeta};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use crate::api::{OmeroCluster, keys};

/// The kinds the operator caches, with what of them is never read and so never kept.
pub trait Cacheable: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone {
    /// Drops what no reconcile reads, before the object is kept.
    fn slim(&mut self) {}
}

impl Cacheable for Deployment {}
impl Cacheable for Service {}
impl Cacheable for ConfigMap {}
impl Cacheable for PodDisruptionBudget {}
/// Of a pod's spec, only what is read: the node it runs on and each container's name and image
/// (`observe`). A pod's full spec (env, probes, volumes, scripts) is most of its size, and the
/// cache holds every pod of every cluster.
impl Cacheable for Pod {
    fn slim(&mut self) {
        if let Some(spec) = self.spec.take() {
            let containers = spec
                .containers
                .into_iter()
                .map(|c| Container { name: c.name, image: c.image, ..Default::default() })
                .collect();
            self.spec = Some(PodSpec { containers, node_name: spec.node_name, ..Default::default() });
        }
    }
}

/// Where `kubectl apply` keeps the last spec it applied (client-side apply): a second copy of
/// the spec, never read by the operator.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the clusters' own cache keeps: the cluster without its managed fields and without
/// kubectl's copy of its spec. Status is written back from this copy by a PUT of the status
/// subresource, which takes only `status` from the body: the API server copies the stored
/// object and sets the new status on it (apiextensions-apiserver's `statusStrategy.
/// PrepareForUpdate`; read in its source, not observed here). Were that wrong, the stored
/// cluster would lose kubectl's annotation, not its spec or the operator's requests.
pub fn slim_cluster(cluster: &mut OmeroCluster) {
    cluster.metadata.managed_fields = None;
    if let Some(annotations) = cluster.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// What the look-up caches keep of each Deployment, Service, ConfigMap and PodDisruptionBudget of
/// the watched namespaces, the operator's or not (`controller::run`'s metadata watches): only
/// what a look-up by name reads (`diff::plan_writes`, `ownership`). The name and namespace (the
/// cache's key), the uid (a write's precondition), the controller owner reference (whose the
/// object is) and, only when there is none, the `app.kubernetes.io/managed-by` label (how a
/// report describes an object with no controller; a one-entry map costs half a KiB). Everything
/// else goes: managed fields, annotations (kubectl's last-applied copy of the whole object among
/// them), other labels and owner references, timestamps, and the resourceVersion (the watch
/// reads it from the event before this runs). `cargo bench --bench look_up_cache` measures it.
pub fn slim_look_up_entry<K>(entry: &mut PartialObjectMeta<K>) {
    let meta = std::mem::take(&mut entry.metadata);
    let controller = meta.owner_references.into_iter().flatten().find(|r| r.controller == Some(true));
    let managed_by = match controller {
        Some(_) => None,
        None => meta.labels.and_then(|mut labels| labels.remove_entry(keys::MANAGED_BY_LABEL)),
    };
    entry.types = None;
    entry.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        owner_references: controller.map(|r| vec![r]),
        labels: managed_by.map(|(key, value)| BTreeMap::from([(key, value)])),
        ..ObjectMeta::default()
    };
}

/// One cached object of kind `K`: the metadata kube's machinery and the caches' look-ups read
/// ([`Cached::metadata`]), the labels the caches select on ([`Cached::selected_label`]), and
/// the rest of it (spec, status, data, and the rest of its metadata) as compact JSON,
/// compressed. It deserializes from `K`'s own JSON, so a watch of `Cached<K>` reads the same
/// API as a watch of `K`.
///
/// Why so little as structs: an `ObjectMeta` with its labels is about 1.2 KiB whatever it
/// holds (a `BTreeMap` node takes room for 11 entries; each label two allocations), and 600
/// clusters keep about 8,400 objects (heaptrack: 4.6 MB in label maps alone). As text, the same
/// labels and annotations are their JSON length, then compressed with the rest.
pub struct Cached<K> {
    /// Name, namespace, uid, resourceVersion and owner references only: what the reflector's
    /// keys, the watcher's resume, the controller's owner mapping and a look-up read without
    /// decoding. Everything else of the metadata is in `rest` (managed fields are dropped).
    pub metadata: ObjectMeta,
    /// The values of [`SELECTED_LABELS`] the object carries, in that order.
    selected: [Option<Box<str>>; SELECTED_LABELS.len()],
    /// `K` without the metadata above, as JSON, LZ4-compressed against [`dictionary`]
    /// (`lz4_flex`'s block format, its length prepended).
    rest: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

/// The labels a cache is ever selected on without decoding (`kube_port::of_cluster`: a
/// cluster's and a node's selectors; the pod mapper: the cluster): only these are kept beside
/// the text. `selection_labels_are_the_ones_kept` keeps the selectors within them.
pub const SELECTED_LABELS: [&str; 3] = [keys::MANAGED_BY_LABEL, keys::CLUSTER_LABEL, keys::NODE_LABEL];

/// What every cached object is compressed against (LZ4's external dictionary): the long
/// strings the operator writes alike into many objects, as they stand in JSON. These are the log
/// follower script in every node's Deployment (`omero-logs`' argument, 6.9 KB) and the session
/// counter script in every cluster's ConfigMap (24.8 KB). An object holding one keeps a
/// reference into the dictionary, a few dozen bytes, where 600 clusters of 3 nodes would
/// otherwise keep 1,800 copies of the one and 600 of the other. The dictionary is a
/// compression hint, never a substitution: any object reads back as it was, whatever it holds.
fn dictionary() -> &'static [u8] {
    static DICTIONARY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let json = |text: &str| serde_json::to_string(text).unwrap_or_default();
        [json(&crate::render::LOG_FOLLOWER_SCRIPT), json(crate::render::counter::SCRIPT)]
            .concat()
            .into_bytes()
    });
    &DICTIONARY
}

impl<K: Cacheable> Cached<K> {
    pub fn new(mut object: K) -> Self {
        object.slim();
        let meta = object.meta_mut();
        meta.managed_fields = None;
        let selected = SELECTED_LABELS
            .map(|key| meta.labels.as_ref().and_then(|labels| labels.get(key)).map(|v| v.as_str().into()));
        let metadata = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            owner_references: meta.owner_references.take(),
            ..ObjectMeta::default()
        };
        // Serializing a k8s-openapi object to a string cannot fail (string keys, no maps with
        // other keys); were it to, an empty text makes `object` report it at the read.
        let text = serde_json::to_vec(&object).unwrap_or_default();
        let rest = lz4_flex::block::compress_prepend_size_with_dict(&text, dictionary()).into_boxed_slice();
        Self { metadata, selected, rest, kind: PhantomData }
    }

    /// The whole object again (slimmed: see [`Cacheable::slim`]).
    pub fn object(&self) -> Result<K, serde_json::Error> {
        let text =
            lz4_flex::block::decompress_size_prepended_with_dict(&self.rest, dictionary()).map_err(|e| {
                <serde_json::Error as serde::de::Error>::custom(format!(
                    "a cached object that does not decompress: {e}"
                ))
            })?;
        let mut object: K = serde_json::from_slice(&text)?;
        let meta = object.meta_mut();
        meta.name.clone_from(&self.metadata.name);
        meta.namespace.clone_from(&self.metadata.namespace);
        meta.uid.clone_from(&self.metadata.uid);
        meta.resource_version.clone_from(&self.metadata.resource_version);
        meta.owner_references.clone_from(&self.metadata.owner_references);
        Ok(object)
    }

    /// The value of `key`, one of [`SELECTED_LABELS`] (any other label: decode the object).
    pub fn selected_label(&self, key: &str) -> Option<&str> {
        let i = SELECTED_LABELS.iter().position(|k| *k == key);
        debug_assert!(i.is_some(), "{key} is not one of the labels kept beside the text");
        i.and_then(|i| self.selected[i].as_deref())
    }

    /// Bytes this entry keeps beside its metadata.
    #[cfg(test)]
    fn rest_len(&self) -> usize {
        self.rest.len()
    }
}

impl<'de, K: Cacheable> Deserialize<'de> for Cached<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(deserializer).map(Self::new)
    }
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            selected: self.selected.clone(),
            rest: self.rest.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("metadata", &self.metadata)
            .field("selected", &self.selected)
            .field("rest_len", &self.rest.len())
            .finish()
    }
}

/// The API of `K` itself: a watch of `Cached<K>` lists and watches `K`'s resource.
impl<K: Resource<DynamicType = ()>> Resource for Cached<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A Deployment as an API server returns it: defaults filled in, quantities, int-or-string
    /// ports and percentages, timestamps, managed fields.
    fn deployment() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "omero-rw", "namespace": "omero", "labels": {"a": "b"},
                         "uid": "6f1c", "resourceVersion": "812", "generation": 2,
                         "creationTimestamp": "2026-11-30T06:00:00Z",
                         "annotations": {"omero.openmicroscopy.org/revision": "r1"},
                         "ownerReferences": [{"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
                                              "name": "omero", "uid": "u", "controller": true, "blockOwnerDeletion": true}],
                         "managedFields": [{"manager": "omero-operator", "operation": "Apply", "apiVersion": "apps/v1",
                                            "time": "2026-11-30T06:00:00Z", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                     "selector": {"matchLabels": {"a": "b"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"a": "b"}, "creationTimestamp": null},
                                  "spec": {"containers": [{"name": "omero", "image": "i", "imagePullPolicy": "IfNotPresent",
                                                           "env": [{"name": "X", "value": "1"},
                                                                   {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                                                           "ports": [{"name": "omero", "containerPort": 4064, "protocol": "TCP"}],
                                                           "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "500m"}},
                                                           "readinessProbe": {"tcpSocket": {"port": "omero"}, "periodSeconds": 10,
                                                                              "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                                                           "startupProbe": {"tcpSocket": {"port": 4064}},
                                                           "terminationMessagePath": "/dev/termination-log",
                                                           "terminationMessagePolicy": "File"}],
                                           "volumes": [{"name": "v", "configMap": {"name": "c", "defaultMode": 420}},
                                                       {"name": "data", "persistentVolumeClaim": {"claimName": "omero-data"}}],
                                           "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                                           "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler",
                                           "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}}}},
            "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                       "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                       "lastUpdateTime": "2026-11-30T06:00:05Z", "lastTransitionTime": "2026-11-30T06:00:05Z"}]}
        })
    }

    /// The follower script in each Deployment and the counter script in the ConfigMap are kept
    /// once (in the dictionary), not per object, and every object reads back exactly as it was
    /// rendered.
    #[test]
    fn the_scripts_every_node_and_cluster_carry_are_kept_once_and_read_back_whole() {
        let yaml = format!(
            "{}  sessionCounter:\n    credentialsSecret: {{name: omero-monitor}}\n",
            crate::render::tests::BASE
        );
        let desired = crate::render::render(&crate::render::tests::cluster(&yaml));
        assert!(!desired.deployments.is_empty() && desired.config_maps.len() == 1);
        for deployment in &desired.deployments {
            let json = serde_json::to_string(deployment).unwrap();
            let follower = serde_json::to_string(crate::render::LOG_FOLLOWER_SCRIPT.as_str()).unwrap();
            assert!(json.contains(&follower), "the follower is in the template");
            let cached = Cached::new(deployment.clone());
            assert!(
                cached.rest_len() * 2 < json.len() - follower.len(),
                "{} of {}",
                cached.rest_len(),
                json.len()
            );
            assert_eq!(&cached.object().unwrap(), deployment);
        }
        let map = &desired.config_maps[0];
        let cached = Cached::new(map.clone());
        assert!(cached.rest_len() < 1024, "the script is not in the text: {}", cached.rest_len());
        assert_eq!(&cached.object().unwrap(), map);

        // An object holding what looks like anything else reads back as it was.
        let mut odd = map.clone();
        odd.data.as_mut().unwrap().insert("note".into(), "\u{0}omero-logs".into());
        odd.data.as_mut().unwrap().insert("copy".into(), crate::render::LOG_FOLLOWER_SCRIPT.clone());
        let cached = Cached::new(odd.clone());
        assert!(cached.rest_len() < 1024, "both scripts referenced: {}", cached.rest_len());
        assert_eq!(cached.object().unwrap(), odd);
    }

    #[test]
    fn a_cached_object_reads_back_as_it_was_without_managed_fields() {
        let cached: Cached<Deployment> = serde_json::from_value(deployment()).unwrap();
        assert_eq!(cached.metadata.name.as_deref(), Some("omero-rw"));
        assert!(cached.metadata.managed_fields.is_none());
        let mut expected: Deployment = serde_json::from_value(deployment()).unwrap();
        expected.metadata.managed_fields = None;
        let read = cached.object().unwrap();
        assert_eq!(read, expected);
        // The same JSON again, so the comparison before an apply sees what the server holds.
        let mut json = deployment();
        json["metadata"].as_object_mut().unwrap().remove("managedFields");
        json["spec"]["template"]["metadata"].as_object_mut().unwrap().remove("creationTimestamp");
        assert_eq!(serde_json::to_value(&read).unwrap(), json);
    }

    /// What the caches select on is kept beside the text, and is all they select on.
    #[test]
    fn selection_labels_are_the_ones_kept() {
        let selectors =
            [crate::render::cluster_selector("omero"), crate::render::node_selector_labels("omero", "rw")];
        for key in selectors.iter().flat_map(|s| s.keys()) {
            assert!(SELECTED_LABELS.contains(&key.as_str()), "{key} is selected on but not kept");
        }
        let mut json = deployment();
        json["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "omero-operator",
            "omero.openmicroscopy.org/cluster": "omero", "omero.openmicroscopy.org/node": "rw", "other": "x"});
        let cached: Cached<Deployment> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(cached.selected_label(keys::CLUSTER_LABEL), Some("omero"));
        assert_eq!(cached.selected_label(keys::NODE_LABEL), Some("rw"));
        assert_eq!(cached.selected_label(keys::MANAGED_BY_LABEL), Some("omero-operator"));
        assert_eq!(cached.metadata.labels, None, "no label map beside the text");
        assert_eq!(cached.metadata.annotations, None);
        let labels = cached.object().unwrap().metadata.labels.unwrap();
        assert_eq!(labels.get("other").map(String::as_str), Some("x"), "every label reads back");
    }

    /// The text is kept compressed: a Deployment as the API server returns it takes well under
    /// its JSON length.
    #[test]
    fn the_text_is_kept_compressed() {
        let cached: Cached<Deployment> = serde_json::from_value(deployment()).unwrap();
        let text = serde_json::to_string(&cached.object().unwrap()).unwrap();
        assert!(cached.rest_len() * 3 < text.len() * 2, "{} of {}", cached.rest_len(), text.len());
    }

    /// A watch event's object may arrive before its type (serde then buffers it): the same.
    #[test]
    fn a_watch_event_decodes_whatever_the_order_of_its_fields() {
        let text = format!(r#"{{"object": {}, "type": "ADDED"}}"#, deployment());
        let event: kube::core::WatchEvent<Cached<Deployment>> = serde_json::from_str(&text).unwrap();
        let kube::core::WatchEvent::Added(cached) = event else { panic!("{event:?}") };
        assert_eq!(cached.object().unwrap().spec.unwrap().replicas, Some(1));
    }

    #[test]
    fn a_cached_pod_keeps_what_is_read() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "k1", "containers": [{"name": "omero", "image": "i", "args": ["long"]}]},
            "status": {"podIP": "127.0.0.1"}
        });
        let cached: Cached<Pod> = serde_json::from_value(pod).unwrap();
        let pod = cached.object().unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("k1"));
        assert_eq!(spec.containers[0].image.as_deref(), Some("i"));
        assert_eq!(spec.containers[0].args, None, "what is never read is not kept");
        assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn a_cached_cluster_keeps_its_requests_but_not_kubectls_copy() {
        let mut cluster: OmeroCluster = serde_json::from_value(json!({
            "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
            "metadata": {"name": "omero", "annotations": {
                LAST_APPLIED: "{\"spec\": {}}", "omero.openmicroscopy.org/drain": "ro-1"},
                "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
            "spec": {"image": "i", "database": {"host": "db", "passwordSecret": {"name": "s", "key": "k"}},
                     "repository": {"claimName": "c"}, "nodes": [{"name": "rw"}]}
        }))
        .unwrap();
        let spec = serde_json::to_value(&cluster.spec).unwrap();
        slim_cluster(&mut cluster);
        assert!(cluster.metadata.managed_fields.is_none());
        let annotations = cluster.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["omero.openmicroscopy.org/drain"]);
        assert_eq!(serde_json::to_value(&cluster.spec).unwrap(), spec);
    }

    /// Services as a metadata watch delivers them: one someone made with Helm, and one a
    /// Deployment controls.
    #[test]
    fn a_look_up_entry_keeps_only_what_a_look_up_reads() {
        let entry = |owner_references: serde_json::Value| {
            let mut entry: PartialObjectMeta<Service> = serde_json::from_value(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "web", "namespace": "omero", "uid": "u-web", "resourceVersion": "812",
                             "creationTimestamp": "2026-11-30T06:00:00Z",
                             "labels": {"app.kubernetes.io/managed-by": "Helm", "app": "web"},
                             "annotations": {LAST_APPLIED: "{\"spec\": {}}", "meta.helm.sh/release-name": "web"},
                             "ownerReferences": owner_references,
                             "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "v1"}]}
            }))
            .unwrap();
            slim_look_up_entry(&mut entry);
            entry
        };
        let by_helm = entry(json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u-c"}]));
        assert_eq!(
            serde_json::to_value(&by_helm).unwrap(),
            json!({"metadata": {"name": "web", "namespace": "omero", "uid": "u-web",
                                "labels": {"app.kubernetes.io/managed-by": "Helm"}}})
        );
        assert_eq!(
            crate::ownership::describe_owner(&by_helm.metadata),
            "an object created outside the operator (managed by Helm)"
        );
        let controlled = entry(json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u-c"},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-d", "controller": true}]));
        assert_eq!(
            serde_json::to_value(&controlled).unwrap(),
            json!({"metadata": {"name": "web", "namespace": "omero", "uid": "u-web",
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                     "uid": "u-d", "controller": true}]}})
        );
        // What the ownership rules read of it says what the whole metadata would.
        assert_eq!(crate::ownership::describe_owner(&controlled.metadata), "Deployment web");
        assert!(crate::ownership::is_controlled_by(&controlled.metadata, Some("u-d")));
        assert!(!crate::ownership::is_controlled_by(&controlled.metadata, Some("u-c")));
    }

    #[test]
    fn the_api_is_the_kinds_own() {
        assert_eq!(Cached::<Deployment>::plural(&()), "deployments");
        assert_eq!(Cached::<Deployment>::api_version(&()), "apps/v1");
        assert_eq!(Cached::<Pod>::api_version(&()), "v1");
        assert_eq!(Cached::<PodDisruptionBudget>::group(&()), "policy");
    }
}
