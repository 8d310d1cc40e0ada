//! Compare before apply: a child is applied only when some field the operator sets differs
//! from what the API server holds, so a reconcile with nothing to change writes nothing. Pure.

use kube::Resource;
use serde::Serialize;
use serde_json::Value;

/// The desired objects that need applying: absent from `existing`, or differing from it.
pub fn changed<'a, K: Resource + Serialize>(
    desired: &'a [K],
    existing: &[K],
) -> Result<Vec<&'a K>, serde_json::Error> {
    let mut changed = Vec::new();
    for object in desired {
        let live = existing.iter().find(|e| e.meta().name == object.meta().name);
        let live = live.map(serde_json::to_value).transpose()?;
        if needs_apply(&serde_json::to_value(object)?, live.as_ref()) {
            changed.push(object);
        }
    }
    Ok(changed)
}

/// Names of `existing` objects owned by `owner_uid` that `desired` no longer has: the
/// children of nodes that left the spec. Objects someone else owns are never included.
pub fn orphans<K: Resource>(existing: &[K], desired: &[K], owner_uid: Option<&str>) -> Vec<String> {
    let owned = |object: &K| {
        object
            .meta()
            .owner_references
            .as_ref()
            .is_some_and(|refs| refs.iter().any(|r| Some(r.uid.as_str()) == owner_uid))
    };
    existing
        .iter()
        .filter(|e| owned(e) && !desired.iter().any(|d| d.meta().name == e.meta().name))
        .filter_map(|e| e.meta().name.clone())
        .collect()
}

/// True when `desired` says something `existing` does not: every field of `desired` must be
/// present in `existing` with the same value. Fields only in `existing` (defaults filled in by
/// the API server, status, managed fields) do not count. Empty lists and maps in `desired`
/// match an absent field, since the API server drops them.
pub fn needs_apply(desired: &Value, existing: Option<&Value>) -> bool {
    existing.is_none_or(|existing| !contains(existing, desired))
}

fn contains(existing: &Value, desired: &Value) -> bool {
    match (existing, desired) {
        (Value::Object(e), Value::Object(d)) => d.iter().all(|(k, dv)| match e.get(k) {
            Some(ev) => contains(ev, dv),
            None => is_empty(dv),
        }),
        (Value::Array(e), Value::Array(d)) => {
            e.len() == d.len() && e.iter().zip(d).all(|(ev, dv)| contains(ev, dv))
        }
        (Value::Null, d) => is_empty(d),
        (e, d) => e == d,
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

    #[test]
    fn empty_desired_collections_match_absent_fields() {
        let existing = json!({"spec": {"replicas": 1}});
        assert!(!needs_apply(&json!({"spec": {"tolerations": [], "nodeSelector": {}}}), Some(&existing)));
        assert!(needs_apply(&json!({"spec": {"tolerations": [{"key": "k"}]}}), Some(&existing)));
    }

    fn service(name: &str, owner: Option<&str>, port: i32) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": owner.map(|uid| vec![json!({
                "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
                "name": "omero", "uid": uid})])},
            "spec": {"ports": [{"port": port}]}
        }))
        .unwrap()
    }

    #[test]
    fn changed_picks_the_absent_and_the_different() {
        let desired = [service("a", Some("u"), 1), service("b", Some("u"), 2), service("c", Some("u"), 3)];
        let existing = [service("a", Some("u"), 1), service("b", Some("u"), 9)];
        let names: Vec<_> =
            changed(&desired, &existing).unwrap().iter().map(|s| s.meta().name.clone().unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn orphans_are_owned_objects_no_longer_desired() {
        let desired = [service("a", Some("u"), 1)];
        let existing = [
            service("a", Some("u"), 1),
            service("gone", Some("u"), 1),
            service("other", Some("v"), 1),
            service("handmade", None, 1),
        ];
        assert_eq!(orphans(&existing, &desired, Some("u")), ["gone"]);
        assert!(orphans(&existing, &desired, None).is_empty(), "no uid (offline): nothing is ours");
    }
}
