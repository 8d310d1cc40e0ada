//! Every permission the operator needs, in one place: what the code calls on the API server,
//! verb by verb, and why. The Helm chart's Role and ClusterRole carry exactly these rules (a
//! test renders the chart with a real `helm` and compares), and the README's table repeats them.
//!
//! To add a permission: add one [`Rule`] here with its `why`, then the same rule in
//! `charts/omero-operator/templates/rbac.yaml`; the test names any difference. A rule that only
//! some installs need names the chart value that switches it ([`When::Value`]).
//!
//! Where each verb comes from:
//! - `list`/`watch`: kube-runtime watchers (the controller's OmeroCluster watch, the shared
//!   watches feeding the caches in `controller::run`); a watcher lists, then watches.
//! - `get`: `KubePort::find` (metadata by name before creating), `KubePort::secret_value`,
//!   kube-lease-manager reading the Lease, `crd::apply_own` reading the CRD's version.
//! - `patch`: server-side apply (`KubePort::apply`, the CRD, the Lease), the routable label
//!   (`KubePort::set_routable`), kube's event Recorder folding repeats into a series.
//! - `create` with `patch`: a server-side apply of an object that does not exist yet is
//!   authorized as `create` as well as `patch` (the API server answers a bare "forbidden"
//!   without it), so every kind the operator applies needs both.
//! - `update`: the status subresource, replaced with a `resourceVersion` precondition.
//! - `create`: the applies above that create; kube's event Recorder; kube-lease-manager
//!   creating the Lease the first time.
//! - `delete`: `KubePort::delete_child` (a node removed from the spec, once drained),
//!   `KubePort::delete_pod` (a drained node moving off a cordoned Kubernetes node).

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// In every namespace the operator watches: a Role there when it watches one namespace, a
    /// ClusterRole when it watches them all.
    Watched,
    /// In the operator's own namespace only (a Role), whatever it watches.
    Own,
    /// Cluster-scoped resources (a ClusterRole), in both modes.
    Cluster,
}

/// Whether an install has a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum When {
    Always,
    /// Only when this boolean chart value is true (dotted path in `values.yaml`).
    Value(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// API group; "" is the core group.
    pub group: &'static str,
    /// Resource, or `resource/subresource`.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// When not empty, the rule allows only these object names.
    pub resource_names: &'static [&'static str],
    pub scope: Scope,
    pub when: When,
    pub why: &'static str,
}

/// The name of the operator's own CRD, the one cluster-scoped object it may write.
pub const CRD_NAME: &str = "omeroclusters.omero.openmicroscopy.org";

pub const RULES: &[Rule] = &[
    Rule {
        group: "omero.openmicroscopy.org",
        resource: "omeroclusters",
        verbs: &["list", "watch"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "the controller's watch of OmeroClusters (a reconcile reads the watch's copy, never a GET)",
    },
    Rule {
        group: "omero.openmicroscopy.org",
        resource: "omeroclusters/status",
        verbs: &["update"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "status is replaced with a resourceVersion precondition, so a reconcile from a stale copy writes nothing",
    },
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "one per node: watched into a cache (list, watch), a name looked up before creating (get), \
              server-side apply (patch, and create when the apply creates), deleted when its node leaves the \
              spec, drained (delete)",
    },
    Rule {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "one per node and the entry Service: as for deployments",
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "the session counter's script, one per cluster with spec.sessionCounter (only those labelled as \
              the operator's are watched): as for services; deleted once no Deployment mounts it",
    },
    Rule {
        group: "",
        resource: "pods",
        verbs: &["list", "watch", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "the nodes' pods, watched into a cache; the routable label is patched on the pod itself (drains); \
              a drained node's pod is deleted (uid precondition) to move it off a cordoned Kubernetes node",
    },
    Rule {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "one PodDisruptionBudget per node (evictions wait while it serves): as for services",
    },
    Rule {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "the database password named by spec.database, read by GET for the session probe and the grid \
              redirect; never listed, watched or cached",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "Events on OmeroClusters: kube's Recorder creates an Event and patches it when it repeats",
    },
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        resource_names: &[],
        scope: Scope::Own,
        when: Always,
        why: "leader election (kube-lease-manager): reads the Lease, creates it once, takes and renews it by \
              server-side apply",
    },
    Rule {
        group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["get", "create", "patch"],
        resource_names: &[CRD_NAME],
        scope: Scope::Cluster,
        when: When::Value("crd.apply"),
        why: "the operator applies its own CRD at start (helm never upgrades crds/): reads its version, applies \
              it when older or absent (create); this CRD only",
    },
    Rule {
        group: "",
        resource: "nodes",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        scope: Scope::Cluster,
        when: When::Value(WATCH_NODES),
        why: "Kubernetes Nodes watched into a cache (--watch-nodes): a cordoned Node moves the OMERO nodes on it; \
              read only",
    },
];

/// The chart value that switches the Node watch. Its default (null) is resolved by the chart:
/// on when the operator watches every namespace, off when it watches one.
pub const WATCH_NODES: &str = "maintenance.watchNodes";

use When::Always;

/// The rules an install has, given whether each [`When::Value`] is on.
pub fn rules_for(value: impl Fn(&str) -> bool) -> impl Iterator<Item = &'static Rule> {
    RULES.iter().filter(move |r| match r.when {
        When::Always => true,
        When::Value(v) => value(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_and_secrets_only_get() {
        for rule in RULES {
            assert!(!rule.verbs.contains(&"*") && rule.resource != "*" && rule.group != "*", "{rule:?}");
            assert!(!rule.why.is_empty());
        }
        let secrets: Vec<_> = RULES.iter().filter(|r| r.resource == "secrets").collect();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].verbs, ["get"], "the operator must not list, watch or cache Secrets");
    }

    /// Every kind the operator applies, taken from the kinds it writes (`ChildKind::ALL`, named
    /// by their API group and resource), can be created by apply, patched, looked up and cached.
    #[test]
    fn every_applied_kind_can_be_created_patched_read_and_cached() {
        use crate::controller::port::ChildKind;
        for kind in ChildKind::ALL {
            let (group, resource) = kind.api_resource();
            let rule = RULES
                .iter()
                .find(|r| r.group == group && r.resource == resource && r.scope == Scope::Watched)
                .unwrap_or_else(|| panic!("no rule for {group}/{resource}, which the operator applies"));
            for verb in ["create", "patch", "get", "list", "watch"] {
                assert!(rule.verbs.contains(&verb), "{group}/{resource} lacks {verb}: {rule:?}");
            }
            assert!(rule.resource_names.is_empty() && rule.when == Always, "{rule:?}");
        }
    }

    #[test]
    fn only_cluster_scoped_resources_are_cluster_rules() {
        for rule in RULES.iter().filter(|r| r.scope == Scope::Cluster) {
            assert!(matches!(rule.resource, "customresourcedefinitions" | "nodes"), "{rule:?}");
        }
    }

    #[test]
    fn the_crd_rule_follows_its_chart_value() {
        let crd = |on: bool| {
            rules_for(|v| v == "crd.apply" && on).any(|r| r.resource == "customresourcedefinitions")
        };
        assert!(crd(true));
        assert!(!crd(false));
    }
}
