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
//!   watches feeding the caches in `controller::run`, and its metadata-only watches of every
//!   object of the kinds the operator writes, which `KubePort::find` answers from); a watcher
//!   lists, then watches. A metadata-only watch asks for the same verbs as a full one.
//! - `get`: `KubePort::secret_value`, kube-lease-manager reading the Lease, `crd::apply_own`
//!   reading the CRD's version. Never the kinds the operator writes: their look-ups by name are
//!   answered from the metadata caches.
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
//!
//! The people who use OmeroClusters get theirs from Kubernetes' built-in `view`, `edit` and
//! `admin` roles: [`USER_RULES`] are two ClusterRoles the chart aggregates into them
//! (`charts/omero-operator/templates/user-roles.yaml`, same test), and [`PLUGIN_COMMANDS`]
//! says what each `kubectl omero` command calls and which of them grants it.

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
        verbs: &["list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "one per node: watched into a cache (list, watch: the operator's, and every one's metadata, which \
              names are looked up in before creating), server-side apply (patch, and create when the apply \
              creates), deleted when its node leaves the spec, drained (delete)",
    },
    Rule {
        group: "",
        resource: "services",
        verbs: &["list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "one per node and the entry Service: as for deployments",
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Watched,
        when: Always,
        why: "the session counter's script, one per cluster with spec.sessionCounter (only those labelled as \
              the operator's are watched whole; every one's metadata, for the look-ups): as for services; \
              deleted once no Deployment mounts it",
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
        verbs: &["list", "watch", "create", "patch", "delete"],
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

/// The chart value that switches the aggregated user roles ([`USER_RULES`]), with
/// `rbac.create`.
pub const AGGREGATE_TO_DEFAULT_ROLES: &str = "rbac.aggregateToDefaultRoles";

/// The two ClusterRoles the chart adds for the people who use OmeroClusters, named
/// `<fullname>-view` and `<fullname>-edit`. Neither is bound to anyone: each carries
/// `rbac.authorization.k8s.io/aggregate-to-*` labels, so Kubernetes copies its rules into the
/// built-in roles named by [`UserRole::aggregated_into`], wherever those are bound (a
/// RoleBinding to `edit` in a namespace then grants them there). Aggregation is cluster-wide:
/// the roles are rendered whether the operator watches one namespace or all. Either can also be
/// bound directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserRole {
    /// Reading OmeroClusters: `kubectl get omc`, `kubectl omero status` and `wait`.
    View,
    /// Everything on OmeroClusters but their status: applying and deleting them, and every
    /// `kubectl omero` command (the request annotations are patched on the cluster).
    Edit,
}

impl UserRole {
    pub const ALL: [UserRole; 2] = [UserRole::View, UserRole::Edit];

    /// The ClusterRole's name after the release's full name: `<fullname>-view`.
    pub fn suffix(self) -> &'static str {
        match self {
            UserRole::View => "view",
            UserRole::Edit => "edit",
        }
    }

    /// The built-in roles it is aggregated into, one `aggregate-to-<role>: "true"` label each.
    /// View is labelled for all three, as the Elastic operator's chart does, rather than
    /// relying on `view` itself being aggregated into `edit` and `edit` into `admin`.
    pub fn aggregated_into(self) -> &'static [&'static str] {
        match self {
            UserRole::View => &["view", "edit", "admin"],
            UserRole::Edit => &["edit", "admin"],
        }
    }
}

/// One rule of a [`UserRole`]. No resource names, no wildcards: one group and resource each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserRule {
    pub role: UserRole,
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

/// What `<fullname>-view` and `<fullname>-edit` grant. Never a write of `omeroclusters/status`:
/// the status is the operator's record, and `kubectl omero` trusts its
/// `status.observedRequests` as the operator's acknowledgement.
pub const USER_RULES: &[UserRule] = &[
    UserRule {
        role: UserRole::View,
        group: "omero.openmicroscopy.org",
        resource: "omeroclusters",
        verbs: &["get", "list", "watch"],
        why: "`kubectl get omc` (and `-w`); `kubectl omero status` and `wait` read the cluster (get), name the \
              clusters there are when the name is wrong (list), and `wait` follows it by a watch (list, watch)",
    },
    UserRule {
        role: UserRole::View,
        group: "omero.openmicroscopy.org",
        resource: "omeroclusters/status",
        verbs: &["get"],
        why: "reading the status subresource alone (`kubectl get omc NAME --subresource=status`); read only",
    },
    UserRule {
        role: UserRole::Edit,
        group: "omero.openmicroscopy.org",
        resource: "omeroclusters",
        verbs: &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
        why: "applying, editing and deleting clusters (`kubectl apply`, `edit`, `replace`, `delete`), and every \
              `kubectl omero` command: each patches the request annotations after reading the cluster, then \
              follows it by a watch. The read verbs too, so the role also works bound on its own",
    },
];

/// The verbs that only read.
pub const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// One API call a `kubectl omero` command makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Need {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    pub why: &'static str,
}

/// A `kubectl omero` command (`src/bin/kubectl-omero.rs`), every call it makes, and the least
/// [`UserRole`] that grants them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginCommand {
    pub name: &'static str,
    pub needs: &'static [Need],
    pub role: UserRole,
}

const CLUSTERS: &str = "omeroclusters";
const GROUP: &str = "omero.openmicroscopy.org";

/// `plugin::get`: the cluster by name.
const GET: Need = Need {
    group: GROUP,
    resource: CLUSTERS,
    verb: "get",
    why: "reads the cluster by name (`plugin::get`; `edit_annotations` reads it before each patch)",
};
/// `plugin::get` when the name is wrong, and the start of `plugin::follow`'s watch.
const LIST: Need = Need {
    group: GROUP,
    resource: CLUSTERS,
    verb: "list",
    why: "names the clusters there are when there is none by that name (`plugin::get`, metadata only); a \
          watch starts by listing the one cluster (`plugin::follow`, kube's `watch_object`); completion \
          offers the clusters' names (`plugin::complete`)",
};
/// `plugin::follow`.
const WATCH: Need = Need {
    group: GROUP,
    resource: CLUSTERS,
    verb: "watch",
    why: "follows the cluster (`plugin::follow`): until the operator acknowledges the request in \
          `status.observedRequests`, and with `--wait` until the operation ends; never polls",
};
/// `plugin::edit_annotations`.
const PATCH: Need = Need {
    group: GROUP,
    resource: CLUSTERS,
    verb: "patch",
    why: "a merge patch of `metadata.annotations` carrying the `resourceVersion` read \
          (`plugin::edit_annotations`): only the request annotations the command owns, retried on conflict",
};

/// `plugin::status::read_objects`: the entry Service, for the address users log in to.
const GET_ENTRY_SERVICE: Need = Need {
    group: "",
    resource: "services",
    verb: "get",
    why: "reads the entry Service (`plugin::status`): its cluster DNS name, ports and external address",
};
/// `plugin::status::read_objects`: the cluster's pods.
const LIST_PODS: Need = Need {
    group: "",
    resource: "pods",
    verb: "list",
    why: "lists the cluster's pods by the operator's labels (`plugin::status`): each node's pod, Kubernetes \
          node and image",
};
/// `plugin::status::read_objects`: the cluster's Warning Events.
const LIST_EVENTS: Need = Need {
    group: "",
    resource: "events",
    verb: "list",
    why: "lists the Warning Events about the cluster (`plugin::status`, by field selector)",
};
/// `plugin::version::find_operators`.
const LIST_DEPLOYMENTS: Need = Need {
    group: "apps",
    resource: "deployments",
    verb: "list",
    why: "finds the operator's Deployments by the chart's labels (`plugin::version`): in every namespace \
          where allowed, else in --operator-namespace (default omero-system)",
};

/// Every `kubectl omero` subcommand: the same calls for every write command (read, patch the
/// annotations, follow by a watch), and none that reads Secrets. `status` also reads the
/// cluster's pods, entry Service and Events, and `version` the operator's Deployments: the
/// built-in roles grant those reads themselves ([`BUILTIN_VIEW_READS`]); without them `status`
/// shows the rest and says what it could not read, and `version` where it could not look.
/// `completion` stands for what completing `kubectl omero` asks (`kubectl_complete-omero`);
/// the script it prints asks nothing. The Kubernetes version (`/version`, for `version`) is no
/// resource: every user may read it (the built-in `system:public-info-viewer`).
pub const PLUGIN_COMMANDS: &[PluginCommand] = &[
    PluginCommand {
        name: "status",
        needs: &[GET, LIST, GET_ENTRY_SERVICE, LIST_PODS, LIST_EVENTS],
        role: UserRole::View,
    },
    PluginCommand { name: "wait", needs: &[GET, LIST, WATCH], role: UserRole::View },
    PluginCommand { name: "drain", needs: &[GET, LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "undrain", needs: &[GET, LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "restart", needs: &[GET, LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "stop", needs: &[LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "start", needs: &[LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "pause", needs: &[GET, LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "resume", needs: &[GET, LIST, PATCH, WATCH], role: UserRole::Edit },
    PluginCommand { name: "version", needs: &[LIST_DEPLOYMENTS], role: UserRole::View },
    PluginCommand { name: "completion", needs: &[GET, LIST], role: UserRole::View },
    PluginCommand { name: "logs", needs: &[GET, LIST, LIST_NODE_PODS, GET_POD_LOG], role: UserRole::View },
    PluginCommand {
        name: "sessions",
        needs: &[GET, LIST, GET_POD_PROXY, LIST_OPERATOR_SERVICES, GET_SERVICE_PROXY],
        role: UserRole::Edit,
    },
];

/// `plugin::sessions`: the session counter's list, or an exporter's endpoint, on the node's pod.
const GET_POD_PROXY: Need = Need {
    group: "",
    resource: "pods/proxy",
    verb: "get",
    why: "reads the session counter's /sessions/list (or the metrics exporter's endpoint) on the node's pod through the API server's pod proxy (`plugin::sessions`); the built-in edit and admin roles grant it, view does not (a proxy reaches whatever the pod serves)",
};
/// `plugin::sessions::operator_services`.
const LIST_OPERATOR_SERVICES: Need = Need {
    group: "",
    resource: "services",
    verb: "list",
    why: "finds the operator's metrics Service by the chart's labels (`plugin::sessions`), for a database-probed node: in every namespace where allowed, else in --operator-namespace (default omero-system); where it may not list, it asks the default release's Service by name",
};
/// The chart value (`sessionReaders.groups`, `.users`) naming who the chart's
/// `<fullname>-session-readers` Role is bound to: [`SESSION_READER_RULE`] in the release's
/// namespace, on the metrics Service's `http` port alone.
pub const SESSION_READERS: &str = "sessionReaders";

/// What `<fullname>-session-readers` grants (`templates/session-readers.yaml`, compared by
/// `tests/chart.rs`), with `resourceNames: ["<fullname>-metrics:http"]`: RBAC compares the
/// service proxy's name as its path spells it, `<service>:<port>` (checked on a real 1.28 API
/// server: the bare Service name does not match), so the plugin always asks through the port's
/// name.
pub const SESSION_READER_RULE: Need = GET_SERVICE_PROXY;

/// `plugin::sessions`: the operator's `/sessions/...` route.
const GET_SERVICE_PROXY: Need = Need {
    group: "",
    resource: "services/proxy",
    verb: "get",
    why: "asks the operator for a database-probed node's sessions through the API server's service proxy to its metrics Service (`plugin::sessions`): in the operator's namespace, where the chart's sessionReaders Role grants it for that one Service (edit and admin grant it only where they are bound)",
};

/// `plugin::logs`: the node's pods.
const LIST_NODE_PODS: Need = Need {
    group: "",
    resource: "pods",
    verb: "list",
    why: "finds the node's current pod by the operator's labels (`plugin::logs`), again when a followed log \
          ends (the node's next pod)",
};
/// `plugin::logs`: the log of the pod's `omero-logs` container (or `omero-server`'s).
const GET_POD_LOG: Need = Need {
    group: "",
    resource: "pods/log",
    verb: "get",
    why: "reads the pod's log (`plugin::logs`): the omero-logs container's, or the server's when the pod has \
          none; with --follow one long GET",
};

/// What Kubernetes' own `view` role grants, and so `edit` and `admin` which hold its rules
/// too (the bootstrap roles): get, list and watch on these, of those the plugin reads. Not
/// repeated in [`USER_RULES`]: the objects the operator makes are the built-in roles' own
/// business.
pub const BUILTIN_VIEW_READS: &[(&str, &str)] =
    &[("", "pods"), ("", "pods/log"), ("", "services"), ("", "events"), ("apps", "deployments")];

/// What the built-in `edit` and `admin` roles read beyond [`BUILTIN_VIEW_READS`], of what the
/// plugin reads: the API server's proxies to pods and Services. Kubernetes leaves them out of
/// `view` (a proxy reaches whatever the pod or Service serves), as checked on a real 1.28 API
/// server (`kubectl get clusterrole view`).
pub const BUILTIN_EDIT_READS: &[(&str, &str)] = &[("", "pods/proxy"), ("", "services/proxy")];

impl PluginCommand {
    /// Whether the command writes (any verb beyond get, list and watch).
    pub fn writes(&self) -> bool {
        self.needs.iter().any(|n| !READ_VERBS.contains(&n.verb))
    }

    /// Whether the command reads through the API server's proxies, which `view` does not grant.
    pub fn reads_through_proxies(&self) -> bool {
        self.needs.iter().any(|n| BUILTIN_EDIT_READS.contains(&(n.group, n.resource)))
    }
}

/// Whether `role`'s own rules allow `verb` on `group`/`resource`.
pub fn user_role_grants(role: UserRole, group: &str, resource: &str, verb: &str) -> bool {
    USER_RULES
        .iter()
        .any(|r| r.role == role && r.group == group && r.resource == resource && r.verbs.contains(&verb))
}

/// Whether the built-in role `builtin` (`view`, `edit`, `admin`) allows `verb` on
/// `group`/`resource`: through the aggregated roles, or by its own rules as far as
/// [`BUILTIN_VIEW_READS`] lists them.
pub fn builtin_role_grants(builtin: &str, group: &str, resource: &str, verb: &str) -> bool {
    let own = (["view", "edit", "admin"].contains(&builtin)
        && READ_VERBS.contains(&verb)
        && BUILTIN_VIEW_READS.contains(&(group, resource)))
        || (["edit", "admin"].contains(&builtin)
            && READ_VERBS.contains(&verb)
            && BUILTIN_EDIT_READS.contains(&(group, resource)));
    own || UserRole::ALL.iter().any(|&role| {
        role.aggregated_into().contains(&builtin) && user_role_grants(role, group, resource, verb)
    })
}

/// Whether `role`, given through the built-in role of its name (`view` for
/// [`UserRole::View`], `edit` for [`UserRole::Edit`]), allows `need`.
pub fn serves(role: UserRole, need: &Need) -> bool {
    builtin_role_grants(role.suffix(), need.group, need.resource, need.verb)
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
    /// by their API group and resource), can be created by apply, patched, and listed and
    /// watched whole (the labelled cache and the metadata-only look-up cache); never read by
    /// GET, which only look-ups by name did.
    #[test]
    fn every_applied_kind_can_be_created_patched_and_cached() {
        use crate::controller::port::ChildKind;
        for kind in ChildKind::ALL {
            let (group, resource) = kind.api_resource();
            let rule = RULES
                .iter()
                .find(|r| r.group == group && r.resource == resource && r.scope == Scope::Watched)
                .unwrap_or_else(|| panic!("no rule for {group}/{resource}, which the operator applies"));
            for verb in ["create", "patch", "list", "watch"] {
                assert!(rule.verbs.contains(&verb), "{group}/{resource} lacks {verb}: {rule:?}");
            }
            assert!(!rule.verbs.contains(&"get"), "look-ups come from the caches: {rule:?}");
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

    #[test]
    fn user_rules_have_no_wildcards_and_never_write_status() {
        for rule in USER_RULES {
            assert!(
                !rule.verbs.contains(&"*") && !rule.resource.contains('*') && rule.group != "*",
                "{rule:?}"
            );
            assert!(!rule.why.is_empty());
            if rule.resource.ends_with("/status") {
                assert!(
                    rule.verbs.iter().all(|v| READ_VERBS.contains(v)),
                    "users never write status: {rule:?}"
                );
            }
            // Only OmeroClusters: the objects the operator makes are the built-in roles' own business.
            assert_eq!(rule.group, GROUP, "{rule:?}");
        }
    }

    #[test]
    fn the_view_role_only_reads() {
        for rule in USER_RULES.iter().filter(|r| r.role == UserRole::View) {
            assert!(rule.verbs.iter().all(|v| READ_VERBS.contains(v)), "{rule:?}");
        }
    }

    #[test]
    fn the_edit_role_is_ecks_full_set_on_omeroclusters() {
        let edit: Vec<_> = USER_RULES.iter().filter(|r| r.role == UserRole::Edit).collect();
        assert_eq!(edit.len(), 1);
        let mut verbs = edit[0].verbs.to_vec();
        verbs.sort();
        assert_eq!(
            verbs,
            ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "get, list, watch to read; create, update, patch, delete, deletecollection to apply and remove"
        );
        assert_eq!(edit[0].resource, CLUSTERS);
    }

    #[test]
    fn every_command_is_granted_by_the_edit_role_and_by_the_role_it_names() {
        for command in PLUGIN_COMMANDS {
            assert!(!command.needs.is_empty(), "{}", command.name);
            for need in command.needs {
                assert!(!need.why.is_empty());
                assert!(
                    serves(UserRole::Edit, need),
                    "the edit role lacks {} on {} for `kubectl omero {}`",
                    need.verb,
                    need.resource,
                    command.name
                );
                // Beyond the built-in roles' own reads, the aggregated role of that name
                // grants it by itself (bound directly, it serves the command).
                if need.group == GROUP {
                    assert!(
                        user_role_grants(UserRole::Edit, need.group, need.resource, need.verb),
                        "{need:?}"
                    );
                }
                assert!(
                    serves(command.role, need),
                    "`kubectl omero {}` names {:?}, which lacks {} on {}",
                    command.name,
                    command.role,
                    need.verb,
                    need.resource
                );
                for builtin in ["edit", "admin"] {
                    assert!(builtin_role_grants(builtin, need.group, need.resource, need.verb), "{builtin}");
                }
            }
        }
    }

    /// View grants every need of the read-only commands that read through no proxy, and no
    /// write verb of the others; the role each command names is the least that serves it.
    #[test]
    fn the_view_role_serves_exactly_the_read_only_commands() {
        let read_only: Vec<&str> = PLUGIN_COMMANDS.iter().filter(|c| !c.writes()).map(|c| c.name).collect();
        assert_eq!(read_only, ["status", "wait", "version", "completion", "logs", "sessions"]);
        let proxied: Vec<&str> =
            PLUGIN_COMMANDS.iter().filter(|c| c.reads_through_proxies()).map(|c| c.name).collect();
        assert_eq!(proxied, ["sessions"], "view grants no proxy");
        for command in PLUGIN_COMMANDS {
            let view_serves = command.needs.iter().all(|n| serves(UserRole::View, n));
            assert_eq!(
                view_serves,
                !command.writes() && !command.reads_through_proxies(),
                "{}",
                command.name
            );
            assert_eq!(
                command.role == UserRole::View,
                view_serves,
                "{} names {:?}",
                command.name,
                command.role
            );
            assert_eq!(
                command.needs.iter().all(|n| builtin_role_grants("view", n.group, n.resource, n.verb)),
                view_serves,
                "{}",
                command.name
            );
            for need in command.needs.iter().filter(|n| !READ_VERBS.contains(&n.verb)) {
                assert!(!user_role_grants(UserRole::View, need.group, need.resource, need.verb), "{need:?}");
                assert!(!builtin_role_grants("view", need.group, need.resource, need.verb), "{need:?}");
            }
        }
        // And the verbs view lacks are exactly the write verbs.
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            assert!(!builtin_role_grants("view", GROUP, CLUSTERS, verb), "{verb}");
            assert!(builtin_role_grants("edit", GROUP, CLUSTERS, verb), "{verb}");
        }
    }

    #[test]
    fn every_write_command_reads_patches_and_follows() {
        for command in PLUGIN_COMMANDS.iter().filter(|c| c.writes()) {
            let mut verbs: Vec<&str> = command.needs.iter().map(|n| n.verb).collect();
            verbs.sort();
            // stop and start merge-patch one spec field with no read before; the others
            // read-modify-write the annotations.
            let expected: &[&str] = match command.name {
                "stop" | "start" => &["list", "patch", "watch"],
                _ => &["get", "list", "patch", "watch"],
            };
            assert_eq!(verbs, expected, "{}", command.name);
        }
        let mut names: Vec<&str> = PLUGIN_COMMANDS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PLUGIN_COMMANDS.len(), "each command once");
    }
}
