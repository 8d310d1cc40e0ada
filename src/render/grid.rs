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
    OMERO_CLI, client_ports,
    labels::{self, node_object_name},
    registry_port,
    value::Value,
    volumes::VAR_DIR,
};
use crate::api::{NodeSpec, OmeroCluster, Topology, property::POD_IP_ENV};

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
        Role::Master => std::iter::once(registry_port(cluster)).chain(client_ports(cluster, node)).collect(),
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
    match role(cluster, node) {
        Role::Standalone => None,
        Role::Master => {
            let (hostname, subdomain) = master_pod_dns(cluster, node)?;
            Some(master_command(&hostname, &subdomain))
        }
        Role::Worker => Some(worker_command(node)),
    }
}

/// Sets `host` to the pod IP as an Ice endpoint takes it: an IPv6 address must be quoted
/// (`tcp -h "fd00::1"`); an IPv4 one is left bare. Only for what goes into `.cfg` files (a
/// worker's `IceGrid.Node.Endpoints`): never into `omero.master.host`, see [`master_host_script`].
pub(crate) const QUOTED_POD_IP: &str = r#"host="$OMERO_POD_IP"
case "$host" in *:*) host="\"$host\"" ;; esac"#;

/// The pod `hostname` and `subdomain` of a grid master (none for other nodes). With both set,
/// the kubelet writes `<pod IP> <hostname>.<subdomain>.<namespace>.svc.<cluster domain>` into
/// the pod's own `/etc/hosts`, and the cluster DNS serves that name for the pod through the
/// headless Service named like the subdomain (`service::grid_dns_service`). The master binds
/// IceGrid to that name when its pod IP is IPv6 (see [`master_host_script`]).
pub(crate) fn master_pod_dns(cluster: &OmeroCluster, node: &NodeSpec) -> Option<(String, String)> {
    (role(cluster, node) == Role::Master)
        .then(|| (node.name.clone(), labels::grid_dns_service_name(&cluster.name_any())))
}

/// Sets `host` to what the master gives IceGrid as `omero.master.host`. `omero admin rewrite`
/// pastes that value as it is into `etc/master.cfg` (the registry's and the master node's
/// endpoints, `tcp -h @omero.master.host@`) and into the XML of `etc/grid/default.xml`
/// (Glacier2's `server-endpoints="tcp -h @omero.master.host@"`), by plain text substitution
/// (omero-py `plugins/admin.py` `rewrite`, `copy_template`; read from the source, not run). An
/// IPv4 pod IP works in both. An IPv6 one cannot: Ice needs it quoted (`tcp -h "fd00::1"`), and
/// the quotes end the XML attribute, so `default.xml` is malformed and IceGrid never starts;
/// unquoted, Ice splits the endpoint at its colons. So on an IPv6 pod the master uses the name
/// the kubelet wrote for its pod IP in `/etc/hosts` (from the pod's `hostname` and
/// `subdomain`, [`master_pod_dns`]): inside the pod it resolves from that file to the pod IP,
/// so the registry, the master node and Glacier2 bind to it (Ice binds a host name to the first
/// address it resolves to: `getAddressForServer` in Ice's `Network.cpp`), and the endpoints
/// IceGrid publishes carry the name, which the workers resolve through the cluster DNS (the
/// headless Service, with `publishNotReadyAddresses`, so the name exists while the master
/// starts). Without that line in `/etc/hosts` (a kubelet that does not manage the file) the
/// master refuses to start, saying why in its log and termination message, rather than start
/// an IceGrid that cannot come up.
pub(crate) fn master_host_script(hostname: &str, subdomain: &str) -> String {
    format!(
        r#"host="$OMERO_POD_IP"
case "$host" in
*:*)
    host=""
    while read -r address name _; do
        if [ "$address" = "$OMERO_POD_IP" ]; then host="$name"; break; fi
    done < /etc/hosts
    case "$host" in
    {hostname}.{subdomain}.*) ;;
    *)
        why="omero-operator: the pod IP $OMERO_POD_IP is IPv6, which IceGrid cannot take as omero.master.host (OMERO pastes it into the XML of etc/grid/default.xml), and /etc/hosts has no name {hostname}.{subdomain}.* for it (the kubelet writes one from the pod's hostname and subdomain): not starting a grid master that cannot come up"
        echo "$why" >&2
        echo "$why" > /dev/termination-log 2>/dev/null || true
        exit 1 ;;
    esac ;;
esac"#
    )
}

/// The value the master writes into `omero.cluster.redirect` when the row is missing or NULL.
pub const REDIRECT_PLACEHOLDER: &str = "omero-operator-placeholder";

/// Writes [`REDIRECT_PLACEHOLDER`] unless the row holds a value (the master's start-up step).
pub const REDIRECT_PLACEHOLDER_SQL: &str = "INSERT INTO configuration (name, value) \
     VALUES ('omero.cluster.redirect', 'omero-operator-placeholder') ON CONFLICT (name) DO UPDATE \
     SET value = EXCLUDED.value WHERE configuration.value IS NULL OR configuration.value = ''";

/// The master runs the image's own start-up (`/startup/*` in order, in the venv, as the image's
/// entrypoint does) with two additions:
/// - `omero.master.host` is the pod IP, or on an IPv6 pod the pod's own DNS name
///   ([`master_host_script`]);
/// - right before `99-run.sh` starts the server (after `60-database.sh` created or upgraded the
///   database), the row `omero.cluster.redirect` gets a non-empty placeholder if it is missing
///   or NULL. With configRedirector a Blitz cannot start on a NULL value ("Cannot register self
///   as node"), and OMERO itself never writes a node UUID there (OMERO.md; read from
///   omero-server's `ConfigImpl` and omero-blitz's `ConfigRedirector`, not observed). On a new
///   database the table exists only after `60-database.sh`, so the operator cannot do this
///   from outside in time; afterwards it keeps pointing the row at a serving node. If the step
///   fails the server still starts (and may crash-restart until the operator sets the row).
fn master_command(hostname: &str, subdomain: &str) -> Vec<String> {
    let master_host = master_host_script(hostname, subdomain);
    let script = format!(
        r#"set -eu
source /opt/omero/server/venv3/bin/activate
{master_host}
export CONFIG_omero_master_host="$host"
for f in /startup/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    if [ "${{f##*/}}" = 99-run.sh ]; then
        echo "omero-operator: a placeholder in omero.cluster.redirect unless it holds a value"
        PGPASSWORD="$CONFIG_omero_db_pass" psql -v ON_ERROR_STOP=1 -h "$CONFIG_omero_db_host" -p "$CONFIG_omero_db_port" \
            -U "$CONFIG_omero_db_user" -d "$CONFIG_omero_db_name" -c "{REDIRECT_PLACEHOLDER_SQL}" \
            || echo "omero-operator: could not write the placeholder; Blitz may restart until the operator sets the row"
    fi
    echo "Running $f"
    "$f"
done
"#
    );
    ["/usr/local/bin/dumb-init", "/bin/bash", "-c", &script].map(String::from).to_vec()
}

fn worker_command(node: &NodeSpec) -> Vec<String> {
    let name = &node.name;
    let script = format!(
        r#"set -eu
source /opt/omero/server/venv3/bin/activate
/startup/50-config.py
mkdir -p {VAR_DIR}/log {VAR_DIR}/{name}
{QUOTED_POD_IP}
cat > /opt/omero/server/OMERO.server/etc/{name}.cfg <<EOF
IceGrid.Node.Name={name}
IceGrid.Node.Endpoints=tcp -h $host
IceGrid.Node.Data={VAR_DIR}/{name}
IceGrid.Node.Output={VAR_DIR}/log
Ice.StdOut={VAR_DIR}/log/{name}.out
Ice.StdErr={VAR_DIR}/log/{name}.err
EOF
cd /opt/omero/server
exec {OMERO_CLI} node {name} start --foreground
"#
    );
    ["/usr/local/bin/dumb-init", "/bin/bash", "-c", &script].map(String::from).to_vec()
}

/// The checks a node's probes run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checks {
    /// Liveness (and start-up): only what a restart of this container could cure.
    pub alive: Vec<String>,
    /// Readiness: whether the node can serve, which may depend on the master.
    pub ready: Vec<String>,
}

/// What the probes of `node` check.
///
/// A standalone node and the master run `omero admin status`: it pings the IceGrid node
/// `master` through the registry, then asks a Blitz session manager for a session and expects
/// OMERO's own refusal. That says nothing of a worker: `omero node <name> status` ignores the
/// name and runs the same check against the master (omero-py `plugins/node.py`), so a dead worker
/// stayed Ready and a master outage restarted every worker. A worker's liveness therefore checks
/// only local things: its own `icegridnode` process and the JVM of its Blitz (IceGrid starts
/// each server with `--Ice.Config=<node data>/servers/<server id>/config/config`, so the server
/// id is in the JVM's command line: read from IceGrid's documentation, not observed). Its
/// readiness adds what needs the master's registry: `node ping <name>` and the state of its
/// Blitz, through `omero admin ice` (icegridadmin with the node's internal configuration).
pub(crate) fn checks(cluster: &OmeroCluster, node: &NodeSpec) -> Checks {
    let cli =
        |args: &[&str]| std::iter::once(OMERO_CLI).chain(args.iter().copied()).map(String::from).collect();
    match role(cluster, node) {
        Role::Standalone | Role::Master => {
            let status: Vec<String> = cli(&["admin", "status"]);
            Checks { alive: status.clone(), ready: status }
        }
        Role::Worker => {
            let name = &node.name;
            let blitz = format!("Blitz-{}", node.blitz_index());
            let local = format!(
                r#"procs=`for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null; echo; done`
echo "$procs" | grep -q 'icegridnode.*etc/{name}\.cfg' || {{ echo "no icegridnode for {name}"; exit 1; }}
echo "$procs" | grep -q 'servers/{blitz}/' || {{ echo "{blitz} is not running"; exit 1; }}"#
            );
            let ready = format!(
                r#"{local}
cd /opt/omero/server
{OMERO_CLI} admin ice node ping {name} | grep -q 'node is up' || {{ echo "the registry does not reach node {name}"; exit 1; }}
{OMERO_CLI} admin ice server state {blitz} | grep -q '^active' || {{ echo "{blitz} is not active"; exit 1; }}"#
            );
            let shell = |script: String| vec!["/bin/bash".to_string(), "-c".to_string(), script];
            Checks { alive: shell(local), ready: shell(ready) }
        }
    }
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
  topology: Grid
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
    fn workers_run_their_icegrid_node_under_dumb_init_and_the_master_the_images_start_up() {
        let desired = render(&cluster(GRID));
        let master = container(&desired, "main").command.clone().unwrap();
        assert_eq!(master[..3], ["/usr/local/bin/dumb-init", "/bin/bash", "-c"]);
        assert!(master[3].contains("for f in /startup/*; do"), "{}", master[3]);
        assert!(!master[3].contains("$("), "Kubernetes would expand it: {}", master[3]);
        let command = container(&desired, "alpha").command.clone().unwrap();
        assert_eq!(command[..3], ["/usr/local/bin/dumb-init", "/bin/bash", "-c"]);
        let script = &command[3];
        assert!(script.contains("/startup/50-config.py\n"), "{script}");
        assert!(!script.contains("60-database"), "workers never touch the database schema");
        assert!(script.contains("IceGrid.Node.Name=alpha\n"), "{script}");
        assert!(script.contains("IceGrid.Node.Endpoints=tcp -h $host\n"), "{script}");
        assert!(script.contains("> /opt/omero/server/OMERO.server/etc/alpha.cfg <<EOF"), "{script}");
        assert!(script.ends_with("exec /opt/omero/server/venv3/bin/omero node alpha start --foreground\n"));
        // Kubernetes would expand `$(NAME)` in a command; the script must not contain any.
        assert!(!script.contains("$("), "{script}");
    }

    /// Runs `script` in bash with `env`, returning what it printed (or why it failed).
    fn bash(script: &str, env: &[(&str, &str)]) -> Result<String, String> {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    #[test]
    fn a_workers_ipv6_pod_ip_is_quoted_for_ice_and_an_ipv4_one_is_not() {
        let host = |ip: &str| {
            bash(&format!("{QUOTED_POD_IP}\nprintf %s \"$host\""), &[("OMERO_POD_IP", ip)]).unwrap()
        };
        assert_eq!(host("fd00:10:244::7"), "\"fd00:10:244::7\"");
        assert_eq!(host("10.244.0.7"), "10.244.0.7");
        // The worker's own endpoints go into a .cfg file, where Ice takes the quotes.
        let desired = render(&cluster(GRID));
        let worker = &container(&desired, "alpha").command.clone().unwrap()[3];
        assert!(worker.contains(QUOTED_POD_IP) && worker.contains("IceGrid.Node.Endpoints=tcp -h $host\n"));
        // The master's host goes into XML too: never quoted.
        let master = &container(&desired, "main").command.clone().unwrap()[3];
        assert!(!master.contains(QUOTED_POD_IP), "{master}");
        assert!(
            master.contains(&format!(
                "{}\nexport CONFIG_omero_master_host=\"$host\"",
                master_host_script("main", "omc-icegrid")
            )),
            "{master}"
        );
    }

    /// What the master's start-up gives `omero.master.host`, run for real with a stand-in for
    /// the `/etc/hosts` the kubelet writes.
    fn master_host_on(pod_ip: &str, hosts: &str) -> Result<String, String> {
        let dir = std::env::temp_dir().join(format!(
            "omero-operator-hosts-{}-{}",
            std::process::id(),
            pod_ip.replace(':', "_")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts).unwrap();
        let script = master_host_script("main", "omc-icegrid")
            .replace("/etc/hosts", &hosts_file.display().to_string())
            .replace("/dev/termination-log", &dir.join("termination-log").display().to_string());
        let out = bash(&format!("set -eu\n{script}\nprintf %s \"$host\""), &[("OMERO_POD_IP", pod_ip)]);
        let termination = std::fs::read_to_string(dir.join("termination-log")).unwrap_or_default();
        std::fs::remove_dir_all(&dir).unwrap();
        out.map_err(|e| format!("{e}termination message: {termination}"))
    }

    /// As the kubelet writes a pod's `/etc/hosts` when the pod has a hostname and subdomain.
    fn kubelet_hosts(pod_ip: &str) -> String {
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n{pod_ip}\tmain.omc-icegrid.imaging.svc.cluster.local\tmain\n"
        )
    }

    #[test]
    fn the_master_gives_icegrid_its_ipv4_address_or_on_ipv6_its_own_dns_name() {
        assert_eq!(master_host_on("10.244.0.7", &kubelet_hosts("10.244.0.7")), Ok("10.244.0.7".into()));
        assert_eq!(
            master_host_on("fd00:10:244::7", &kubelet_hosts("fd00:10:244::7")),
            Ok("main.omc-icegrid.imaging.svc.cluster.local".into())
        );
        // Another pod's line, or only the short name, is not the master's DNS name: it refuses
        // to start, and says why where `kubectl describe pod` shows it.
        for hosts in [kubelet_hosts("fd00:10:244::8"), "fd00:10:244::7\tmain\n".to_string()] {
            let refused = master_host_on("fd00:10:244::7", &hosts).unwrap_err();
            assert!(refused.contains("the pod IP fd00:10:244::7 is IPv6"), "{refused}");
            assert!(refused.contains("termination message: omero-operator: the pod IP"), "{refused}");
        }
    }

    #[test]
    fn the_master_pod_has_a_dns_name_of_its_own_and_nothing_else_does() {
        let c = cluster(GRID);
        let desired = render(&c);
        let master = pod_spec(&desired, "main");
        assert_eq!(master.hostname.as_deref(), Some("main"));
        assert_eq!(master.subdomain.as_deref(), Some("omc-icegrid"));
        for other in ["alpha", "zeta"] {
            assert_eq!(
                (pod_spec(&desired, other).hostname.as_ref(), pod_spec(&desired, other).subdomain.as_ref()),
                (None, None)
            );
        }
        let independent = render(&cluster(BASE));
        assert!(pod_spec(&independent, "rw").subdomain.is_none());

        // The headless Service named like the subdomain: the cluster DNS serves
        // `main.omc-icegrid.imaging.svc.<domain>` for the master's pod, ready or not.
        let dns = service_named(&desired, "omc-icegrid");
        let spec = dns.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(crate::render::node_selector_labels("omc", "main")));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        assert_eq!(spec.ports, None);
        assert_eq!(dns.metadata.owner_references.as_ref().map(Vec::len), Some(1), "owned by the cluster");
        assert!(!dns.metadata.labels.as_ref().unwrap().contains_key(crate::api::keys::NODE_LABEL));
        let master_service = service_named(&desired, "omc-main").spec.clone().unwrap();
        assert_eq!(master_service.ip_family_policy.as_deref(), Some("PreferDualStack"));
        assert!(independent.services.iter().all(|s| s.metadata.name.as_deref() != Some("omc-icegrid")));
        assert!(independent.services.iter().all(|s| s.spec.as_ref().unwrap().ip_family_policy.is_none()));
    }

    #[test]
    fn every_script_a_grid_node_runs_is_valid_bash() {
        let c = cluster(GRID);
        for node in &c.spec.nodes {
            let mut scripts = vec![command(&c, node).unwrap()[3].clone()];
            let checks = checks(&c, node);
            scripts.extend(
                [checks.alive, checks.ready]
                    .into_iter()
                    .filter(|c| c[0] == "/bin/bash")
                    .map(|c| c[2].clone()),
            );
            for script in scripts {
                bash(&format!("set -n\n{script}"), &[])
                    .unwrap_or_else(|e| panic!("{}: {e}\n{script}", node.name));
            }
        }
    }

    /// The master's start-up, run for real with stand-ins for the image's scripts and `psql`:
    /// the placeholder is written after `60-database.sh` and before `99-run.sh`.
    #[test]
    fn the_master_writes_the_redirect_placeholder_between_the_database_and_the_server() {
        let dir = std::env::temp_dir().join(format!("omero-operator-startup-{}", std::process::id()));
        let startup = dir.join("startup");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&startup).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let write = |path: std::path::PathBuf, body: &str| {
            std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
            std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        };
        for step in ["50-config.py", "60-database.sh", "99-run.sh"] {
            write(startup.join(step), &format!("echo {step}"));
        }
        write(bin.join("psql"), r#"echo "psql $PGPASSWORD $*""#);
        let desired = render(&cluster(GRID));
        let script = container(&desired, "main").command.clone().unwrap()[3]
            .replace("/startup/", &format!("{}/", startup.display()))
            .replace("source /opt/omero/server/venv3/bin/activate", "true");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let env = [
            ("PATH", path.as_str()),
            ("OMERO_POD_IP", "10.0.0.9"),
            ("CONFIG_omero_db_pass", "pw"),
            ("CONFIG_omero_db_host", "db"),
            ("CONFIG_omero_db_port", "5432"),
            ("CONFIG_omero_db_user", "omero"),
            ("CONFIG_omero_db_name", "omero"),
        ];
        let out = bash(&script, &env).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let steps: Vec<&str> =
            out.lines().filter(|l| !l.starts_with("Running") && !l.starts_with("omero-operator:")).collect();
        assert_eq!(steps.len(), 4, "{out}");
        assert_eq!(steps[0], "50-config.py");
        assert_eq!(steps[1], "60-database.sh");
        assert!(
            steps[2].starts_with(
                "psql pw -v ON_ERROR_STOP=1 -h db -p 5432 -U omero -d omero -c INSERT INTO configuration"
            ),
            "{out}"
        );
        assert!(steps[2].contains(REDIRECT_PLACEHOLDER), "{out}");
        assert_eq!(steps[3], "99-run.sh");
    }

    #[test]
    fn probes_check_the_master_or_the_workers_own_node() {
        let c = cluster(GRID);
        let desired = render(&c);
        let command = |node: &str,
                       probe: fn(
            &k8s_openapi::api::core::v1::Container,
        ) -> Option<k8s_openapi::api::core::v1::Probe>| {
            probe(container(&desired, node)).unwrap().exec.unwrap().command.unwrap()
        };
        let ready = |n: &str| command(n, |c| c.readiness_probe.clone());
        let alive = |n: &str| command(n, |c| c.liveness_probe.clone());
        let started = |n: &str| command(n, |c| c.startup_probe.clone());
        assert_eq!(ready("main"), [OMERO_CLI, "admin", "status"]);
        assert_eq!(alive("main"), [OMERO_CLI, "admin", "status"]);

        // A worker's liveness never asks the master: a master outage restarts no worker.
        let blitz = format!("Blitz-{}", c.spec.node("alpha").unwrap().blitz_index());
        let liveness = alive("alpha").join(" ");
        assert!(!liveness.contains(OMERO_CLI) && !liveness.contains("node alpha status"), "{liveness}");
        assert!(liveness.contains("icegridnode.*etc/alpha\\.cfg"), "{liveness}");
        assert!(liveness.contains(&format!("servers/{blitz}/")), "its own Blitz: {liveness}");
        assert_eq!(started("alpha"), alive("alpha"));
        // Readiness adds what needs the registry, about this worker and its own Blitz.
        let readiness = ready("alpha").join(" ");
        assert!(
            readiness.starts_with(&format!("/bin/bash -c {}", liveness.trim_start_matches("/bin/bash -c "))),
            "{readiness}"
        );
        assert!(readiness.contains("admin ice node ping alpha"), "{readiness}");
        assert!(readiness.contains(&format!("admin ice server state {blitz}")), "{readiness}");
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
                serde_saphyr::from_str(&format!("{GRID}  config:\n    {key}: x\n")).unwrap();
            let errors = crate::api::validate(&c).unwrap_err();
            assert_eq!(errors[0].field, format!("spec.config[{key}]"));
            assert!(errors[0].message.contains("is set by the operator"), "{}", errors[0]);
            // The redirector only at OMERO's default: any other refers to a row nothing maintains.
            let value = if key == "omero.cluster.redirector" { "nullRedirector" } else { "x" };
            let independent = crate::render::tests::base_with(|c| {
                c.spec.config.insert(key.into(), value.into());
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
