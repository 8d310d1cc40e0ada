//! The read-only pool: which nodes `spec.readOnlyPool` makes, and what its status says. Pure.
//!
//! A pool of `replicas` is the nodes `<prefix>-0` to `<prefix>-<replicas - 1>`, each made from
//! the pool's template. They are listed after `spec.nodes` by [`resolved`], and from there on
//! every part of the operator (render, lifecycle, planners, status, plugin) treats them as
//! nodes of the spec. So a scale-down is a removal: the highest names leave the spec and are
//! drained out by the departures (no new sessions at once, deleted once their sessions end);
//! a scale-up while they drain brings the same names back into the spec, which puts them back
//! in service. Names are stable: a scale never renames a node that stays, so its Deployment,
//! Service and budget are never rewritten by it.

use std::borrow::Cow;

use crate::api::{
    NodePhase, NodeSpec, NodeStatus, OmeroCluster, OmeroClusterSpec, PoolNodeTemplate, ReadOnlyPoolSpec,
    ReadOnlyPoolStatus, ReadOnlySpec, keys,
};

/// Names of pool nodes begin with this unless `namePrefix` says otherwise.
pub const DEFAULT_NAME_PREFIX: &str = "ro";

/// On a pool node's pod (its template): the pool it belongs to. The scale subresource's
/// selector selects on it, with the cluster's label.
pub const POOL_LABEL: &str = "omero.openmicroscopy.org/pool";
/// The value of [`POOL_LABEL`].
pub const READ_ONLY_POOL: &str = "read-only";

impl ReadOnlyPoolSpec {
    pub fn name_prefix(&self) -> &str {
        self.name_prefix.as_deref().unwrap_or(DEFAULT_NAME_PREFIX)
    }

    /// The nodes the spec asks for; a negative count (refused by the schema) as none.
    pub fn replicas(&self) -> usize {
        usize::try_from(self.replicas).unwrap_or(0)
    }
}

/// The name of the pool's node at `index`.
pub fn node_name(pool: &ReadOnlyPoolSpec, index: usize) -> String {
    format!("{}-{index}", pool.name_prefix())
}

/// Whether `name` has the form of a pool node's name (`<prefix>-<digits>`, no leading zero
/// unless it is 0): a node of the pool now, or one that was or will be.
pub fn is_pool_name(pool: &ReadOnlyPoolSpec, name: &str) -> bool {
    name.strip_prefix(pool.name_prefix()).and_then(|rest| rest.strip_prefix('-')).is_some_and(|index| {
        !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'))
    })
}

/// Whether `name` is (or was) a node of the cluster's read-only pool.
pub fn is_pool_node(spec: &OmeroClusterSpec, name: &str) -> bool {
    spec.read_only_pool.as_ref().is_some_and(|pool| is_pool_name(pool, name))
}

/// The node the template makes under `name`: read-only (db and repo) whatever the template
/// says about it, which validation refuses anyway when it says otherwise.
pub fn node(template: &PoolNodeTemplate, name: String) -> NodeSpec {
    NodeSpec {
        name,
        master: None,
        read_only: Some(ReadOnlySpec { db: true, repo: true }),
        config: template.config.clone(),
        servers: template.servers.clone(),
        resources: template.resources.clone(),
        node_selector: template.node_selector.clone(),
        tolerations: template.tolerations.clone(),
        affinity: template.affinity.clone(),
        var_claim_name: None,
        env: template.env.clone(),
        sidecars: template.sidecars.clone(),
        session_probe: template.session_probe.clone(),
    }
}

/// The cluster with its pool's nodes listed at the end of `spec.nodes` (and counted in
/// `spec.pool_nodes_listed`). Borrowed when there is no pool or they are listed already.
pub fn resolved(cluster: &OmeroCluster) -> Cow<'_, OmeroCluster> {
    resolved_with(cluster, 0)
}

/// As [`resolved`], with at least `least` pool nodes: validation checks the template as a
/// node even when the pool has none.
pub(crate) fn resolved_with(cluster: &OmeroCluster, least: usize) -> Cow<'_, OmeroCluster> {
    let Some(pool) = &cluster.spec.read_only_pool else { return Cow::Borrowed(cluster) };
    let count = pool.replicas().max(least);
    if cluster.spec.pool_nodes_listed == count {
        return Cow::Borrowed(cluster);
    }
    let mut resolved = cluster.clone();
    let explicit = resolved.spec.nodes.len() - resolved.spec.pool_nodes_listed;
    resolved.spec.nodes.truncate(explicit);
    resolved.spec.nodes.extend((0..count).map(|i| node(&pool.template, node_name(pool, i))));
    resolved.spec.pool_nodes_listed = count;
    Cow::Owned(resolved)
}

/// The label selector of the pool's pods, as the scale subresource gives it.
pub fn selector(cluster_name: &str) -> String {
    format!("{}={cluster_name},{POOL_LABEL}={READ_ONLY_POOL}", keys::CLUSTER_LABEL)
}

/// The pool's status from the node statuses about to be recorded.
pub fn status(pool: &ReadOnlyPoolSpec, cluster_name: &str, nodes: &[NodeStatus]) -> ReadOnlyPoolStatus {
    let members: Vec<&NodeStatus> = nodes.iter().filter(|n| is_pool_name(pool, &n.name)).collect();
    let counts: Vec<i64> = members.iter().filter_map(|n| n.sessions).collect();
    ReadOnlyPoolStatus {
        replicas: members.len() as i32,
        serving_replicas: members.iter().filter(|n| n.phase == NodePhase::Serving && n.ready).count() as i32,
        leaving: members.iter().filter(|n| n.leaving).map(|n| n.name.clone()).collect(),
        sessions: (!counts.is_empty()).then(|| counts.iter().sum()),
        selector: selector(cluster_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(replicas: i32) -> ReadOnlyPoolSpec {
        ReadOnlyPoolSpec { replicas, ..ReadOnlyPoolSpec::default() }
    }

    #[test]
    fn pool_names_are_the_prefix_and_an_index_without_leading_zeros() {
        let p = pool(3);
        assert_eq!((0..3).map(|i| node_name(&p, i)).collect::<Vec<_>>(), ["ro-0", "ro-1", "ro-2"]);
        for name in ["ro-0", "ro-7", "ro-12"] {
            assert!(is_pool_name(&p, name), "{name}");
        }
        for name in ["ro", "ro-", "ro-01", "ro-1a", "rox-1", "ro-x", "backup", "ro--1"] {
            assert!(!is_pool_name(&p, name), "{name}");
        }
        let named = ReadOnlyPoolSpec { name_prefix: Some("view".into()), ..pool(1) };
        assert!(is_pool_name(&named, "view-0") && !is_pool_name(&named, "ro-0"));
    }

    #[test]
    fn only_the_pools_pods_carry_the_pool_label_and_its_selector_selects_exactly_them() {
        let cluster: OmeroCluster = serde_saphyr::from_str(
            r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omc, namespace: ns}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: db, key: password}}
  repository: {claimName: omero-data}
  nodes: [{name: rw}, {name: view, readOnly: {db: true, repo: true}}]
  readOnlyPool: {replicas: 2}
"#,
        )
        .unwrap();
        crate::api::validate(&cluster).unwrap();
        let desired = crate::render::render(&cluster);
        let selector_text = selector("omc");
        let selector: Vec<(&str, &str)> =
            selector_text.split(',').map(|kv| kv.split_once('=').unwrap()).collect();
        let selected: Vec<&str> = desired
            .deployments
            .iter()
            .filter(|d| {
                let labels =
                    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
                selector.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|d| d.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(selected, ["omc-ro-0", "omc-ro-1"]);
        // The Deployment's own selector (immutable) never carries it.
        for d in &desired.deployments {
            let match_labels = d.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap();
            assert!(!match_labels.contains_key(POOL_LABEL), "{:?}", d.metadata.name);
        }
        assert_eq!(desired.services.len(), 5, "a Service per node (the pool's too) and the entry Service");
    }

    #[test]
    fn a_pool_node_is_read_only_whatever_the_template_says() {
        let template = PoolNodeTemplate {
            read_only: Some(ReadOnlySpec { db: false, repo: false }),
            ..PoolNodeTemplate::default()
        };
        let n = node(&template, "ro-0".into());
        assert!(!n.is_read_write() && n.read_only_db() && n.read_only_repo());
        assert_eq!(n.master, None);
        assert_eq!(n.var_claim_name, None);
    }
}
