//! The operator applying its own CRD at start, against a scripted API server (`tower-test`):
//! applied (server-side, the operator's field manager, forced) when absent or older; left alone
//! when a newer operator wrote it; a 403 (the chart's `crd.apply` off) or another refusal is
//! tolerated, and the operator goes on.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use omero_operator::{
    api::keys::CRD_VERSION_ANNOTATION,
    controller::crd::{CrdApply, apply_own},
    rbac::CRD_NAME,
};
use serde_json::{Value, json};

/// What the scripted server saw: method, path and query, content type, body.
type Seen = Vec<(Method, String, Option<String>, Value)>;

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{reason} (scripted)"),
           "reason": reason, "code": code})
}

/// A server that answers the CRD's GET with `get` and its PATCH with `patch`.
fn client(get: (StatusCode, Value), patch: (StatusCode, Value)) -> (Client, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let target = format!("{}?{}", parts.uri.path(), parts.uri.query().unwrap_or_default());
            let content_type = parts.headers.get("content-type").map(|v| v.to_str().unwrap().to_string());
            log.lock().unwrap().push((parts.method.clone(), target, content_type, body));
            let (code, reply) = if parts.method == Method::GET { get.clone() } else { patch.clone() };
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), seen)
}

fn crd_with_version(version: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": CRD_NAME, "annotations": {CRD_VERSION_ANNOTATION: version}},
           "spec": {"group": "omero.openmicroscopy.org", "names": {"kind": "OmeroCluster", "plural": "omeroclusters"},
                    "scope": "Namespaced", "versions": []}})
}

const PATH: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/omeroclusters.omero.openmicroscopy.org";

fn assert_applied(seen: &Seen) {
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (method, target, content_type, body) = &seen[1];
    assert_eq!(method, Method::PATCH);
    assert!(target.starts_with(&format!("{PATH}?")), "{target}");
    assert!(target.contains("fieldManager=omero-operator") && target.contains("force=true"), "{target}");
    assert_eq!(content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(body["metadata"]["name"], CRD_NAME);
    assert_eq!(body["metadata"]["annotations"][CRD_VERSION_ANNOTATION], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        body,
        &serde_json::to_value(omero_operator::api::crd()).unwrap(),
        "the operator's own CRD, whole"
    );
}

#[tokio::test]
async fn an_absent_or_older_crd_is_applied() {
    let (c, seen) =
        client((StatusCode::NOT_FOUND, status(404, "NotFound")), (StatusCode::OK, crd_with_version("0.1.0")));
    assert_eq!(apply_own(c).await, CrdApply::Applied);
    {
        let seen = seen.lock().unwrap();
        assert_eq!((&seen[0].0, seen[0].1.as_str()), (&Method::GET, format!("{PATH}?").as_str()));
        assert_applied(&seen);
    }

    let (c, seen) =
        client((StatusCode::OK, crd_with_version("0.0.9")), (StatusCode::OK, crd_with_version("0.1.0")));
    assert_eq!(apply_own(c).await, CrdApply::Applied);
    assert_applied(&seen.lock().unwrap());
}

#[tokio::test]
async fn a_newer_crd_is_left_alone() {
    let (c, seen) = client((StatusCode::OK, crd_with_version("99.0.0")), (StatusCode::OK, Value::Null));
    assert_eq!(apply_own(c).await, CrdApply::Newer("99.0.0".into()));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "a GET and no write: {seen:?}");
}

#[tokio::test]
async fn a_refusal_is_tolerated() {
    // No permission at all (crd.apply off): the GET is refused; nothing more is tried.
    let (c, seen) = client((StatusCode::FORBIDDEN, status(403, "Forbidden")), (StatusCode::OK, Value::Null));
    let CrdApply::NotApplied(why) = apply_own(c).await else { panic!("applied without permission") };
    assert!(why.contains("Forbidden"), "{why}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Allowed to read, refused the write.
    let (c, seen) = client(
        (StatusCode::OK, crd_with_version("0.0.1")),
        (StatusCode::FORBIDDEN, status(403, "Forbidden")),
    );
    assert!(matches!(apply_own(c).await, CrdApply::NotApplied(_)));
    assert_eq!(seen.lock().unwrap().len(), 2);
    // The API server refuses the schema (a newer server rule): reported, not fatal.
    let (c, _) = client(
        (StatusCode::NOT_FOUND, status(404, "NotFound")),
        (StatusCode::UNPROCESSABLE_ENTITY, status(422, "Invalid")),
    );
    let CrdApply::NotApplied(why) = apply_own(c).await else { panic!("a refused apply reported as applied") };
    assert!(why.contains("Invalid"), "{why}");
}
