//! The `OmeroCluster` API: spec, status, the annotations that drive operations, and the
//! validation rules the API server cannot check by itself.

mod duration;
mod image;
pub mod ports;
pub mod property;
pub mod quantity;
mod server_logs;
pub mod servers;
mod spec;
mod status;
mod validate;

pub use duration::{Duration, DurationError};
pub use server_logs::{SERVER_LOGS_CONTAINER, ServerLogsMode, ServerLogsSpec};
pub use spec::*;
pub use status::*;
pub use validate::{GRID_DNS_SUFFIX, OMERO_CONTAINER, SESSION_COUNTER_CONTAINER, ValidationError, validate};

/// What the API server (Kubernetes 1.28 and later) takes as an environment variable name.
pub const ENV_NAME_PATTERN: &str = "^[-._a-zA-Z][-._a-zA-Z0-9]*$";
/// A resource quantity, as controller-gen writes it for `resource.Quantity` (a pattern, not
/// CEL's `quantity()`, which Kubernetes 1.28 does not compile for new rules).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The OmeroCluster CRD, with the patterns the generated schema lacks: a node's env var names
/// and its resource quantities, so the API server refuses them at `kubectl apply` (patterns
/// cost nothing in CEL's budget). `validate` checks the same in Rust.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(OmeroCluster::crd()).expect("the CRD serialises");
    for version in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        let node = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["nodes"]["items"]
            ["properties"];
        node["env"]["items"]["properties"]["name"]["pattern"] = ENV_NAME_PATTERN.into();
        for map in ["limits", "requests"] {
            node["resources"]["properties"][map]["additionalProperties"]["pattern"] = QUANTITY_PATTERN.into();
        }
        let logs = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serverLogs"]
            ["properties"]["resources"]["properties"];
        for map in ["limits", "requests"] {
            logs[map]["additionalProperties"]["pattern"] = QUANTITY_PATTERN.into();
        }
    }
    // An optional enum is nullable, but null is not one of its values (schemars lists it).
    drop_null_from_enums(&mut crd);
    // Which operator release wrote it: an operator applying its own CRD at start never
    // replaces a newer one (a rollback, or an old replica beside a new one in a rolling upgrade).
    crd["metadata"]["annotations"] =
        serde_json::json!({ keys::CRD_VERSION_ANNOTATION: env!("CARGO_PKG_VERSION") });
    serde_json::from_value(crd).expect("the patched CRD deserialises")
}

/// Removes `null` from every `enum` list of the schema: `nullable: true` already says a field
/// may be null, and `kubectl explain` would print null as one of the values.
fn drop_null_from_enums(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(drop_null_from_enums);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_from_enums),
        _ => {}
    }
}

/// Label and annotation keys shared by every object the operator creates or reads.
pub mod keys {
    pub const GROUP: &str = "omero.openmicroscopy.org";
    pub const CLUSTER_LABEL: &str = "omero.openmicroscopy.org/cluster";
    pub const NODE_LABEL: &str = "omero.openmicroscopy.org/node";
    /// On a pod (never its template): the entry Service sends new sessions only to pods with
    /// `routable=true`.
    pub const ROUTABLE_LABEL: &str = "omero.openmicroscopy.org/routable";
    /// On a node's Deployment and its pod template (so on its pod): the digest of the pod
    /// template the operator rendered. Read back from here, never recomputed from the API
    /// server's copy, whose defaults and quantity spellings differ.
    pub const REVISION_ANNOTATION: &str = "omero.openmicroscopy.org/revision";
    /// On a pod template: the restart request token the node last restarted for.
    pub const RESTART_TOKEN_ANNOTATION: &str = "omero.openmicroscopy.org/restart-token";
    pub const NAME_LABEL: &str = "app.kubernetes.io/name";
    pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
    pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
    pub const APP_NAME: &str = "omero-server";
    pub const MANAGER: &str = "omero-operator";
    /// On the CRD: the operator version whose schema it is.
    pub const CRD_VERSION_ANNOTATION: &str = "omero.openmicroscopy.org/operator-version";
}
