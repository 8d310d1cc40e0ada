//! The `restricted` Pod Security Standard for the containers users add to a node's pod
//! (`sidecars`). Pure.
//!
//! Pod Security admission refuses a pod when its ReplicaSet creates it, long after the
//! Deployment was written, so a sidecar that breaks the standard would leave its node without a
//! pod. The operator therefore fills in what a sidecar leaves unset (no privilege escalation,
//! every capability dropped, non-root) and refuses at validation what it sets against the
//! standard, naming the field. The pod itself runs as the image's non-root user with the
//! RuntimeDefault seccomp profile (`render::deployment`), which covers every container that
//! does not override them.

use k8s_openapi::api::core::v1::{Capabilities, Container, SecurityContext};

/// The only capability the restricted standard lets a container add.
const ADDABLE_CAPABILITY: &str = "NET_BIND_SERVICE";

/// What `container` sets against the restricted standard: (field below the container, what to
/// do instead).
pub fn violations(container: &Container) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut refuse = |field: &str, message: &str| found.push((field.to_string(), message.to_string()));
    for (i, port) in container.ports.iter().flatten().enumerate() {
        if port.host_port.is_some_and(|p| p != 0) {
            refuse(
                &format!("ports[{i}].hostPort"),
                "host ports are not allowed (Pod Security baseline): remove it",
            );
        }
    }
    let Some(context) = &container.security_context else { return found };
    if context.privileged == Some(true) {
        refuse("securityContext.privileged", "a privileged container is not allowed: remove it or set false");
    }
    if context.allow_privilege_escalation == Some(true) {
        refuse(
            "securityContext.allowPrivilegeEscalation",
            "privilege escalation is not allowed (restricted Pod Security): remove it or set false",
        );
    }
    if context.run_as_non_root == Some(false) {
        refuse("securityContext.runAsNonRoot", "containers must run as non-root: remove it or set true");
    }
    if context.run_as_user == Some(0) {
        refuse(
            "securityContext.runAsUser",
            "uid 0 is root: use a non-zero uid, or remove it to run as the pod's user",
        );
    }
    let added = context.capabilities.as_ref().and_then(|c| c.add.as_ref());
    for (i, capability) in added.into_iter().flatten().enumerate() {
        if capability != ADDABLE_CAPABILITY {
            refuse(
                &format!("securityContext.capabilities.add[{i}]"),
                &format!(
                    "{capability} may not be added (restricted Pod Security allows only {ADDABLE_CAPABILITY})"
                ),
            );
        }
    }
    if let Some(profile) = &context.seccomp_profile
        && !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")
    {
        refuse(
            "securityContext.seccompProfile.type",
            &format!(
                "'{}' is not allowed: use RuntimeDefault, or remove it to inherit the pod's",
                profile.type_
            ),
        );
    }
    if context.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        refuse("securityContext.windowsOptions.hostProcess", "host processes are not allowed: remove it");
    }
    if context.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        refuse("securityContext.procMount", "only the Default proc mount is allowed: remove it");
    }
    found
}

/// `container` with the restricted settings it leaves unset filled in; what it sets is kept
/// (validation has refused what breaks the standard).
pub fn restrict(container: &Container) -> Container {
    let mut context = container.security_context.clone().unwrap_or_default();
    context.allow_privilege_escalation.get_or_insert(false);
    context.run_as_non_root.get_or_insert(true);
    let capabilities = context.capabilities.get_or_insert_with(Capabilities::default);
    let drop = capabilities.drop.get_or_insert_with(Vec::new);
    if !drop.iter().any(|c| c == "ALL") {
        drop.insert(0, "ALL".into());
    }
    Container { security_context: Some(context), ..container.clone() }
}

/// Whether a container, in a pod whose own context has `run_as_non_root` and the
/// RuntimeDefault seccomp profile, passes the restricted standard (used by the tests on every
/// rendered container).
pub fn is_restricted(container: &Container, pod_non_root: bool, pod_seccomp: bool) -> bool {
    let default = SecurityContext::default();
    let context = container.security_context.as_ref().unwrap_or(&default);
    violations(container).is_empty()
        && context.allow_privilege_escalation == Some(false)
        && context
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
        && (context.run_as_non_root == Some(true) || (pod_non_root && context.run_as_non_root.is_none()))
        && (context.seccomp_profile.is_some() || pod_seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_plain_sidecar_is_made_restricted() {
        let c = restrict(&container("{name: exporter, image: x}"));
        assert!(violations(&c).is_empty());
        assert!(is_restricted(&c, true, true));
        assert!(!is_restricted(&container("{name: exporter, image: x}"), true, true));
    }

    #[test]
    fn what_a_sidecar_sets_is_kept_and_all_is_dropped() {
        let c = restrict(&container(
            "{name: e, image: x, securityContext: {runAsUser: 2000, readOnlyRootFilesystem: true, capabilities: {drop: [NET_RAW], add: [NET_BIND_SERVICE]}}}",
        ));
        let context = c.security_context.unwrap();
        assert_eq!(context.run_as_user, Some(2000));
        assert_eq!(context.read_only_root_filesystem, Some(true));
        let caps = context.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL", "NET_RAW"]);
        assert_eq!(caps.add.unwrap(), ["NET_BIND_SERVICE"]);
    }

    #[test]
    fn settings_against_the_standard_are_named() {
        let c = container(
            "{name: e, image: x, ports: [{containerPort: 80, hostPort: 80}], securityContext: {privileged: true, allowPrivilegeEscalation: true, runAsNonRoot: false, runAsUser: 0, capabilities: {add: [SYS_ADMIN]}, seccompProfile: {type: Unconfined}}}",
        );
        let fields: Vec<String> = violations(&c).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "ports[0].hostPort",
                "securityContext.privileged",
                "securityContext.allowPrivilegeEscalation",
                "securityContext.runAsNonRoot",
                "securityContext.runAsUser",
                "securityContext.capabilities.add[0]",
                "securityContext.seccompProfile.type",
            ]
        );
    }
}
