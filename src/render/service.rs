//! Services: one per node (a stable address that keeps serving the node's own clients while it
//! drains) and the entry Service new sessions arrive through.

use k8s_openapi::{
    api::core::v1::{ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::ResourceExt;

use super::{
    client_ports,
    grid::{self, Role},
    labels,
};
use crate::api::{DEFAULT_AFFINITY_TIMEOUT_SECONDS, NodeSpec, OmeroCluster, ServiceType, keys};

/// Selects the node's pod by its identity only, never by the routable label: clients already
/// on a draining node keep reaching it here.
pub(crate) fn node_service(cluster: &OmeroCluster, node: &NodeSpec) -> Service {
    let cluster_name = cluster.name_any();
    let labels = labels::node_labels(&cluster_name, &node.name);
    let ports = service_ports(&grid::ports(cluster, node));
    let spec = if grid::role(cluster, node) == Role::Worker {
        // Nothing on a grid worker listens on a fixed port (clients go through the master's
        // Glacier2); a headless Service still gives its pod a stable DNS name.
        ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::node_selector_labels(&cluster_name, &node.name)),
            ..ServiceSpec::default()
        }
    } else {
        ServiceSpec {
            type_: Some(ServiceType::ClusterIP.as_str().into()),
            selector: Some(labels::node_selector_labels(&cluster_name, &node.name)),
            ports: Some(ports),
            ip_family_policy: (grid::role(cluster, node) == Role::Master).then(prefer_dual_stack),
            ..ServiceSpec::default()
        }
    };
    Service {
        metadata: labels::object_meta(cluster, labels::node_object_name(&cluster_name, &node.name), labels),
        spec: Some(spec),
        status: None,
    }
}

/// Where new sessions arrive. `independent`: every routable node of the cluster, with
/// client-IP affinity (the binary protocol carries no session id to route on, so a client's
/// connections must keep reaching the node that holds its session). `grid`: the master's
/// Glacier2, the only door into the grid; OMERO's redirector chooses the Blitz, so the
/// routable label plays no part there.
pub(crate) fn entry_service(cluster: &OmeroCluster) -> Service {
    let cluster_name = cluster.name_any();
    let selector = match cluster.spec.grid_master() {
        Some(master) => labels::node_selector_labels(&cluster_name, &master.name),
        None => {
            let mut selector = labels::cluster_selector(&cluster_name);
            selector.insert(keys::ROUTABLE_LABEL.into(), "true".into());
            selector
        }
    };
    let service = cluster.spec.service.clone().unwrap_or_default();
    let timeout = service.session_affinity_timeout_seconds.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    let mut metadata = labels::object_meta(
        cluster,
        labels::entry_service_name(&cluster_name),
        labels::entry_labels(&cluster_name),
    );
    metadata.annotations = (!service.annotations.is_empty()).then(|| service.annotations.clone());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            // Explicit, so that going back to ClusterIP is applied rather than left behind.
            type_: Some(service.type_.unwrap_or(ServiceType::ClusterIP).as_str().into()),
            selector: Some(selector),
            ports: Some(service_ports(&entry_ports(cluster))),
            session_affinity: Some("ClientIP".into()),
            session_affinity_config: Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig { timeout_seconds: Some(timeout) }),
            }),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Every Glacier2 port any node behind the entry Service listens on (the master, in grid).
fn entry_ports(cluster: &OmeroCluster) -> Vec<(&'static str, i32)> {
    let mut ports: Vec<(&'static str, i32)> = cluster
        .spec
        .nodes
        .iter()
        .filter(|n| grid::role(cluster, n) != Role::Worker)
        .flat_map(|n| client_ports(cluster, n))
        .collect();
    ports.sort_by_key(|(_, port)| *port);
    ports.dedup();
    ports
}

/// Gives a grid master's pod a DNS name: `<master>.<cluster>-icegrid.<namespace>.svc.<cluster
/// domain>`, the name the kubelet also writes into the pod's `/etc/hosts` (the pod's
/// `hostname` and `subdomain`, `grid::master_pod_dns`). An IPv6 master binds IceGrid to that
/// name, and the workers connect to the endpoints it publishes by resolving it here (see
/// `grid::master_host_script`). Headless, so the name is the pod's own address (a ClusterIP
/// would not do: the registry's internal endpoints have ports Ice picks); the name exists while
/// the master is not ready too (`publishNotReadyAddresses`), since workers must reach its
/// registry before it serves, and a readiness blip must not make the grid's addresses vanish.
/// None outside grid topology.
pub(crate) fn grid_dns_service(cluster: &OmeroCluster) -> Option<Service> {
    let master = cluster.spec.grid_master()?;
    let cluster_name = cluster.name_any();
    let name = labels::grid_dns_service_name(&cluster_name);
    Some(Service {
        metadata: labels::object_meta(cluster, name, labels::grid_dns_labels(&cluster_name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::node_selector_labels(&cluster_name, &master.name)),
            publish_not_ready_addresses: Some(true),
            ip_family_policy: Some(prefer_dual_stack()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// A grid master's Services answer in every IP family the cluster has. On a dual-stack cluster
/// whose pods get an IPv6 address first, the master binds IceGrid to its name, which resolves
/// to both of its addresses, and Ice binds the first after sorting: the IPv4 one (Ice's default,
/// `Ice.PreferIPv6Address=0`). A single-stack IPv6 Service would then forward the workers'
/// registry connections to an address nothing listens on; with both families the workers'
/// Ice, which tries IPv4 first too, reaches it. Single-stack clusters get one family, as
/// before.
fn prefer_dual_stack() -> String {
    "PreferDualStack".into()
}

fn service_ports(ports: &[(&str, i32)]) -> Vec<ServicePort> {
    ports
        .iter()
        .map(|&(name, port)| ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::render::{
        render,
        tests::{BASE, cluster, service_named},
    };

    fn annotations(s: &Service) -> Option<&BTreeMap<String, String>> {
        s.metadata.annotations.as_ref()
    }

    fn entry(yaml: &str) -> Service {
        service_named(&render(&cluster(yaml)), "omc").clone()
    }

    #[test]
    fn node_service_selects_the_node_not_the_routable_label() {
        let desired = render(&cluster(BASE));
        let spec = service_named(&desired, "omc-ro").spec.clone().unwrap();
        assert_eq!(spec.selector, Some(labels::node_selector_labels("omc", "ro")));
        assert!(!spec.selector.unwrap().contains_key(keys::ROUTABLE_LABEL));
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.session_affinity, None, "one pod behind it");
    }

    #[test]
    fn node_service_forwards_the_glacier2_ports() {
        let desired = render(&cluster(BASE));
        let ports = service_named(&desired, "omc-rw").spec.clone().unwrap().ports.unwrap();
        let got: Vec<_> =
            ports.iter().map(|p| (p.name.clone().unwrap(), p.port, p.target_port.clone().unwrap())).collect();
        let want: Vec<_> = [("glacier2-tcp", 4063), ("glacier2-ssl", 4064)]
            .iter()
            .map(|(n, p)| (n.to_string(), *p, IntOrString::Int(*p)))
            .collect();
        assert_eq!(got, want, "OMERO's default transports, ssl and tcp");
        assert!(ports.iter().all(|p| p.protocol.as_deref() == Some("TCP")));
    }

    #[test]
    fn websocket_ports_only_where_omero_listens_on_them() {
        // The cluster enables websockets; node `ro` turns them off again.
        let yaml = format!(
            "{}  config: {{omero.client.icetransports: \"ssl,tcp,wss\"}}\n",
            BASE.replace("      readOnly: {db: true, repo: true}\n", "      readOnly: {db: true, repo: true}\n      config: {omero.client.icetransports: \"ssl,tcp\"}\n")
        );
        let desired = render(&cluster(&yaml));
        let ports = |name: &str| -> Vec<i32> {
            service_named(&desired, name)
                .spec
                .clone()
                .unwrap()
                .ports
                .unwrap()
                .iter()
                .map(|p| p.port)
                .collect()
        };
        assert_eq!(ports("omc-rw"), [4063, 4064, 4066]);
        assert_eq!(ports("omc-ro"), [4063, 4064]);
        assert_eq!(ports("omc"), [4063, 4064, 4066], "the entry Service: every port some node listens on");
    }

    #[test]
    fn entry_service_selects_routable_pods_of_this_cluster() {
        let mut want = labels::cluster_selector("omc");
        want.insert("omero.openmicroscopy.org/routable".into(), "true".into());
        assert_eq!(entry(BASE).spec.unwrap().selector, Some(want));
    }

    #[test]
    fn entry_service_defaults_to_cluster_ip_with_three_hour_client_ip_affinity() {
        let s = entry(BASE);
        assert_eq!(annotations(&s), None);
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        let timeout = spec.session_affinity_config.unwrap().client_ip.unwrap().timeout_seconds;
        assert_eq!(timeout, Some(10800));
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [4063, 4064]);
    }

    #[test]
    fn entry_service_takes_type_annotations_and_timeout_from_the_spec() {
        let yaml = format!(
            "{BASE}  service:\n    type: LoadBalancer\n    sessionAffinityTimeoutSeconds: 600\n    annotations:\n      \
             service.beta.kubernetes.io/aws-load-balancer-type: nlb\n      example.com/owner: imaging\n"
        );
        let s = entry(&yaml);
        assert_eq!(
            annotations(&s),
            Some(&BTreeMap::from([
                ("example.com/owner".to_string(), "imaging".to_string()),
                ("service.beta.kubernetes.io/aws-load-balancer-type".to_string(), "nlb".to_string()),
            ]))
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.session_affinity_config.unwrap().client_ip.unwrap().timeout_seconds, Some(600));
    }

    #[test]
    fn entry_service_type_and_annotations_do_not_leak_to_node_services() {
        let yaml = format!("{BASE}  service:\n    type: NodePort\n    annotations: {{a: b}}\n");
        let desired = render(&cluster(&yaml));
        let node = service_named(&desired, "omc-rw");
        assert_eq!(node.metadata.annotations, None);
        assert_eq!(node.spec.clone().unwrap().type_.as_deref(), Some("ClusterIP"));
    }
}
