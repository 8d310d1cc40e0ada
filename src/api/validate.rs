//! Every rule the spec must satisfy, each error naming the field and the fix. The CRD schema
//! carries the same rules (patterns, CEL) where the API server can check them; this is the
//! authority for what it cannot (names across objects, property names, the image convention)
//! and for `omero-operator render`, which has no API server.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use kube::ResourceExt;

use super::{
    OmeroCluster, OnDeadline, SecretKeyRef, SessionProbeKind, Topology, image,
    ports::{self, Port},
    property, servers,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `spec.nodes[1].name`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest Kubernetes object name the operator creates (`<cluster>-<node>` is a Service name,
/// a DNS-1035 label).
const MAX_OBJECT_NAME: usize = 63;
/// The OMERO container of a node's pod (render uses the same name).
pub const OMERO_CONTAINER: &str = "omero-server";
/// The session counter's container, in the pods of nodes whose probe is `counter`.
pub const SESSION_COUNTER_CONTAINER: &str = "session-counter";
/// The schema's limits on nodes.
const MAX_NODE_NAME: usize = 40;
const MAX_NODES: usize = 64;
/// In grid topology the master's IceGrid node is `master` and its config `etc/internal.cfg`.
const RESERVED_GRID_NAMES: &[&str] = &["master", "internal"];
/// In grid topology the headless Service that gives the master's pod a DNS name (and the
/// pod's subdomain) is `<cluster>-icegrid`: no node may have that name, and the cluster name
/// must leave room for it.
pub const GRID_DNS_SUFFIX: &str = "icegrid";

/// Checks the whole cluster; returns every problem found, in field order. The read-only pool's
/// template is checked as a node of the spec (at least one, even while the pool has none),
/// and what is wrong with it is reported once, at `spec.readOnlyPool.template`.
pub fn validate(cluster: &OmeroCluster) -> Result<(), Vec<ValidationError>> {
    let resolved = crate::pool::resolved_with(cluster, 1);
    let mut errors = Errors::default();
    check_read_only_pool(&mut errors, &resolved);
    let pool_errors_from = errors.0.len();
    check_cluster(&mut errors, &resolved);
    let explicit = resolved.spec.nodes.len() - resolved.spec.pool_nodes_listed;
    let mut pool_errors = errors.0.split_off(pool_errors_from);
    pool_errors.retain_mut(|e| match pool_node_field(&e.field, explicit) {
        None => true,
        // A pool node's name is the operator's: a clash is reported on the node in `nodes`.
        Some(field) if field == "name" || field.starts_with("name.") => false,
        Some(field) => {
            e.field = format!("spec.readOnlyPool.template.{field}");
            true
        }
    });
    let mut seen = BTreeSet::new();
    pool_errors
        .retain(|e| !e.field.starts_with("spec.readOnlyPool.template.") || seen.insert(e.field.clone()));
    errors.0.extend(pool_errors);
    errors.finish()
}

/// The field under `spec.nodes[i].` when `i` is one of the pool's nodes (listed from
/// `explicit` on).
fn pool_node_field(field: &str, explicit: usize) -> Option<&str> {
    let rest = field.strip_prefix("spec.nodes[")?;
    let (index, field) = rest.split_once("].")?;
    (index.parse::<usize>().ok()? >= explicit).then_some(field)
}

/// What only the read-only pool can get wrong; its template's fields are checked as a node's.
fn check_read_only_pool(errors: &mut Errors, cluster: &OmeroCluster) {
    let spec = &cluster.spec;
    let Some(pool) = &spec.read_only_pool else { return };
    if spec.topology != Topology::Independent {
        errors.push(
            "spec.readOnlyPool",
            "is for independent topology: in grid topology every worker is listed in the master's application \
             descriptor, so each scale would restart the master; list grid workers in nodes",
        );
    }
    if pool.replicas < 0 {
        errors.push("spec.readOnlyPool.replicas", "must be 0 or more");
    }
    if let Some(min) = pool.min_replicas {
        if min < 0 {
            errors.push("spec.readOnlyPool.minReplicas", "must be 0 or more");
        } else if pool.replicas < min {
            errors.push(
                "spec.readOnlyPool.replicas",
                format!(
                    "is {}, below minReplicas ({min}): the pool never has fewer nodes than minReplicas; scale to at \
                     least {min}, or lower minReplicas",
                    pool.replicas
                ),
            );
        }
    }
    let explicit = &spec.nodes[..spec.nodes.len() - spec.pool_nodes_listed];
    if explicit.len() + pool.replicas() > MAX_NODES {
        errors.push(
            "spec.readOnlyPool.replicas",
            format!(
                "makes {} nodes with the {} in nodes: at most {MAX_NODES} are supported",
                explicit.len() + pool.replicas(),
                explicit.len()
            ),
        );
    }
    if !is_dns1123_label(pool.name_prefix()) {
        errors.push(
            "spec.readOnlyPool.namePrefix",
            format!(
                "'{}' cannot begin node names: use lower-case letters, digits and '-'",
                pool.name_prefix()
            ),
        );
    }
    // Room for the largest index the schema allows (two digits).
    let longest = crate::pool::node_name(pool, MAX_NODES - 1);
    let cluster_name = cluster.name_any();
    if cluster_name.len() + 1 + longest.len() > MAX_OBJECT_NAME {
        errors.push(
            "spec.readOnlyPool.namePrefix",
            format!(
                "'{cluster_name}-{longest}' (a pool node's Service) would be longer than {MAX_OBJECT_NAME} characters: \
                 shorten the cluster name or the prefix"
            ),
        );
    }
    for (i, node) in explicit.iter().enumerate() {
        if crate::pool::is_pool_name(pool, &node.name) {
            errors.push(
                format!("spec.nodes[{i}].name"),
                format!(
                    "'{}' has the form of a read-only pool node's name ({}-<index>): rename the node, or set \
                     spec.readOnlyPool.namePrefix",
                    node.name,
                    pool.name_prefix()
                ),
            );
        }
    }
    if let Some(read_only) = pool.template.read_only
        && !(read_only.db && read_only.repo)
    {
        errors.push(
            "spec.readOnlyPool.template.readOnly",
            "a read-only pool's nodes are read-only: set db and repo to true, or leave readOnly out",
        );
    }
}

fn check_cluster(errors: &mut Errors, cluster: &OmeroCluster) {
    let spec = &cluster.spec;
    let cluster_name = cluster.name_any();

    if !is_dns1035_label(&cluster_name) {
        errors.push(
            "metadata.name",
            format!(
                "'{cluster_name}' cannot prefix Service names: use lower-case letters, digits and '-', starting with a letter"
            ),
        );
    }
    if spec.topology == Topology::Grid
        && is_dns1035_label(&cluster_name)
        && cluster_name.len() + 1 + GRID_DNS_SUFFIX.len() > MAX_OBJECT_NAME
    {
        errors.push(
            "metadata.name",
            format!(
                "'{cluster_name}-{GRID_DNS_SUFFIX}' (the Service that gives the grid master's pod a DNS name) is longer than {MAX_OBJECT_NAME} characters: shorten the cluster name to at most {} characters",
                MAX_OBJECT_NAME - 1 - GRID_DNS_SUFFIX.len()
            ),
        );
    }
    if spec.image.trim().is_empty() {
        errors
            .push("spec.image", "is empty: set the OMERO.server image, e.g. openmicroscopy/omero-server:5.6");
    } else if let Some(why) = image::too_old(&spec.image, relies_on_node_descriptors(spec)) {
        errors.push("spec.image", why);
    }
    if spec.database.host.trim().is_empty() {
        errors.push("spec.database.host", "is empty: set the PostgreSQL host name");
    }
    let db = &spec.database;
    check_port(errors, "spec.database.port", db.port);
    check_not_blank(errors, "spec.database.name", db.name.as_ref(), "the database name");
    check_not_blank(errors, "spec.database.user", db.user.as_ref(), "the database user");
    check_secret_ref(errors, "spec.database.passwordSecret", &db.password_secret);
    if let Some(secret) = &db.root_password_secret {
        check_secret_ref(errors, "spec.database.rootPasswordSecret", secret);
    }
    if let Some(ro) = &db.read_only {
        check_not_blank(errors, "spec.database.readOnly.host", ro.host.as_ref(), "the read-only host");
        check_port(errors, "spec.database.readOnly.port", ro.port);
        check_not_blank(errors, "spec.database.readOnly.name", ro.name.as_ref(), "the database name");
        check_not_blank(errors, "spec.database.readOnly.user", ro.user.as_ref(), "the read-only user");
        if let Some(secret) = &ro.password_secret {
            check_secret_ref(errors, "spec.database.readOnly.passwordSecret", secret);
        }
    }
    if spec.repository.claim_name.trim().is_empty() {
        errors.push(
            "spec.repository.claimName",
            "is empty: name the existing PersistentVolumeClaim of the binary repository",
        );
    }
    check_config(errors, "spec.config", &spec.config, spec.topology, ConfigLevel::Cluster);
    check_ports(errors, spec);

    if let Some(sessions) = &spec.sessions {
        for (field, value) in [
            ("idleTimeout", sessions.idle_timeout),
            ("maxLifetime", sessions.max_lifetime),
            ("maxUserLifetime", sessions.max_user_lifetime),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                errors.push(
                    format!("spec.sessions.{field}"),
                    "must be a positive duration, e.g. 10m; leave it out for OMERO's default",
                );
            }
        }
        check_user_lifetime_cap(errors, sessions);
    }
    check_user_idle_cap(errors, spec);
    check_nodes(errors, cluster);
    if let Some(counter) = &spec.session_counter {
        check_session_counter(errors, counter, spec);
    }
    errors.0.extend(super::server_logs::problems(spec));

    for (i, key) in spec.maintenance_taint_keys().iter().enumerate() {
        if !is_taint_key(key) {
            errors.push(
                format!("spec.maintenance.taintKeys[{i}]"),
                format!(
                    "'{key}' is not a taint key: use [prefix/]name, the name 1-63 letters, digits, '-', '_' \
                     or '.', e.g. example.com/maintenance"
                ),
            );
        }
    }

    if let Some(drain) = &spec.drain {
        if drain.timeout.is_some_and(|d| d.is_zero()) {
            errors.push("spec.drain.timeout", "must be a positive duration, e.g. 1h");
        }
        if drain.ready_timeout.is_some_and(|d| d.is_zero()) {
            errors.push("spec.drain.readyTimeout", "must be a positive duration, e.g. 40m");
        }
        if drain.on_deadline == Some(OnDeadline::Hold) {
            let blind: Vec<&str> = spec
                .nodes
                .iter()
                .filter(|n| spec.session_probe_of(n).kind == SessionProbeKind::None)
                .map(|n| n.name.as_str())
                .collect();
            if !blind.is_empty() {
                errors.push(
                    "spec.drain.onDeadline",
                    format!(
                        "Hold waits for sessions to end, but nodes {} have no session probe and would never finish draining: give them a sessionProbe or use Proceed",
                        blind.join(", ")
                    ),
                );
            }
        }
        if drain.max_unavailable == Some(0) {
            errors.push("spec.drain.maxUnavailable", "must be at least 1");
        }
    }
    if let Some(timeout) = spec.service.as_ref().and_then(|s| s.session_affinity_timeout_seconds)
        && !(1..=86400).contains(&timeout)
    {
        errors.push(
            "spec.service.sessionAffinityTimeoutSeconds",
            "must be from 1 to 86400 seconds (Kubernetes' limit)",
        );
    }
}

fn check_nodes(errors: &mut Errors, cluster: &OmeroCluster) {
    let spec = &cluster.spec;
    let cluster_name = cluster.name_any();
    if spec.nodes.is_empty() {
        errors.push("spec.nodes", "is empty: declare at least one node");
        return;
    }
    // The pool's own count is checked with the pool.
    let explicit = spec.nodes.len() - spec.pool_nodes_listed;
    if explicit > MAX_NODES {
        errors.push("spec.nodes", format!("has {explicit} nodes: at most {MAX_NODES} are supported"));
    }
    let mut seen = BTreeSet::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let at = |field: &str| format!("spec.nodes[{i}].{field}");
        if !is_dns1123_label(&node.name) {
            errors.push(
                at("name"),
                format!("'{}' is not a DNS label: use lower-case letters, digits and '-', starting and ending with a letter or digit", node.name),
            );
        } else if node.name.len() > MAX_NODE_NAME {
            errors.push(
                at("name"),
                format!("'{}' is longer than {MAX_NODE_NAME} characters: shorten it", node.name),
            );
        } else if cluster_name.len() + 1 + node.name.len() > MAX_OBJECT_NAME {
            errors.push(
                at("name"),
                format!(
                    "'{cluster_name}-{}' is longer than {MAX_OBJECT_NAME} characters: shorten the node or cluster name",
                    node.name
                ),
            );
        }
        if !seen.insert(node.name.as_str()) {
            errors.push(
                at("name"),
                format!("'{}' is used by another node: node names must be unique", node.name),
            );
        }
        if node.master == Some(true) && spec.topology != Topology::Grid {
            errors.push(
                at("master"),
                "is only meaningful in grid topology: remove it or set spec.topology: Grid",
            );
        }
        check_config(errors, &at("config"), &node.config, spec.topology, ConfigLevel::Node);
        for (j, env) in node.env.iter().enumerate() {
            if let Some(why) = property::reserved_env(&env.name) {
                errors.push(
                    format!("spec.nodes[{i}].env[{j}].name"),
                    format!("{} cannot be set here: {why}", env.name),
                );
            } else if !is_env_name(&env.name) {
                errors.push(
                    format!("spec.nodes[{i}].env[{j}].name"),
                    format!(
                        "'{}' is not an environment variable name: use letters, digits, '_', '-' and '.', not starting with a digit",
                        env.name
                    ),
                );
            }
        }
        check_servers(errors, i, node, spec.topology);
        check_resources(errors, i, node, spec);
        check_not_blank(errors, &at("varClaimName"), node.var_claim_name.as_ref(), "the claim for var");
        let mut container_names = BTreeSet::from([OMERO_CONTAINER]);
        if spec.session_probe_of(node).kind == SessionProbeKind::Counter {
            container_names.insert(SESSION_COUNTER_CONTAINER);
        }
        if spec.server_logs_container() {
            container_names.insert(super::SERVER_LOGS_CONTAINER);
        }
        for (j, sidecar) in node.sidecars.iter().enumerate() {
            if !container_names.insert(sidecar.name.as_str()) {
                errors.push(
                    format!("spec.nodes[{i}].sidecars[{j}].name"),
                    format!(
                        "'{}' is taken by another container of the pod: rename the sidecar",
                        sidecar.name
                    ),
                );
            }
            // Pod Security admission would refuse the pod only when its ReplicaSet creates it.
            for (field, message) in crate::pod_security::violations(sidecar) {
                errors.push(format!("spec.nodes[{i}].sidecars[{j}].{field}"), message);
            }
        }
        if spec.topology == Topology::Grid
            && !node.is_master()
            && RESERVED_GRID_NAMES.contains(&node.name.as_str())
        {
            errors.push(
                at("name"),
                format!("'{}' is the name of an IceGrid node or configuration file of the master: pick another worker name", node.name),
            );
        }
        if spec.topology == Topology::Grid && node.name == GRID_DNS_SUFFIX {
            errors.push(
                at("name"),
                format!(
                    "'{GRID_DNS_SUFFIX}' would give this node's Service the name of the grid master's DNS Service ('{cluster_name}-{GRID_DNS_SUFFIX}'): pick another node name"
                ),
            );
        }
        if spec.topology == Topology::Grid && !node.is_master() {
            let earlier =
                spec.nodes[..i].iter().find(|n| !n.is_master() && n.blitz_index() == node.blitz_index());
            if let Some(other) = earlier {
                errors.push(
                    at("name"),
                    format!(
                        "'{}' and '{}' would both host Blitz-{} (a worker's server is named after its node name): rename one",
                        other.name,
                        node.name,
                        node.blitz_index()
                    ),
                );
            }
        }
        if let Some(probe) = &node.session_probe {
            match probe.kind {
                SessionProbeKind::Metrics if probe.port.is_none() => errors.push(
                    at("sessionProbe.port"),
                    "is required for a metrics probe: set the port of the node's Prometheus endpoint",
                ),
                SessionProbeKind::Database if node.read_only_db() => errors.push(
                    at("sessionProbe.type"),
                    "Database cannot count sessions of a read-only database node (it writes no session rows): use Counter (with spec.sessionCounter), Metrics or None",
                ),
                SessionProbeKind::Counter if spec.topology == Topology::Grid => errors.push(
                    at("sessionProbe.type"),
                    "Counter is not offered in grid topology: a worker has no Glacier2 of its own to log in through, and a login through the master's is steered by configRedirector to whichever node new sessions go to, so it could count another node; grid nodes write session rows: use Database",
                ),
                SessionProbeKind::Counter if spec.session_counter.is_none() => errors.push(
                    at("sessionProbe.type"),
                    "Counter needs spec.sessionCounter.credentialsSecret: the Secret with the OMERO user the counter logs in as (a plain user for read-only database nodes; a light admin with only the ReadSession privilege where it counts a read-write node, made by counter/create_counter_user.py)",
                ),
                SessionProbeKind::Counter if probe.port.is_some() => errors.push(
                    at("sessionProbe.port"),
                    "is not used by a counter probe (the counter listens on a port of its own): remove it",
                ),
                _ => {}
            }
            if probe.kind == SessionProbeKind::Metrics {
                match probe.exporter_user.as_deref().map(str::trim) {
                    None | Some("") => errors.push(
                        at("sessionProbe.exporterUser"),
                        "is required for a metrics probe: name the OMERO user the exporter logs in as (its own sessions are then not counted); not guest, which sees only itself on a read-write node",
                    ),
                    Some("guest") => errors.push(
                        at("sessionProbe.exporterUser"),
                        "guest sees only its own session on a read-write node, so the exporter would count nothing there: log it in as a normal user (a read-only light admin is enough)",
                    ),
                    Some(_) => {}
                }
            }
            if probe.ignored_sessions.is_some() {
                errors.push(
                    at("sessionProbe.ignoredSessions"),
                    "is no longer supported: the exporter's gauge also counts OMERO's own service sessions (root) and the exporter's login, so a fixed number held drains open; remove it and write exporterUser: <the user the exporter logs in as> (root's sessions are left out too)",
                );
            }
            check_port(errors, &at("sessionProbe.port"), probe.port);
            if probe.interval.is_some_and(|d| d.is_zero()) {
                errors.push(at("sessionProbe.interval"), "must be a positive duration, e.g. 15s");
            }
            if let Some(path) = &probe.path
                && !path.starts_with('/')
            {
                errors.push(at("sessionProbe.path"), format!("'{path}' must start with '/'"));
            }
        }
    }

    match spec.topology {
        Topology::Independent => {
            let read_write: Vec<&str> =
                spec.nodes.iter().filter(|n| n.is_read_write()).map(|n| n.name.as_str()).collect();
            if read_write.len() > 1 {
                errors.push(
                    "spec.nodes",
                    format!(
                        "independent topology allows at most one read-write node, found {} ({}): two read-write OMERO servers on one database close each other's sessions and fight over the repository lock; set readOnly: {{db: true, repo: true}} on all but one",
                        read_write.len(),
                        read_write.join(", ")
                    ),
                );
            }
        }
        Topology::Grid => {
            let masters = spec.nodes.iter().filter(|n| n.is_master()).count();
            if masters != 1 {
                errors.push(
                    "spec.nodes",
                    format!("grid topology needs exactly one node with master: true, found {masters}"),
                );
            }
        }
    }
}

/// A node's `servers`: OMERO server names, once each, `Blitz-0` among them, independent
/// topology only, and not said twice (with `omero.server.nodedescriptors` in its `config`).
fn check_servers(errors: &mut Errors, i: usize, node: &super::NodeSpec, topology: Topology) {
    if node.servers.is_empty() {
        return;
    }
    let field = format!("spec.nodes[{i}].servers");
    if topology == Topology::Grid {
        errors.push(
            &field,
            "is for independent topology: in grid topology the operator places every server (the master runs \
             OMERO's set, each worker one Blitz); remove it",
        );
        return;
    }
    if node.servers.len() > servers::MAX_SERVERS {
        errors.push(
            &field,
            format!(
                "lists {} servers; at most {} (each OMERO server once)",
                node.servers.len(),
                servers::MAX_SERVERS
            ),
        );
        return;
    }
    let mut seen = BTreeSet::new();
    for (j, server) in node.servers.iter().enumerate() {
        if !servers::is_server(server) {
            errors.push(
                format!("{field}[{j}]"),
                format!(
                    "'{server}' is not an OMERO server: use {}-<index> (e.g. Tables-0), or {}",
                    servers::INDEXED.join("-<index>, "),
                    servers::SINGLE.join(", ")
                ),
            );
        } else if !seen.insert(server.as_str()) {
            errors.push(format!("{field}[{j}]"), format!("'{server}' is listed twice: list it once"));
        }
    }
    if !node.servers.iter().any(|s| s == servers::BLITZ) {
        errors.push(
            &field,
            format!(
                "does not include {}, through which every client of the node is served: add it",
                servers::BLITZ
            ),
        );
    }
    if node.config.contains_key(servers::NODE_DESCRIPTORS) {
        errors.push(
            format!("spec.nodes[{i}].config[{}]", servers::NODE_DESCRIPTORS),
            format!("says which servers the node runs, as {field} does: keep {field} and remove this"),
        );
    }
}

fn check_session_counter(
    errors: &mut Errors,
    counter: &super::SessionCounterSpec,
    spec: &super::OmeroClusterSpec,
) {
    if spec.topology == Topology::Grid {
        errors.push(
            "spec.sessionCounter",
            "is not offered in grid topology: a worker has no Glacier2 of its own, and a login through the master's is steered by configRedirector to another node; grid nodes write session rows, which the database probe counts: remove it",
        );
    }
    let secret = &counter.credentials_secret;
    if secret.name.trim().is_empty() {
        errors.push(
            "spec.sessionCounter.credentialsSecret.name",
            "is empty: name the Secret with the OMERO user and password the counter logs in as",
        );
    }
    for (field, key) in [("userKey", &secret.user_key), ("passwordKey", &secret.password_key)] {
        check_not_blank(
            errors,
            &format!("spec.sessionCounter.credentialsSecret.{field}"),
            key.as_ref(),
            "the key of the Secret",
        );
    }
    if let Some(resources) = &counter.resources {
        for (kind, map) in [("limits", &resources.limits), ("requests", &resources.requests)] {
            for (resource, quantity) in map.iter().flatten() {
                if super::quantity::bytes(&quantity.0).is_none() {
                    errors.push(
                        format!("spec.sessionCounter.resources.{kind}.{resource}"),
                        format!(
                            "'{}' is not a quantity: write e.g. 10m for cpu, 64Mi for memory",
                            quantity.0
                        ),
                    );
                }
            }
        }
    }
}

fn check_secret_ref(errors: &mut Errors, field: &str, secret: &SecretKeyRef) {
    if secret.name.trim().is_empty() {
        errors.push(format!("{field}.name"), "is empty: name the Secret that holds the database password");
    }
    if secret.key.trim().is_empty() {
        errors.push(
            format!("{field}.key"),
            "is empty: name the key of the Secret that holds the password, e.g. password",
        );
    }
}

/// Whether a `config` map is the cluster's or one node's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConfigLevel {
    Cluster,
    Node,
}

fn check_config(
    errors: &mut Errors,
    field: &str,
    config: &BTreeMap<String, String>,
    topology: Topology,
    level: ConfigLevel,
) {
    for (key, value) in config {
        if let Some(why) = property::refused(key) {
            errors.push(format!("{field}[{key}]"), format!("may not be set: {why}"));
        } else if let Some(instead) = property::managed_by(key, topology) {
            errors.push(format!("{field}[{key}]"), format!("is set by the operator: use {instead} instead"));
        } else if let Some(why) = property::refused_value(key, value, topology) {
            errors.push(format!("{field}[{key}]"), why);
        } else if level == ConfigLevel::Node && ports::is_port_key(key) {
            errors.push(
                format!("{field}[{key}]"),
                "may not differ between nodes: the entry Service forwards one port number to every routable node, \
                 and grid workers reach the master's registry on the cluster's port; move it to spec.config",
            );
        } else if let Err(why) = property::env_name(key) {
            errors.push(format!("{field}[{key}]"), format!("cannot be passed to the image: {why}"));
        }
    }
}

/// `omero.ports.*`: each port they give is a port, and no two servers of one pod (OMERO's
/// registry and Glacier2's transports, the session counter) share one. Ports are the
/// cluster's alone (a node's `config` may not set them, see `check_config`).
fn check_ports(errors: &mut Errors, spec: &super::OmeroClusterSpec) {
    let ports = match ports::derive(&spec.config) {
        Ok(ports) => ports,
        Err(problems) => {
            for problem in problems {
                errors.push(format!("spec.config[{}]", problem.key), problem.message);
            }
            return;
        }
    };
    // What listens in one pod: every node but a grid worker runs the registry and Glacier2.
    let mut listened = BTreeSet::from([Port::Registry]);
    for node in spec.nodes.iter().filter(|n| spec.topology != Topology::Grid || n.is_master()) {
        listened.extend(ports::glacier2_ports(&spec.config, &node.config));
    }
    let set = |port: Port| spec.config.contains_key(port.key());
    let blame = |port: Port| if set(port) { port.key() } else { ports::PREFIX };
    let listened: Vec<Port> = listened.into_iter().collect();
    for (i, &later) in listened.iter().enumerate() {
        if let Some(&earlier) = listened[..i].iter().find(|&&p| ports.get(p) == ports.get(later)) {
            let key = if set(later) { later.key() } else { earlier.key() };
            errors.push(
                format!("spec.config[{key}]"),
                format!(
                    "makes {} {}, which is also {}: two servers cannot listen on one port; give each its own",
                    later.describe(),
                    ports.get(later),
                    earlier.describe()
                ),
            );
        }
    }
    let counter_runs = spec.nodes.iter().any(|n| spec.session_probe_of(n).kind == SessionProbeKind::Counter);
    if counter_runs
        && let Some(&port) = listened.iter().find(|&&p| ports.get(p) == crate::omero::COUNTER_PORT)
    {
        errors.push(
            format!("spec.config[{}]", blame(port)),
            format!(
                "makes {} {}, the port the session counter listens on beside the server: pick another",
                port.describe(),
                crate::omero::COUNTER_PORT
            ),
        );
    }
}

/// `maxUserLifetime` caps what users may ask for; it means something only beside
/// `maxLifetime`, and no less than it.
fn check_user_lifetime_cap(errors: &mut Errors, sessions: &super::SessionsSpec) {
    let Some(cap) = sessions.max_user_lifetime.filter(|d| !d.is_zero()) else { return };
    match sessions.max_lifetime.filter(|d| !d.is_zero()) {
        None => errors.push(
            "spec.sessions.maxUserLifetime",
            "needs maxLifetime: OMERO gives every login the default time to live (omero.sessions.maximum, unlimited \
             unless maxLifetime sets it) without checking it against this cap, so logins would stay unlimited; set \
             maxLifetime too (at most this)",
        ),
        Some(max) if cap < max => errors.push(
            "spec.sessions.maxUserLifetime",
            format!(
                "is shorter than maxLifetime ({max}), the time to live every login gets: OMERO would refuse a user's \
                 update of their own session that keeps it (ISession.updateSession checks the cap); make it at least \
                 {max}, or leave it out (it then equals maxLifetime)"
            ),
        ),
        Some(_) => {}
    }
}

/// With `maxLifetime` set, OMERO also enforces `omero.sessions.max_user_time_to_idle` (a bug:
/// its idle check tests the time-to-live cap; omero-server `SessionManagerImpl.parseAndSetTimeouts`,
/// read from source). A value set by hand below the idle timeout every login gets would make
/// OMERO refuse a user's update of their own session that keeps it. The operator raises
/// OMERO's default itself when `idleTimeout` is longer (see `render::config`).
fn check_user_idle_cap(errors: &mut Errors, spec: &super::OmeroClusterSpec) {
    let key = super::MAX_USER_IDLE_PROPERTY;
    let sessions = spec.sessions.clone().unwrap_or_default();
    let idle_ms = sessions.idle_timeout.map_or(super::OMERO_DEFAULT_IDLE_MS, super::Duration::as_millis);
    let configs = std::iter::once(("spec.config".to_string(), &spec.config))
        .chain(spec.nodes.iter().enumerate().map(|(i, n)| (format!("spec.nodes[{i}].config"), &n.config)));
    for (field, config) in configs {
        let Some(value) = config.get(key) else { continue };
        match value.parse::<u64>() {
            Err(_) => errors.push(
                format!("{field}[{key}]"),
                format!("'{value}' is not a number of milliseconds, which OMERO reads it as: write one, e.g. 6000000"),
            ),
            Ok(cap) if sessions.max_lifetime.is_some() && cap < idle_ms => errors.push(
                format!("{field}[{key}]"),
                format!(
                    "is {cap} ms, below the idle timeout every login gets ({idle_ms} ms, spec.sessions.idleTimeout): \
                     with maxLifetime set OMERO enforces this cap and would refuse a user's update of their own \
                     session that keeps it; make it at least {idle_ms}, or remove it"
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// Why the cluster needs `omero.server.nodedescriptors` to be read, if it does: the grid
/// master's descriptors place a Blitz on each worker; a descriptor set by hand in
/// `independent` topology trims a node's services.
fn relies_on_node_descriptors(spec: &super::OmeroClusterSpec) -> Option<&'static str> {
    const KEY: &str = "omero.server.nodedescriptors";
    if spec.topology == Topology::Grid {
        Some(
            "a grid's workers would host no Blitz (the master's omero.server.nodedescriptors places one on each)",
        )
    } else if spec.config.contains_key(KEY) || spec.nodes.iter().any(|n| n.config.contains_key(KEY)) {
        Some("the omero.server.nodedescriptors set in config would be ignored")
    } else if spec.nodes.iter().any(|n| !n.servers.is_empty() || !n.is_read_write()) {
        // The operator trims these nodes' servers and gives Blitz the heap of those that no
        // longer run (render/servers.rs): ignored, every server would run, with Blitz's larger
        // share on top.
        Some(
            "the servers chosen for nodes[].servers or a read-only node (omero.server.nodedescriptors) \
             would be ignored: every server would run, with Blitz given the others' heap on top",
        )
    } else {
        None
    }
}

/// What the API server accepts as an environment variable name.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || "_-.".contains(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// OMERO treats less system memory than this (MiB) as this much (omero-py `jvmcfg.py`).
const OMERO_MIN_SYSTEM_MEMORY_MIB: u64 = 3414;

/// Quantities the API server would refuse, and a memory limit below what OMERO sizes its
/// JVMs for.
fn check_resources(errors: &mut Errors, i: usize, node: &super::NodeSpec, spec: &super::OmeroClusterSpec) {
    let Some(resources) = &node.resources else { return };
    for (kind, map) in [("limits", &resources.limits), ("requests", &resources.requests)] {
        for (resource, quantity) in map.iter().flatten() {
            if super::quantity::bytes(&quantity.0).is_none() {
                errors.push(
                    format!("spec.nodes[{i}].resources.{kind}.{resource}"),
                    format!(
                        "'{}' is not a quantity: write e.g. 500m or 2 for cpu, 4Gi for memory",
                        quantity.0
                    ),
                );
            }
        }
    }
    let user_sized =
        [&spec.config, &node.config].iter().any(|c| c.contains_key("omero.jvmcfg.system_memory"));
    if let Some(limit) = node.memory_limit_mib().filter(|_| !user_sized)
        && limit < OMERO_MIN_SYSTEM_MEMORY_MIB
    {
        errors.push(
            format!("spec.nodes[{i}].resources.limits.memory"),
            format!(
                "is {limit}Mi, below the {OMERO_MIN_SYSTEM_MEMORY_MIB}Mi OMERO sizes its JVM heaps for at the least (it treats \
                 less as that much), so the node would be killed for exceeding it: give it at least 4Gi, or size the JVMs \
                 yourself with omero.jvmcfg.system_memory in config"
            ),
        );
    }
}

fn check_not_blank(errors: &mut Errors, field: &str, value: Option<&String>, what: &str) {
    if value.is_some_and(|v| v.trim().is_empty()) {
        errors.push(field, format!("is empty: set {what} or leave the field out for the default"));
    }
}

fn check_port(errors: &mut Errors, field: &str, port: Option<u16>) {
    if port == Some(0) {
        errors.push(field, "must be a port number from 1 to 65535");
    }
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError { field: field.into(), message: message.into() });
    }

    fn finish(self) -> Result<(), Vec<ValidationError>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// A Kubernetes taint key: an optional DNS subdomain prefix and `/`, then a name of 1-63
/// letters, digits, `-`, `_`, `.` that starts and ends with a letter or digit.
fn is_taint_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let edge_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let name_ok = (1..=63).contains(&name.len())
        && edge_ok(name)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        (1..=253).contains(&p.len())
            && edge_ok(p)
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}
