//! The operator's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    MissingNamespace(String),
    #[error("Secret {name} has no key {key}")]
    SecretKeyMissing { name: String, key: String },
    #[error("Secret {name} key {key} is not UTF-8")]
    SecretNotUtf8 { name: String, key: String },
    #[error("serialising {what}: {source}")]
    Serialize { what: String, source: serde_json::Error },
    #[error(
        "the OmeroCluster CRD is not installed (or not readable): {0}; install it with `omero-operator crd | kubectl apply -f -`"
    )]
    CrdMissing(kube::Error),
    #[error("a watch cache closed before it was filled: {0}")]
    CacheClosed(String),
    #[error("not the leader: another replica holds the lease, so this one writes nothing")]
    NotLeader,
    #[error("leader election: {0}")]
    Lease(String),
    #[error(
        "lost the leader lease: stopping so that only the new leader acts (the process restarts as a standby)"
    )]
    LeaseLost,
    #[error("serving metrics and health on {address}: {source}")]
    Http { address: String, source: std::io::Error },
}

impl Error {
    /// The API server's refusal of a request as such (invalid, bad request, forbidden), which
    /// retrying will not cure: the spec or the operator's permissions must change.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Self::Kube(kube::Error::Api(status)) if matches!(status.code, 400 | 403 | 422) => {
                Some(status.message.clone())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
