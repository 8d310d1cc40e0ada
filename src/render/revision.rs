//! A node's revision: a digest of the pod template the operator renders for it, so that "does
//! the running pod have what the spec asks for" is one string comparison. It is computed here,
//! from the operator's own rendering, and stamped on the Deployment and its pod template;
//! never recomputed from what the API server returns (its defaults and quantity spellings
//! differ from ours).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use sha2::{Digest, Sha256};

/// Hex characters kept of the SHA-256 digest: 48 bits, ample for the revisions of one node.
const LEN: usize = 12;

/// The revision of `template`, computed before the revision annotation is added. Rendering is
/// deterministic (sorted maps, fixed list order), so the same spec always gives the same value.
pub fn of_template(template: &PodTemplateSpec) -> String {
    digest(&serde_json::to_vec(template).expect("a pod template serializes"))
}

/// The same digest of any text (the cluster's revision is that of its nodes' revisions).
pub fn of_text(text: &str) -> String {
    digest(text.as_bytes())
}

fn digest(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..LEN].to_string()
}
