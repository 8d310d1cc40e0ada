//! Names, labels, selectors and metadata shared by every child object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::{OmeroCluster, keys};

/// `app.kubernetes.io/component` of a node's Deployment, pod and per-node Service.
pub(crate) const NODE_COMPONENT: &str = "node";
/// `app.kubernetes.io/component` of the entry Service.
pub(crate) const ENTRY_COMPONENT: &str = "entry";

/// Name of a node's Deployment and of its per-node Service.
pub fn node_object_name(cluster: &str, node: &str) -> String {
    format!("{cluster}-{node}")
}

/// Name of the Service new sessions enter through.
pub fn entry_service_name(cluster: &str) -> String {
    cluster.to_string()
}

/// `app.kubernetes.io/component` of the headless Service that gives a grid master's pod a DNS
/// name.
pub(crate) const GRID_DNS_COMPONENT: &str = "grid-dns";

/// Name of that Service, which is also the master pod's `subdomain`: `<cluster>-icegrid`.
/// Validation keeps it free (no node of a grid is named `icegrid`) and short enough.
pub fn grid_dns_service_name(cluster: &str) -> String {
    format!("{cluster}-{}", crate::api::GRID_DNS_SUFFIX)
}

/// Labels every child carries; the controller lists a cluster's children with them.
pub fn cluster_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::MANAGED_BY_LABEL.to_string(), keys::MANAGER.to_string()),
        (keys::CLUSTER_LABEL.to_string(), cluster.to_string()),
    ])
}

/// Labels that identify one node's pod. They are the Deployment's selector, which is
/// immutable, so they must never change for a node: no topology, role or version in them.
pub fn node_selector_labels(cluster: &str, node: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_selector(cluster);
    labels.insert(keys::NODE_LABEL.to_string(), node.to_string());
    labels
}

/// Labels of a node's Deployment, pod template and per-node Service. Never the routable
/// label: the controller sets that on the pod itself, and a template change would restart it.
pub(crate) fn node_labels(cluster: &str, node: &str) -> BTreeMap<String, String> {
    let mut labels = node_selector_labels(cluster, node);
    labels.extend(app_labels(cluster, NODE_COMPONENT));
    labels
}

/// Labels of the entry Service: the cluster's, without a node.
pub(crate) fn entry_labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_selector(cluster);
    labels.extend(app_labels(cluster, ENTRY_COMPONENT));
    labels
}

/// Labels of the grid master's DNS Service: the cluster's, without a node (it follows the
/// master, whichever node that is).
pub(crate) fn grid_dns_labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_selector(cluster);
    labels.extend(app_labels(cluster, GRID_DNS_COMPONENT));
    labels
}

pub(crate) fn app_labels(cluster: &str, component: &str) -> [(String, String); 3] {
    [
        (keys::NAME_LABEL.to_string(), keys::APP_NAME.to_string()),
        (keys::INSTANCE_LABEL.to_string(), cluster.to_string()),
        (keys::COMPONENT_LABEL.to_string(), component.to_string()),
    ]
}

/// Metadata of a child: name, the cluster's namespace (absent offline), labels, owner.
pub(crate) fn object_meta(
    cluster: &OmeroCluster,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: owner_reference(cluster).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The cluster as controlling owner, so children go with it and their events reach the
/// controller. None without a uid (offline `render`: nothing to point at yet).
fn owner_reference(cluster: &OmeroCluster) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: OmeroCluster::api_version(&()).into_owned(),
        kind: OmeroCluster::kind(&()).into_owned(),
        name: cluster.name_any(),
        uid: cluster.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, base_with, cluster, pod_spec, service_named},
    };

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_are_cluster_dash_node_and_the_cluster_itself() {
        assert_eq!(node_object_name("omc", "rw"), "omc-rw");
        assert_eq!(entry_service_name("omc"), "omc");
    }

    #[test]
    fn cluster_selector_is_manager_and_cluster() {
        assert_eq!(
            cluster_selector("omc"),
            kv(&[
                ("app.kubernetes.io/managed-by", "omero-operator"),
                ("omero.openmicroscopy.org/cluster", "omc"),
            ])
        );
    }

    #[test]
    fn node_selector_adds_the_node_to_the_cluster_selector() {
        let mut expected = cluster_selector("omc");
        expected.insert("omero.openmicroscopy.org/node".into(), "rw".into());
        assert_eq!(node_selector_labels("omc", "rw"), expected);
    }

    #[test]
    fn deployment_pod_and_node_service_carry_all_child_labels() {
        let desired = render(&cluster(BASE));
        let expected = kv(&[
            ("app.kubernetes.io/component", "node"),
            ("app.kubernetes.io/instance", "omc"),
            ("app.kubernetes.io/managed-by", "omero-operator"),
            ("app.kubernetes.io/name", "omero-server"),
            ("omero.openmicroscopy.org/cluster", "omc"),
            ("omero.openmicroscopy.org/node", "rw"),
        ]);
        let d = &desired.deployments[0];
        assert_eq!(d.metadata.labels.as_ref(), Some(&expected));
        let template = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        assert_eq!(template.labels.as_ref(), Some(&expected));
        assert_eq!(service_named(&desired, "omc-rw").metadata.labels.as_ref(), Some(&expected));
    }

    #[test]
    fn nothing_rendered_carries_the_routable_label_except_the_entry_selector() {
        let desired = render(&cluster(BASE));
        for d in &desired.deployments {
            let spec = d.spec.as_ref().unwrap();
            assert!(!d.metadata.labels.as_ref().unwrap().contains_key(keys::ROUTABLE_LABEL));
            assert!(!spec.selector.match_labels.as_ref().unwrap().contains_key(keys::ROUTABLE_LABEL));
            let template_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
            assert!(!template_labels.contains_key(keys::ROUTABLE_LABEL));
        }
        for s in &desired.services {
            assert!(!s.metadata.labels.as_ref().unwrap().contains_key(keys::ROUTABLE_LABEL));
        }
    }

    #[test]
    fn entry_service_labels_have_no_node() {
        let desired = render(&cluster(BASE));
        let labels = service_named(&desired, "omc").metadata.labels.clone().unwrap();
        assert!(!labels.contains_key(keys::NODE_LABEL));
        assert_eq!(labels.get(keys::COMPONENT_LABEL).map(String::as_str), Some("entry"));
        assert!(cluster_selector("omc").iter().all(|(k, v)| labels.get(k) == Some(v)));
    }

    #[test]
    fn every_child_is_controlled_by_the_cluster_when_it_has_a_uid() {
        let desired = render(&cluster(BASE));
        let metas = desired
            .deployments
            .iter()
            .map(|d| &d.metadata)
            .chain(desired.services.iter().map(|s| &s.metadata));
        for meta in metas {
            let refs = meta.owner_references.as_ref().expect("owner references");
            assert_eq!(
                refs,
                &[OwnerReference {
                    api_version: "omero.openmicroscopy.org/v1alpha1".into(),
                    kind: "OmeroCluster".into(),
                    name: "omc".into(),
                    uid: "0a1b2c3d-0000-4000-8000-000000000001".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            );
            assert_eq!(meta.namespace.as_deref(), Some("imaging"));
        }
    }

    #[test]
    fn offline_render_has_no_owner_and_no_namespace() {
        let c = base_with(|c| {
            c.metadata.uid = None;
            c.metadata.namespace = None;
        });
        let desired = render(&c);
        for meta in desired
            .deployments
            .iter()
            .map(|d| &d.metadata)
            .chain(desired.services.iter().map(|s| &s.metadata))
        {
            assert_eq!(meta.owner_references, None);
            assert_eq!(meta.namespace, None);
        }
    }

    #[test]
    fn the_users_claims_are_referenced_not_owned() {
        // Only Deployments and Services are rendered; the claims appear as volume sources.
        let desired = render(&cluster(BASE));
        let claims: Vec<_> = pod_spec(&desired, "rw")
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.as_str())
            .collect();
        assert_eq!(claims, ["omero-repo"]);
    }
}
