//! Which objects are a cluster's to write. An object belongs to the cluster only when its
//! controller owner reference carries the cluster's uid: labels prove nothing (anyone can copy
//! them) and neither does a name (two clusters can render the same one: cluster `a` node `b-c`
//! and cluster `a-b` node `c` both name `a-b-c`). Everything else is left exactly as it is, and
//! reported. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{
    api::{ObjectProblem, ObjectProblemReason, keys},
    error::Refusal,
};

/// True when the object's controller is the OmeroCluster with `uid`. Nothing is ours without
/// a uid (offline `render`).
pub fn is_controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| controller(meta).is_some_and(|r| r.uid == uid))
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// Who holds an object, in the words a user needs to sort out a name clash.
pub fn describe_owner(meta: &ObjectMeta) -> String {
    match controller(meta) {
        Some(r) if r.kind == "OmeroCluster" && r.api_version.starts_with(keys::GROUP) => {
            format!("OmeroCluster {} (uid {})", r.name, r.uid)
        }
        Some(r) => format!("{} {}", r.kind, r.name),
        None => match meta.labels.as_ref().and_then(|l| l.get(keys::MANAGED_BY_LABEL)) {
            Some(manager) if manager == keys::MANAGER => {
                "an object created outside the operator (it carries the operator's labels but no \
                 owner reference to this cluster)"
                    .into()
            }
            Some(manager) => format!("an object created outside the operator (managed by {manager})"),
            None => "an object created outside the operator".into(),
        },
    }
}

/// The report of an object of `kind` named `name` that exists and is not the cluster's.
pub fn not_owned(kind: &str, name: &str, existing: &ObjectMeta) -> ObjectProblem {
    ObjectProblem {
        kind: kind.into(),
        name: name.into(),
        reason: ObjectProblemReason::NotOwned,
        message: format!(
            "{kind} {name} already exists and belongs to {}; the operator never changes, adopts or \
             deletes it. Rename or remove that object, or rename the node or cluster (a node's \
             objects are named <cluster>-<node>, the entry Service <cluster>)",
            describe_owner(existing)
        ),
    }
}

/// The report of a change the API server would refuse on the cluster's own object.
pub fn immutable(kind: &str, name: &str, what: String) -> ObjectProblem {
    ObjectProblem {
        kind: kind.into(),
        name: name.into(),
        reason: ObjectProblemReason::ImmutableField,
        message: format!("{kind} {name}: {what}"),
    }
}

/// The report of a write of `kind` `name` the API server refused. `verb` is what the write was
/// authorized as (`create` for an apply of an object that does not exist yet, else `patch`,
/// `delete`), `resource` the kind's API group and resource as RBAC names them.
pub fn refused(
    kind: &str,
    name: &str,
    namespace: &str,
    verb: &str,
    (group, resource): (&str, &str),
    refusal: &Refusal,
) -> ObjectProblem {
    match refusal {
        Refusal::Invalid(why) => ObjectProblem {
            kind: kind.into(),
            name: name.into(),
            reason: ObjectProblemReason::Refused,
            message: format!(
                "the API server refused {kind} {name}: {why}; correct the spec field it names (the rest of \
                 the cluster goes on, and this is tried again when the spec changes)"
            ),
        },
        Refusal::Forbidden(said) => {
            let resource =
                if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
            ObjectProblem {
                kind: kind.into(),
                name: name.into(),
                reason: ObjectProblemReason::Forbidden,
                message: format!(
                    "the operator's account may not {verb} {resource} in namespace {namespace} ({kind} {name}): \
                     give it the chart's RBAC (helm upgrade the omero-operator chart, or grant the rules in the \
                     README's RBAC table; a server-side apply that creates needs create as well as patch). \
                     The API server said: {said}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(owner: Option<(&str, &str, &str, bool)>, managed_by: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("web-main".into()),
            owner_references: owner.map(|(kind, name, uid, controller)| {
                vec![OwnerReference {
                    api_version: if kind == "OmeroCluster" {
                        "omero.openmicroscopy.org/v1alpha1".into()
                    } else {
                        "apps/v1".into()
                    },
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]
            }),
            labels: managed_by.map(|m| BTreeMap::from([(keys::MANAGED_BY_LABEL.to_string(), m.to_string())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_controller_reference_with_the_clusters_uid_makes_an_object_ours() {
        assert!(is_controlled_by(&meta(Some(("OmeroCluster", "web", "u1", true)), None), Some("u1")));
        assert!(!is_controlled_by(&meta(Some(("OmeroCluster", "web", "u2", true)), None), Some("u1")));
        assert!(!is_controlled_by(&meta(Some(("OmeroCluster", "web", "u1", false)), None), Some("u1")));
        assert!(!is_controlled_by(&meta(None, Some(keys::MANAGER)), Some("u1")), "labels prove nothing");
        assert!(!is_controlled_by(&meta(Some(("OmeroCluster", "web", "u1", true)), None), None));
    }

    #[test]
    fn owners_are_described_for_the_user() {
        assert_eq!(
            describe_owner(&meta(Some(("OmeroCluster", "a", "u9", true)), None)),
            "OmeroCluster a (uid u9)"
        );
        assert_eq!(describe_owner(&meta(Some(("ReplicaSet", "rs-1", "u9", true)), None)), "ReplicaSet rs-1");
        assert_eq!(describe_owner(&meta(None, None)), "an object created outside the operator");
        assert_eq!(
            describe_owner(&meta(None, Some("Helm"))),
            "an object created outside the operator (managed by Helm)"
        );
        assert!(describe_owner(&meta(None, Some(keys::MANAGER))).contains("carries the operator's labels"));
    }

    #[test]
    fn a_not_owned_report_names_kind_name_owner_and_the_fix() {
        let p = not_owned("Service", "web-main", &meta(None, Some("Helm")));
        assert_eq!(
            (p.kind.as_str(), p.name.as_str(), p.reason),
            ("Service", "web-main", ObjectProblemReason::NotOwned)
        );
        assert!(p.message.starts_with("Service web-main already exists and belongs to an object created outside the operator (managed by Helm)"), "{}", p.message);
        assert!(p.message.contains("<cluster>-<node>"), "{}", p.message);
    }
}
