//! `grid` topology: all nodes form one IceGrid application, as ome/docker-example-omero-grid
//! wires it. The master runs `omero admin start` (registry, Glacier2, Blitz-0 and OMERO's other
//! servers); every worker runs an IceGrid node with one more Blitz that the master's
//! application descriptor places on it. Clients always enter through the master's Glacier2;
//! OMERO's configRedirector picks the Blitz that creates a new session.
//!
//! Sources: docker-example-omero-grid (`docker-compose.yml`, `worker/99-run.sh`,
//! `worker/worker.cfg`, `master/70-grid-xml.sh`); omero-py `plugins/admin.py` (`rewrite`
//! substitutes `omero.master.host` into `etc/templates/*.cfg` and builds the descriptor from
//! `omero.server.nodedescriptors`) and `plugins/node.py` (`omero node <name> start` runs
//! `icegridnode --Ice.Config=etc/internal.cfg,etc/<name>.cfg`); OMERO's `master.cfg` and
//! `grid/default.xml`, which bind the registry, the master's node and Glacier2's server side to
//! `-h <omero.master.host>`.
//!
//! Inferred, not observed: a worker's Blitz takes its properties from the application
//! descriptor the master deploys (it includes the master's `config.xml`), so a worker's own
//! `config` may not reach its Blitz. Every node still gets the full configuration.

use kube::ResourceExt;

use super::{
    OMERO_CLI, REGISTRY_PORT, client_ports,
    config::{POD_IP_ENV, Value},
    labels::node_object_name,
    volumes::VAR_DIR,
};
use crate::api::{NodeSpec, OmeroCluster, Topology};

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `independent`: a whole OMERO.server of its own.
    Standalone,
    /// `grid`: registry, Glacier2, Blitz-0 and the other servers.
    Master,
    /// `grid`: an IceGrid node hosting one Blitz.
    Worker,
}

/// The master's servers: the set OMERO's own `default.xml` puts on the master when
/// `omero.server.nodedescriptors` is unset (Glacier2 is always added by OMERO).
const MASTER_SERVERS: &str =
    "Blitz-0,Indexer-0,DropBox,MonitorServer,FileServer,Storm,PixelData-0,Processor-0,Tables-0";

/// The IceGrid node name `master.cfg` gives the node `omero admin start` runs.
const MASTER_ICEGRID_NODE: &str = "master";

pub(crate) fn is_grid(cluster: &OmeroCluster) -> bool {
    cluster.spec.topology == Topology::Grid
}

pub(crate) fn role(cluster: &OmeroCluster, node: &NodeSpec) -> Role {
    match (is_grid(cluster), node.is_master()) {
        (false, _) => Role::Standalone,
        (true, true) => Role::Master,
        (true, false) => Role::Worker,
    }
}

/// The ports a node listens on with a fixed number. A worker's Blitz and IceGrid node use
/// ports Ice picks, reached through the registry, so a worker has none.
pub(crate) fn ports(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<(&'static str, i32)> {
    match role(cluster, node) {
        Role::Standalone => client_ports(cluster, node),
        Role::Master => std::iter::once(REGISTRY_PORT).chain(client_ports(cluster, node)).collect(),
        Role::Worker => Vec::new(),
    }
}

/// Properties the operator sets in grid topology (none in `independent`).
pub(crate) fn properties(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<(&'static str, Value)> {
    let role = role(cluster, node);
    if role == Role::Standalone {
        return Vec::new();
    }
    // Read at start-up; set on every node so that whichever config a Blitz reads, it agrees.
    let mut props = vec![("omero.cluster.redirector", Value::Literal("configRedirector".into()))];
    match role {
        Role::Master => {
            // The master binds its registry and Glacier2 server endpoints to this host, so
            // it must be an address of the pod itself (70-grid-xml.sh uses `hostname -i`).
            props.push(("omero.master.host", Value::Expand(format!("$({POD_IP_ENV})"))));
            props.push(("omero.server.nodedescriptors", Value::Literal(node_descriptors(cluster))));
        }
        Role::Worker => {
            // Workers reach the registry (internal.cfg's Ice.Default.Locator) through the
            // master's per-node Service: a stable name across master restarts.
            props.push(("omero.master.host", Value::Literal(master_host(cluster))));
        }
        Role::Standalone => {}
    }
    props
}

/// `master:<servers> <worker>:Blitz-<index> ...`, workers sorted by name so that reordering the
/// spec's list changes nothing, each with the index its name gives it (`NodeSpec::blitz_index`)
/// so that adding or removing a worker renames no other worker's server.
pub(crate) fn node_descriptors(cluster: &OmeroCluster) -> String {
    let mut workers: Vec<&NodeSpec> = cluster.spec.nodes.iter().filter(|n| !n.is_master()).collect();
    workers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut descriptors = format!("{MASTER_ICEGRID_NODE}:{MASTER_SERVERS}");
    for worker in workers {
        descriptors.push_str(&format!(" {}:Blitz-{}", worker.name, worker.blitz_index()));
    }
    descriptors
}

/// DNS name of the master's per-node Service, namespace-qualified when the namespace is known.
pub(crate) fn master_host(cluster: &OmeroCluster) -> String {
    let master = cluster.spec.grid_master().expect("validate() requires exactly one master in grid topology");
    let service = node_object_name(&cluster.name_any(), &master.name);
    match &cluster.metadata.namespace {
        Some(ns) => format!("{service}.{ns}.svc"),
        None => service,
    }
}

/// A worker replaces the image's start-up (which would initialise or upgrade the database and
/// start a second master) with what docker-example-omero-grid's worker does: apply the
/// `CONFIG_*` variables, write `etc/<name>.cfg` with its own pod IP, run the IceGrid node.
/// dumb-init, as in the image's entrypoint, forwards SIGTERM so Blitz shuts down cleanly.
pub(crate) fn command(cluster: &OmeroCluster, node: &NodeSpec) -> Option<Vec<String>> {
    if role(cluster, node) != Role::Worker {
        return None;
    }
    let name = &node.name;
    let script = format!(
        r#"set -eu
source /opt/omero/server/venv3/bin/activate
/startup/50-config.py
mkdir -p {VAR_DIR}/log {VAR_DIR}/{name}
cat > /opt/omero/server/OMERO.server/etc/{name}.cfg <<EOF
IceGrid.Node.Name={name}
IceGrid.Node.Endpoints=tcp -h ${{{POD_IP_ENV}}}
IceGrid.Node.Data={VAR_DIR}/{name}
IceGrid.Node.Output={VAR_DIR}/log
Ice.StdOut={VAR_DIR}/log/{name}.out
Ice.StdErr={VAR_DIR}/log/{name}.err
EOF
cd /opt/omero/server
exec {OMERO_CLI} node {name} start --foreground
"#
    );
    Some(["/usr/local/bin/dumb-init", "/bin/bash", "-c", &script].map(String::from).to_vec())
}

/// The status check the probes run. `omero admin status` pings the IceGrid node `master`
/// through the registry, then asks a Blitz session manager for a session and expects OMERO's
/// own refusal; `omero node <name> status` does the same for a worker's node. A worker's
/// check passes once its node is registered and some Blitz answers, not necessarily its own.
pub(crate) fn status_command(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<String> {
    let command: Vec<&str> = match role(cluster, node) {
        Role::Standalone | Role::Master => vec![OMERO_CLI, "admin", "status"],
        Role::Worker => vec![OMERO_CLI, "node", &node.name, "status"],
    };
    command.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, cluster, container, env_of, env_value, pod_spec, service_named},
    };

    const GRID: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata:
  name: omc
  namespace: imaging
  uid: 0a1b2c3d-0000-4000-8000-000000000001
spec:
  image: openmicroscopy/omero-server:5.6
  topology: grid
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
  repository:
    claimName: omero-repo
  nodes:
    - name: zeta
    - name: main
      master: true
    - name: alpha
"#;

    #[test]
    fn roles_follow_topology_and_master_flag() {
        let c = cluster(GRID);
        let roles: Vec<_> = c.spec.nodes.iter().map(|n| role(&c, n)).collect();
        assert_eq!(roles, [Role::Worker, Role::Master, Role::Worker]);
        let c = cluster(BASE);
        assert!(c.spec.nodes.iter().all(|n| role(&c, n) == Role::Standalone));
    }

    #[test]
    fn master_declares_its_servers_and_one_blitz_per_worker_sorted_by_name() {
        let c = cluster(GRID);
        let desired = render(&c);
        let index = |name: &str| c.spec.node(name).unwrap().blitz_index();
        assert_eq!(
            env_value(&desired, "main", "CONFIG_omero_server_nodedescriptors"),
            format!(
                "master:Blitz-0,Indexer-0,DropBox,MonitorServer,FileServer,Storm,PixelData-0,Processor-0,Tables-0 \
                 alpha:Blitz-{} zeta:Blitz-{}",
                index("alpha"),
                index("zeta")
            )
        );
        assert!(env_of(&desired, "alpha", "CONFIG_omero_server_nodedescriptors").is_none());
    }

    /// A server's name is its identity in the grid: another worker joining or leaving must not
    /// rename it.
    #[test]
    fn adding_or_removing_a_worker_renames_no_other_workers_blitz() {
        let blitz_of = |c: &OmeroCluster, worker: &str| {
            let descriptors = node_descriptors(c);
            descriptors
                .split(' ')
                .find_map(|d| d.strip_prefix(&format!("{worker}:")).map(str::to_string))
                .unwrap()
        };
        let before = cluster(GRID);
        let with_more = base_grid_with(|c| {
            let mut new = c.spec.nodes[0].clone();
            new.name = "aaa-first".into();
            c.spec.nodes.push(new);
        });
        let with_fewer = base_grid_with(|c| c.spec.nodes.retain(|n| n.name != "alpha"));
        assert_eq!(blitz_of(&before, "zeta"), blitz_of(&with_more, "zeta"));
        assert_eq!(blitz_of(&before, "zeta"), blitz_of(&with_fewer, "zeta"));
        assert_eq!(blitz_of(&before, "alpha"), blitz_of(&with_more, "alpha"));
        let index = blitz_of(&before, "zeta");
        let digits = index.strip_prefix("Blitz-").unwrap();
        assert!(digits.parse::<u32>().is_ok_and(|i| (1..=99_999).contains(&i)), "{index}");
    }

    fn base_grid_with(edit: impl FnOnce(&mut OmeroCluster)) -> OmeroCluster {
        let mut c = cluster(GRID);
        edit(&mut c);
        c
    }

    #[test]
    fn master_binds_to_its_own_pod_ip() {
        let desired = render(&cluster(GRID));
        let env = container(&desired, "main").env.clone().unwrap();
        let pod_ip = env.iter().position(|e| e.name == POD_IP_ENV).expect("pod IP variable");
        assert_eq!(pod_ip, 0, "defined before the variables that refer to it");
        let field = env[0].value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "status.podIP");
        assert_eq!(env_value(&desired, "main", "CONFIG_omero_master_host"), "$(OMERO_POD_IP)");
    }

    #[test]
    fn workers_find_the_registry_through_the_masters_service() {
        let desired = render(&cluster(GRID));
        for worker in ["alpha", "zeta"] {
            assert_eq!(env_value(&desired, worker, "CONFIG_omero_master_host"), "omc-main.imaging.svc");
            assert_eq!(env_of(&desired, worker, POD_IP_ENV).unwrap().value, None);
        }
        let mut c = cluster(GRID);
        c.metadata.namespace = None;
        assert_eq!(master_host(&c), "omc-main");
    }

    #[test]
    fn every_grid_node_enables_the_config_redirector() {
        let desired = render(&cluster(GRID));
        for node in ["main", "alpha", "zeta"] {
            assert_eq!(env_value(&desired, node, "CONFIG_omero_cluster_redirector"), "configRedirector");
        }
        let independent = render(&cluster(BASE));
        assert!(env_of(&independent, "rw", "CONFIG_omero_cluster_redirector").is_none());
        assert!(env_of(&independent, "rw", "CONFIG_omero_master_host").is_none());
    }

    #[test]
    fn workers_run_their_icegrid_node_under_dumb_init_and_the_master_the_image_default() {
        let desired = render(&cluster(GRID));
        assert_eq!(container(&desired, "main").command, None);
        let command = container(&desired, "alpha").command.clone().unwrap();
        assert_eq!(command[..3], ["/usr/local/bin/dumb-init", "/bin/bash", "-c"]);
        let script = &command[3];
        assert!(script.contains("/startup/50-config.py\n"), "{script}");
        assert!(!script.contains("60-database"), "workers never touch the database schema");
        assert!(script.contains("IceGrid.Node.Name=alpha\n"), "{script}");
        assert!(script.contains("IceGrid.Node.Endpoints=tcp -h ${OMERO_POD_IP}\n"), "{script}");
        assert!(script.contains("> /opt/omero/server/OMERO.server/etc/alpha.cfg <<EOF"), "{script}");
        assert!(script.ends_with("exec /opt/omero/server/venv3/bin/omero node alpha start --foreground\n"));
        // Kubernetes would expand `$(NAME)` in a command; the script must not contain any.
        assert!(!script.contains("$("), "{script}");
    }

    #[test]
    fn probes_check_the_master_or_the_workers_own_node() {
        let desired = render(&cluster(GRID));
        let probe = |node: &str| {
            container(&desired, node).readiness_probe.clone().unwrap().exec.unwrap().command.unwrap()
        };
        assert_eq!(probe("main"), [OMERO_CLI, "admin", "status"]);
        assert_eq!(probe("alpha"), [OMERO_CLI, "node", "alpha", "status"]);
    }

    #[test]
    fn master_exposes_the_registry_and_glacier2_workers_nothing() {
        let desired = render(&cluster(GRID));
        let ports = |node: &str| -> Vec<i32> {
            container(&desired, node)
                .ports
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|p| p.container_port)
                .collect()
        };
        assert_eq!(ports("main"), [4061, 4063, 4064]);
        assert!(ports("alpha").is_empty());

        let master = service_named(&desired, "omc-main").spec.clone().unwrap();
        let numbers: Vec<i32> = master.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(numbers, [4061, 4063, 4064]);
        assert_eq!(master.cluster_ip, None);

        // A worker keeps a stable DNS name for its pod, with no ports to forward.
        let worker = service_named(&desired, "omc-alpha").spec.clone().unwrap();
        assert_eq!(worker.cluster_ip.as_deref(), Some("None"));
        assert_eq!(worker.ports, None);
    }

    #[test]
    fn entry_service_sends_clients_to_the_masters_glacier2_whatever_is_routable() {
        let desired = render(&cluster(GRID));
        let spec = service_named(&desired, "omc").spec.clone().unwrap();
        assert_eq!(spec.selector, Some(crate::render::node_selector_labels("omc", "main")));
        let numbers: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(numbers, [4063, 4064], "never the registry");
    }

    #[test]
    fn the_grid_properties_are_refused_in_the_users_config_of_a_grid_only() {
        for key in ["omero.cluster.redirector", "omero.master.host", "omero.server.nodedescriptors"] {
            let c: OmeroCluster =
                serde_norway::from_str(&format!("{GRID}  config:\n    {key}: x\n")).unwrap();
            let errors = crate::api::validate(&c).unwrap_err();
            assert_eq!(errors[0].field, format!("spec.config[{key}]"));
            assert!(errors[0].message.contains("is set by the operator"), "{}", errors[0]);
            let independent = crate::render::tests::base_with(|c| {
                c.spec.config.insert(key.into(), "x".into());
            });
            assert_eq!(
                crate::api::validate(&independent),
                Ok(()),
                "{key} is the user's in independent topology"
            );
        }
    }

    #[test]
    fn grid_nodes_keep_the_common_wiring() {
        let desired = render(&cluster(GRID));
        for node in ["main", "alpha"] {
            assert_eq!(env_value(&desired, node, "CONFIG_omero_db_host"), "db.example");
            assert!(env_of(&desired, node, "CONFIG_omero_db_pass").unwrap().value_from.is_some());
            let volumes = pod_spec(&desired, node).volumes.clone().unwrap();
            assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "omero-repo");
        }
    }
}
