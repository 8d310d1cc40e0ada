//! The operator applies its own CRD at start, when allowed: Helm installs `crds/` once and
//! never upgrades it, so without this an upgraded operator would run against the old schema.
//!
//! Never downgrades: the CRD carries the version of the operator that wrote it, and an older
//! operator (a rollback, or the old pod beside the new one in a rolling upgrade) leaves a newer
//! CRD alone. A refusal (403: the chart's `crd.apply` is off, or RBAC is managed by hand) is
//! not an error: the operator goes on with the CRD it finds and says how to upgrade it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tracing::{info, warn};

use crate::{api, rbac::CRD_NAME};

/// What happened to the CRD at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdApply {
    /// Applied (created or brought to this version).
    Applied,
    /// The API server's CRD is from a newer operator: left alone.
    Newer(String),
    /// Not allowed (403), or the API server refused or failed: the operator goes on.
    NotApplied(String),
}

/// Whether an operator at `ours` applies its CRD over one written by `theirs` (None: no
/// version recorded, or no CRD yet).
pub fn should_apply(theirs: Option<&str>, ours: &str) -> bool {
    match (theirs.and_then(version), version(ours)) {
        (Some(theirs), Some(ours)) => theirs <= ours,
        _ => true,
    }
}

/// `major.minor.patch`, any pre-release or build suffix ignored.
fn version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Applies the operator's CRD unless the API server holds a newer one.
pub async fn apply_own(client: Client) -> CrdApply {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let ours = env!("CARGO_PKG_VERSION");
    let theirs = match crds.get_opt(CRD_NAME).await {
        Ok(found) => found.and_then(|crd| {
            crd.metadata.annotations.and_then(|a| a.get(api::keys::CRD_VERSION_ANNOTATION).cloned())
        }),
        Err(error) => return not_applied(&error),
    };
    if !should_apply(theirs.as_deref(), ours) {
        let theirs = theirs.unwrap_or_default();
        info!(crd = CRD_NAME, ours, theirs, "the CRD is from a newer operator: left as it is");
        return CrdApply::Newer(theirs);
    }
    let params = PatchParams::apply(crate::api::keys::MANAGER).force();
    match crds.patch(CRD_NAME, &params, &Patch::Apply(api::crd())).await {
        Ok(_) => {
            info!(crd = CRD_NAME, version = ours, was = ?theirs, "CRD applied");
            CrdApply::Applied
        }
        Err(error) => not_applied(&error),
    }
}

fn not_applied(error: &kube::Error) -> CrdApply {
    let forbidden = matches!(error, kube::Error::Api(s) if s.code == 403);
    if forbidden {
        warn!(
            crd = CRD_NAME,
            %error,
            "not allowed to apply the CRD (chart value crd.apply is off?): going on with the CRD installed; \
             upgrade it with `omero-operator crd | kubectl apply --server-side -f -`"
        );
    } else {
        warn!(crd = CRD_NAME, %error, "could not apply the CRD: going on with the CRD installed");
    }
    CrdApply::NotApplied(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_downgrades() {
        assert!(should_apply(None, "0.1.0"));
        assert!(should_apply(Some("0.1.0"), "0.1.0"));
        assert!(should_apply(Some("0.1.0"), "0.2.0"));
        assert!(should_apply(Some("0.9.9"), "0.10.0"), "numbers, not text");
        assert!(!should_apply(Some("0.2.0"), "0.1.9"));
        assert!(!should_apply(Some("1.0.0-rc.1"), "0.9.0"));
        assert!(should_apply(Some("garbage"), "0.1.0"), "an unreadable version is replaced");
    }
}
