//! Reads what the pods (and their Deployments) say into the drain machine's observations. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};

use crate::{
    api::{OMERO_CONTAINER, ObjectProblem, ObjectProblemReason, keys},
    lifecycle::{PodObservation, ServerContainer},
    render,
};

/// Waiting reasons that mean the pod will not start without someone changing something.
const FAILING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Refusals that hit a Deployment's pods rather than the operator's own writes (a
/// ResourceQuota, a LimitRange, Pod Security admission: the ReplicaSet cannot create the pod),
/// which the Deployment reports in its `ReplicaFailure` condition.
pub fn pod_refusals<'a>(deployments: impl IntoIterator<Item = &'a Deployment>) -> Vec<ObjectProblem> {
    deployments
        .into_iter()
        .filter_map(|d| {
            let failure = d
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
            let name = d.metadata.name.clone().unwrap_or_default();
            let why = failure.message.clone().or_else(|| failure.reason.clone()).unwrap_or_default();
            Some(ObjectProblem {
                kind: "Deployment".into(),
                name: name.clone(),
                reason: ObjectProblemReason::Refused,
                message: format!(
                    "the API server refused to create the pod of Deployment {name}: {why}; fix the quota, limit range \
                     or admission policy it names, or the node's resources"
                ),
            })
        })
        .collect()
}

/// The Deployments among `deployments` that the cluster (`owner_uid`) controls, and each
/// node's current pod of them ([`pods_by_node`]): what both observing and deciding start from.
pub fn of_cluster<'a>(
    deployments: &'a [Deployment],
    pods: &[Pod],
    owner_uid: Option<&str>,
) -> (Vec<&'a Deployment>, BTreeMap<String, PodObservation>) {
    let ours: Vec<&Deployment> =
        deployments.iter().filter(|d| crate::ownership::is_controlled_by(&d.metadata, owner_uid)).collect();
    let names: Vec<&str> = ours.iter().filter_map(|d| d.metadata.name.as_deref()).collect();
    let by_node = pods_by_node(pods, &names);
    (ours, by_node)
}

/// Each node's current pod, by node name. When a node has several (the old one still
/// terminating), the live one wins, then the newest. Only pods of the Deployments named in
/// `ours` (those the cluster controls) count: a pod that merely carries the cluster's labels is
/// never labelled, probed or drained.
pub fn pods_by_node(pods: &[Pod], ours: &[&str]) -> BTreeMap<String, PodObservation> {
    let mut chosen: BTreeMap<String, &Pod> = BTreeMap::new();
    for pod in pods.iter().filter(|p| of_deployment(p, ours)) {
        let Some(node) = pod.metadata.labels.as_ref().and_then(|l| l.get(keys::NODE_LABEL)) else {
            continue;
        };
        let better = match chosen.get(node) {
            None => true,
            Some(current) => rank(pod) > rank(current),
        };
        if better {
            chosen.insert(node.clone(), pod);
        }
    }
    chosen.into_iter().map(|(node, pod)| (node, observe_pod(pod))).collect()
}

/// A Deployment's pods are controlled by its ReplicaSets, named `<deployment>-<pod-template-hash>`
/// (the Deployment controller's naming, which the pod's own `pod-template-hash` label repeats).
fn of_deployment(pod: &Pod, deployments: &[&str]) -> bool {
    let Some(hash) = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")) else {
        return false;
    };
    pod.metadata.owner_references.iter().flatten().any(|r| {
        r.controller == Some(true)
            && r.kind == "ReplicaSet"
            && r.name
                .strip_suffix(hash.as_str())
                .and_then(|d| d.strip_suffix('-'))
                .is_some_and(|d| deployments.contains(&d))
    })
}

fn rank(pod: &Pod) -> (bool, Option<k8s_openapi::jiff::Timestamp>) {
    (pod.metadata.deletion_timestamp.is_none(), pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// What a pod says of its node. Only the OMERO server container decides whether the node can
/// run: a sidecar that crash-loops never makes a node fail.
pub fn observe_pod(pod: &Pod) -> PodObservation {
    let status = pod.status.as_ref();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = !terminating
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let server = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == OMERO_CONTAINER));
    let failure = server.and_then(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        // What the container said when it last stopped (its termination message, e.g. a grid
        // master refusing to start), which the back-off message does not carry.
        let last_words = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.as_deref())
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| format!("; it last stopped saying: {m}"))
            .unwrap_or_default();
        FAILING_REASONS.contains(&reason).then(|| match &waiting.message {
            Some(message) => format!("container {}: {reason}: {message}{last_words}", c.name),
            None => format!("container {}: {reason}{last_words}", c.name),
        })
    });
    // A pod without a phase (never in a real API server) is taken as running when ready.
    let running = !terminating && status.and_then(|s| s.phase.as_deref()).map_or(ready, |p| p == "Running");
    PodObservation {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        ready,
        routable: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::ROUTABLE_LABEL))
            .is_some_and(|v| v == "true"),
        image: pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == OMERO_CONTAINER))
            .and_then(|c| c.image.clone()),
        failure,
        revision: render::revision_of(&pod.metadata).map(str::to_string),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        running,
        server: server.map(|c| ServerContainer {
            id: c.container_id.clone(),
            restarts: c.restart_count,
            started: c.started == Some(true),
        }),
        uid: pod.metadata.uid.clone(),
        kube_node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slim_pod_keeps_what_is_read_and_observes_the_same() {
        let full: Pod = serde_saphyr::from_str(
            r#"
metadata:
  name: omero-rw-5f7d-x
  labels: {omero.openmicroscopy.org/node: rw, omero.openmicroscopy.org/routable: "true", pod-template-hash: 5f7d}
  annotations: {omero.openmicroscopy.org/revision: r1}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: omero-rw-5f7d, uid: rs1, controller: true}]
spec:
  nodeName: k8s-1
  containers:
  - name: omero-server
    image: "openmicroscopy/omero-server:5.6"
    env: [{name: CONFIG_omero_db_host, value: db}]
    args: ["a long script"]
  - {name: exporter, image: e}
  volumes: [{name: var, emptyDir: {}}]
status:
  phase: Running
  podIP: 10.0.0.1
  conditions: [{type: Ready, status: "True"}]
  containerStatuses: [{name: omero-server, ready: true, restartCount: 0, image: x, imageID: x, started: true}]
"#,
        )
        .unwrap();
        // What the pod cache gives a reconcile.
        let slim = crate::controller::cache::Cached::new(full.clone()).object().unwrap();
        let spec = slim.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("k8s-1"));
        assert_eq!(spec.containers.len(), 2);
        assert!(spec.containers.iter().all(|c| c.env.is_none() && c.args.is_none()));
        assert!(spec.volumes.is_none());
        assert_eq!(slim.status, full.status);
        assert_eq!(pods_by_node(&[slim], &["omero-rw"]), pods_by_node(&[full], &["omero-rw"]));
    }

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const READY: &str = r#"
metadata:
  name: omero-rw-abc
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels: {omero.openmicroscopy.org/node: rw, omero.openmicroscopy.org/routable: "true", pod-template-hash: 5f7d}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: omero-rw-5f7d, uid: rs1, controller: true}]
spec:
  containers: [{name: omero-server, image: "openmicroscopy/omero-server:5.6"}]
status:
  podIP: 10.0.0.5
  conditions: [{type: Ready, status: "True"}]
"#;

    #[test]
    fn a_ready_labelled_pod_is_ready_and_routable() {
        let o = observe_pod(&pod(READY));
        assert_eq!(o.name, "omero-rw-abc");
        assert_eq!(o.ip.as_deref(), Some("10.0.0.5"));
        assert!(o.ready && o.routable);
        assert_eq!(o.image.as_deref(), Some("openmicroscopy/omero-server:5.6"));
        assert_eq!(o.failure, None);
    }

    #[test]
    fn the_image_is_omeros_whatever_the_container_order() {
        let mut p = pod(READY);
        let spec = p.spec.as_mut().unwrap();
        let mut exporter = spec.containers[0].clone();
        exporter.name = "sessions-exporter".into();
        exporter.image = Some("exporter:1".into());
        spec.containers.insert(0, exporter);
        assert_eq!(observe_pod(&p).image.as_deref(), Some("openmicroscopy/omero-server:5.6"));
    }

    #[test]
    fn a_terminating_pod_is_not_ready() {
        let mut p = pod(READY);
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        assert!(!observe_pod(&p).ready);
    }

    #[test]
    fn a_crash_looping_pod_reports_the_failure() {
        let p = pod(r#"
metadata: {name: p, labels: {omero.openmicroscopy.org/node: rw}}
status:
  conditions: [{type: Ready, status: "False"}]
  containerStatuses:
  - name: omero-server
    image: x
    imageID: ""
    ready: false
    restartCount: 5
    state: {waiting: {reason: CrashLoopBackOff, message: back-off 5m0s}}
"#);
        let o = observe_pod(&p);
        assert!(!o.ready && !o.routable);
        assert_eq!(o.failure.as_deref(), Some("container omero-server: CrashLoopBackOff: back-off 5m0s"));
    }

    /// A container that says why it stopped (its termination message: a grid master that
    /// refuses to start writes one) has that reason in the failure, not only the back-off.
    #[test]
    fn a_crash_loop_reports_what_the_container_last_said() {
        let p = pod(r#"
metadata: {name: p, labels: {omero.openmicroscopy.org/node: main}}
status:
  containerStatuses:
  - name: omero-server
    image: x
    imageID: ""
    ready: false
    restartCount: 3
    state: {waiting: {reason: CrashLoopBackOff, message: back-off 40s}}
    lastState: {terminated: {exitCode: 1, reason: Error, message: "omero-operator: the pod IP fd00::7 is IPv6\n"}}
"#);
        assert_eq!(
            observe_pod(&p).failure.as_deref(),
            Some(
                "container omero-server: CrashLoopBackOff: back-off 40s; it last stopped saying: omero-operator: the \
                 pod IP fd00::7 is IPv6"
            )
        );
    }

    #[test]
    fn a_crash_looping_sidecar_does_not_make_the_node_fail() {
        let p = pod(r#"
metadata: {name: p, labels: {omero.openmicroscopy.org/node: rw}}
status:
  phase: Running
  conditions: [{type: Ready, status: "False"}]
  containerStatuses:
  - {name: omero-server, image: x, imageID: "", ready: true, restartCount: 0, started: true, containerID: "containerd://a"}
  - name: sessions-exporter
    image: y
    imageID: ""
    ready: false
    restartCount: 7
    state: {waiting: {reason: CrashLoopBackOff}}
"#);
        let o = observe_pod(&p);
        assert_eq!(o.failure, None);
        assert!(o.running);
        assert_eq!(
            o.server,
            Some(ServerContainer { id: Some("containerd://a".into()), restarts: 0, started: true })
        );
    }

    #[test]
    fn the_live_pod_wins_over_a_terminating_newer_one_and_newest_over_older() {
        let old = pod(READY);
        let mut newer = pod(READY);
        newer.metadata.name = Some("omero-rw-new".into());
        newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-02T00:00:00Z".parse().unwrap(),
        ));
        let by_node = pods_by_node(&[old.clone(), newer.clone()], &["omero-rw"]);
        assert_eq!(by_node["rw"].name, "omero-rw-new");
        newer.metadata.deletion_timestamp = newer.metadata.creation_timestamp.clone();
        let by_node = pods_by_node(&[newer, old], &["omero-rw"]);
        assert_eq!(by_node["rw"].name, "omero-rw-abc");
    }

    #[test]
    fn a_replica_failure_is_a_refusal_of_the_deployments_pods() {
        let d: Deployment = serde_saphyr::from_str(
            r#"
metadata: {name: omero-rw}
status:
  conditions:
  - {type: Available, status: "False"}
  - {type: ReplicaFailure, status: "True", reason: FailedCreate, message: 'pods "omero-rw-5f7d-x" is forbidden: exceeded quota: compute, requested: limits.memory=16Gi'}
"#,
        )
        .unwrap();
        let problems = pod_refusals([&d]);
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].kind.as_str(), problems[0].name.as_str()), ("Deployment", "omero-rw"));
        assert_eq!(problems[0].reason, ObjectProblemReason::Refused);
        assert!(problems[0].message.contains("exceeded quota: compute"), "{}", problems[0].message);
        let healthy: Deployment = serde_saphyr::from_str(
            "metadata: {name: x}\nstatus: {conditions: [{type: Available, status: \"True\"}]}",
        )
        .unwrap();
        assert!(pod_refusals([&healthy]).is_empty());
    }

    #[test]
    fn pods_without_a_node_label_are_ignored() {
        let mut p = pod(READY);
        p.metadata.labels = None;
        assert!(pods_by_node(&[p], &["omero-rw"]).is_empty());
    }

    #[test]
    fn only_pods_of_the_clusters_own_deployments_count() {
        let p = pod(READY);
        assert_eq!(pods_by_node(std::slice::from_ref(&p), &["omero-rw"]).len(), 1);
        assert!(pods_by_node(std::slice::from_ref(&p), &["omero-ro"]).is_empty(), "another Deployment's pod");
        assert!(
            pods_by_node(std::slice::from_ref(&p), &[]).is_empty(),
            "a Deployment the cluster does not control"
        );
        let mut bare = p.clone();
        bare.metadata.owner_references = None;
        assert!(pods_by_node(&[bare], &["omero-rw"]).is_empty(), "a pod with the labels but no owner");
    }
}
