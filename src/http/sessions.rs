//! `GET /sessions/{namespace}/{cluster}/{node}`: who is on a node counted by the database probe,
//! for `kubectl omero sessions`. The plugin cannot reach OMERO's PostgreSQL; the operator can,
//! with the password the cluster's spec names. It reaches this route through the API server's
//! service proxy to the operator's Service, so what a person may read is what their RBAC grants
//! on `services/proxy` (the chart's `sessionReaders`).
//!
//! Each request reads what it needs from the API server (the cluster by a list with a field
//! selector and the node's pods by label, both verbs the operator holds already; the password by
//! GET): any replica answers, a standby too, whose caches hold no clusters. Listings are rare, so
//! a few reads per request cost nothing worth caching. At most [`MAX_AT_ONCE`] run at once: the
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
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::Endpoints;
use crate::{
    api::{OmeroCluster, SecretKeyRef, SessionProbeKind},
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
    omero: omero::Client,
    /// The namespace the operator watches; all when none.
    watched: Option<String>,
    turns: Arc<tokio::sync::Semaphore>,
}

impl SessionLister {
    pub fn new(client: Client, watched: Option<String>) -> Self {
        Self {
            client,
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector: Vec<String> =
            node_selector_labels(cluster, node).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let listed = pods.list(&ListParams::default().labels(&selector.join(","))).await.map_err(|e| {
            refused(StatusCode::BAD_GATEWAY, reasons::API_FAILED, format!("listing the node's pods: {e}"))
        })?;
        let running: Vec<(String, String)> = listed
            .items
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
    let (status, answer) = match &endpoints.sessions {
        Some(lister) => lister.answer(&namespace, &cluster, &node).await,
        None => refused(StatusCode::NOT_FOUND, reasons::NOT_FOUND, "this server lists no sessions".into()),
    };
    let body = serde_json::to_vec(&answer).expect("plain data serialises");
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}
