//! `spec.serverLogs`: whether OMERO's own log files reach the container log stream, through
//! the `omero-logs` container the operator adds to every node's pod (`render::server_logs`).

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{OmeroClusterSpec, ValidationError};

/// The log container's name in a node's pod (`kubectl logs <pod> -c omero-logs`).
pub const SERVER_LOGS_CONTAINER: &str = "omero-logs";

/// OMERO.server writes its logs to files (`var/log/Blitz-0.log`, `Tables-0.log`,
/// `master.err`, ...), which `kubectl logs` and a cluster's log collector never see.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerLogsSpec {
    /// `Container` (default): a small container in every node's pod, from the node's own
    /// image, follows `var/log/*.log`, `*.out` and `*.err` (read-only) and writes every record
    /// as one line, the file's name first (`Blitz-0.log: 2024-01-02 13:45:12,345 INFO ...`;
    /// a stack trace's lines joined with `\n`), so `kubectl logs <pod> -c omero-logs`, `kubectl
    /// omero logs` and log collectors see them. `None`: no such container; the logs stay in
    /// `var/log` only. Changing it restarts every node, each drained first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerLogsMode>,
    /// Compute resources of the `omero-logs` container (default: requests cpu 5m, memory 32Mi;
    /// limit memory 64Mi). Given, they replace the default whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServerLogsMode {
    /// The `omero-logs` container follows OMERO's log files into the container log stream.
    #[default]
    Container,
    /// No log container: OMERO's logs stay in its files.
    None,
}

impl OmeroClusterSpec {
    /// Whether nodes run the `omero-logs` container.
    pub fn server_logs_container(&self) -> bool {
        self.server_logs.as_ref().and_then(|l| l.mode).unwrap_or_default() == ServerLogsMode::Container
    }
}

/// What is wrong with `spec.serverLogs`, each naming the field.
pub(super) fn problems(spec: &OmeroClusterSpec) -> Vec<ValidationError> {
    let mut problems = Vec::new();
    let Some(resources) = spec.server_logs.as_ref().and_then(|l| l.resources.as_ref()) else {
        return problems;
    };
    let field = |rest: String| format!("spec.serverLogs.resources.{rest}");
    for (kind, map) in [("limits", &resources.limits), ("requests", &resources.requests)] {
        for (resource, quantity) in map.iter().flatten() {
            if super::quantity::nanos(&quantity.0).is_none_or(|n| n < 0) {
                problems.push(ValidationError {
                    field: field(format!("{kind}.{resource}")),
                    message: format!(
                        "'{}' is not a quantity: write e.g. 5m for cpu, 32Mi for memory",
                        quantity.0
                    ),
                });
            }
        }
    }
    // The API server refuses such a pod only when its ReplicaSet creates it, long after the
    // Deployment was written, and the node would have no pod.
    for (resource, request) in resources.requests.iter().flatten() {
        let limit = resources.limits.as_ref().and_then(|l| l.get(resource));
        let (Some(request_n), Some(limit_n)) =
            (super::quantity::nanos(&request.0), limit.and_then(|l| super::quantity::nanos(&l.0)))
        else {
            continue;
        };
        if request_n > limit_n {
            problems.push(ValidationError {
                field: field(format!("requests.{resource}")),
                message: format!(
                    "{} is more than the limit {}: a request may not exceed its limit",
                    request.0,
                    limit.map(|l| l.0.as_str()).unwrap_or_default()
                ),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(server_logs: &str) -> OmeroClusterSpec {
        let yaml = format!(
            "image: openmicroscopy/omero-server:5.6\ndatabase: {{host: db, passwordSecret: {{name: s, key: k}}}}\n\
             repository: {{claimName: repo}}\nnodes: [{{name: rw}}]\n{server_logs}"
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    #[test]
    fn on_unless_turned_off() {
        assert!(spec_with("").server_logs_container());
        assert!(spec_with("serverLogs: {}\n").server_logs_container());
        assert!(spec_with("serverLogs: {mode: Container}\n").server_logs_container());
        assert!(!spec_with("serverLogs: {mode: None}\n").server_logs_container());
    }

    #[test]
    fn a_sidecar_may_not_take_the_log_containers_name_unless_it_is_off() {
        let cluster = |server_logs: &str| -> crate::api::OmeroCluster {
            serde_saphyr::from_str(&format!(
                "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {{name: omc}}\nspec:\n  \
                 image: openmicroscopy/omero-server:5.6\n  database: {{host: db, passwordSecret: {{name: s, key: k}}}}\n  \
                 repository: {{claimName: repo}}\n  nodes: [{{name: rw, sidecars: [{{name: omero-logs, image: x}}]}}]\n{server_logs}"
            ))
            .unwrap()
        };
        let errors = crate::api::validate(&cluster("")).unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "spec.nodes[0].sidecars[0].name: 'omero-logs' is taken by another container of the pod: rename the sidecar"
            ]
        );
        assert_eq!(crate::api::validate(&cluster("  serverLogs: {mode: None}\n")), Ok(()));
    }

    #[test]
    fn resources_are_quantities_and_requests_stay_under_limits() {
        assert_eq!(problems(&spec_with("serverLogs: {resources: {requests: {memory: 16Mi}}}\n")), []);
        let bad = spec_with(
            "serverLogs: {resources: {requests: {cpu: lots, memory: 128Mi}, limits: {memory: 64Mi}}}\n",
        );
        let found: Vec<(String, String)> = problems(&bad).into_iter().map(|e| (e.field, e.message)).collect();
        assert_eq!(
            found,
            [
                (
                    "spec.serverLogs.resources.requests.cpu".to_string(),
                    "'lots' is not a quantity: write e.g. 5m for cpu, 32Mi for memory".to_string()
                ),
                (
                    "spec.serverLogs.resources.requests.memory".to_string(),
                    "128Mi is more than the limit 64Mi: a request may not exceed its limit".to_string()
                ),
            ]
        );
    }
}
