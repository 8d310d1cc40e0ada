//! The built-in session counter: the operator's own script (`counter/omero_session_counter.py`,
//! compiled into the binary) in one ConfigMap per cluster, and a container beside the server
//! in the pod of each node whose session probe is `counter`, run from the node's own image.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
        ResourceRequirements, SecretKeySelector, Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::ResourceExt;

use super::labels;
use crate::{
    api::{NodeSpec, OmeroCluster, SessionCounterSpec, SessionProbeKind},
    omero::COUNTER_PORT,
};

/// The script, as shipped in this binary.
pub const SCRIPT: &str = include_str!("../../counter/omero_session_counter.py");
/// Its file name in the ConfigMap and in the container.
pub const SCRIPT_FILE: &str = "omero_session_counter.py";
/// The counter container's name in a node's pod.
pub use crate::api::SESSION_COUNTER_CONTAINER as CONTAINER_NAME;
/// The pod template annotation carrying the script's digest: a new script is a new pod
/// template, so it reaches running nodes through the normal drained rollout.
pub const SCRIPT_ANNOTATION: &str = "omero.openmicroscopy.org/session-counter-script";
/// `app.kubernetes.io/component` of the ConfigMap.
const COMPONENT: &str = "session-counter";
const VOLUME: &str = "session-counter";
const MOUNT_DIR: &str = "/opt/omero-operator/session-counter";
/// The Python of the official image's venv, which has omero-py and Ice.
pub(super) const PYTHON: &str = "/opt/omero/server/venv3/bin/python";
/// The least time between two samples, in seconds: the counter samples only when the operator's
/// probe asks, and a request sooner than this after the last sample reads that one again.
const MIN_SAMPLE_INTERVAL: &str = "5";

/// The ConfigMap holding the script: `<cluster>-session-counter`.
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-session-counter")
}

/// Whether `node` runs the counter (its effective probe is `counter`).
pub(crate) fn runs_on(cluster: &OmeroCluster, node: &NodeSpec) -> bool {
    cluster.spec.session_probe_of(node).kind == SessionProbeKind::Counter
}

/// The script's digest, for [`SCRIPT_ANNOTATION`].
pub(crate) fn script_digest() -> String {
    super::revision::of_text(SCRIPT)
}

/// The cluster's ConfigMap, when any node runs the counter.
pub(crate) fn config_map(cluster: &OmeroCluster) -> Option<ConfigMap> {
    if !cluster.spec.nodes.iter().any(|n| runs_on(cluster, n)) {
        return None;
    }
    let name = cluster.name_any();
    let mut selector = labels::cluster_selector(&name);
    selector.extend(labels::app_labels(&name, COMPONENT));
    Some(ConfigMap {
        metadata: labels::object_meta(cluster, config_map_name(&name), selector),
        data: Some(BTreeMap::from([(SCRIPT_FILE.to_string(), SCRIPT.to_string())])),
        ..ConfigMap::default()
    })
}

/// The volume of a counting node's pod that holds the script.
pub(crate) fn volume(cluster: &OmeroCluster) -> Volume {
    Volume {
        name: VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&cluster.name_any()),
            default_mode: Some(0o444),
            optional: Some(false),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Restarts the script whenever it exits, and stops it on SIGTERM: the container itself never
/// ends, so a failing script (a server that refuses it, an image without omero-py) never makes
/// the container crash-loop, and the pod's readiness (which needs every container; native
/// sidecars need Kubernetes 1.29) never depends on the counter's health. The failure shows as
/// a failing probe: nothing answers on the port, or the answer says why.
fn supervisor() -> String {
    format!(
        "trap 'kill $child 2>/dev/null; exit 0' TERM INT\n\
         while :; do\n  \
           PYTHONDONTWRITEBYTECODE=1 {PYTHON} {MOUNT_DIR}/{SCRIPT_FILE} & child=$!\n  \
           wait $child; code=$?\n  \
           echo \"session counter exited with status $code; starting it again in 10s\" >&2\n  \
           sleep 10 & child=$!; wait $child\n\
         done\n"
    )
}

/// The local Glacier2 the counter logs in through: the node's own, on the first transport
/// it listens on (plain TCP when it can: the connection never leaves the pod).
fn server_url(cluster: &OmeroCluster, node: &NodeSpec) -> String {
    let ports = super::client_ports(cluster, node);
    let preference =
        [("glacier2-tcp", "tcp"), ("glacier2-ssl", "ssl"), ("glacier2-ws", "ws"), ("glacier2-wss", "wss")];
    preference
        .iter()
        .find_map(|(name, scheme)| {
            ports.iter().find(|(n, _)| n == name).map(|(_, port)| format!("{scheme}://127.0.0.1:{port}"))
        })
        .unwrap_or_else(|| {
            format!("tcp://127.0.0.1:{}", super::omero_ports(cluster).get(crate::api::ports::Port::Tcp))
        })
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("10m")), ("memory".into(), q("64Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("256Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The counter container of `node`'s pod. `server` is the rendered OMERO container, whose
/// image and security settings it copies. No probes: a not-ready container would make the pod
/// not ready and drop it from every Service.
pub(crate) fn container(
    cluster: &OmeroCluster,
    node: &NodeSpec,
    spec: &SessionCounterSpec,
    server: &Container,
) -> Container {
    let credentials = &spec.credentials_secret;
    let literal =
        |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
    Container {
        name: CONTAINER_NAME.into(),
        image: server.image.clone(),
        image_pull_policy: server.image_pull_policy.clone(),
        command: Some(vec!["/bin/sh".into(), "-c".into(), supervisor()]),
        env: Some(vec![
            secret_env("OMERO_COUNTER_USER", &credentials.name, credentials.user_key()),
            secret_env("OMERO_COUNTER_PASSWORD", &credentials.name, credentials.password_key()),
            literal("OMERO_COUNTER_SERVER", server_url(cluster, node)),
            literal("OMERO_COUNTER_PORT", COUNTER_PORT.to_string()),
            literal("OMERO_COUNTER_MIN_INTERVAL", MIN_SAMPLE_INTERVAL.into()),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("session-count".into()),
            container_port: i32::from(COUNTER_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME.into(),
            mount_path: MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: server.security_context.clone(),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, cluster, pod_spec},
    };

    fn with_counter(extra: &str) -> String {
        format!("{BASE}  sessionCounter:\n    credentialsSecret: {{name: omero-monitor}}\n{extra}")
    }

    fn counter_of<'a>(desired: &'a crate::render::Desired, node: &str) -> Option<&'a Container> {
        pod_spec(desired, node).containers.iter().find(|c| c.name == CONTAINER_NAME)
    }

    #[test]
    fn a_read_only_node_counts_with_the_script_from_the_clusters_config_map() {
        let desired = render(&cluster(&with_counter("")));
        // The read-only node runs it; the read-write node keeps the database probe.
        assert!(counter_of(&desired, "rw").is_none());
        let c = counter_of(&desired, "ro").expect("a counter container on the read-only node");
        let pod = pod_spec(&desired, "ro");
        let server = &pod.containers[0];
        assert_eq!(
            pod.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["omero-server", "session-counter", "omero-logs"]
        );
        assert_eq!(c.image, server.image, "the node's own image");
        assert_eq!(c.security_context, server.security_context, "the server container's security settings");
        assert_eq!((&c.readiness_probe, &c.liveness_probe, &c.startup_probe), (&None, &None, &None));
        let script = c.command.as_ref().unwrap().join(" ");
        assert!(
            script.contains("/opt/omero/server/venv3/bin/python /opt/omero-operator/session-counter/omero_session_counter.py"),
            "{script}"
        );
        let env: BTreeMap<&str, &EnvVar> = c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
        for (name, key) in [("OMERO_COUNTER_USER", "username"), ("OMERO_COUNTER_PASSWORD", "password")] {
            let e = env[name];
            assert_eq!(e.value, None, "{name} is never in the pod spec in clear");
            let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("omero-monitor", key));
        }
        assert_eq!(env["OMERO_COUNTER_SERVER"].value.as_deref(), Some("tcp://127.0.0.1:4063"));
        assert_eq!(env["OMERO_COUNTER_PORT"].value.as_deref(), Some("9450"));
        assert_eq!(env["OMERO_COUNTER_MIN_INTERVAL"].value.as_deref(), Some("5"));
        assert!(SCRIPT.contains("\"OMERO_COUNTER_MIN_INTERVAL\""), "the name the script reads");
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9450);
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("10m", "64Mi"));
        // The script, mounted read-only from the cluster's ConfigMap.
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/opt/omero-operator/session-counter", Some(true))
        );
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
        assert_eq!(volume.config_map.as_ref().unwrap().name, "omc-session-counter");
        assert_eq!(desired.config_maps.len(), 1);
        let map = &desired.config_maps[0];
        assert_eq!(map.metadata.name.as_deref(), Some("omc-session-counter"));
        assert_eq!(map.data.as_ref().unwrap()[SCRIPT_FILE], SCRIPT);
        assert!(SCRIPT.contains("def count_sessions("), "the real script is shipped");
        let owner = &map.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("OmeroCluster", Some(true)));
        assert_eq!(map.metadata.labels.as_ref().unwrap()[crate::api::keys::CLUSTER_LABEL], "omc");
    }

    #[test]
    fn absent_unless_asked_for() {
        let desired = render(&cluster(BASE));
        assert!(desired.config_maps.is_empty());
        for node in ["rw", "ro"] {
            assert!(counter_of(&desired, node).is_none(), "{node}");
            let template =
                &crate::render::tests::deployment_of(&desired, node).spec.as_ref().unwrap().template;
            let annotations = template.metadata.as_ref().unwrap().annotations.clone().unwrap_or_default();
            assert!(!annotations.contains_key(SCRIPT_ANNOTATION), "{node}");
        }
        // Credentials alone with every node choosing its probe: no counter anywhere.
        let chosen = with_counter("").replace(
            "      readOnly: {db: true, repo: true}\n",
            "      readOnly: {db: true, repo: true}\n      sessionProbe: {type: None}\n",
        );
        let desired = render(&cluster(&chosen));
        assert!(desired.config_maps.is_empty() && counter_of(&desired, "ro").is_none());
    }

    #[test]
    fn every_node_when_asked_and_over_ssl_when_tcp_is_off() {
        let yaml = with_counter("    defaultFor: All\n    resources: {requests: {cpu: 5m, memory: 48Mi}}\n")
            + "  config: {omero.client.icetransports: ssl}\n";
        let desired = render(&cluster(&yaml));
        for node in ["rw", "ro"] {
            let c = counter_of(&desired, node).unwrap_or_else(|| panic!("{node}"));
            let server = c.env.iter().flatten().find(|e| e.name == "OMERO_COUNTER_SERVER").unwrap();
            assert_eq!(server.value.as_deref(), Some("ssl://127.0.0.1:4064"));
            assert_eq!(c.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"].0, "48Mi");
        }
        assert_eq!(desired.config_maps.len(), 1, "one ConfigMap per cluster");
    }

    #[test]
    fn the_scripts_digest_is_in_the_pod_template_so_a_new_script_rolls_out() {
        let desired = render(&cluster(&with_counter("")));
        let template = &crate::render::tests::deployment_of(&desired, "ro").spec.as_ref().unwrap().template;
        let annotations = template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations[SCRIPT_ANNOTATION], script_digest());
        assert_eq!(script_digest(), crate::render::revision::of_text(SCRIPT));
        // Turning the counter on changes the read-only node's revision, not the read-write one's.
        let before = render(&cluster(BASE));
        let revision = |d: &crate::render::Desired, node: &str| {
            crate::render::revision_of(&crate::render::tests::deployment_of(d, node).metadata)
                .map(String::from)
        };
        assert_ne!(revision(&before, "ro"), revision(&desired, "ro"));
        assert_eq!(revision(&before, "rw"), revision(&desired, "rw"));
    }

    #[test]
    fn the_supervisor_is_valid_shell_that_restarts_the_script_and_stops_on_sigterm() {
        let script = supervisor();
        assert!(script.contains("trap '") && script.contains("TERM"), "{script}");
        let status = std::process::Command::new("sh").args(["-n", "-c", &script]).status().expect("sh runs");
        assert!(status.success(), "sh -n refused:\n{script}");
    }
}
