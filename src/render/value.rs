//! The value of one OMERO property as a pod receives it. Shared by the configuration (which
//! turns values into environment variables) and the grid (which contributes properties), so
//! neither depends on the other for it.

use crate::api::SecretKeyRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// Taken as is: `$` is escaped so Kubernetes does not expand `$(NAME)` inside it.
    Literal(String),
    /// Kubernetes expands `$(NAME)` references to variables defined earlier in the list.
    Expand(String),
    /// Read from a Secret by the kubelet; the value never appears in an object.
    Secret(SecretKeyRef),
}
