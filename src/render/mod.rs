//! Desired objects per node, from the spec. Pure: no I/O.
//!
//! `render` turns a validated `OmeroCluster` into one Deployment and one Service per node plus
//! the entry Service. Every map is a `BTreeMap` and every list is built in a fixed order, so the
//! same spec always renders byte-identical objects (server-side apply then has nothing to do).

pub mod budget;
mod config;
pub mod counter;
mod deployment;
mod grid;
mod labels;
mod probes;
pub mod revision;
mod server_logs;
mod servers;
mod service;
mod value;
mod volumes;

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
};

use crate::api::{
    OmeroCluster, keys,
    ports::{self, Port, Ports},
};

pub use grid::{REDIRECT_PLACEHOLDER, REDIRECT_PLACEHOLDER_SQL};
pub use labels::{
    cluster_selector, entry_service_name, grid_dns_service_name, node_object_name, node_selector_labels,
};
/// The log follower as every node's `omero-logs` container runs it (the cache keeps it once).
pub(crate) use server_logs::SHIPPED as LOG_FOLLOWER_SCRIPT;

/// Everything the operator creates for one cluster. `apiVersion`/`kind` are left to the
/// caller (server-side apply adds them); names, namespace, labels and owners are set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// One per node, in spec order.
    pub deployments: Vec<Deployment>,
    /// One per node, in spec order, then the entry Service, then (grid topology) the master
    /// pod's DNS Service.
    pub services: Vec<Service>,
    /// The session counter's script, when a node runs the counter (one per cluster).
    pub config_maps: Vec<ConfigMap>,
}

/// The objects `cluster` needs: Deployments, Services and, when a node runs the session
/// counter, the ConfigMap with its script. Assumes `crate::api::validate(cluster)` passed: property names
/// it would reject make this panic with a message saying so.
pub fn render(cluster: &OmeroCluster) -> Desired {
    render_with_restarts(cluster, &BTreeMap::new())
}

/// [`render`], with the restart token each node's pod runs for (by node name; see
/// `crate::request`): part of the pod template, so a new token restarts the node.
pub fn render_with_restarts(cluster: &OmeroCluster, restart_tokens: &BTreeMap<String, String>) -> Desired {
    let cluster = &*crate::pool::resolved(cluster);
    let nodes = &cluster.spec.nodes;
    let deployments = nodes
        .iter()
        .map(|node| deployment::deployment(cluster, node, restart_tokens.get(&node.name).map(String::as_str)))
        .collect();
    let services = nodes
        .iter()
        .map(|node| service::node_service(cluster, node))
        .chain(std::iter::once(service::entry_service(cluster)))
        .chain(service::grid_dns_service(cluster))
        .collect();
    let config_maps = counter::config_map(cluster).into_iter().collect();
    Desired { deployments, services, config_maps }
}

/// The names of the objects [`render`] and [`budget::budgets`] make for `cluster`, by kind,
/// without rendering them: what a reconcile looks up before it decides (a name the cluster's
/// labels do not show may be held by an object someone else made).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub deployments: Vec<String>,
    pub services: Vec<String>,
    pub config_maps: Vec<String>,
    pub budgets: Vec<String>,
}

pub fn object_names(cluster: &OmeroCluster) -> Names {
    use kube::ResourceExt;
    let cluster = &*crate::pool::resolved(cluster);
    let name = cluster.name_any();
    let nodes: Vec<String> = cluster.spec.nodes.iter().map(|n| node_object_name(&name, &n.name)).collect();
    let counter = cluster.spec.nodes.iter().any(|n| counter::runs_on(cluster, n));
    Names {
        deployments: nodes.clone(),
        services: nodes
            .iter()
            .cloned()
            .chain([entry_service_name(&name)])
            .chain(cluster.spec.grid_master().map(|_| labels::grid_dns_service_name(&name)))
            .collect(),
        config_maps: counter.then(|| counter::config_map_name(&name)).into_iter().collect(),
        budgets: nodes,
    }
}

/// The revision a Deployment (or a pod) carries: the digest of the operator's pod template.
pub fn revision_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref()?.get(keys::REVISION_ANNOTATION).map(String::as_str)
}

/// The restart token a Deployment's pod template carries.
pub fn restart_token_of(deployment: &Deployment) -> Option<&str> {
    let template = deployment.spec.as_ref()?.template.metadata.as_ref()?;
    template.annotations.as_ref()?.get(keys::RESTART_TOKEN_ANNOTATION).map(String::as_str)
}

/// The IANA-style service name (at most 15 characters) of each port a node exposes.
fn port_name(port: Port) -> &'static str {
    match port {
        Port::Registry => "ice-registry",
        Port::Tcp => "glacier2-tcp",
        Port::Ssl => "glacier2-ssl",
        Port::Ws => "glacier2-ws",
        Port::Wss => "glacier2-wss",
    }
}

/// The cluster's ports, from its `omero.ports.*` (`api::ports`: as `omero admin rewrite`
/// derives them). Validation refuses settings that give no port, and the same settings in a
/// node's `config`: every node's ports are the cluster's.
pub(crate) fn omero_ports(cluster: &OmeroCluster) -> Ports {
    ports::derive(&cluster.spec.config).unwrap_or_else(|e| {
        panic!("validate() rejects these omero.ports.* settings ({e:?}); render needs a valid cluster")
    })
}

/// The Glacier2 ports `node` listens on (every node in `independent` topology, the master in
/// `grid`), from its effective `omero.client.icetransports` and the cluster's ports.
pub(crate) fn client_ports(cluster: &OmeroCluster, node: &crate::api::NodeSpec) -> Vec<(&'static str, i32)> {
    let ports = omero_ports(cluster);
    ports::glacier2_ports(&cluster.spec.config, &node.config)
        .into_iter()
        .map(|p| (port_name(p), i32::from(ports.get(p))))
        .collect()
}

/// The IceGrid registry of a `grid` master; grid workers reach it through the master's
/// per-node Service. Never on the entry Service: it is internal to the grid.
pub(crate) fn registry_port(cluster: &OmeroCluster) -> (&'static str, i32) {
    (port_name(Port::Registry), i32::from(omero_ports(cluster).get(Port::Registry)))
}

/// The OMERO CLI inside the official image (`/startup/50-config.py` and `99-run.sh` use it).
pub(crate) const OMERO_CLI: &str = "/opt/omero/server/venv3/bin/omero";

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

    use super::*;

    /// A valid two-node independent cluster: one read-write node, one read-only node.
    pub(crate) const BASE: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata:
  name: omc
  namespace: imaging
  uid: 0a1b2c3d-0000-4000-8000-000000000001
spec:
  image: openmicroscopy/omero-server:5.6
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
  repository:
    claimName: omero-repo
  nodes:
    - name: rw
    - name: ro
      readOnly: {db: true, repo: true}
"#;

    /// What a reconcile looks up by name is exactly what it may then write, whatever the
    /// topology and probes: a name it rendered but never looked up could be someone else's.
    #[test]
    fn object_names_are_the_names_of_what_is_rendered() {
        let names =
            |objects: Vec<Option<String>>| objects.into_iter().map(Option::unwrap).collect::<Vec<_>>();
        // Each example's OmeroCluster document (the files also hold the Secrets it needs).
        let examples = ["minimal.yaml", "grid.yaml", "read-only-replicas.yaml"].map(|f| {
            let text =
                std::fs::read_to_string(format!("{}/examples/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            text.split("\n---\n").find(|doc| doc.contains("kind: OmeroCluster")).unwrap().to_string()
        });
        let mut counters = 0;
        for yaml in examples.iter().map(String::as_str).chain([BASE]) {
            let c = cluster(yaml);
            let desired = render(&c);
            let statuses = [];
            let expected = Names {
                deployments: names(desired.deployments.iter().map(|d| d.metadata.name.clone()).collect()),
                services: names(desired.services.iter().map(|s| s.metadata.name.clone()).collect()),
                config_maps: names(desired.config_maps.iter().map(|c| c.metadata.name.clone()).collect()),
                budgets: names(
                    budget::budgets(&c, &statuses).iter().map(|b| b.metadata.name.clone()).collect(),
                ),
            };
            counters += expected.config_maps.len();
            assert_eq!(object_names(&c), expected, "{yaml}");
        }
        assert!(counters > 0, "an example runs the session counter");
    }

    /// Parses a cluster from YAML and checks it is valid, since `render` assumes so.
    pub(crate) fn cluster(yaml: &str) -> OmeroCluster {
        let cluster: OmeroCluster = serde_saphyr::from_str(yaml).expect("test YAML parses");
        if let Err(errors) = crate::api::validate(&cluster) {
            panic!("test cluster must be valid: {errors:?}");
        }
        cluster
    }

    /// `BASE` with `edit` applied to its parsed form (for fields YAML would make verbose).
    pub(crate) fn base_with(edit: impl FnOnce(&mut OmeroCluster)) -> OmeroCluster {
        let mut c = cluster(BASE);
        edit(&mut c);
        c
    }

    pub(crate) fn deployment_of<'a>(desired: &'a Desired, node: &str) -> &'a Deployment {
        let name = node_object_name("omc", node);
        desired
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no deployment {name}"))
    }

    pub(crate) fn service_named<'a>(desired: &'a Desired, name: &str) -> &'a Service {
        desired
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    pub(crate) fn pod_spec<'a>(desired: &'a Desired, node: &str) -> &'a PodSpec {
        deployment_of(desired, node).spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    pub(crate) fn container<'a>(desired: &'a Desired, node: &str) -> &'a Container {
        &pod_spec(desired, node).containers[0]
    }

    pub(crate) fn env_of<'a>(desired: &'a Desired, node: &str, name: &str) -> Option<&'a EnvVar> {
        container(desired, node).env.as_ref()?.iter().find(|e| e.name == name)
    }

    /// The literal value of an environment variable, failing if it is absent or not literal.
    pub(crate) fn env_value<'a>(desired: &'a Desired, node: &str, name: &str) -> &'a str {
        env_of(desired, node, name)
            .unwrap_or_else(|| panic!("{node}: no env {name}"))
            .value
            .as_deref()
            .unwrap_or_else(|| panic!("{node}: env {name} has no literal value"))
    }

    #[test]
    fn renders_one_deployment_and_service_per_node_plus_the_entry_service() {
        let desired = render(&cluster(BASE));
        let names = |v: Vec<Option<String>>| v.into_iter().map(Option::unwrap).collect::<Vec<_>>();
        assert_eq!(
            names(desired.deployments.iter().map(|d| d.metadata.name.clone()).collect()),
            ["omc-rw", "omc-ro"]
        );
        assert_eq!(
            names(desired.services.iter().map(|s| s.metadata.name.clone()).collect()),
            ["omc-rw", "omc-ro", "omc"]
        );
    }

    #[test]
    fn rendering_is_deterministic_down_to_the_bytes() {
        let yaml = format!(
            "{BASE}  config:\n    omero.jvmcfg.percent.blitz: \"50\"\n    omero.search.batch: \"100\"\n    \
             omero.policy.binary_access: \"-read\"\n  sessions: {{idleTimeout: 30m, maxLifetime: 8h}}\n  \
             service:\n    annotations: {{b: \"2\", a: \"1\"}}\n"
        );
        let bytes = |d: Desired| serde_json::to_string(&(d.deployments, d.services)).unwrap();
        let first = bytes(render(&cluster(&yaml)));
        for _ in 0..5 {
            // A fresh parse each time: HashMap-ordered input anywhere would show up here.
            assert_eq!(bytes(render(&cluster(&yaml))), first);
        }
    }

    #[test]
    fn the_revision_is_stamped_on_the_deployment_and_its_template_and_follows_the_template() {
        let desired = render(&cluster(BASE));
        let d = deployment_of(&desired, "rw");
        let revision = revision_of(&d.metadata).expect("a revision").to_string();
        assert_eq!(revision.len(), 12);
        assert_eq!(
            revision_of(d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap()),
            Some(revision.as_str())
        );
        assert_ne!(revision_of(&deployment_of(&desired, "ro").metadata), Some(revision.as_str()));

        let changed = render(&base_with(|c| c.spec.image = "openmicroscopy/omero-server:5.6.17".into()));
        assert_ne!(revision_of(&deployment_of(&changed, "rw").metadata), Some(revision.as_str()), "image");
        let service_only = render(&base_with(|c| c.spec.service = Some(Default::default())));
        assert_eq!(revision_of(&deployment_of(&service_only, "rw").metadata), Some(revision.as_str()));

        let tokens = BTreeMap::from([("rw".to_string(), "t1".to_string())]);
        let restarted = render_with_restarts(&cluster(BASE), &tokens);
        let rw = deployment_of(&restarted, "rw");
        assert_eq!(restart_token_of(rw), Some("t1"));
        assert_ne!(revision_of(&rw.metadata), Some(revision.as_str()), "a restart token is a new revision");
        assert_eq!(
            revision_of(&deployment_of(&restarted, "ro").metadata),
            revision_of(&deployment_of(&desired, "ro").metadata)
        );
    }

    /// Every number in `desired`'s JSON (maximal runs of digits).
    fn numbers_in(desired: &Desired) -> Vec<u64> {
        let json = serde_json::to_string(&(&desired.deployments, &desired.services)).unwrap();
        json.split(|c: char| !c.is_ascii_digit()).filter_map(|run| run.parse().ok()).collect()
    }

    fn port_numbers(service: &Service) -> Vec<(i32, i32)> {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let ports = service.spec.clone().unwrap().ports.unwrap_or_default();
        ports
            .iter()
            .map(|p| match p.target_port {
                Some(IntOrString::Int(target)) => (p.port, target),
                ref other => panic!("target port {other:?}"),
            })
            .collect()
    }

    fn container_ports(desired: &Desired, node: &str) -> Vec<i32> {
        container(desired, node).ports.clone().unwrap_or_default().iter().map(|p| p.container_port).collect()
    }

    /// `omero.ports.*` moves OMERO's ports (`omero admin rewrite`, see `api::ports`); every
    /// object that carries a port follows: container ports, the per-node and entry Services
    /// (and their target ports), the session counter's login. The probes and the grid's
    /// registry address name no port: OMERO's rewritten `etc/internal.cfg` carries it.
    #[test]
    fn omero_ports_move_every_port_the_operator_renders() {
        let moved = "  config:\n    omero.ports.prefix: \"2\"\n    omero.ports.ssl: \"5064\"\n    \
                     omero.client.icetransports: \"ssl,tcp,ws,wss\"\n";
        let counter = "  sessionCounter: {credentialsSecret: {name: omero-monitor}}\n";
        let desired = render(&cluster(&format!("{BASE}{moved}{counter}")));
        let glacier2 = [24063, 25064, 24065, 24066];
        for node in ["rw", "ro"] {
            assert_eq!(container_ports(&desired, node), glacier2, "{node}");
            let service = service_named(&desired, &node_object_name("omc", node));
            assert_eq!(port_numbers(service), glacier2.map(|p| (p, p)), "{node}");
        }
        // The entry Service lists them by number.
        let by_number = [24063, 24065, 24066, 25064].map(|p| (p, p));
        assert_eq!(port_numbers(service_named(&desired, "omc")), by_number, "the entry Service");
        let counter = &pod_spec(&desired, "ro").containers[1];
        let server = counter.env.iter().flatten().find(|e| e.name == "OMERO_COUNTER_SERVER").unwrap();
        assert_eq!(server.value.as_deref(), Some("tcp://127.0.0.1:24063"));
        let defaults = 4061..=4066;
        assert!(!numbers_in(&desired).iter().any(|n| defaults.contains(n)), "no default port is left");

        let grid = BASE.replace(
            "  nodes:\n    - name: rw\n    - name: ro\n      readOnly: {db: true, repo: true}\n",
            "",
        ) + "  topology: Grid\n  nodes:\n    - {name: main, master: true}\n    - {name: worker}\n"
            + moved;
        let desired = render(&cluster(&grid));
        assert_eq!(container_ports(&desired, "main"), [24061, 24063, 25064, 24065, 24066]);
        assert_eq!(
            port_numbers(service_named(&desired, "omc-main")),
            [24061, 24063, 25064, 24065, 24066].map(|p| (p, p)),
            "the registry the workers reach, on the moved port"
        );
        assert_eq!(port_numbers(service_named(&desired, "omc")), by_number);
        assert!(container_ports(&desired, "worker").is_empty());
        assert!(!numbers_in(&desired).iter().any(|n| defaults.contains(n)), "no default port is left");
    }

    #[test]
    fn node_order_in_the_spec_is_the_order_of_the_objects() {
        let c = base_with(|c| c.spec.nodes.reverse());
        let desired = render(&c);
        assert_eq!(desired.deployments[0].metadata.name.as_deref(), Some("omc-ro"));
        assert_eq!(desired.services.last().unwrap().metadata.name.as_deref(), Some("omc"));
    }
}
