//! `GET /sessions/{namespace}/{cluster}/{node}`: who is on a node counted by the database probe,
//! for `kubectl omero sessions`. The plugin cannot reach OMERO's PostgreSQL; the operator can,
//! with the password the cluster's spec names. It reaches this route through the API server's
//! service proxy to the operator's Service, so what a person may read is what their RBAC grants
//! on `services/proxy` (the chart's `sessionReaders`).
//!
//! The node's pod comes from the pod cache every replica keeps (a standby too); the cluster is
//! read by a list with a field selector (only the leader caches clusters, and any replica
//! answers) and the password by GET, both verbs the operator holds already. Listings are rare:
//! two reads per request cost nothing worth caching. At most [`MAX_AT_ONCE`] run at once: the
//! route needs no credentials of its caller, and the database must not pay for a flood.
//!
//! The answer is OMERO's user names, user agents and times (`omero::session_list`): never a
//! session's UUID or a client's address. Whoever reaches the operator's HTTP port on the pod
//! network can ask, as for `/metrics`: restrict that port with a NetworkPolicy.

use std::sync::Arc;
use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client, ResourceExt, api::ListParams, runtime::reflector::Store};

use super::Endpoints;
use crate::{
    api::{OmeroCluster, SecretKeyRef, SessionProbeKind},
    controller::{cache::Cached, kube_port::of_cluster},
    omero::{
        self, DatabaseCredentials,
        session_list::{OPERATOR_SESSIONS_FORMAT, OperatorSessionsAnswer, reasons},
    },
    pool,
    render::node_selector_labels,
};

/// Listings running at once; the rest wait, up to [`WAIT`].
pub const MAX_AT_ONCE: usize = 2;
/// How long a listing waits for its turn before it is refused (busy).
const WAIT: Duration = Duration::from_secs(10);

/// What the route lists with: the operator's own API client and a database client of its own
/// (its pool serves only these rare listings, and closes its connections once idle).
#[derive(Clone)]
pub struct SessionLister {
    client: Client,
    /// The operator's pod cache (`controller::run`'s), where the node's pod is looked up.
    pods: Store<Cached<Pod>>,
    omero: omero::Client,
    /// The namespace the operator watches; all when none.
    watched: Option<String>,
    turns: Arc<tokio::sync::Semaphore>,
}

impl SessionLister {
    pub fn new(client: Client, pods: Store<Cached<Pod>>, watched: Option<String>) -> Self {
        Self {
            client,
            pods,
            omero: omero::Client::default(),
            watched,
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_AT_ONCE)),
        }
    }

    /// The answer about `node` of the cluster `cluster` in `namespace`, with its HTTP status.
    pub async fn answer(
        &self,
        namespace: &str,
        cluster: &str,
        node: &str,
    ) -> (StatusCode, OperatorSessionsAnswer) {
        let Ok(Ok(_turn)) = tokio::time::timeout(WAIT, self.turns.acquire()).await else {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                reasons::BUSY,
                format!("{MAX_AT_ONCE} listings are running; try again"),
            );
        };
        match self.list(namespace, cluster, node).await {
            Ok(answer) => (StatusCode::OK, answer),
            Err(refusal) => refusal,
        }
    }

    async fn list(
        &self,
        namespace: &str,
        cluster_name: &str,
        node: &str,
    ) -> Result<OperatorSessionsAnswer, (StatusCode, OperatorSessionsAnswer)> {
        if let Some(watched) = self.watched.as_deref().filter(|w| *w != namespace) {
            return Err(refused(
                StatusCode::NOT_FOUND,
                reasons::NOT_WATCHED,
                format!("this operator watches namespace {watched} only, not {namespace}"),
            ));
        }
        let api_failed = |what: &str, e: kube::Error| {
            refused(StatusCode::BAD_GATEWAY, reasons::API_FAILED, format!("{what}: {e}"))
        };
        // A list by name: the operator may list and watch OmeroClusters, not get them.
        let clusters: Api<OmeroCluster> = Api::namespaced(self.client.clone(), namespace);
        let by_name = ListParams::default().fields(&format!("metadata.name={cluster_name}"));
        let found = clusters.list(&by_name).await.map_err(|e| api_failed("listing OmeroClusters", e))?;
        let Some(cluster) = found.items.into_iter().next() else {
            return Err(refused(
                StatusCode::NOT_FOUND,
                reasons::NOT_FOUND,
                format!("no OmeroCluster {cluster_name} in namespace {namespace}"),
            ));
        };
        let cluster = pool::resolved(&cluster).into_owned();
        let status = cluster.status.clone().unwrap_or_default();
        // A node that left the spec is still counted with the probe its status recorded.
        let probe = match cluster.spec.node(node) {
            Some(spec) => Some(cluster.spec.session_probe_of(spec)),
            None => match status.node(node) {
                Some(left) => left.session_probe.clone(),
                None => {
                    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
                    return Err(refused(
                        StatusCode::NOT_FOUND,
                        reasons::NOT_FOUND,
                        format!(
                            "OmeroCluster {cluster_name} has no node {node}; its nodes are {}",
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        let kind = probe.map_or(SessionProbeKind::None, |p| p.kind);
        if kind != SessionProbeKind::Database {
            return Err(refused(
                StatusCode::CONFLICT,
                reasons::NOT_DATABASE_PROBED,
                format!(
                    "node {node} is counted by its {kind:?} probe, not the database's: OMERO's database holds none \
                     of its sessions"
                ),
            ));
        }
        let (pod, pod_ip) = self.running_pod(namespace, cluster_name, node, status.node(node)).await?;
        let endpoint = cluster.spec.database.primary();
        let password = self.secret_value(namespace, &endpoint.password_secret).await.map_err(|e| {
            refused(
                StatusCode::BAD_GATEWAY,
                reasons::DATABASE_FAILED,
                format!("reading the database password: {e}"),
            )
        })?;
        let credentials = DatabaseCredentials { endpoint: &endpoint, password: &password };
        let list = self
            .omero
            .list_database_sessions(&credentials, &pod_ip)
            .await
            .map_err(|e| refused(StatusCode::BAD_GATEWAY, reasons::DATABASE_FAILED, e.to_string()))?;
        Ok(OperatorSessionsAnswer {
            format: OPERATOR_SESSIONS_FORMAT.into(),
            ok: true,
            pod: Some(pod),
            list: Some(list),
            ..OperatorSessionsAnswer::default()
        })
    }

    /// The node's running pod and its IP: the one status names when it runs, else any running
    /// one (a restart may have replaced it since).
    async fn running_pod(
        &self,
        namespace: &str,
        cluster: &str,
        node: &str,
        status: Option<&crate::api::NodeStatus>,
    ) -> Result<(String, String), (StatusCode, OperatorSessionsAnswer)> {
        let cached =
            of_cluster(&self.pods, namespace, &node_selector_labels(cluster, node)).map_err(|e| {
                refused(StatusCode::BAD_GATEWAY, reasons::API_FAILED, format!("reading the node's pods: {e}"))
            })?;
        let running: Vec<(String, String)> = cached
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let status = p.status.as_ref()?;
                (status.phase.as_deref() == Some("Running")).then_some(())?;
                Some((p.name_any(), status.pod_ip.clone().filter(|ip| !ip.is_empty())?))
            })
            .collect();
        let named = status.and_then(|s| s.pod.as_deref());
        running
            .iter()
            .find(|(name, _)| Some(name.as_str()) == named)
            .or_else(|| running.first())
            .cloned()
            .ok_or_else(|| {
                refused(
                    StatusCode::CONFLICT,
                    reasons::POD_NOT_RUNNING,
                    format!("node {node} has no running pod with an IP: no live OMERO node to list"),
                )
            })
    }

    async fn secret_value(&self, namespace: &str, secret: &SecretKeyRef) -> Result<String, String> {
        let found = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(&secret.name)
            .await
            .map_err(|e| format!("Secret {}: {e}", secret.name))?;
        let bytes = secret
            .value_in(&found)
            .ok_or_else(|| format!("Secret {} has no key {}", secret.name, secret.key))?;
        String::from_utf8(bytes)
            .map_err(|_| format!("Secret {} key {} is not UTF-8", secret.name, secret.key))
    }
}

fn refused(status: StatusCode, reason: &str, error: String) -> (StatusCode, OperatorSessionsAnswer) {
    let answer = OperatorSessionsAnswer {
        format: OPERATOR_SESSIONS_FORMAT.into(),
        ok: false,
        reason: Some(reason.into()),
        error: Some(error),
        ..OperatorSessionsAnswer::default()
    };
    (status, answer)
}

/// The route's handler.
pub async fn list(
    State(endpoints): State<Endpoints>,
    Path((namespace, cluster, node)): Path<(String, String, String)>,
) -> Response {
    let (status, answer) = match endpoints.sessions.get() {
        Some(lister) => lister.answer(&namespace, &cluster, &node).await,
        None => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            reasons::BUSY,
            "the operator is starting: its pod cache is not filled yet; try again".into(),
        ),
    };
    let body = serde_json::to_vec(&answer).expect("plain data serialises");
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    /// Before the pod cache is filled there is no lister: the route says so (503), and a
    /// client is told to try again rather than that the node is unknown.
    #[tokio::test]
    async fn the_route_answers_503_until_the_pod_cache_is_filled() {
        let router = crate::http::router(crate::http::Endpoints::new(Arc::default()));
        let request = http::Request::get("/sessions/omero/omero/rw").body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let answer: OperatorSessionsAnswer = serde_json::from_slice(&body).unwrap();
        assert!(!answer.ok && answer.format == OPERATOR_SESSIONS_FORMAT, "{answer:?}");
    }
}
