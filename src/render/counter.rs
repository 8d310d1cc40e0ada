//! The built-in session counter: the operator's own script (`counter/omero_session_counter.py`,
//! compiled into the binary) in one ConfigMap per cluster, and a container beside the server
//! in the pod of each node whose session probe is `counter`, run from the node's own image.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, ResourceRequirements,
        SecretKeySelector, Volume, VolumeMount,
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
const PYTHON: &str = "/opt/omero/server/venv3/bin/python";
/// Seconds between samples.
const SAMPLE_INTERVAL: &str = "5";

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
    let preference = [("glacier2-tcp", "tcp"), ("glacier2-ssl", "ssl"), ("glacier2-ws", "ws"), ("glacier2-wss", "wss")];
    preference
        .iter()
        .find_map(|(name, scheme)| {
            ports.iter().find(|(n, _)| n == name).map(|(_, port)| format!("{scheme}://127.0.0.1:{port}"))
        })
        .unwrap_or_else(|| "tcp://127.0.0.1:4063".into())
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
pub(crate) fn container(cluster: &OmeroCluster, node: &NodeSpec, spec: &SessionCounterSpec, server: &Container) -> Container {
    let credentials = &spec.credentials_secret;
    let literal = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
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
            literal("OMERO_COUNTER_INTERVAL", SAMPLE_INTERVAL.into()),
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
