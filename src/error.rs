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
    /// An apply meant only to create (the caches saw the name free) found the name held: the
    /// API server wrote nothing (`KubePort::apply`).
    #[error(
        "{kind} {name} exists though the operator's caches saw its name free: nothing was written; the \
         next reconcile decides from the caches once they have it"
    )]
    NameTaken { kind: String, name: String },
}

/// The API server's refusal of a request as such, which retrying will not cure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400 or 422: the object is invalid; the spec must change. The server's message.
    Invalid(String),
    /// 403: the operator's account lacks a permission; its RBAC must change. The server's
    /// message, which is empty after its colon when an apply that would create is refused.
    Forbidden(String),
}

impl Refusal {
    /// An apply that carried the uid of the object it last saw, refused because another object
    /// holds the name now (the API server answers 422 "metadata.uid: field is immutable"): not
    /// a spec problem but an object replaced behind the operator's back.
    pub fn replaced_object(&self) -> bool {
        matches!(self, Self::Invalid(message) if message.contains("metadata.uid"))
    }
}

impl Error {
    /// The API server's refusal of a request as such (invalid, bad request, forbidden).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.code == 403 => {
                Some(Refusal::Forbidden(status.message.clone()))
            }
            Self::Kube(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
                Some(Refusal::Invalid(status.message.clone()))
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
