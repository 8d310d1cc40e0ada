//! `kubectl omero status`: what the cluster's status says (conditions, the node table), and
//! around it what users and whoever looks after them need: the address users log in to (the
//! entry Service), the image (and the nodes that still run another during a rollout), where
//! each node runs (its pod and Kubernetes node), the problems, and the last Warning Events.
//!
//! [`read_objects`] is the I/O: three reads beside the cluster (the entry Service, the
//! cluster's pods, its Warning Events), each of which may fail alone (a role that reads
//! OmeroClusters but not pods) without failing the command. [`in_words`] is pure.

use std::{collections::BTreeMap, io::Write as _};

use k8s_openapi::{
    api::core::v1::{Event, Pod, Service},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{
    api::{NodePhase, OMERO_CONTAINER, OmeroCluster, conditions, keys},
    render::{cluster_selector, entry_service_name},
};

/// Warning Events shown, the newest.
pub const WARNINGS_SHOWN: usize = 5;

/// What status reads beside the cluster; each read either the objects or why it failed.
#[derive(Clone, Debug)]
pub struct ClusterObjects {
    /// The entry Service, or none when it does not exist.
    pub entry_service: Result<Option<Service>, String>,
    /// The pods the operator labels as the cluster's.
    pub pods: Result<Vec<Pod>, String>,
    /// The Warning Events about the cluster.
    pub warnings: Result<Vec<Event>, String>,
}

/// Reads the entry Service, the cluster's pods (by the operator's labels) and its Warning
/// Events (core Events whose involved object is this OmeroCluster, by field selector), at once.
pub async fn read_objects(client: &Client, namespace: &str, cluster: &OmeroCluster) -> ClusterObjects {
    let name = cluster.name_any();
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let pod_selector =
        cluster_selector(&name).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mut event_fields =
        format!("involvedObject.kind=OmeroCluster,involvedObject.name={name},type=Warning");
    // Not the events of an earlier cluster of the same name.
    if let Some(uid) = &cluster.metadata.uid {
        event_fields.push_str(&format!(",involvedObject.uid={uid}"));
    }
    let (entry, by_labels, by_fields) = (
        entry_service_name(&name),
        ListParams::default().labels(&pod_selector),
        ListParams::default().fields(&event_fields),
    );
    let (service, pods, events) =
        futures::join!(services.get_opt(&entry), pods.list(&by_labels), events.list(&by_fields));
    ClusterObjects {
        entry_service: service.map_err(|e| unreadable(&e)),
        pods: pods.map(|l| l.items).map_err(|e| unreadable(&e)),
        warnings: events.map(|l| l.items).map_err(|e| unreadable(&e)),
    }
}

/// Why a read failed, in a few words.
fn unreadable(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(e) if e.code == 403 => format!("forbidden: {}", e.message),
        other => super::describe("", other),
    }
}

/// The whole `kubectl omero status` in words: the conditions, the entry and the image, the node
/// table, where each node runs, the problems and the last Warning Events.
pub fn in_words(cluster: &OmeroCluster, objects: &ClusterObjects, now: Timestamp) -> String {
    let mut out = String::new();
    for line in super::conditions_in_words(cluster) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');
    for line in entry_in_words(cluster, &objects.entry_service) {
        out.push_str(&line);
        out.push('\n');
    }
    for line in image_in_words(cluster, objects.pods.as_deref().ok()) {
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(pool) = pool_in_words(cluster) {
        out.push_str(&labelled("Pool:", &pool));
    }
    out.push('\n');
    out.push_str(&super::node_table(cluster, now));
    out.push('\n');
    out.push_str(&placement_table(cluster, &objects.pods));
    out.push('\n');
    let problems = problems(cluster);
    if problems.is_empty() {
        out.push_str(&labelled("Problems:", "none"));
    } else {
        out.push_str("Problems:\n");
        for problem in problems {
            out.push_str(&format!("  {problem}\n"));
        }
    }
    out.push_str(&warnings_in_words(&objects.warnings, now));
    out
}

/// The read-only pool, when the spec has one: how many nodes it asks for (and its floor), how
/// many exist and serve, which leave (a scale-down drains them first) and the pool's sessions.
/// The numbers are the operator's (`status.readOnlyPool`); before it wrote them, only the spec's.
pub fn pool_in_words(cluster: &OmeroCluster) -> Option<String> {
    let spec = cluster.spec.read_only_pool.as_ref()?;
    let mut words = format!("{} wanted", spec.replicas);
    if let Some(min) = spec.min_replicas {
        words.push_str(&format!(" (at least {min})"));
    }
    let Some(status) = cluster.status.as_ref().and_then(|s| s.read_only_pool.as_ref()) else {
        words.push_str(", not counted by the operator yet");
        return Some(words);
    };
    words.push_str(&format!(", {} exist, {} serving", status.replicas, status.serving_replicas));
    if !status.leaving.is_empty() {
        words.push_str(&format!(", leaving (draining first): {}", status.leaving.join(", ")));
    }
    if let Some(sessions) = status.sessions {
        words.push_str(&format!("; {sessions} {}", if sessions == 1 { "session" } else { "sessions" }));
    }
    Some(words)
}

/// `label` and `value` on one line, values aligned.
fn labelled(label: &str, value: &str) -> String {
    format!("{label:<10} {value}\n")
}

/// Where users log in: the entry Service's cluster DNS name and ports, and its address from
/// outside the cluster where its type gives one.
pub fn entry_in_words(cluster: &OmeroCluster, service: &Result<Option<Service>, String>) -> Vec<String> {
    let name = entry_service_name(&cluster.name_any());
    let namespace = cluster.namespace().unwrap_or_default();
    let dns = format!("{name}.{namespace}.svc");
    let line = |label: &str, value: String| labelled(label, &value).trim_end().to_string();
    let service = match service {
        Ok(Some(service)) => service,
        Ok(None) => {
            return vec![line(
                "Entry:",
                format!("Service {name} not found: the operator has not made it yet"),
            )];
        }
        Err(why) => return vec![line("Entry:", format!("{dns} (the Service is not readable: {why})"))],
    };
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port_list = |port: &dyn Fn(&k8s_openapi::api::core::v1::ServicePort) -> Option<i32>| {
        ports
            .iter()
            .filter_map(|p| {
                let number = port(p)?;
                Some(match &p.name {
                    Some(name) => format!("{number} ({name})"),
                    None => number.to_string(),
                })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let cluster_ip =
        spec.cluster_ip.clone().filter(|ip| ip != "None").map_or_else(String::new, |ip| format!(" {ip}"));
    let mut lines =
        vec![line("Entry:", format!("{dns}, ports {} ({type_}{cluster_ip})", port_list(&|p| Some(p.port))))];
    let mut external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
    if type_ == "LoadBalancer" {
        let ingress =
            service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone());
        external.extend(ingress.unwrap_or_default().into_iter().filter_map(|i| i.hostname.or(i.ip)));
        if external.is_empty() {
            lines.push(line("External:", "none yet: the LoadBalancer has no address assigned".into()));
        }
    }
    if !external.is_empty() {
        lines.push(line(
            "External:",
            format!("{}, ports {}", external.join(", "), port_list(&|p| Some(p.port))),
        ));
    }
    if type_ == "NodePort" {
        lines.push(line(
            "External:",
            format!("any Kubernetes node's address, ports {} (NodePort)", port_list(&|p| p.node_port)),
        ));
    }
    lines
}

/// The image the spec asks for, then each other image a node still runs (during a rollout):
/// from its pod when the pods could be read, else as the operator last saw it.
pub fn image_in_words(cluster: &OmeroCluster, pods: Option<&[Pod]>) -> Vec<String> {
    let wanted = &cluster.spec.image;
    let mut others: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in cluster.status.iter().flat_map(|s| &s.nodes) {
        let running = pods
            .and_then(|pods| node_pod(pods, &node.name, node.pod.as_deref()))
            .and_then(|pod| pod.spec.as_ref())
            .and_then(|spec| spec.containers.iter().find(|c| c.name == OMERO_CONTAINER))
            .and_then(|c| c.image.clone())
            .or_else(|| node.image.clone());
        if let Some(image) = running.filter(|image| image != wanted) {
            others.entry(image).or_default().push(node.name.clone());
        }
    }
    let mut lines = vec![labelled("Image:", wanted).trim_end().to_string()];
    for (image, nodes) in others {
        lines.push(
            labelled(
                "",
                &format!("{} still run{} {image}", nodes.join(", "), if nodes.len() == 1 { "s" } else { "" }),
            )
            .trim_end()
            .to_string(),
        );
    }
    lines
}

/// The pod of node `node`: the one the operator names in status, else the newest that is not
/// terminating, else the newest.
fn node_pod<'a>(pods: &'a [Pod], node: &str, named: Option<&str>) -> Option<&'a Pod> {
    let of_node: Vec<&Pod> =
        pods.iter().filter(|p| p.labels().get(keys::NODE_LABEL).map(String::as_str) == Some(node)).collect();
    if let Some(pod) = named.and_then(|name| of_node.iter().find(|p| p.name_any() == name)) {
        return Some(pod);
    }
    let newest = |pods: &mut dyn Iterator<Item = &&'a Pod>| {
        pods.max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)).copied()
    };
    newest(&mut of_node.iter().filter(|p| p.metadata.deletion_timestamp.is_none()))
        .or_else(|| newest(&mut of_node.iter()))
}

/// Where each node runs: its pod and the Kubernetes node the pod is bound to.
pub fn placement_table(cluster: &OmeroCluster, pods: &Result<Vec<Pod>, String>) -> String {
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let _ = writeln!(out, "NODE\tPOD\tKUBERNETES NODE");
    for node in cluster.status.iter().flat_map(|s| &s.nodes) {
        let (pod, k8s_node) = match pods {
            Ok(pods) => match node_pod(pods, &node.name, node.pod.as_deref()) {
                Some(pod) => {
                    let mut name = pod.name_any();
                    if pod.metadata.deletion_timestamp.is_some() {
                        name.push_str(" (terminating)");
                    }
                    let bound = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                    (name, bound.unwrap_or_else(|| "not scheduled".into()))
                }
                None => ("none".into(), "-".into()),
            },
            // As the operator last saw it.
            Err(_) => (node.pod.clone().unwrap_or_else(|| "none".into()), "?".into()),
        };
        let _ = writeln!(out, "{}\t{pod}\t{k8s_node}", node.name);
    }
    let mut text = String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default();
    if let Err(why) = pods {
        text.push_str(&format!("(pods not readable: {why}; pod names as the operator last saw them)\n"));
    }
    text
}

/// What is wrong, one problem a line: failed nodes with their reason, failing session probes,
/// objects the operator leaves alone, the grid redirect; and the Degraded condition (reason and
/// message) when its first problem is none of those (an invalid spec, a refused or invalid drain
/// request). Its whole message is the conditions' `degraded:` line already.
pub fn problems(cluster: &OmeroCluster) -> Vec<String> {
    use crate::controller::status::{REASON_NODE_FAILED, REASON_PROBE_FAILING, REASON_REDIRECT_FAILING};
    let Some(status) = &cluster.status else { return Vec::new() };
    let mut problems = Vec::new();
    let listed_below = |reason: &str| {
        [REASON_NODE_FAILED, REASON_PROBE_FAILING, REASON_REDIRECT_FAILING].contains(&reason)
            || status.object_problems.iter().any(|p| p.reason.as_str() == reason)
    };
    if let Some(degraded) = status.condition(conditions::DEGRADED).filter(|c| c.status == "True")
        && !listed_below(&degraded.reason)
    {
        problems.push(format!("Degraded ({}): {}", degraded.reason, degraded.message));
    }
    for node in &status.nodes {
        if node.phase == NodePhase::Failed {
            problems.push(format!(
                "{} failed: {}",
                node.name,
                node.message.as_deref().unwrap_or("no reason given")
            ));
        }
        if let Some(error) = &node.probe_error {
            problems.push(format!("{}: the session probe fails: {error}", node.name));
        }
    }
    for problem in &status.object_problems {
        problems.push(format!(
            "{} {} ({}): {}",
            problem.kind,
            problem.name,
            problem.reason.as_str(),
            problem.message
        ));
    }
    if let Some(error) = &status.redirect_error {
        problems.push(format!("grid redirect: {error}"));
    }
    problems
}

/// When an Event last happened: the latest of the times it carries (an events.k8s.io Event
/// read through the core API has its series or event time; an older one its last timestamp).
fn last_seen(event: &Event) -> Option<Timestamp> {
    [
        event.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0),
        event.last_timestamp.as_ref().map(|t| t.0),
        event.event_time.as_ref().map(|t| t.0),
        event.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The newest [`WARNINGS_SHOWN`] Warning Events, oldest first (as `kubectl describe` lists
/// them): how long ago, the reason, how often, the message.
pub fn warnings_in_words(warnings: &Result<Vec<Event>, String>, now: Timestamp) -> String {
    let warnings = match warnings {
        Ok(warnings) if warnings.is_empty() => return labelled("Warnings:", "none"),
        Ok(warnings) => warnings,
        Err(why) => return labelled("Warnings:", &format!("not readable ({why})")),
    };
    let mut sorted: Vec<&Event> = warnings.iter().collect();
    sorted.sort_by_key(|e| last_seen(e));
    let newest = &sorted[sorted.len().saturating_sub(WARNINGS_SHOWN)..];
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let _ = writeln!(out, "  LAST SEEN\tREASON\tCOUNT\tMESSAGE");
    for event in newest {
        let ago = last_seen(event).map_or("-".to_string(), |t| format!("{} ago", super::age(t, now)));
        let count = event.series.as_ref().and_then(|s| s.count).or(event.count).unwrap_or(1);
        let message = event.message.as_deref().unwrap_or_default().replace('\n', " ");
        let _ = writeln!(out, "  {ago}\t{}\t{count}\t{message}", event.reason.as_deref().unwrap_or("-"));
    }
    let table = String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default();
    let heading = if sorted.len() > WARNINGS_SHOWN {
        format!("Warnings (the last {WARNINGS_SHOWN} of {}):\n", sorted.len())
    } else {
        "Warnings:\n".to_string()
    };
    heading + &table
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    /// Three nodes mid-rollout to 5.6.17: rw serves it, ro-1 failed to start it, ro-2 still runs
    /// 5.6 and its probe fails.
    fn cluster() -> OmeroCluster {
        serde_json::from_value(json!({
            "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
            "metadata": {"name": "omero", "namespace": "imaging", "uid": "u-1"},
            "spec": {
                "image": "openmicroscopy/omero-server:5.6.17",
                "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                "repository": {"claimName": "omero-data"},
                "nodes": [{"name": "rw"}, {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
                          {"name": "ro-2", "readOnly": {"db": true, "repo": true}}]
            },
            "status": {
                "conditions": [{"type": "Degraded", "status": "True", "reason": "NodeFailed",
                                "message": "ro-1 cannot start", "lastTransitionTime": "1970-01-01T00:00:00Z"}],
                "nodes": [
                    {"name": "rw", "phase": "Serving", "ready": true, "routable": true, "pod": "omero-rw-new",
                     "image": "openmicroscopy/omero-server:5.6.17"},
                    {"name": "ro-1", "phase": "Failed", "pod": "omero-ro-1-x",
                     "message": "the pod cannot start: ImagePullBackOff"},
                    {"name": "ro-2", "phase": "Serving", "ready": true, "routable": true, "pod": "omero-ro-2-y",
                     "image": "openmicroscopy/omero-server:5.6", "probeError": "connection refused"}
                ],
                "objectProblems": [{"kind": "Service", "name": "omero-ro-2", "reason": "NotOwned",
                                    "message": "another application owns it"}]
            }
        }))
        .unwrap()
    }

    fn pod(
        name: &str,
        node: &str,
        k8s_node: Option<&str>,
        image: &str,
        created: &str,
        terminating: bool,
    ) -> Pod {
        let mut metadata = json!({"name": name, "creationTimestamp": created,
                                  "labels": {keys::NODE_LABEL: node, keys::CLUSTER_LABEL: "omero"}});
        if terminating {
            metadata["deletionTimestamp"] = json!("1970-01-01T01:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"nodeName": k8s_node, "containers": [{"name": OMERO_CONTAINER, "image": image}]}
        }))
        .unwrap()
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod(
                "omero-rw-old",
                "rw",
                Some("worker-1"),
                "openmicroscopy/omero-server:5.6",
                "1970-01-01T00:00:00Z",
                true,
            ),
            pod(
                "omero-rw-new",
                "rw",
                Some("worker-2"),
                "openmicroscopy/omero-server:5.6.17",
                "1970-01-01T00:10:00Z",
                false,
            ),
            pod(
                "omero-ro-1-x",
                "ro-1",
                None,
                "openmicroscopy/omero-server:5.6.17",
                "1970-01-01T00:10:00Z",
                false,
            ),
            pod(
                "omero-ro-2-y",
                "ro-2",
                Some("worker-1"),
                "openmicroscopy/omero-server:5.6",
                "1970-01-01T00:00:00Z",
                false,
            ),
        ]
    }

    fn service(type_: &str, status: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "omero", "namespace": "imaging"},
            "spec": {"type": type_, "clusterIP": "10.96.0.7", "ports": [
                {"name": "glacier2-tcp", "port": 4063, "nodePort": 30063},
                {"name": "glacier2-ssl", "port": 4064, "nodePort": 30064}]},
            "status": status
        }))
        .unwrap()
    }

    /// A Warning Event about the cluster, last seen at `second` (by its series, as the operator's
    /// events.k8s.io Events read through the core API; or by its last timestamp).
    fn warning(reason: &str, second: i64, count: i32, by_series: bool) -> Event {
        let when = at(second).to_string();
        let mut event = json!({"metadata": {"name": format!("omero.{reason}")}, "involvedObject": {"kind": "OmeroCluster", "name": "omero"},
                               "type": "Warning", "reason": reason, "message": format!("{reason} happened\nagain")});
        if by_series {
            event["series"] = json!({"count": count, "lastObservedTime": when});
            event["eventTime"] = json!(at(0).to_string());
        } else {
            event["lastTimestamp"] = json!(when);
            event["count"] = json!(count);
        }
        serde_json::from_value(event).unwrap()
    }

    #[test]
    fn the_status_shows_where_users_log_in_where_nodes_run_and_what_is_wrong() {
        let objects = ClusterObjects {
            entry_service: Ok(Some(service("ClusterIP", json!({})))),
            pods: Ok(pods()),
            warnings: Ok(vec![
                warning("InvalidDrainRequest", 3_000, 2, true),
                warning("RolloutWaiting", 3_500, 1, false),
            ]),
        };
        let text = in_words(&cluster(), &objects, at(3_600));
        let expected_head = "\
degraded: ro-1 cannot start

Entry:     omero.imaging.svc, ports 4063 (glacier2-tcp), 4064 (glacier2-ssl) (ClusterIP 10.96.0.7)
Image:     openmicroscopy/omero-server:5.6.17
           ro-2 still runs openmicroscopy/omero-server:5.6

NODE  ROLE";
        assert!(text.starts_with(expected_head), "{text}");
        let expected_tail = "\
NODE  POD           KUBERNETES NODE
rw    omero-rw-new  worker-2
ro-1  omero-ro-1-x  not scheduled
ro-2  omero-ro-2-y  worker-1

Problems:
  ro-1 failed: the pod cannot start: ImagePullBackOff
  ro-2: the session probe fails: connection refused
  Service omero-ro-2 (ObjectNotOwned): another application owns it
Warnings:
  LAST SEEN  REASON               COUNT  MESSAGE
  10m ago    InvalidDrainRequest  2      InvalidDrainRequest happened again
  1m ago     RolloutWaiting       1      RolloutWaiting happened again
";
        assert!(text.ends_with(expected_tail), "{text}");
    }

    #[test]
    fn the_status_shows_the_pool_wanted_existing_and_leaving() {
        let mut cluster: OmeroCluster = serde_json::from_value(json!({
            "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
            "metadata": {"name": "omero", "namespace": "imaging"},
            "spec": {
                "image": "openmicroscopy/omero-server:5.6.17",
                "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                "repository": {"claimName": "omero-data"},
                "nodes": [{"name": "rw"}],
                "readOnlyPool": {"replicas": 2, "minReplicas": 1,
                                 "template": {"readOnly": {"db": true, "repo": true}}}
            }
        }))
        .unwrap();
        assert_eq!(
            pool_in_words(&cluster).unwrap(),
            "2 wanted (at least 1), not counted by the operator yet"
        );
        cluster.status = Some(
            serde_json::from_value(json!({"readOnlyPool": {
                "replicas": 4, "servingReplicas": 2, "leaving": ["ro-2", "ro-3"], "sessions": 7,
                "selector": "omero.openmicroscopy.org/pool=read-only"}}))
            .unwrap(),
        );
        let objects = ClusterObjects { entry_service: Ok(None), pods: Ok(vec![]), warnings: Ok(vec![]) };
        let text = in_words(&cluster, &objects, at(0));
        assert!(
            text.contains("\nPool:      2 wanted (at least 1), 4 exist, 2 serving, leaving (draining first): ro-2, ro-3; 7 sessions\n"),
            "{text}"
        );
        let mut no_pool = cluster.clone();
        no_pool.spec.read_only_pool = None;
        assert!(!in_words(&no_pool, &objects, at(0)).contains("Pool:"));
    }

    #[test]
    fn an_external_address_is_shown_for_load_balancers_and_node_ports() {
        let cluster = cluster();
        let ingress = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}});
        assert_eq!(
            entry_in_words(&cluster, &Ok(Some(service("LoadBalancer", ingress))))[1],
            "External:  203.0.113.7, ports 4063 (glacier2-tcp), 4064 (glacier2-ssl)"
        );
        assert_eq!(
            entry_in_words(&cluster, &Ok(Some(service("LoadBalancer", json!({})))))[1],
            "External:  none yet: the LoadBalancer has no address assigned"
        );
        assert_eq!(
            entry_in_words(&cluster, &Ok(Some(service("NodePort", json!({})))))[1],
            "External:  any Kubernetes node's address, ports 30063 (glacier2-tcp), 30064 (glacier2-ssl) (NodePort)"
        );
        assert_eq!(
            entry_in_words(&cluster, &Ok(Some(service("ClusterIP", json!({}))))).len(),
            1,
            "in the cluster only"
        );
        assert_eq!(
            entry_in_words(&cluster, &Ok(None)),
            ["Entry:     Service omero not found: the operator has not made it yet"]
        );
        assert_eq!(
            entry_in_words(&cluster, &Err("forbidden: no".into())),
            ["Entry:     omero.imaging.svc (the Service is not readable: forbidden: no)"]
        );
    }

    #[test]
    fn unreadable_pods_and_events_leave_the_rest_of_the_status() {
        let objects = ClusterObjects {
            entry_service: Ok(Some(service("ClusterIP", json!({})))),
            pods: Err("forbidden: pods".into()),
            warnings: Err("forbidden: events".into()),
        };
        let text = in_words(&cluster(), &objects, at(3_600));
        assert!(text.contains("ro-2  omero-ro-2-y  ?\n"), "the operator's pod names: {text}");
        assert!(
            text.contains("(pods not readable: forbidden: pods; pod names as the operator last saw them)"),
            "{text}"
        );
        assert!(
            text.contains("ro-2 still runs openmicroscopy/omero-server:5.6"),
            "the image from status: {text}"
        );
        assert!(text.ends_with("Warnings:  not readable (forbidden: events)\n"), "{text}");
    }

    #[test]
    fn only_the_newest_warnings_are_shown_oldest_first() {
        let events: Vec<Event> =
            (0..8).map(|i| warning(&format!("Reason{i}"), 1_000 + i * 60, 1, i % 2 == 0)).rev().collect();
        let text = warnings_in_words(&Ok(events), at(2_000));
        let reasons: Vec<&str> = text.lines().skip(2).map(|l| l.split_whitespace().nth(2).unwrap()).collect();
        assert_eq!(reasons, ["Reason3", "Reason4", "Reason5", "Reason6", "Reason7"], "{text}");
        assert!(text.starts_with("Warnings (the last 5 of 8):\n"), "{text}");
        assert_eq!(warnings_in_words(&Ok(vec![]), at(0)), "Warnings:  none\n");
        let healthy = OmeroCluster { status: None, ..cluster() };
        assert!(problems(&healthy).is_empty());
    }

    /// A node's pod: the one status names, else the newest that is not terminating, else the
    /// newest.
    #[test]
    fn the_pod_shown_is_the_named_one_else_the_newest_running() {
        let image = "openmicroscopy/omero-server:5.6";
        let pods = [
            pod("a", "rw", None, image, "1970-01-01T00:00:00Z", true),
            pod("b", "rw", None, image, "1970-01-01T00:10:00Z", false),
            pod("c", "rw", None, image, "1970-01-01T00:20:00Z", true),
            pod("d", "rw", None, image, "1970-01-01T00:05:00Z", false),
            pod("e", "ro-1", None, image, "1970-01-01T00:30:00Z", false),
        ];
        let shown = |named: Option<&str>, of: &[Pod]| node_pod(of, "rw", named).map(|p| p.name_any());
        assert_eq!(shown(Some("a"), &pods).as_deref(), Some("a"));
        assert_eq!(shown(None, &pods).as_deref(), Some("b"));
        assert_eq!(shown(Some("gone"), &pods).as_deref(), Some("b"));
        assert_eq!(shown(None, &[pods[0].clone(), pods[2].clone()]).as_deref(), Some("c"), "all terminating");
        assert_eq!(shown(None, &pods[4..]), None, "another node's pod");
    }

    /// The Degraded condition is a line of its own when its problem is not listed otherwise.
    #[test]
    fn a_degraded_condition_shows_when_nothing_else_says_why() {
        let mut invalid = cluster();
        let status = invalid.status.as_mut().unwrap();
        status.nodes.iter_mut().for_each(|n| {
            n.phase = NodePhase::Serving;
            n.probe_error = None;
        });
        status.object_problems.clear();
        status.conditions[0].reason = "InvalidDrainRequest".into();
        status.conditions[0].message = "drain names ro-9, which is no node".into();
        assert_eq!(
            problems(&invalid),
            ["Degraded (InvalidDrainRequest): drain names ro-9, which is no node"]
        );
        invalid.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert!(problems(&invalid).is_empty(), "not degraded");
    }
}
