//! The `OmeroCluster` API: spec, status, the annotations that drive operations, and the
//! validation rules the API server cannot check by itself.

mod duration;
pub mod property;
pub mod quantity;
mod spec;
mod status;
mod validate;

pub use duration::{Duration, DurationError};
pub use spec::*;
pub use status::*;
pub use validate::{OMERO_CONTAINER, ValidationError, validate};

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
}
