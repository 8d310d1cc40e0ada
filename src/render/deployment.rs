//! A node's Deployment: one replica of the official OMERO.server image.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            Capabilities, Container, ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec,
            SeccompProfile, SecurityContext,
        },
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::ResourceExt;

use super::{config, counter, grid, labels, probes, server_logs, volumes};
use crate::api::{NodeSpec, OmeroCluster, keys};

/// The container every node runs.
pub(crate) use crate::api::OMERO_CONTAINER as CONTAINER_NAME;

/// uid and gid of `omero-server` in the official image.
const OMERO_UID: i64 = 1000;

/// The time a Blitz gets between SIGTERM and SIGKILL. A drain ends before the pod is stopped,
/// so this only covers the shutdown itself: icegridnode deactivates each server (Ice's
/// `IceGrid.Node.WaitTime` defaults to 60 s per server) and Blitz closes its sessions in the
/// database. 300 s, as manics/kubernetes-omero uses, leaves room for a slow database.
const TERMINATION_GRACE_SECONDS: i64 = 300;

/// A rollout that has not become available within the startup probe's budget plus ten
/// minutes (scheduling, image pull) is reported as failed by the Deployment controller.
const PROGRESS_DEADLINE_SECONDS: i32 = probes::STARTUP_BUDGET_SECONDS + 600;

/// A node's Deployment. `restart_token` is the restart request the node's pod runs for (see
/// `crate::request`): it is part of the pod template, so a new token is a new revision.
pub(crate) fn deployment(cluster: &OmeroCluster, node: &NodeSpec, restart_token: Option<&str>) -> Deployment {
    let cluster_name = cluster.name_any();
    let labels = labels::node_labels(&cluster_name, &node.name);
    // Only the pod's: the Deployment's selector never changes, and the scale subresource's
    // selector reads pods.
    let mut pod_labels = labels.clone();
    if crate::pool::is_pool_node(&cluster.spec, &node.name) {
        pod_labels.insert(crate::pool::POOL_LABEL.to_string(), crate::pool::READ_ONLY_POOL.to_string());
    }
    let mut annotations = BTreeMap::new();
    if let Some(token) = restart_token {
        annotations.insert(keys::RESTART_TOKEN_ANNOTATION.to_string(), token.to_string());
    }
    if counter::runs_on(cluster, node) {
        annotations.insert(counter::SCRIPT_ANNOTATION.to_string(), counter::script_digest());
    }
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(cluster, node)),
    };
    let revision = super::revision::of_template(&template);
    template
        .metadata
        .get_or_insert_default()
        .annotations
        .get_or_insert_default()
        .insert(keys::REVISION_ANNOTATION.into(), revision.clone());
    let mut metadata =
        labels::object_meta(cluster, labels::node_object_name(&cluster_name, &node.name), labels.clone());
    metadata.annotations = Some(BTreeMap::from([(keys::REVISION_ANNOTATION.to_string(), revision)]));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            // A stopped cluster's nodes end at zero; the controller sets each node's replicas
            // from its recorded phase, so a node is scaled down only once it is drained.
            replicas: Some(if cluster.spec.stopped { 0 } else { 1 }),
            selector: LabelSelector {
                match_labels: Some(labels::node_selector_labels(&cluster_name, &node.name)),
                match_expressions: None,
            },
            // Never two pods of one node: two Blitz servers with one identity would fight
            // over the repository lock and each other's sessions.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(cluster: &OmeroCluster, node: &NodeSpec) -> PodSpec {
    let spec = &cluster.spec;
    let server = container(cluster, node);
    let counter = spec
        .session_counter
        .as_ref()
        .filter(|_| counter::runs_on(cluster, node))
        .map(|c| counter::container(cluster, node, c, &server));
    let logs = server_logs::runs(cluster).then(|| server_logs::container(cluster, node, &server));
    let mut pod_volumes = volumes::volumes(cluster, node);
    if counter.is_some() {
        pod_volumes.push(counter::volume(cluster));
    }
    if logs.is_some() {
        pod_volumes.push(server_logs::volume());
    }
    let (hostname, subdomain) = grid::master_pod_dns(cluster, node).unzip();
    PodSpec {
        // A grid master's own DNS name, for IceGrid on an IPv6 pod (`grid::master_host_script`).
        hostname,
        subdomain,
        // Sidecars get the restricted settings they leave unset (validation refused the rest).
        containers: std::iter::once(server)
            .chain(counter)
            .chain(logs)
            .chain(node.sidecars.iter().map(crate::pod_security::restrict))
            .collect(),
        init_containers: Some(vec![prepare_var(cluster, node)]),
        volumes: Some(pod_volumes),
        image_pull_secrets: non_empty(spec.image_pull_secrets.clone()),
        node_selector: (!node.node_selector.is_empty()).then(|| node.node_selector.clone()),
        tolerations: non_empty(node.tolerations.clone()),
        affinity: node.affinity.clone(),
        security_context: Some(pod_security_context(cluster.spec.repository.set_ownership)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        // OMERO never calls the API server; no token to steal.
        automount_service_account_token: Some(false),
        // Service links would add ~25 variables per Service in the namespace (this cluster
        // alone has one per node) to an environment the image scans at start-up.
        enable_service_links: Some(false),
        ..PodSpec::default()
    }
}

fn container(cluster: &OmeroCluster, node: &NodeSpec) -> Container {
    let checks = grid::checks(cluster, node);
    let ports: Vec<ContainerPort> = grid::ports(cluster, node)
        .into_iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster.spec.image_pull_policy.map(|p| p.as_str().into()),
        command: grid::command(cluster, node),
        env: Some(config::env(cluster, node)),
        ports: non_empty(ports),
        resources: node.resources.clone(),
        volume_mounts: Some(volumes::mounts(cluster, node)),
        security_context: Some(container_security_context()),
        startup_probe: Some(probes::startup(&checks.alive)),
        readiness_probe: Some(probes::readiness(&checks.ready)),
        liveness_probe: Some(probes::liveness(&checks.alive)),
        ..Container::default()
    }
}

/// OMERO.server 5.6.17 and later use `var/tmp` as `java.io.tmpdir` and do not start when it is
/// missing ("Can't create cache file", ome/openmicroscopy#6448), and `var` is an empty volume
/// here on every node: create what the server needs in it first, from the node's own image.
fn prepare_var(cluster: &OmeroCluster, node: &NodeSpec) -> Container {
    let dirs = ["tmp", "log"].map(|d| format!("{}/{d}", volumes::VAR_DIR)).join(" ");
    Container {
        name: PREPARE_VAR_CONTAINER.into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster.spec.image_pull_policy.map(|p| p.as_str().into()),
        command: Some(["/bin/sh", "-c", &format!("mkdir -p {dirs}")].map(String::from).to_vec()),
        volume_mounts: Some(
            volumes::mounts(cluster, node).into_iter().filter(|m| m.mount_path == volumes::VAR_DIR).collect(),
        ),
        security_context: Some(container_security_context()),
        ..Container::default()
    }
}

/// The init container that prepares `OMERO.server/var`.
pub(crate) const PREPARE_VAR_CONTAINER: &str = "prepare-var";

/// The image's own user, as the restricted Pod Security Standard asks for. `fsGroup` only when
/// the user asks for it (`repository.setOwnership`): it makes the kubelet re-own every file of a
/// claim that supports it. The emptyDirs are writable by anyone without it.
fn pod_security_context(set_ownership: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(OMERO_UID),
        run_as_group: Some(OMERO_UID),
        run_as_non_root: Some(true),
        // OnRootMismatch then skips the walk on later starts, once the root matches.
        fs_group: set_ownership.then_some(OMERO_UID),
        fs_group_change_policy: set_ownership.then(|| "OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

/// No privilege at all. The root filesystem stays writable: every start rewrites
/// `OMERO.server/etc` (`omero config set`, `omero admin rewrite`).
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(false),
        ..SecurityContext::default()
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, base_with, cluster, container, deployment_of, pod_spec},
    };

    #[test]
    fn the_deployments_progress_deadline_is_the_rollouts_default_ready_timeout() {
        assert_eq!(
            u64::try_from(PROGRESS_DEADLINE_SECONDS).unwrap(),
            crate::api::DEFAULT_READY_TIMEOUT.std().as_secs()
        );
    }

    #[test]
    fn one_replica_recreated_never_rolled() {
        let desired = render(&cluster(BASE));
        let spec = deployment_of(&desired, "rw").spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let strategy = spec.strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
        assert_eq!(strategy.rolling_update, None);
        assert_eq!(spec.progress_deadline_seconds, Some(2400));
    }

    #[test]
    fn selector_is_the_node_selector_and_matches_the_template() {
        let desired = render(&cluster(BASE));
        let spec = deployment_of(&desired, "ro").spec.clone().unwrap();
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector, labels::node_selector_labels("omc", "ro"));
        let template = spec.template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| template.get(k) == Some(v)));
    }

    #[test]
    fn one_container_with_the_image_and_the_glacier2_ports() {
        let yaml = BASE.replace("  image: openmicroscopy/omero-server:5.6\n", "  image: registry.example/omero:5.6.11\n  imagePullPolicy: Always\n  imagePullSecrets: [{name: regcred}]\n");
        let desired = render(&cluster(&yaml));
        let pod = pod_spec(&desired, "rw");
        // The server, then the container that follows its log files (render::server_logs).
        assert_eq!(pod.containers.len(), 2);
        let c = &pod.containers[0];
        assert_eq!(c.name, "omero-server");
        assert_eq!(c.image.as_deref(), Some("registry.example/omero:5.6.11"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(c.command, None, "the image's entrypoint runs the start-up scripts");
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        let ports: Vec<_> =
            c.ports.clone().unwrap().into_iter().map(|p| (p.name.unwrap(), p.container_port)).collect();
        assert_eq!(ports, [("glacier2-tcp".to_string(), 4063), ("glacier2-ssl".to_string(), 4064),]);
    }

    #[test]
    fn defaults_leave_optional_fields_unset() {
        let desired = render(&cluster(BASE));
        let pod = pod_spec(&desired, "rw");
        assert_eq!(pod.image_pull_secrets, None);
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
        assert_eq!(pod.affinity, None);
        assert_eq!(pod.containers[0].image_pull_policy, None);
        assert_eq!(pod.containers[0].resources, None);
    }

    #[test]
    fn scheduling_and_resources_come_from_the_node() {
        let yaml = BASE.replace(
            "    - name: rw\n",
            r#"    - name: rw
      resources:
        requests: {cpu: "2", memory: 8Gi}
        limits: {memory: 8Gi}
      nodeSelector: {disk: ssd}
      tolerations: [{key: omero, operator: Exists, effect: NoSchedule}]
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]
"#,
        );
        let c = cluster(&yaml);
        let node = &c.spec.nodes[0];
        let desired = render(&c);
        let pod = pod_spec(&desired, "rw");
        assert_eq!(pod.containers[0].resources, node.resources);
        assert_eq!(pod.node_selector.as_ref(), Some(&node.node_selector));
        assert_eq!(pod.tolerations.as_ref(), Some(&node.tolerations));
        assert_eq!(pod.affinity, node.affinity);
        // Only that node.
        assert_eq!(pod_spec(&desired, "ro").node_selector, None);
    }

    #[test]
    fn ownership_of_the_claims_changes_only_when_asked_for() {
        let c = base_with(|c| c.spec.repository.set_ownership = true);
        let pod = pod_spec(&render(&c), "rw").security_context.clone().unwrap();
        assert_eq!(pod.fs_group, Some(1000));
        assert_eq!(pod.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
    }

    #[test]
    fn every_node_creates_var_tmp_before_the_server_starts() {
        let grid = cluster(
            "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: omc, namespace: imaging}\n\
             spec:\n  image: openmicroscopy/omero-server:5.6.17\n  topology: Grid\n  database: {host: db, passwordSecret: {name: s, key: k}}\n\
             \x20 repository: {claimName: repo}\n  nodes: [{name: main, master: true}, {name: w1}]\n",
        );
        let renders = [(render(&cluster(BASE)), ["rw", "ro"]), (render(&grid), ["main", "w1"])];
        for (desired, nodes) in &renders {
            for node in nodes {
                let pod = pod_spec(desired, node);
                let init = pod.init_containers.as_ref().expect("an init container");
                assert_eq!(init.len(), 1);
                let prepare = &init[0];
                assert_eq!(prepare.name, "prepare-var");
                assert_eq!(prepare.image, pod.containers[0].image, "the node's own image");
                let script = prepare.command.as_ref().unwrap().join(" ");
                assert!(
                    script.contains("mkdir -p /opt/omero/server/OMERO.server/var/tmp"),
                    "{node}: {script}"
                );
                let mounts: Vec<_> =
                    prepare.volume_mounts.as_ref().unwrap().iter().map(|m| m.mount_path.as_str()).collect();
                assert_eq!(mounts, ["/opt/omero/server/OMERO.server/var"], "{node}");
                assert_eq!(prepare.security_context, pod.containers[0].security_context, "{node}");
            }
        }
    }

    #[test]
    fn runs_as_the_images_user_without_privileges() {
        let desired = render(&cluster(BASE));
        let pod = pod_spec(&desired, "rw").security_context.clone().unwrap();
        assert_eq!((pod.run_as_user, pod.run_as_group), (Some(1000), Some(1000)));
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!((pod.fs_group, pod.fs_group_change_policy), (None, None), "no ownership walk by default");
        assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = container(&desired, "rw").security_context.clone().unwrap();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(c.run_as_non_root, Some(true));
        assert_eq!(c.privileged, None);
    }

    #[test]
    fn pod_has_a_clean_shutdown_window_and_no_api_access() {
        let desired = render(&cluster(BASE));
        let pod = pod_spec(&desired, "rw");
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
    }

    #[test]
    fn sidecars_run_beside_omero_in_the_nodes_pod() {
        let desired = render(&crate::render::tests::base_with(|c| {
            c.spec.nodes[0].sidecars = vec![serde_saphyr::from_str(
                "{name: sessions-exporter, image: 'ghcr.io/example/omero-prometheus-tools:1', ports: [{containerPort: 9449}]}",
            )
            .unwrap()];
        }));
        let pod = pod_spec(&desired, "rw");
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["omero-server", "omero-logs", "sessions-exporter"]);
        let context = pod.containers[2].security_context.clone().expect("restricted settings filled in");
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(context.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }

    #[test]
    fn every_container_of_every_pod_passes_the_restricted_standard() {
        let desired = render(&crate::render::tests::base_with(|c| {
            c.spec.nodes[0].sidecars = vec![
                serde_saphyr::from_str("{name: sessions-exporter, image: 'example/exporter:1'}").unwrap(),
            ];
        }));
        for d in &desired.deployments {
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let context = pod.security_context.as_ref().unwrap();
            let non_root = context.run_as_non_root == Some(true) && context.run_as_user != Some(0);
            let seccomp = context.seccomp_profile.as_ref().is_some_and(|p| p.type_ == "RuntimeDefault");
            assert!(non_root && seccomp);
            assert_eq!(pod.host_network.or(pod.host_pid).or(pod.host_ipc), None);
            for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
                assert!(crate::pod_security::is_restricted(c, non_root, seccomp), "{}: {c:?}", c.name);
            }
        }
    }
}
