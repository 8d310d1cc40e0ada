//! The generated CustomResourceDefinition: names, printer columns, and the schema-level rules
//! (patterns, list semantics, CEL) the API server enforces at `kubectl apply`.

use serde_json::{Value, json};

const DURATION_PATTERN: &str = "^([0-9]+(h|ms|m|s))+$";
const POSITIVE_DURATION_RULE: &str = "duration(self) > duration('0s')";

fn crd() -> Value {
    serde_json::to_value(omero_operator::api::crd()).expect("the CRD serialises")
}

/// The API server's check of a schema `pattern`, run for real with a regex engine (RE2-like,
/// as Kubernetes' own).
fn matches(schema: &Value, value: &str) -> bool {
    let pattern = schema["pattern"].as_str().expect("a pattern");
    regex::Regex::new(pattern).expect("the pattern compiles").is_match(value)
}

#[test]
fn the_crd_refuses_a_bad_env_name_and_a_bad_quantity() {
    let env_name = &spec_schema("nodes[].env[]")["properties"]["name"];
    for good in ["JAVA_OPTS", "a.b-c", "_x1", "-dash"] {
        assert!(matches(env_name, good), "{good}");
    }
    for bad in ["1 bad", "1abc", "a b", "ä", ""] {
        assert!(!matches(env_name, bad), "{bad}");
    }
    for map in ["limits", "requests"] {
        let quantity = &spec_schema("nodes[].resources")["properties"][map]["additionalProperties"];
        assert_eq!(quantity["x-kubernetes-int-or-string"], true, "still int or string");
        for good in ["500m", "2", "1.5Gi", "4G", "1e9", "0.5", "+1", ".5"] {
            assert!(matches(quantity, good), "{map}: {good}");
            assert!(omero_operator::api::quantity::nanos(good).is_some(), "the Rust check agrees: {good}");
        }
        for bad in ["lots", "1 Gi", "8GB", "1.2.3", "Gi", ""] {
            assert!(!matches(quantity, bad), "{map}: {bad}");
            assert!(omero_operator::api::quantity::nanos(bad).is_none(), "the Rust check agrees: {bad}");
        }
    }
}

/// The only served version.
fn version() -> Value {
    let crd = crd();
    let versions = crd["spec"]["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1, "{versions:#?}");
    versions[0].clone()
}

/// The schema at a dotted path of property names below `spec`, e.g. `nodes[].sessionProbe`
/// (`[]` steps into a list's items).
fn spec_schema(path: &str) -> Value {
    let mut schema = version()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (name, items) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        schema = schema["properties"][name].clone();
        assert!(schema.is_object(), "no property {name} on the way to spec.{path}");
        if items {
            schema = schema["items"].clone();
        }
    }
    schema
}

/// The CEL rules on one schema.
fn rules(schema: &Value) -> Vec<Value> {
    schema["x-kubernetes-validations"].as_array().cloned().unwrap_or_default()
}

#[track_caller]
fn rule_containing(schema: &Value, text: &str) -> Value {
    let rules = rules(schema);
    let found: Vec<&Value> =
        rules.iter().filter(|r| r["rule"].as_str().is_some_and(|rule| rule.contains(text))).collect();
    assert_eq!(found.len(), 1, "expected one rule containing {text:?} in {rules:#?}");
    found[0].clone()
}

// --- identity ---

#[test]
fn group_version_kind_and_names() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "omeroclusters.omero.openmicroscopy.org");
    assert_eq!(crd["spec"]["group"], "omero.openmicroscopy.org");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "OmeroCluster");
    assert_eq!(names["plural"], "omeroclusters");
    assert_eq!(names["singular"], "omerocluster");
    assert_eq!(names["shortNames"], json!(["omc"]));
    assert_eq!(names["categories"], json!(["omero"]), "kubectl get omero");
    let description = version()["schema"]["openAPIV3Schema"]["description"].as_str().unwrap().to_string();
    assert!(description.starts_with("An OMERO.server cluster"), "the kind's own description: {description}");
    let version = version();
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
}

#[test]
fn status_and_scale_are_subresources() {
    // The scale subresource sets the read-only pool's replicas: `kubectl scale`, HPA, KEDA.
    assert_eq!(
        version()["subresources"],
        json!({
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.readOnlyPool.replicas",
                "statusReplicasPath": ".status.readOnlyPool.replicas",
                "labelSelectorPath": ".status.readOnlyPool.selector",
            }
        })
    );
    assert!(version()["schema"]["openAPIV3Schema"]["properties"]["status"].is_object());
}

#[test]
fn printer_columns_show_what_goes_on_what_is_wrong_and_the_counts() {
    let printer_columns = version()["additionalPrinterColumns"].as_array().expect("printer columns").clone();
    let columns: Vec<(String, String, String)> = printer_columns
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (field("name"), field("type"), field("jsonPath"))
        })
        .collect();
    let condition = |type_: &str, field: &str| format!(".status.conditions[?(@.type==\"{type_}\")].{field}");
    let expected = [
        ("Ready", "string", condition("Ready", "status")),
        ("Status", "string", condition("Progressing", "reason")),
        ("Problem", "string", condition("Degraded", "reason")),
        ("Serving", "integer", ".status.servingNodes".into()),
        ("Nodes", "integer", ".status.nodeCount".into()),
        ("Up-To-Date", "integer", ".status.rollout.upToDateNodes".into()),
        ("Pool", "integer", ".spec.readOnlyPool.replicas".into()),
        ("Age", "date", ".metadata.creationTimestamp".into()),
        ("Image", "string", ".spec.image".into()),
        ("Draining", "integer", ".status.drainingNodes".into()),
    ];
    for column in printer_columns.iter().filter(|c| c["name"] != "Age") {
        assert!(column["description"].as_str().is_some_and(|d| !d.is_empty()), "{column}");
    }
    assert_eq!(
        columns,
        expected.map(|(n, t, p)| (n.to_string(), t.to_string(), p.to_string())),
        "printer columns"
    );
    // Every column of a field points at one the schema has, of the column's type.
    let schema = &version()["schema"]["openAPIV3Schema"];
    for (name, type_, path) in
        columns.iter().filter(|(_, _, p)| !p.contains('[') && !p.starts_with(".metadata"))
    {
        let field = path.trim_start_matches('.').split('.').fold(schema, |s, part| &s["properties"][part]);
        assert_eq!(field["type"], type_.as_str(), "column {name}: {path}");
    }
}

// --- spec structure ---

#[test]
fn required_spec_fields() {
    let spec = spec_schema("");
    assert_eq!(spec["required"], json!(["database", "image", "nodes", "repository"]));
    assert_eq!(spec_schema("image")["minLength"], 1);
    assert_eq!(spec_schema("database.host")["minLength"], 1);
    assert_eq!(spec_schema("repository.claimName")["minLength"], 1);
    for secret in ["database.passwordSecret", "database.readOnly.passwordSecret"] {
        assert_eq!(spec_schema(secret)["required"], json!(["key", "name"]), "{secret}");
        assert_eq!(spec_schema(&format!("{secret}.name"))["minLength"], 1, "{secret}");
        assert_eq!(spec_schema(&format!("{secret}.key"))["minLength"], 1, "{secret}");
    }
    assert_eq!(spec_schema("drain.maxUnavailable")["minimum"], 1.0);
}

#[test]
fn nodes_are_a_map_list_keyed_by_name_with_at_least_one_entry() {
    let nodes = spec_schema("nodes");
    assert_eq!(nodes["type"], "array");
    assert_eq!(nodes["x-kubernetes-list-type"], "map");
    assert_eq!(nodes["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(nodes["minItems"], 1);
    // CEL rules iterate over the nodes: a bound keeps their estimated cost within budget.
    assert!(nodes["maxItems"].as_u64().is_some(), "nodes needs maxItems: {nodes:#?}");
    // A map list's key must be required.
    assert_eq!(nodes["items"]["required"], json!(["name"]));
}

#[test]
fn node_name_is_a_dns_label() {
    let name = spec_schema("nodes[].name");
    assert_eq!(name["type"], "string");
    assert_eq!(name["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
    assert_eq!(name["minLength"], 1);
    assert!(name["maxLength"].as_u64().is_some_and(|max| max <= 63), "{name:#?}");
}

#[test]
fn every_duration_has_the_pattern_and_the_positive_rule() {
    for path in [
        "sessions.idleTimeout",
        "sessions.maxLifetime",
        "sessions.maxUserLifetime",
        "drain.timeout",
        "nodes[].sessionProbe.interval",
    ] {
        let duration = spec_schema(path);
        assert_eq!(duration["type"], "string", "{path}");
        assert_eq!(duration["pattern"], DURATION_PATTERN, "{path}");
        let rule = rule_containing(&duration, "duration(self)");
        assert_eq!(rule["rule"], POSITIVE_DURATION_RULE, "{path}");
        assert!(rule["message"].as_str().is_some_and(|m| m.contains("positive duration")), "{path}");
    }
}

// --- CEL rules ---

#[test]
fn the_users_lifetime_cap_needs_max_lifetime_and_is_no_shorter() {
    let rule = rule_containing(&spec_schema("sessions"), "self.maxUserLifetime");
    assert_eq!(
        rule["rule"],
        "!has(self.maxUserLifetime) || (has(self.maxLifetime) && duration(self.maxUserLifetime) >= duration(self.maxLifetime))"
    );
    assert_eq!(rule["fieldPath"], ".maxUserLifetime");
    assert!(rule["message"].as_str().unwrap().contains("at least maxLifetime"), "{rule:#?}");
}

#[test]
fn independent_topology_allows_at_most_one_read_write_node() {
    let rule = rule_containing(&spec_schema(""), "self.topology != 'Independent'");
    assert_eq!(
        rule["rule"],
        "self.topology != 'Independent' || self.nodes.filter(n, !has(n.readOnly) || !n.readOnly.db || !n.readOnly.repo).size() <= 1"
    );
    assert_eq!(rule["fieldPath"], ".nodes");
    assert!(rule["message"].as_str().unwrap().contains("at most one read-write node"), "{rule:#?}");
}

#[test]
fn grid_topology_needs_exactly_one_master() {
    let rule = rule_containing(&spec_schema(""), "self.topology != 'Grid' || self.nodes.filter");
    assert_eq!(
        rule["rule"],
        "self.topology != 'Grid' || self.nodes.filter(n, has(n.master) && n.master).size() == 1"
    );
    assert_eq!(rule["fieldPath"], ".nodes");
    assert!(rule["message"].as_str().unwrap().contains("exactly one node with master: true"), "{rule:#?}");
}

/// A grid's master pod gets its DNS name from the Service `<cluster>-icegrid`: the API server
/// keeps that name free and within 63 characters.
#[test]
fn a_grid_leaves_room_for_the_masters_dns_service() {
    let rule = rule_containing(&spec_schema(""), "n.name != 'icegrid'");
    assert_eq!(rule["rule"], "self.topology != 'Grid' || self.nodes.all(n, n.name != 'icegrid')");
    assert_eq!(rule["fieldPath"], ".nodes");
    assert!(rule["message"].as_str().unwrap().contains("no node may be named icegrid"), "{rule:#?}");
    let root = version()["schema"]["openAPIV3Schema"].clone();
    let rule = rule_containing(&root, "size(self.metadata.name) <= 55");
    assert_eq!(rule["rule"], "self.spec.topology != 'Grid' || size(self.metadata.name) <= 55");
    assert!(rule["message"].as_str().unwrap().contains("at most 55 characters"), "{rule:#?}");
    assert_eq!(55 + "-".len() + omero_operator::api::GRID_DNS_SUFFIX.len(), 63, "the Rust check's bound");
}

/// A node's `servers`: a set of OMERO server names (the pattern is `api::servers::is_server`),
/// with Blitz-0 among them, and only in independent topology.
#[test]
fn a_nodes_servers_are_a_set_of_omero_server_names() {
    let servers = spec_schema("nodes[].servers");
    assert_eq!(servers["x-kubernetes-list-type"], "set", "the API server refuses duplicates");
    for name in
        ["Blitz-0", "Tables-0", "Processor-3", "DropBox", "Storm", "Tables", "DropBox-1", "Repository-1", ""]
    {
        assert_eq!(
            matches(&servers["items"], name),
            omero_operator::api::servers::is_server(name),
            "{name}: the schema and the Rust check agree"
        );
    }
    let rule = rule_containing(&spec_schema("nodes[]"), "'Blitz-0' in self.servers");
    assert_eq!(rule["rule"], "!has(self.servers) || size(self.servers) == 0 || 'Blitz-0' in self.servers");
    assert_eq!(rule["fieldPath"], ".servers");
    let rule = rule_containing(&spec_schema(""), "!has(n.servers)");
    assert_eq!(
        rule["rule"],
        "self.topology != 'Grid' || self.nodes.all(n, !has(n.servers) || size(n.servers) == 0)"
    );
    assert!(rule["message"].as_str().unwrap().contains("servers is for independent topology"), "{rule:#?}");
}

#[test]
fn master_is_refused_outside_grid_topology() {
    let rule = rule_containing(&spec_schema(""), "self.topology == 'Grid'");
    assert_eq!(rule["rule"], "self.topology == 'Grid' || self.nodes.all(n, !has(n.master) || !n.master)");
    assert_eq!(rule["fieldPath"], ".nodes");
    assert!(rule["message"].as_str().unwrap().contains("only meaningful in grid topology"), "{rule:#?}");
}

#[test]
fn the_session_counter_needs_credentials_and_is_not_offered_in_grid_topology() {
    let grid = rule_containing(&spec_schema(""), "!has(self.sessionCounter) &&");
    assert_eq!(
        grid["rule"],
        "self.topology != 'Grid' || (!has(self.sessionCounter) && self.nodes.all(n, !has(n.sessionProbe) || n.sessionProbe.type != 'Counter'))"
    );
    assert_eq!(grid["fieldPath"], ".sessionCounter");
    assert!(grid["message"].as_str().unwrap().contains("not offered in grid topology"), "{grid:#?}");
    let credentials = rule_containing(&spec_schema(""), "has(self.sessionCounter) ||");
    assert_eq!(
        credentials["rule"],
        "has(self.sessionCounter) || self.nodes.all(n, !has(n.sessionProbe) || n.sessionProbe.type != 'Counter')"
    );
    assert!(credentials["message"].as_str().unwrap().contains("spec.sessionCounter.credentialsSecret"));
    assert_eq!(spec_schema("sessionCounter")["required"], json!(["credentialsSecret"]));
    assert_eq!(spec_schema("sessionCounter.credentialsSecret")["required"], json!(["name"]));
}

#[test]
fn metrics_probe_needs_a_port() {
    let rule = rule_containing(&spec_schema("nodes[].sessionProbe"), "'Metrics'");
    assert_eq!(rule["rule"], "self.type != 'Metrics' || has(self.port)");
    assert_eq!(rule["fieldPath"], ".port");
    assert!(rule["message"].as_str().unwrap().contains("needs port"), "{rule:#?}");
}

#[test]
fn database_probe_is_refused_on_a_read_only_database_node() {
    let rule = rule_containing(&spec_schema("nodes[]"), "'Database'");
    assert_eq!(
        rule["rule"],
        "!has(self.sessionProbe) || self.sessionProbe.type != 'Database' || !has(self.readOnly) || !self.readOnly.db"
    );
    assert_eq!(rule["fieldPath"], ".sessionProbe.type");
    assert!(
        rule["message"].as_str().unwrap().contains("use sessionProbe.type Counter, Metrics or None"),
        "{rule:#?}"
    );
}

/// The rules read `self.topology`, `n.readOnly.db`, `n.readOnly.repo` and
/// `self.sessionProbe.type` without `has()`: that is safe only because the API server fills
/// in their defaults (or requires the field) before it evaluates CEL. Otherwise a document
/// that leaves one out would fail with "no such key" instead of passing.
#[test]
fn fields_the_rules_read_without_has_have_defaults() {
    assert_eq!(spec_schema("topology")["default"], "Independent");
    assert_eq!(spec_schema("topology")["enum"], json!(["Independent", "Grid"]));
    assert_eq!(spec_schema("nodes[].readOnly.db")["default"], false);
    assert_eq!(spec_schema("nodes[].readOnly.repo")["default"], false);
    // A probe names its type: the default depends on the node (database, or none on a
    // read-only database node), which a schema default cannot express.
    assert_eq!(spec_schema("nodes[].sessionProbe")["required"], json!(["type"]));
    assert_eq!(
        spec_schema("nodes[].sessionProbe.type")["enum"],
        json!(["Database", "Counter", "Metrics", "None"])
    );
}

/// Walks every schema in the CRD, calling `visit` with the schema and its path.
fn walk(schema: &Value, path: &str, visit: &mut dyn FnMut(&Value, &str)) {
    visit(schema, path);
    if let Some(properties) = schema["properties"].as_object() {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if schema["items"].is_object() {
        walk(&schema["items"], &format!("{path}[]"), visit);
    }
    if schema["additionalProperties"].is_object() {
        walk(&schema["additionalProperties"], &format!("{path}{{}}"), visit);
    }
}

/// The API server refuses a CRD whose rule has an empty message or a `fieldPath` that does
/// not name a field of the schema the rule sits on.
#[test]
fn every_rule_has_a_message_and_a_field_path_that_exists() {
    let root = version()["schema"]["openAPIV3Schema"].clone();
    let mut count = 0;
    walk(&root, "", &mut |schema, path| {
        for rule in rules(schema) {
            count += 1;
            assert!(rule["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {rule:#?}");
            if let Some(field_path) = rule["fieldPath"].as_str() {
                let mut target = schema.clone();
                for step in field_path.strip_prefix('.').expect("fieldPath starts with '.'").split('.') {
                    target = target["properties"][step].clone();
                    assert!(target.is_object(), "{path}: fieldPath {field_path} does not exist");
                }
            }
        }
    });
    // 4 on the root (names), 13 on the spec, 1 on sessions, 2 on a node, 1 on the pool, 1 on
    // each of the two probes (a node's, the pool template's), 9 durations.
    assert_eq!(count, 32, "rules in the CRD (none in status)");
}

/// Switching topology would need a per-node Service's immutable clusterIP changed and every
/// node restarted at once: the API server refuses the update, with what to do instead.
#[test]
fn the_topology_of_an_existing_cluster_cannot_change() {
    let spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    let rule = rules(&spec)
        .into_iter()
        .find(|r| r["rule"] == "self.topology == oldSelf.topology")
        .expect("a transition rule on spec.topology");
    assert_eq!(rule["fieldPath"], ".topology");
    assert!(rule["message"].as_str().unwrap().contains("create a new OmeroCluster"), "{rule:#?}");
}

/// `<cluster>-<node>` names Services: the API server checks the cluster name's form and the
/// combined length, which a DNS-1123 subdomain name alone would not.
#[test]
fn the_root_checks_the_cluster_name_and_the_combined_object_names() {
    let root = version()["schema"]["openAPIV3Schema"].clone();
    let root_rules: Vec<String> =
        rules(&root).iter().map(|r| r["rule"].as_str().unwrap().to_string()).collect();
    assert!(
        root_rules.iter().any(|r| r.contains("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")),
        "{root_rules:?}"
    );
    assert!(
        root_rules
            .iter()
            .any(|r| r == "self.spec.nodes.all(n, size(self.metadata.name) + size(n.name) < 63)"),
        "{root_rules:?}"
    );
}

/// The API server accepts only structural schemas: every node has a type, unless it is an
/// int-or-string or keeps unknown fields.
#[test]
fn schema_is_structural() {
    let root = version()["schema"]["openAPIV3Schema"].clone();
    walk(&root, "", &mut |schema, path| {
        let typed = schema["type"].is_string()
            || schema["x-kubernetes-int-or-string"] == true
            || schema["x-kubernetes-preserve-unknown-fields"] == true;
        assert!(typed, "{path} has no type: {schema:#?}");
        for forbidden in ["$ref", "definitions", "$defs"] {
            assert!(schema.get(forbidden).is_none(), "{path} has {forbidden}");
        }
    });
}

#[test]
fn the_read_only_pool_is_read_only_independent_and_named_apart_from_nodes() {
    let pool = spec_schema("readOnlyPool");
    assert_eq!(pool["required"], json!(["replicas"]));
    let replicas = &pool["properties"]["replicas"];
    assert_eq!((replicas["minimum"].as_f64(), replicas["maximum"].as_f64()), (Some(0.0), Some(64.0)));
    assert!(
        pool["properties"]["template"]["properties"].get("name").is_none(),
        "the operator names pool nodes"
    );
    assert!(
        pool["properties"]["template"]["properties"].get("varClaimName").is_none(),
        "one claim cannot serve many pods"
    );
    rule_containing(&pool, "self.replicas >= self.minReplicas");
    let spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    for text in [
        "self.topology == 'Independent'",
        "self.readOnlyPool.template.readOnly.db && self.readOnlyPool.template.readOnly.repo",
        "n.name.matches('^' + ",
        "size(self.nodes) + self.readOnlyPool.replicas <= 64",
    ] {
        rule_containing(&spec, text);
    }
    let root = version()["schema"]["openAPIV3Schema"].clone();
    rule_containing(&root, "size(self.spec.readOnlyPool.namePrefix)");
    let columns = version()["additionalPrinterColumns"].clone();
    assert!(
        columns
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "Pool" && c["jsonPath"] == ".spec.readOnlyPool.replicas"),
        "{columns:#?}"
    );
}
