//! OMERO's grid application descriptor (`etc/grid/default.xml`) as `omero admin rewrite` renders
//! it from OMERO's template on a node the operator starts, parsed by a real XML parser: the
//! endpoints and servers IceGrid would get.
//!
//! What runs for real: the master's start-up script the operator renders (with stand-ins for
//! the image's `/startup/*` steps and `psql`, and for the `/etc/hosts` the kubelet writes), the
//! rendered `omero.server.nodedescriptors`, and an XML parser. What is re-implemented here from
//! omero-py's source (`src/omero/plugins/admin.py` `rewrite`/`copy_template`,
//! `src/omero/util/_process_defaultxml.py`; read, not run, since omero-py does not install
//! here): the text substitution of `@key@` placeholders and the rewrite of the master node's
//! server instances. The template is a reduced fixture (`tests/fixtures/omero-grid-default.xml`,
//! with its source and licence).

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use omero_operator::api::OmeroCluster;
use omero_operator::render::{Desired, render};

const TEMPLATE: &str = include_str!("fixtures/omero-grid-default.xml");

const GRID: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omc, namespace: imaging, uid: 0a1b2c3d-0000-4000-8000-000000000001}
spec:
  image: openmicroscopy/omero-server:5.6
  topology: Grid
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
  repository: {claimName: omero-repo}
  nodes:
    - {name: main, master: true}
    - {name: alpha}
"#;

const INDEPENDENT: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omc, namespace: imaging, uid: 0a1b2c3d-0000-4000-8000-000000000001}
spec:
  image: openmicroscopy/omero-server:5.6
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
  repository: {claimName: omero-repo}
  nodes:
    - {name: rw}
    - {name: ro, readOnly: {db: true, repo: true}}
"#;

fn cluster(yaml: &str) -> OmeroCluster {
    let cluster: OmeroCluster = serde_saphyr::from_str(yaml).unwrap();
    omero_operator::api::validate(&cluster).expect("a valid cluster");
    cluster
}

fn container(desired: &Desired, node: &str) -> k8s_openapi::api::core::v1::Container {
    let name = format!("omc-{node}");
    let deployment = desired.deployments.iter().find(|d| d.metadata.name.as_deref() == Some(&name)).unwrap();
    deployment.spec.clone().unwrap().template.spec.unwrap().containers[0].clone()
}

/// The value of `name` in a node's environment, `None` when absent.
fn env(desired: &Desired, node: &str, name: &str) -> Option<String> {
    container(desired, node).env.unwrap().into_iter().find(|e| e.name == name).and_then(|e| e.value)
}

/// The pod's own line in `/etc/hosts`, as the kubelet writes it for a pod with a `hostname`
/// and a `subdomain` (`<IP>\t<hostname>.<subdomain>.<namespace>.svc.<cluster domain>\t<hostname>`).
fn kubelet_hosts(pod_ip: &str, hostname: &str, subdomain: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         {pod_ip}\t{hostname}.{subdomain}.imaging.svc.cluster.local\t{hostname}\n"
    )
}

/// Runs the grid master's rendered start-up in bash on a pod with `pod_ip`, with stand-ins for
/// the image's steps: `50-config.py` reports the `omero.master.host` it would `omero config
/// set`. Returns that value, or the script's error and termination message.
fn master_host_given_to_omero(desired: &Desired, pod_ip: &str) -> Result<String, String> {
    let master = container(desired, "main");
    let pod = desired.deployments[0].spec.clone().unwrap().template.spec.unwrap();
    let (hostname, subdomain) = (pod.hostname.unwrap(), pod.subdomain.unwrap());
    let dir = std::env::temp_dir().join(format!(
        "omero-operator-grid-descriptor-{}-{}",
        std::process::id(),
        pod_ip.replace(':', "_")
    ));
    let (startup, bin) = (dir.join("startup"), dir.join("bin"));
    std::fs::create_dir_all(&startup).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let executable = |path: PathBuf, body: &str| {
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    };
    executable(startup.join("50-config.py"), r#"echo "omero.master.host=$CONFIG_omero_master_host""#);
    executable(startup.join("60-database.sh"), "true");
    executable(startup.join("99-run.sh"), "true");
    executable(bin.join("psql"), "true");
    std::fs::write(dir.join("hosts"), kubelet_hosts(pod_ip, &hostname, &subdomain)).unwrap();
    let script = master.command.unwrap()[3]
        .replace("source /opt/omero/server/venv3/bin/activate", "true")
        .replace("/startup/", &format!("{}/", startup.display()))
        .replace("/etc/hosts", &dir.join("hosts").display().to_string())
        .replace("/dev/termination-log", &dir.join("termination-log").display().to_string());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("OMERO_POD_IP", pod_ip)
        .env("CONFIG_omero_db_pass", "pw")
        .env("CONFIG_omero_db_host", "db")
        .env("CONFIG_omero_db_port", "5432")
        .env("CONFIG_omero_db_user", "omero")
        .env("CONFIG_omero_db_name", "omero")
        .output()
        .unwrap();
    let termination = std::fs::read_to_string(dir.join("termination-log")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.strip_prefix("omero.master.host=")) {
        Some(host) if out.status.success() => Ok(host.to_string()),
        _ => Err(format!("{stdout}{}{termination}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// `copy_template` of omero-py's `rewrite`: `data = re.sub(key, value, data)` for each
/// placeholder, then, for `*default.xml`, `_process_xml(data, omero.server.nodedescriptors)`.
/// Python's `re.sub` reads backslashes in the value as escapes; none of the values here has one,
/// so a literal replacement is the same.
fn rewrite_default_xml(master_host: &str, node_descriptors: &str) -> String {
    // omero-py's defaults for what the operator does not set, and `@omero.client.endpoints@`
    // from the default `omero.client.icetransports` (`ssl,tcp`).
    let substitutions = [
        ("@omero.ports.prefix@", ""),
        ("@omero.ports.ssl@", "4064"),
        ("@omero.ports.tcp@", "4063"),
        ("@omero.ports.wss@", "4066"),
        ("@omero.ports.ws@", "4065"),
        ("@omero.ports.registry@", "4061"),
        ("@omero.master.host@", master_host),
        ("@omero.tables.module@", "runTables"),
        ("@omero.client.endpoints@", "ssl -p 4064:tcp -p 4063"),
    ];
    let mut data = TEMPLATE.to_string();
    for (key, value) in substitutions {
        assert!(!value.contains('\\'), "re.sub would read escapes in {value}");
        data = regex::Regex::new(key).unwrap().replace_all(&data, regex::NoExpand(value)).into_owned();
    }
    process_xml(&data, node_descriptors)
}

/// omero-py `_process_defaultxml.py`: the master node keeps its first server instance
/// (Glacier2); the rest of it is replaced by the servers the descriptors give `master`, and
/// every other descriptor becomes a node of its own (sorted by name).
fn process_xml(xml: &str, node_descriptors: &str) -> String {
    let pattern =
        regex::Regex::new(r#"(?s)<node name="master">\s*<server-instance[^>]*>(.*?</node>)"#).unwrap();
    let found = pattern.captures(xml).expect("the template has a master node").get(1).unwrap();
    let mut nodes: BTreeMap<&str, String> = BTreeMap::new();
    for descriptor in node_descriptors.split_whitespace() {
        let (node, servers) = descriptor.split_once(':').expect("node:servers");
        let mut instances = String::new();
        for server in servers.split(',') {
            let (template, index) = match server.split('-').collect::<Vec<_>>()[..] {
                [template, index] => (template, Some(index)),
                _ => (server, None),
            };
            instances.push_str(&format!("      <server-instance template=\"{template}Template\""));
            if let Some(index) = index {
                instances.push_str(&format!(" index=\"{index}\""));
            }
            if template == "Blitz" {
                instances.push_str(" config=\"default\"");
            }
            if ["PixelData", "Processor", "Tables"].contains(&template) {
                instances.push_str(" dir=\"\"");
            }
            instances.push_str("/>\n");
        }
        nodes.insert(node, instances);
    }
    if nodes.is_empty() {
        return xml.to_string();
    }
    let mut master = "\n    </node>\n".to_string();
    let mut others = String::new();
    for (node, servers) in &nodes {
        if *node == "master" {
            master = format!("{servers}{master}");
        } else {
            others.push_str(&format!("    <node name=\"{node}\">\n{servers}    </node>\n"));
        }
    }
    format!("{}{master}{others}{}", &xml[..found.start()], &xml[found.end()..])
}

/// An endpoint as Ice parses it: the protocol and its `-h` host (quotes removed).
#[derive(Debug, PartialEq)]
struct Endpoint {
    protocol: String,
    host: Option<String>,
}

/// An Ice endpoint list: split at `:` outside double quotes (Ice's `ObjectAdapterI::
/// parseEndpoints` and its proxy parser), each endpoint's options at blanks outside quotes.
fn ice_endpoints(list: &str) -> Vec<Endpoint> {
    let mut endpoints = vec![String::new()];
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                endpoints.last_mut().unwrap().push(c);
            }
            ':' if !quoted => endpoints.push(String::new()),
            _ => endpoints.last_mut().unwrap().push(c),
        }
    }
    endpoints
        .iter()
        .map(|e| {
            let mut words = Vec::new();
            let (mut word, mut quoted) = (String::new(), false);
            for c in e.chars() {
                match c {
                    '"' => quoted = !quoted,
                    c if c.is_whitespace() && !quoted => {
                        words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)))
                    }
                    c => word.push(c),
                }
            }
            words.extend((!word.is_empty()).then_some(word));
            let host = words.iter().position(|w| w == "-h").and_then(|i| words.get(i + 1)).cloned();
            Endpoint { protocol: words.first().cloned().unwrap_or_default(), host }
        })
        .collect()
}

/// The servers IceGrid would place on each node of a parsed descriptor, and the Glacier2
/// router's server-side endpoints.
fn parse(xml: &str) -> Result<(BTreeMap<String, Vec<String>>, String), roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let mut nodes = BTreeMap::new();
    let mut glacier2_server_endpoints = String::new();
    for node in doc.descendants().filter(|n| n.has_tag_name("node")) {
        let mut servers = Vec::new();
        for instance in node.children().filter(|n| n.has_tag_name("server-instance")) {
            let template = instance.attribute("template").unwrap().trim_end_matches("Template");
            servers.push(match instance.attribute("index") {
                Some(index) => format!("{template}-{index}"),
                None => template.to_string(),
            });
            if template == "Glacier2" {
                glacier2_server_endpoints = instance.attribute("server-endpoints").unwrap().to_string();
            }
        }
        nodes.insert(node.attribute("name").unwrap().to_string(), servers);
    }
    Ok((nodes, glacier2_server_endpoints))
}

/// The IPv6 grid master: the host OMERO gets is the pod's own DNS name, `default.xml` parses,
/// and Glacier2's server side is one tcp endpoint on that name; the same value makes one
/// endpoint in master.cfg's `tcp -h <host> -p <port>` form. (Before, the master gave OMERO its
/// quoted IPv6 address, and the XML did not parse.)
#[test]
fn an_ipv6_grid_master_gets_a_descriptor_icegrid_can_read() {
    let c = cluster(GRID);
    let desired = render(&c);
    let descriptors = env(&desired, "main", "CONFIG_omero_server_nodedescriptors").unwrap();
    let pod_ip = "fd00:10:244:1::7";
    let host = master_host_given_to_omero(&desired, pod_ip).unwrap();
    let xml = rewrite_default_xml(&host, &descriptors);
    let (nodes, server_endpoints) = parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(
        ice_endpoints(&server_endpoints),
        [Endpoint { protocol: "tcp".into(), host: Some(host.clone()) }]
    );
    assert_eq!(host, "main.omc-icegrid.imaging.svc.cluster.local");
    assert_eq!(
        ice_endpoints(&format!("tcp -h {host} -p 4061")),
        [Endpoint { protocol: "tcp".into(), host: Some(host.clone()) }]
    );
    // The servers: OMERO's set on the master, the worker's Blitz on its node.
    let index = c.spec.node("alpha").unwrap().blitz_index();
    assert_eq!(nodes["master"][..3], ["Glacier2", "Blitz-0", "Indexer-0"]);
    assert_eq!(nodes["alpha"], [format!("Blitz-{index}")]);
    // The name is the one the DNS Service serves for the master's pod.
    let dns = desired.services.iter().find(|s| s.metadata.name.as_deref() == Some("omc-icegrid")).unwrap();
    assert!(host.starts_with("main.omc-icegrid.imaging.svc."), "{host}");
    assert_eq!(dns.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
}

/// An IPv4 master gives OMERO its address, as before: one endpoint on it.
#[test]
fn an_ipv4_grid_master_gets_its_address_into_the_descriptor() {
    let desired = render(&cluster(GRID));
    let descriptors = env(&desired, "main", "CONFIG_omero_server_nodedescriptors").unwrap();
    let host = master_host_given_to_omero(&desired, "10.244.1.7").unwrap();
    assert_eq!(host, "10.244.1.7");
    let (_, server_endpoints) = parse(&rewrite_default_xml(&host, &descriptors)).unwrap();
    assert_eq!(ice_endpoints(&server_endpoints), [Endpoint { protocol: "tcp".into(), host: Some(host) }]);
}

/// Why an IPv6 address itself cannot be the host: quoted, the XML does not parse; unquoted,
/// Ice splits the endpoint at its colons.
#[test]
fn an_ipv6_address_in_the_descriptor_is_malformed_quoted_and_split_unquoted() {
    assert!(parse(&rewrite_default_xml("\"fd00:10:244:1::7\"", "")).is_err());
    let (_, server_endpoints) = parse(&rewrite_default_xml("fd00:10:244:1::7", "")).unwrap();
    let endpoints = ice_endpoints(&server_endpoints);
    assert_eq!(endpoints.len(), 6, "{endpoints:?}");
    assert_eq!(endpoints[0], Endpoint { protocol: "tcp".into(), host: Some("fd00".into()) });
    // In a .cfg file the quoted address is one endpoint, which is why a worker keeps it.
    assert_eq!(ice_endpoints("tcp -h \"fd00:10:244:1::7\"").len(), 1);
}

/// A read-only node of an independent topology is an IceGrid application of its own; its
/// descriptors make OMERO's rewrite deploy Glacier2, Blitz-0 and Tables-0 only (no Indexer,
/// PixelData, DropBox, MonitorServer, FileServer, Processor or Storm). The read-write node
/// keeps the template's own servers. (`omero.master.host` is unset on such a node: omero-py's
/// default, 127.0.0.1.)
#[test]
fn a_read_only_node_deploys_glacier2_blitz_and_tables_only() {
    let desired = render(&cluster(INDEPENDENT));
    let descriptors = env(&desired, "ro", "CONFIG_omero_server_nodedescriptors").expect("descriptors on ro");
    let (nodes, server_endpoints) = parse(&rewrite_default_xml("127.0.0.1", &descriptors)).unwrap();
    let servers = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        nodes,
        BTreeMap::from([("master".to_string(), servers(&["Glacier2", "Blitz-0", "Tables-0"]))])
    );
    assert_eq!(
        ice_endpoints(&server_endpoints),
        [Endpoint { protocol: "tcp".into(), host: Some("127.0.0.1".into()) }]
    );
    assert_eq!(env(&desired, "rw", "CONFIG_omero_server_nodedescriptors"), None);
    let (nodes, _) = parse(&rewrite_default_xml("127.0.0.1", "")).unwrap();
    assert_eq!(nodes["master"], servers(&["Glacier2", "Blitz-0"]), "the (reduced) template as it is");
}
