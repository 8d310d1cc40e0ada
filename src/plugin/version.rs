//! `kubectl omero version`: the plugin's version, the Kubernetes API server's, and the
//! operator's as deployed (its Deployments, found by the chart's labels), with a warning when
//! the plugin and an operator differ in minor version, as `kubectl version` warns of skew.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;

/// The chart's label on the operator's Deployment (`omero-operator.selectorLabels`).
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=omero-operator";

/// The chart's label with its `appVersion` (`omero-operator.labels`).
const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// Where the operator is looked for when Deployments may not be listed in every namespace: the
/// namespace the README installs it in.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "omero-system";

/// The plugin's own version: the package version, and the commit it was built from when the
/// build was given one (`OMERO_OPERATOR_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`).
/// Not read from git by a build script: that would rebuild the whole crate after every commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginVersion {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
}

impl PluginVersion {
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("OMERO_OPERATOR_GIT_COMMIT").filter(|c| !c.is_empty()).map(String::from),
        }
    }
}

/// One Deployment of the operator, as deployed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorDeployment {
    pub namespace: String,
    pub name: String,
    /// The image's tag when it is a version, else the chart's `app.kubernetes.io/version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub replicas: i32,
    pub ready_replicas: i32,
}

impl OperatorDeployment {
    pub fn of(deployment: &Deployment) -> Self {
        let image = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == "operator").or_else(|| p.containers.first()))
            .and_then(|c| c.image.clone());
        // `image.tag` overrides the chart's appVersion for the image, and the image is what
        // runs; a tag that is no version (`latest`, `main`) says nothing, the label does.
        let version = image
            .as_deref()
            .and_then(image_tag)
            .filter(|tag| minor_version(tag).is_some())
            .map(String::from)
            .or_else(|| deployment.labels().get(VERSION_LABEL).cloned());
        Self {
            namespace: deployment.namespace().unwrap_or_default(),
            name: deployment.name_any(),
            version,
            image,
            replicas: deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready_replicas: deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        }
    }
}

/// The tag of an image reference (`registry:5000/repo:tag@sha256:...` gives `tag`); none when
/// it has none.
fn image_tag(image: &str) -> Option<&str> {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    name.rsplit_once(':').map(|(_, tag)| tag).filter(|tag| !tag.contains('/'))
}

/// Major and minor of a version (`0.1.0`, `v1.2`, `1.2.3-rc1`); none for anything else.
pub fn minor_version(version: &str) -> Option<(u64, u64)> {
    let version = version.strip_prefix('v').unwrap_or(version);
    let mut parts = version.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The warning for an operator whose major or minor version is not the plugin's. Before 1.0 a
/// minor version may change the API and the annotations the plugin writes, so unlike
/// kubectl's ±1 no skew is taken as supported. None when they match or either is not a
/// version.
pub fn skew_warning(plugin: &str, operator: &OperatorDeployment) -> Option<String> {
    let theirs = operator.version.as_deref()?;
    let (mine, theirs_minor) = (minor_version(plugin)?, minor_version(theirs)?);
    (mine != theirs_minor).then(|| {
        format!(
            "version difference between the plugin ({}.{}) and the operator {}/{} ({}.{}): the plugin may \
             write requests that operator does not understand, or misread its status; use the plugin of \
             the operator's release",
            mine.0, mine.1, operator.namespace, operator.name, theirs_minor.0, theirs_minor.1
        )
    })
}

/// Where the operator was looked for and what was found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorLookup {
    pub deployments: Vec<OperatorDeployment>,
    /// Why none is shown, or where they were looked for when not everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Finds the operator's Deployments: in `namespace` when one is named, else in every namespace,
/// and where that is forbidden in [`DEFAULT_OPERATOR_NAMESPACE`].
pub async fn find_operators(client: &Client, namespace: Option<&str>) -> OperatorLookup {
    let params = ListParams::default().labels(OPERATOR_SELECTOR);
    let in_namespace = |ns: &str| Api::<Deployment>::namespaced(client.clone(), ns);
    let found = |list: Vec<Deployment>, note: Option<String>| OperatorLookup {
        deployments: list.iter().map(OperatorDeployment::of).collect(),
        note,
    };
    let none_in = |ns: &str| format!("no Deployment labelled {OPERATOR_SELECTOR} in namespace {ns}");
    if let Some(ns) = namespace {
        return match in_namespace(ns).list(&params).await {
            Ok(list) if list.items.is_empty() => {
                OperatorLookup { note: Some(none_in(ns)), ..Default::default() }
            }
            Ok(list) => found(list.items, None),
            Err(e) => OperatorLookup { note: Some(refusal(ns, &e)), ..Default::default() },
        };
    }
    match Api::<Deployment>::all(client.clone()).list(&params).await {
        Ok(list) if list.items.is_empty() => OperatorLookup {
            note: Some(format!(
                "no Deployment labelled {OPERATOR_SELECTOR} in any namespace: is the operator installed (its chart)?"
            )),
            ..Default::default()
        },
        Ok(list) => found(list.items, None),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let ns = DEFAULT_OPERATOR_NAMESPACE;
            let cannot = "you may not list Deployments in every namespace";
            match in_namespace(ns).list(&params).await {
                Ok(list) if list.items.is_empty() => OperatorLookup {
                    note: Some(format!(
                        "{cannot}, and {}: name its namespace with --operator-namespace",
                        none_in(ns)
                    )),
                    ..Default::default()
                },
                Ok(list) => found(list.items, Some(format!("{cannot}; looked in {ns}"))),
                Err(e) => OperatorLookup {
                    note: Some(format!(
                        "{cannot}; {}: name its namespace with --operator-namespace",
                        refusal(ns, &e)
                    )),
                    ..Default::default()
                },
            }
        }
        Err(e) => OperatorLookup { note: Some(refusal("every namespace", &e)), ..Default::default() },
    }
}

fn refusal(namespace: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(e) if e.code == 403 => {
            format!("may not list Deployments in {namespace} ({})", e.message)
        }
        other => format!("could not list Deployments in {namespace}: {}", super::describe("", other)),
    }
}

/// Everything `kubectl omero version` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub plugin_version: PluginVersion,
    pub server_version: k8s_openapi::apimachinery::pkg::version::Info,
    pub operator: OperatorLookup,
}

impl Versions {
    /// The skew warnings, one per operator Deployment whose version is not the plugin's.
    pub fn warnings(&self) -> Vec<String> {
        self.operator
            .deployments
            .iter()
            .filter_map(|d| skew_warning(&self.plugin_version.version, d))
            .collect()
    }
}

/// The plugin's version in words, as the first line `kubectl version` prints.
pub fn plugin_in_words(plugin: &PluginVersion) -> String {
    match &plugin.git_commit {
        Some(commit) => format!("Plugin Version: {} (commit {commit})\n", plugin.version),
        None => format!("Plugin Version: {}\n", plugin.version),
    }
}

/// The versions in words, one line each, as `kubectl version` prints them.
pub fn in_words(versions: &Versions) -> String {
    let mut out = plugin_in_words(&versions.plugin_version);
    let _ = writeln!(out, "Kubernetes Version: {}", versions.server_version.git_version);
    for d in &versions.operator.deployments {
        let _ = writeln!(
            out,
            "Operator Version: {} ({}/{}, {} of {} ready, image {})",
            d.version.as_deref().unwrap_or("unknown"),
            d.namespace,
            d.name,
            d.ready_replicas,
            d.replicas,
            d.image.as_deref().unwrap_or("none")
        );
    }
    match (&versions.operator.note, versions.operator.deployments.is_empty()) {
        (Some(note), true) => {
            let _ = writeln!(out, "Operator Version: unknown: {note}");
        }
        (Some(note), false) => {
            let _ = writeln!(out, "({note})");
        }
        (None, _) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(version: Option<&str>) -> OperatorDeployment {
        OperatorDeployment {
            namespace: "omero-system".into(),
            name: "omero-operator".into(),
            version: version.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_different_major_or_minor_version_is_skew() {
        assert_eq!(skew_warning("0.1.0", &operator(Some("0.1.7"))), None, "a patch release");
        assert_eq!(skew_warning("0.1.0", &operator(Some("v0.1.0-rc1"))), None);
        let warning = skew_warning("0.2.0", &operator(Some("0.1.3"))).expect("a minor version apart");
        assert!(
            warning.starts_with("version difference between the plugin (0.2) and the operator omero-system/omero-operator (0.1)"),
            "{warning}"
        );
        assert!(skew_warning("1.1.0", &operator(Some("0.1.0"))).is_some(), "a major version apart");
        assert_eq!(
            skew_warning("0.1.0", &operator(Some("latest"))),
            None,
            "not a version: nothing to compare"
        );
        assert_eq!(skew_warning("0.1.0", &operator(None)), None);
    }

    #[test]
    fn the_operators_version_is_its_images_tag_else_the_charts_label() {
        let deployment = |image: &str| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "omero-operator", "namespace": "omero-system",
                             "labels": {"app.kubernetes.io/name": "omero-operator", "app.kubernetes.io/version": "0.1.0"}},
                "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "operator", "image": image}]}}},
                "status": {"readyReplicas": 1}
            }))
            .unwrap()
        };
        let tagged = OperatorDeployment::of(&deployment("registry.example.org:5000/omero-operator:0.2.1"));
        assert_eq!(tagged.version.as_deref(), Some("0.2.1"), "the image runs");
        assert_eq!((tagged.replicas, tagged.ready_replicas), (2, 1));
        let latest = OperatorDeployment::of(&deployment("registry.example.org:5000/omero-operator:latest"));
        assert_eq!(latest.version.as_deref(), Some("0.1.0"), "the chart's appVersion");
        let digest = OperatorDeployment::of(&deployment("omero-operator:0.3.0@sha256:0123"));
        assert_eq!(digest.version.as_deref(), Some("0.3.0"));
        assert_eq!(image_tag("registry.example.org:5000/omero-operator"), None);
    }

    #[test]
    fn versions_read_as_kubectl_version_prints_them() {
        let versions = Versions {
            plugin_version: PluginVersion { version: "0.1.0".into(), git_commit: Some("1a2b3c4".into()) },
            server_version: k8s_openapi::apimachinery::pkg::version::Info {
                git_version: "v1.28.7".into(),
                ..Default::default()
            },
            operator: OperatorLookup {
                deployments: vec![OperatorDeployment {
                    image: Some("registry.example.org/omero-operator:0.1.0".into()),
                    replicas: 2,
                    ready_replicas: 2,
                    ..operator(Some("0.1.0"))
                }],
                note: None,
            },
        };
        assert_eq!(
            in_words(&versions),
            "Plugin Version: 0.1.0 (commit 1a2b3c4)\nKubernetes Version: v1.28.7\nOperator Version: 0.1.0 \
             (omero-system/omero-operator, 2 of 2 ready, image registry.example.org/omero-operator:0.1.0)\n"
        );
        let missing = Versions {
            operator: OperatorLookup { deployments: vec![], note: Some("no Deployment labelled x".into()) },
            ..versions
        };
        assert!(in_words(&missing).ends_with("Operator Version: unknown: no Deployment labelled x\n"));
    }
}
