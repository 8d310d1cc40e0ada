//! Compare before apply, and only what is ours: a desired object is written when it does not
//! exist, or when this cluster controls it and some field the operator sets differs from what
//! the API server holds. An object someone else holds is reported, never written. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde::Serialize;
use serde_json::Value;

use super::port::ChildKind;
use crate::{
    api::ObjectProblem,
    ownership::{self, is_controlled_by},
};

/// One object to apply, with the uid of the object it replaces (a precondition), if any.
#[derive(Debug)]
pub struct Write<'a, K> {
    pub object: &'a K,
    pub uid: Option<String>,
}

/// What to do with the desired objects of one kind.
#[derive(Debug)]
pub struct Plan<'a, K> {
    pub writes: Vec<Write<'a, K>>,
    pub problems: Vec<ObjectProblem>,
}

/// Objects of one kind the operator writes: how their immutable fields are compared.
pub trait Child: Resource<DynamicType = ()> + Serialize {
    const KIND: ChildKind;
    /// Why `desired` cannot be applied over `existing`, if a field the API server will not
    /// change differs.
    fn immutable_change(desired: &Self, existing: &Self) -> Option<String>;
}

impl Child for Deployment {
    const KIND: ChildKind = ChildKind::Deployment;

    fn immutable_change(desired: &Self, existing: &Self) -> Option<String> {
        let selector = |d: &Self| d.spec.as_ref().map(|s| s.selector.clone());
        (selector(desired) != selector(existing)).then(|| {
            "spec.selector cannot change; delete the Deployment after draining its node and the \
             operator creates it anew"
                .into()
        })
    }
}

impl Child for Service {
    const KIND: ChildKind = ChildKind::Service;

    fn immutable_change(desired: &Self, existing: &Self) -> Option<String> {
        let headless = |s: &Self| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        (headless(desired) != headless(existing)).then(|| {
            "spec.clusterIP cannot change between headless (None) and a cluster IP, which a change of \
             spec.topology would need; topology is fixed for a cluster's life: create a new \
             OmeroCluster with the other topology and move to it"
                .into()
        })
    }
}

impl Child for ConfigMap {
    const KIND: ChildKind = ChildKind::ConfigMap;

    fn immutable_change(desired: &Self, existing: &Self) -> Option<String> {
        // The operator never marks it immutable; someone else may have.
        (existing.immutable == Some(true) && desired.data != existing.data).then(|| {
            "it is marked immutable, so the session counter's script in it cannot be updated; delete it \
             and the operator creates it anew"
                .into()
        })
    }
}

impl Child for PodDisruptionBudget {
    const KIND: ChildKind = ChildKind::PodDisruptionBudget;

    fn immutable_change(_desired: &Self, _existing: &Self) -> Option<String> {
        None // policy/v1 budgets may change every field the operator sets
    }
}

/// Decides, for each desired object, whether to write it. `found` holds what a look-up by
/// name found for the names `existing` lacks (`None`: nothing has that name). An unseen name that
/// was not looked up is not written: something may hold it (the look-ups follow
/// `render::object_names`, which a test keeps equal to what is rendered).
pub fn plan_writes<'a, K: Child>(
    desired: &'a [K],
    existing: &[K],
    found: &BTreeMap<String, Option<ObjectMeta>>,
    owner_uid: Option<&str>,
) -> Result<Plan<'a, K>, serde_json::Error> {
    let kind = K::kind(&());
    let mut plan = Plan { writes: Vec::new(), problems: Vec::new() };
    for object in desired {
        let name = object.meta().name.clone().unwrap_or_default();
        let live = existing.iter().find(|e| e.meta().name.as_ref() == Some(&name));
        let meta = match (live, found.get(&name)) {
            (Some(live), _) => live.meta(),
            (None, Some(Some(meta))) => meta,
            (None, Some(None)) => {
                plan.writes.push(Write { object, uid: None });
                continue;
            }
            (None, None) => continue,
        };
        if !is_controlled_by(meta, owner_uid) {
            plan.problems.push(ownership::not_owned(&kind, &name, meta));
            continue;
        }
        let uid = meta.uid.clone();
        match live {
            // Ours, but without the cluster's labels (someone removed them): apply restores them.
            None => plan.writes.push(Write { object, uid }),
            Some(live) => {
                if let Some(why) = K::immutable_change(object, live) {
                    plan.problems.push(ownership::immutable(&kind, &name, why));
                } else if needs_apply(&serde_json::to_value(object)?, Some(&serde_json::to_value(live)?)) {
                    plan.writes.push(Write { object, uid });
                }
            }
        }
    }
    Ok(plan)
}

/// `existing` objects controlled by `owner_uid` that `desired` no longer has, with their uids:
/// the children of nodes that left the spec. Labels alone never make an object one of these.
pub fn orphans<K: Resource>(existing: &[K], desired: &[K], owner_uid: Option<&str>) -> Vec<(String, String)> {
    existing
        .iter()
        .filter(|e| is_controlled_by(e.meta(), owner_uid))
        .filter(|e| !desired.iter().any(|d| d.meta().name == e.meta().name))
        .filter_map(|e| Some((e.meta().name.clone()?, e.meta().uid.clone()?)))
        .collect()
}

/// True when `desired` says something `existing` does not: every field of `desired` must be
/// present in `existing` with the same value. Fields only in `existing` (defaults filled in by
/// the API server, status, managed fields) do not count. Empty lists and maps in `desired`
/// match an absent field, since the API server drops them; so do `""` and `false` in a
/// field of a struct, which Go's `omitempty` leaves out (an env var's `value: ""`, a
/// toleration's `value: ""`, a mount's `readOnly: false`), but not a map's values (an
/// annotation `""` is kept). The price: a pointer field (kept by the server even when false)
/// that someone removed is not put back while the operator would set it to false or "".
pub fn needs_apply(desired: &Value, existing: Option<&Value>) -> bool {
    existing.is_none_or(|existing| !contains(existing, desired, Position::Struct))
}

/// Maps of resource quantities, whose values the API server returns in canonical form.
const QUANTITY_MAPS: [&str; 3] = ["limits", "requests", "overhead"];
/// Fields the operator writes whose values are a map's (string to string): Go keeps a
/// value `""` there. (`selector` is a map in a Service and a struct of maps and lists in a
/// Deployment or budget, whose direct values are never strings.)
const STRING_MAPS: [&str; 7] =
    ["labels", "annotations", "data", "binaryData", "nodeSelector", "matchLabels", "selector"];

/// What the values compared are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Fields of a struct: `""` and `false` may have been left out.
    Struct,
    /// Values of a string map: kept whatever they are.
    Map,
    /// Values of a quantity map: compared by value (`500m` is `0.5`).
    Quantities,
}

fn contains(existing: &Value, desired: &Value, position: Position) -> bool {
    let child = |key: &str| match key {
        k if QUANTITY_MAPS.contains(&k) => Position::Quantities,
        k if STRING_MAPS.contains(&k) => Position::Map,
        _ => Position::Struct,
    };
    match (existing, desired) {
        (Value::Object(e), Value::Object(d)) => d.iter().all(|(k, dv)| match e.get(k) {
            Some(ev) if position == Position::Struct => contains(ev, dv, child(k)),
            Some(ev) => contains(ev, dv, position),
            None => is_empty(dv) || (position == Position::Struct && omitted_when_empty(dv)),
        }),
        (Value::Array(e), Value::Array(d)) => {
            e.len() == d.len() && e.iter().zip(d).all(|(ev, dv)| contains(ev, dv, Position::Struct))
        }
        (Value::Null, d) => is_empty(d),
        (e, d) if position == Position::Quantities => match (quantity_text(e), quantity_text(d)) {
            (Some(e), Some(d)) => crate::api::quantity::same(&e, &d),
            _ => e == d,
        },
        (e, d) => e == d,
    }
}

/// A value Go's `omitempty` leaves out of a struct field.
fn omitted_when_empty(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.is_empty()) || *v == Value::Bool(false)
}

fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_absent_object_needs_applying() {
        assert!(needs_apply(&json!({"a": 1}), None));
    }

    #[test]
    fn server_defaults_and_extra_fields_do_not_count() {
        let desired = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}});
        let existing = json!({
            "metadata": {"resourceVersion": "7", "managedFields": []},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "c", "terminationMessagePath": "/dev/x"}]}}},
            "status": {"readyReplicas": 1}
        });
        assert!(!needs_apply(&desired, Some(&existing)));
    }

    #[test]
    fn a_changed_or_missing_value_needs_applying() {
        let existing = json!({"spec": {"replicas": 1, "image": "a"}});
        assert!(needs_apply(&json!({"spec": {"image": "b"}}), Some(&existing)));
        assert!(needs_apply(&json!({"spec": {"paused": true}}), Some(&existing)));
    }

    #[test]
    fn lists_compare_by_position_and_length() {
        let existing = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]});
        assert!(!needs_apply(&json!({"env": [{"name": "A"}, {"name": "B"}]}), Some(&existing)));
        assert!(needs_apply(&json!({"env": [{"name": "B"}, {"name": "A"}]}), Some(&existing)));
        assert!(needs_apply(&json!({"env": [{"name": "A"}]}), Some(&existing)));
    }

    /// The API server returns quantities in canonical form: any spelling of the same quantity
    /// is no change, so a no-op reconcile writes nothing whatever the spec's spelling.
    #[test]
    fn quantities_compare_by_value_not_spelling() {
        for (written, stored) in
            [("0.5", "500m"), ("1", "1000m"), ("1073741824", "1Gi"), ("1e9", "1G"), ("2Gi", "2Gi")]
        {
            let desired = json!({"resources": {"limits": {"memory": written}, "requests": {"cpu": written}}});
            let existing = json!({"resources": {"limits": {"memory": stored}, "requests": {"cpu": stored}}});
            assert!(!needs_apply(&desired, Some(&existing)), "{written} vs {stored}");
        }
        let desired = json!({"resources": {"limits": {"cpu": "400m"}}});
        assert!(needs_apply(&desired, Some(&json!({"resources": {"limits": {"cpu": "500m"}}}))));
        // Elsewhere a string is a string: an env value "0.5" is not "500m".
        assert!(needs_apply(&json!({"env": [{"value": "0.5"}]}), Some(&json!({"env": [{"value": "500m"}]}))));
    }

    #[test]
    fn empty_strings_and_false_match_absent_struct_fields_but_not_map_values() {
        let existing =
            json!({"env": [{"name": "A"}], "volumeMounts": [{"name": "v"}], "metadata": {"annotations": {}}});
        assert!(!needs_apply(&json!({"env": [{"name": "A", "value": ""}]}), Some(&existing)));
        assert!(!needs_apply(&json!({"volumeMounts": [{"name": "v", "readOnly": false}]}), Some(&existing)));
        assert!(needs_apply(&json!({"volumeMounts": [{"name": "v", "readOnly": true}]}), Some(&existing)));
        assert!(
            needs_apply(&json!({"metadata": {"annotations": {"a": ""}}}), Some(&existing)),
            "a map keeps \"\""
        );
        assert!(needs_apply(
            &json!({"spec": {"selector": {"app": ""}}}),
            Some(&json!({"spec": {"selector": {}}}))
        ));
    }

    #[test]
    fn empty_desired_collections_match_absent_fields() {
        let existing = json!({"spec": {"replicas": 1}});
        assert!(!needs_apply(&json!({"spec": {"tolerations": [], "nodeSelector": {}}}), Some(&existing)));
        assert!(needs_apply(&json!({"spec": {"tolerations": [{"key": "k"}]}}), Some(&existing)));
    }

    fn service(name: &str, owner: Option<&str>, port: i32) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "ownerReferences": owner.map(|uid| vec![json!({
                "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
                "name": "omero", "uid": uid, "controller": true})])},
            "spec": {"ports": [{"port": port}]}
        }))
        .unwrap()
    }

    fn names<K: Resource>(writes: &[Write<'_, K>]) -> Vec<String> {
        writes.iter().map(|w| w.object.meta().name.clone().unwrap()).collect()
    }

    #[test]
    fn plan_writes_the_absent_and_the_different_of_our_own() {
        let desired = [service("a", Some("u"), 1), service("b", Some("u"), 2), service("c", Some("u"), 3)];
        let existing = [service("a", Some("u"), 1), service("b", Some("u"), 9)];
        let found = BTreeMap::from([("c".to_string(), None)]);
        let plan = plan_writes(&desired, &existing, &found, Some("u")).unwrap();
        assert_eq!(names(&plan.writes), ["b", "c"]);
        assert_eq!(plan.writes[0].uid.as_deref(), Some("uid-b"), "the existing uid is a precondition");
        assert_eq!(plan.writes[1].uid, None);
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn plan_never_writes_an_object_another_owner_holds() {
        let desired = [service("a", Some("u"), 1), service("b", Some("u"), 2), service("c", Some("u"), 3)];
        // `a` carries the cluster's labels but another cluster controls it; `b` was found by
        // name without labels and has no owner at all.
        let existing = [service("a", Some("other"), 1)];
        let found = BTreeMap::from([
            ("b".to_string(), Some(service("b", None, 2).metadata)),
            ("c".to_string(), None),
        ]);
        let plan = plan_writes(&desired, &existing, &found, Some("u")).unwrap();
        assert_eq!(names(&plan.writes), ["c"]);
        let blocked: Vec<_> = plan.problems.iter().map(|p| (p.name.as_str(), p.reason)).collect();
        assert_eq!(
            blocked,
            [
                ("a", crate::api::ObjectProblemReason::NotOwned),
                ("b", crate::api::ObjectProblemReason::NotOwned)
            ]
        );
        assert!(
            plan.problems[0].message.contains("OmeroCluster omero (uid other)"),
            "{}",
            plan.problems[0].message
        );
    }

    #[test]
    fn plan_reports_an_immutable_change_instead_of_applying_it() {
        let mut headless = service("w", Some("u"), 1);
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let existing = [headless];
        let desired = [service("w", Some("u"), 1)];
        let plan = plan_writes(&desired, &existing, &BTreeMap::new(), Some("u")).unwrap();
        assert!(plan.writes.is_empty());
        assert_eq!(plan.problems[0].reason, crate::api::ObjectProblemReason::ImmutableField);
        assert!(plan.problems[0].message.contains("spec.topology"), "{}", plan.problems[0].message);
    }

    #[test]
    fn a_name_not_looked_up_is_not_written() {
        let desired = [service("a", Some("u"), 1)];
        let plan = plan_writes(&desired, &[], &BTreeMap::new(), Some("u")).unwrap();
        assert!(plan.writes.is_empty() && plan.problems.is_empty());
    }

    #[test]
    fn orphans_are_objects_we_control_that_are_no_longer_desired() {
        let desired = [service("a", Some("u"), 1)];
        let existing = [
            service("a", Some("u"), 1),
            service("gone", Some("u"), 1),
            service("other", Some("v"), 1),
            service("handmade", None, 1),
        ];
        assert_eq!(orphans(&existing, &desired, Some("u")), [("gone".to_string(), "uid-gone".to_string())]);
        assert!(orphans(&existing, &desired, None).is_empty(), "no uid (offline): nothing is ours");
    }
}
