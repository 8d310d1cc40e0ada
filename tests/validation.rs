//! `api::validate`: every rule, each with a spec it accepts and one it refuses, and every
//! refusal checked for the field it names and the fix it suggests.
//!
//! Each test starts from `BASE`, a small valid cluster, and merges a YAML patch into it (maps
//! merge, lists and scalars replace, `null` removes), so a test shows only what it changes.

use omero_operator::api::{Duration, OmeroCluster, ValidationError, property, validate};
use serde_json::Value;

const BASE: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata:
  name: omero
  namespace: imaging
spec:
  image: openmicroscopy/omero-server:5.6
  database:
    host: omero-db
    passwordSecret:
      name: omero-db
      key: password
  repository:
    claimName: omero-data
  nodes:
    - name: main
"#;

/// `BASE` with `patch` merged in, as YAML text, parsed the way `kubectl apply -f` input is.
fn parse(patch: &str) -> Result<OmeroCluster, serde_saphyr::Error> {
    let mut doc: Value = serde_saphyr::from_str(BASE).expect("BASE is YAML");
    merge(&mut doc, serde_saphyr::from_str(patch).expect("the patch is YAML"));
    serde_saphyr::from_str(&serde_saphyr::to_string(&doc).expect("serialises"))
}

fn cluster(patch: &str) -> OmeroCluster {
    parse(patch).unwrap_or_else(|e| panic!("patch does not deserialise: {e}\n{patch}"))
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(&key);
        } else {
            merge(map.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[track_caller]
fn assert_valid(patch: &str) {
    if let Err(errors) = validate(&cluster(patch)) {
        panic!("expected a valid cluster, got {errors:#?}\npatch:\n{patch}");
    }
}

#[track_caller]
fn errors(patch: &str) -> Vec<ValidationError> {
    match validate(&cluster(patch)) {
        Ok(()) => panic!("expected validation errors\npatch:\n{patch}"),
        Err(errors) => errors,
    }
}

/// Exactly one error, naming `field`, whose message contains every one of `parts`.
#[track_caller]
fn assert_error(patch: &str, field: &str, parts: &[&str]) {
    let errors = errors(patch);
    assert_eq!(errors.len(), 1, "expected one error on {field}, got {errors:#?}\npatch:\n{patch}");
    assert_message(&errors[0], field, parts);
}

#[track_caller]
fn assert_message(error: &ValidationError, field: &str, parts: &[&str]) {
    assert_eq!(error.field, field, "{error:#?}");
    for part in parts {
        assert!(error.message.contains(part), "message of {field} lacks {part:?}: {:?}", error.message);
    }
}

fn fields(errors: &[ValidationError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

// --- the base document and the error type ---

#[test]
fn base_document_is_valid() {
    assert_valid("{}");
}

#[test]
fn error_displays_as_field_then_message() {
    let errors = errors(r#"spec: {image: ""}"#);
    assert!(errors[0].to_string().starts_with("spec.image: is empty: "), "{}", errors[0]);
}

// --- metadata.name ---

#[test]
fn cluster_name_that_is_a_dns_1035_label_is_valid() {
    assert_valid("metadata: {name: omero-prod-2}");
    assert_valid("metadata: {name: o}");
}

#[test]
fn cluster_name_that_is_not_a_dns_1035_label_is_refused() {
    for name in ["2omero", "Omero", "omero_prod", "omero.prod", "omero-", "-omero"] {
        assert_error(
            &format!("metadata: {{name: '{name}'}}"),
            "metadata.name",
            &[&format!("'{name}' cannot prefix Service names"), "starting with a letter"],
        );
    }
}

#[test]
fn cluster_name_longer_than_a_dns_label_is_refused_and_so_are_its_node_names() {
    let name = "o".repeat(64);
    let errors = errors(&format!("metadata: {{name: {name}}}"));
    assert_eq!(fields(&errors), ["metadata.name", "spec.nodes[0].name"]);
    assert_message(&errors[0], "metadata.name", &["cannot prefix Service names"]);
    assert_message(&errors[1], "spec.nodes[0].name", &["shorten the node or cluster name"]);
}

// --- empty required strings ---

#[test]
fn empty_image_is_refused() {
    for image in ["''", "'  '"] {
        assert_error(
            &format!("spec: {{image: {image}}}"),
            "spec.image",
            &["is empty", "set the OMERO.server image, e.g. openmicroscopy/omero-server:5.6"],
        );
    }
}

#[test]
fn empty_database_host_is_refused() {
    assert_error(r#"spec: {database: {host: ""}}"#, "spec.database.host", &["is empty", "PostgreSQL host"]);
}

#[test]
fn empty_repository_claim_is_refused() {
    assert_valid("spec: {repository: {claimName: omero-data, memoCacheClaimName: omero-memo}}");
    assert_error(
        r#"spec: {repository: {claimName: ""}}"#,
        "spec.repository.claimName",
        &["is empty", "name the existing PersistentVolumeClaim"],
    );
}

// --- secret references ---

#[test]
fn password_secret_with_empty_name_or_key_is_refused() {
    assert_error(
        r#"spec: {database: {passwordSecret: {name: ""}}}"#,
        "spec.database.passwordSecret.name",
        &["is empty", "name the Secret"],
    );
    assert_error(
        r#"spec: {database: {passwordSecret: {key: " "}}}"#,
        "spec.database.passwordSecret.key",
        &["is empty", "name the key of the Secret", "e.g. password"],
    );
    let both = errors(r#"spec: {database: {passwordSecret: {name: "", key: ""}}}"#);
    assert_eq!(fields(&both), ["spec.database.passwordSecret.name", "spec.database.passwordSecret.key"]);
}

#[test]
fn read_only_database_secret_is_optional_and_checked_when_given() {
    assert_valid("spec: {database: {readOnly: {host: omero-db-replica}}}");
    assert_valid(
        "spec: {database: {readOnly: {user: omero_ro, passwordSecret: {name: omero-db-ro, key: password}}}}",
    );
    assert_error(
        r#"spec: {database: {readOnly: {passwordSecret: {name: "", key: password}}}}"#,
        "spec.database.readOnly.passwordSecret.name",
        &["is empty", "name the Secret"],
    );
    assert_error(
        r#"spec: {database: {readOnly: {passwordSecret: {name: omero-db-ro, key: ""}}}}"#,
        "spec.database.readOnly.passwordSecret.key",
        &["is empty", "name the key of the Secret"],
    );
}

// --- config ---

#[test]
fn config_the_image_can_carry_is_valid() {
    assert_valid(
        r#"
        spec:
          config: {omero.jvmcfg.percent.blitz: "50", omero.policy.binary_access: "+read,+write", Ice.IPv6: "0"}
          nodes: [{name: main, config: {omero.jvmcfg.percent.pixeldata: "30"}}]
        "#,
    );
}

#[test]
fn config_key_the_operator_sets_is_refused_with_the_field_to_use() {
    assert_error(
        r#"spec: {config: {omero.db.host: elsewhere}}"#,
        "spec.config[omero.db.host]",
        &["is set by the operator", "use spec.database.host instead"],
    );
    assert_error(
        r#"spec: {nodes: [{name: main, config: {omero.db.host: elsewhere}}]}"#,
        "spec.nodes[0].config[omero.db.host]",
        &["is set by the operator", "use spec.database.host instead"],
    );
}

#[test]
fn ice_default_host_is_refused_because_it_hides_the_pod_from_the_session_probe() {
    let why = [
        "may not be set",
        "instead of the pod IP in OMERO's node table",
        "session probe can never find the node",
    ];
    assert_error(r#"spec: {config: {Ice.Default.Host: 127.0.0.1}}"#, "spec.config[Ice.Default.Host]", &why);
    assert_error(
        r#"spec: {nodes: [{name: main, config: {Ice.Default.Host: 127.0.0.1}}]}"#,
        "spec.nodes[0].config[Ice.Default.Host]",
        &why,
    );
}

#[test]
fn every_managed_key_is_refused_in_cluster_config() {
    for (key, instead) in property::MANAGED {
        assert_error(
            &format!("spec: {{config: {{'{key}': 'x'}}}}"),
            &format!("spec.config[{key}]"),
            &[&format!("use {instead} instead")],
        );
    }
}

#[test]
fn config_key_that_cannot_round_trip_through_config_env_is_refused() {
    let lost = ["cannot be passed to the image", "would read CONFIG_omero_a_b back as 'omero.a_b'"];
    assert_error(r#"spec: {config: {omero.a.b: "1"}}"#, "spec.config[omero.a.b]", &lost);
    assert_error(
        r#"spec: {nodes: [{name: main, config: {omero.a.b: "1"}}]}"#,
        "spec.nodes[0].config[omero.a.b]",
        &lost,
    );
}

#[test]
fn config_key_with_characters_no_env_name_allows_is_refused() {
    assert_error(
        r#"spec: {config: {"omero.x y": "1"}}"#,
        "spec.config[omero.x y]",
        &["cannot be passed to the image", "' ' cannot appear in a property name"],
    );
    assert_error(r#"spec: {config: {"": "1"}}"#, "spec.config[]", &["the property name is empty"]);
}

// --- durations ---

#[test]
fn positive_session_lifetimes_are_valid() {
    assert_valid("spec: {sessions: {idleTimeout: 10m, maxLifetime: 8h}}");
    assert_valid("spec: {sessions: {idleTimeout: 500ms}}");
}

#[test]
fn zero_session_lifetimes_parse_but_are_refused() {
    let parsed = cluster("spec: {sessions: {idleTimeout: 0s}}");
    assert_eq!(parsed.spec.sessions.unwrap().idle_timeout, Some(Duration::from_secs(0)));
    let fix = ["must be a positive duration, e.g. 10m", "leave it out for OMERO's default"];
    assert_error("spec: {sessions: {idleTimeout: 0s}}", "spec.sessions.idleTimeout", &fix);
    assert_error("spec: {sessions: {maxLifetime: 0m}}", "spec.sessions.maxLifetime", &fix);
    let both = errors("spec: {sessions: {idleTimeout: 0ms, maxLifetime: 0h}}");
    assert_eq!(fields(&both), ["spec.sessions.idleTimeout", "spec.sessions.maxLifetime"]);
}

#[test]
fn drain_timeout_must_be_positive() {
    assert_valid("spec: {drain: {timeout: 1h, onDeadline: Hold}}");
    assert_error(
        "spec: {drain: {timeout: 0s}}",
        "spec.drain.timeout",
        &["must be a positive duration, e.g. 1h"],
    );
}

#[test]
fn probe_interval_must_be_positive() {
    assert_valid("spec: {nodes: [{name: main, sessionProbe: {type: Database, interval: 15s}}]}");
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Database, interval: 0s}}]}",
        "spec.nodes[0].sessionProbe.interval",
        &["must be a positive duration, e.g. 15s"],
    );
}

#[test]
fn malformed_durations_are_refused_when_deserialising() {
    for (patch, bad) in [
        ("spec: {sessions: {idleTimeout: 10 minutes}}", "10 minutes"),
        ("spec: {sessions: {maxLifetime: '1.5h'}}", "1.5h"),
        ("spec: {drain: {timeout: 1d}}", "1d"),
        ("spec: {nodes: [{name: main, sessionProbe: {type: Database, interval: '-15s'}}]}", "-15s"),
        ("spec: {nodes: [{name: main, sessionProbe: {type: Database, interval: '15'}}]}", "15"),
    ] {
        let err = parse(patch).expect_err(patch).to_string();
        assert!(
            err.contains(&format!(
                "'{bad}' is not a duration: write it as a number and a unit (h, m, s, ms)"
            )),
            "{patch}: {err}"
        );
    }
}

// --- drain.maxUnavailable ---

#[test]
fn max_unavailable_must_be_at_least_one() {
    assert_valid("spec: {drain: {maxUnavailable: 1}}");
    assert_valid("spec: {drain: {maxUnavailable: 2}}");
    assert_error("spec: {drain: {maxUnavailable: 0}}", "spec.drain.maxUnavailable", &["must be at least 1"]);
}

// --- nodes ---

#[test]
fn no_nodes_is_refused() {
    assert_error("spec: {nodes: []}", "spec.nodes", &["is empty", "declare at least one node"]);
}

#[test]
fn node_names_that_are_dns_labels_are_valid() {
    assert_valid("spec: {nodes: [{name: ro-1}]}");
    assert_valid("spec: {nodes: [{name: '0'}]}");
}

#[test]
fn node_name_that_is_not_a_dns_label_is_refused() {
    for name in ["Main", "-main", "main-", "ma_in", "ma.in", ""] {
        assert_error(
            &format!("spec: {{nodes: [{{name: '{name}'}}]}}"),
            "spec.nodes[0].name",
            &[&format!("'{name}' is not a DNS label"), "use lower-case letters, digits and '-'"],
        );
    }
}

#[test]
fn cluster_and_node_name_together_must_fit_a_63_character_object_name() {
    let cluster_name = "o".repeat(31);
    let fits = "n".repeat(31);
    let too_long = "n".repeat(32);
    assert_valid(&format!("{{metadata: {{name: {cluster_name}}}, spec: {{nodes: [{{name: {fits}}}]}}}}"));
    assert_error(
        &format!("{{metadata: {{name: {cluster_name}}}, spec: {{nodes: [{{name: {too_long}}}]}}}}"),
        "spec.nodes[0].name",
        &[
            &format!("'{cluster_name}-{too_long}' is longer than 63 characters"),
            "shorten the node or cluster name",
        ],
    );
}

#[test]
fn duplicate_node_names_are_refused_on_the_second() {
    assert_error(
        "spec: {nodes: [{name: main}, {name: main, readOnly: {db: true, repo: true}}]}",
        "spec.nodes[1].name",
        &["'main' is used by another node", "node names must be unique"],
    );
}

// --- topology ---

#[test]
fn master_outside_grid_is_refused() {
    assert_valid("spec: {nodes: [{name: main, master: false}]}");
    assert_error(
        "spec: {nodes: [{name: main, master: true}]}",
        "spec.nodes[0].master",
        &["only meaningful in grid topology", "remove it or set spec.topology: Grid"],
    );
}

#[test]
fn independent_allows_one_read_write_node_beside_read_only_ones() {
    assert_valid(
        r#"
        spec:
          nodes:
            - name: main
            - {name: ro-1, readOnly: {db: true, repo: true}}
            - {name: ro-2, readOnly: {db: true, repo: true}}
        "#,
    );
}

#[test]
fn independent_refuses_two_read_write_nodes_and_names_them() {
    assert_error(
        "spec: {topology: Independent, nodes: [{name: main}, {name: second}]}",
        "spec.nodes",
        &[
            "independent topology allows at most one read-write node, found 2 (main, second)",
            "set readOnly: {db: true, repo: true} on all but one",
        ],
    );
}

#[test]
fn a_node_read_only_in_one_respect_still_counts_as_read_write() {
    for read_only in ["{db: true}", "{repo: true}", "{db: true, repo: false}", "{}"] {
        assert_error(
            &format!("spec: {{nodes: [{{name: main}}, {{name: replica, readOnly: {read_only}}}]}}"),
            "spec.nodes",
            &["found 2 (main, replica)"],
        );
    }
}

#[test]
fn grid_needs_exactly_one_master_and_allows_several_read_write_nodes() {
    assert_valid(
        "spec: {topology: Grid, nodes: [{name: master, master: true}, {name: worker-1}, {name: worker-2}]}",
    );
    assert_error(
        "spec: {topology: Grid, nodes: [{name: worker-1}, {name: worker-2}]}",
        "spec.nodes",
        &["grid topology needs exactly one node with master: true, found 0"],
    );
    assert_error(
        "spec: {topology: Grid, nodes: [{name: a, master: true}, {name: b, master: true}]}",
        "spec.nodes",
        &["grid topology needs exactly one node with master: true, found 2"],
    );
}

// --- session probes ---

#[test]
fn metrics_probe_needs_a_port() {
    assert_valid(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449, exporterUser: monitor}}]}",
    );
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, exporterUser: monitor}}]}",
        "spec.nodes[0].sessionProbe.port",
        &["is required for a metrics probe", "set the port of the node's Prometheus endpoint"],
    );
}

#[test]
fn database_probe_on_a_read_only_database_node_is_refused() {
    let fix = [
        "Database cannot count sessions of a read-only database node",
        "use Counter (with spec.sessionCounter), Metrics",
        "or None",
    ];
    assert_error(
        "spec: {nodes: [{name: main}, {name: ro, readOnly: {db: true, repo: true}, sessionProbe: {type: Database}}]}",
        "spec.nodes[1].sessionProbe.type",
        &fix,
    );
    // A probe must name its type: the default depends on the node, so none is assumed.
    let err = parse("spec: {nodes: [{name: main, sessionProbe: {interval: 30s}}]}").unwrap_err();
    assert!(err.to_string().contains("missing field `type`"), "{err}");
}

#[test]
fn read_only_database_node_may_omit_the_probe_or_use_none_or_metrics() {
    for probe in ["null", "{type: None}", "{type: Metrics, port: 9449, exporterUser: monitor}"] {
        assert_valid(&format!(
            "spec: {{nodes: [{{name: main}}, {{name: ro, readOnly: {{db: true, repo: true}}, sessionProbe: {probe}}}]}}"
        ));
    }
    // Only a read-only *database* rules the database probe out.
    assert_valid("spec: {nodes: [{name: main, readOnly: {repo: true}, sessionProbe: {type: Database}}]}");
}

#[test]
fn probe_path_must_start_with_a_slash() {
    assert_valid(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449, exporterUser: monitor, path: /metrics}}]}",
    );
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449, exporterUser: monitor, path: metrics}}]}",
        "spec.nodes[0].sessionProbe.path",
        &["'metrics' must start with '/'"],
    );
}

// --- several problems at once ---

#[test]
fn every_problem_is_reported_together_in_field_order() {
    let errors = errors(
        r#"
        metadata: {name: Omero}
        spec:
          image: ""
          sessions: {idleTimeout: 0s}
          drain: {maxUnavailable: 0}
          config: {omero.db.pass: secret}
          nodes:
            - {name: Main}
            - {name: b, sessionProbe: {type: Metrics, exporterUser: monitor, path: metrics}}
            - {name: b}
        "#,
    );
    assert_eq!(
        fields(&errors),
        [
            "metadata.name",
            "spec.image",
            "spec.config[omero.db.pass]",
            "spec.sessions.idleTimeout",
            "spec.nodes[0].name",
            "spec.nodes[1].sessionProbe.port",
            "spec.nodes[1].sessionProbe.path",
            "spec.nodes[2].name",
            "spec.nodes",
            "spec.drain.maxUnavailable",
        ]
    );
    assert_message(&errors[2], "spec.config[omero.db.pass]", &["use spec.database.passwordSecret instead"]);
    assert_message(&errors[7], "spec.nodes[2].name", &["'b' is used by another node"]);
    assert_message(&errors[8], "spec.nodes", &["found 3 (Main, b, b)"]);
}

#[test]
fn extra_env_may_not_set_what_the_operator_sets() {
    assert_valid("spec: {nodes: [{name: main, env: [{name: JAVA_OPTS, value: '-Xss2m'}]}]}");
    assert_error(
        "spec: {nodes: [{name: main, env: [{name: TZ, value: UTC}, {name: CONFIG_omero_db_host, value: x}]}]}",
        "spec.nodes[0].env[1].name",
        &["CONFIG_omero_db_host cannot be set here", "put the property in config instead"],
    );
    for name in ["OMERO_TMPDIR", "OMERO_POD_IP"] {
        assert_error(
            &format!("spec: {{nodes: [{{name: main, env: [{{name: {name}, value: x}}]}}]}}"),
            "spec.nodes[0].env[0].name",
            &["the operator sets it"],
        );
    }
    assert_error(
        "spec: {nodes: [{name: main, env: [{name: ROOTPASS, value: x}]}]}",
        "spec.nodes[0].env[0].name",
        &["spec.database.rootPasswordSecret"],
    );
}

#[test]
fn root_password_secret_is_checked_when_given() {
    assert_valid("spec: {database: {rootPasswordSecret: {name: omero-db, key: root-password}}}");
    assert_error(
        "spec: {database: {rootPasswordSecret: {name: omero-db, key: ''}}}",
        "spec.database.rootPasswordSecret.key",
        &["is empty"],
    );
}

#[test]
fn blank_database_names_users_and_read_only_host_are_refused() {
    assert_error("spec: {database: {name: ' '}}", "spec.database.name", &["is empty", "leave the field out"]);
    assert_error("spec: {database: {user: ''}}", "spec.database.user", &["is empty"]);
    assert_error("spec: {database: {readOnly: {host: ''}}}", "spec.database.readOnly.host", &["is empty"]);
    assert_error("spec: {database: {readOnly: {user: ''}}}", "spec.database.readOnly.user", &["is empty"]);
    assert_valid("spec: {database: {readOnly: {user: omero_ro}}}");
}

#[test]
fn port_zero_is_refused_wherever_a_port_is_given() {
    assert_error("spec: {database: {port: 0}}", "spec.database.port", &["from 1 to 65535"]);
    assert_error(
        "spec: {database: {readOnly: {port: 0}}}",
        "spec.database.readOnly.port",
        &["from 1 to 65535"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 0, exporterUser: monitor}}]}",
        "spec.nodes[0].sessionProbe.port",
        &["from 1 to 65535"],
    );
}

#[test]
fn affinity_timeout_must_be_within_kubernetes_limits() {
    assert_valid("spec: {service: {sessionAffinityTimeoutSeconds: 86400}}");
    assert_error(
        "spec: {service: {sessionAffinityTimeoutSeconds: 86401}}",
        "spec.service.sessionAffinityTimeoutSeconds",
        &["from 1 to 86400"],
    );
}

#[test]
fn node_names_longer_than_the_schema_allows_are_refused() {
    let name = "a".repeat(41);
    assert_error(
        &format!("spec: {{nodes: [{{name: {name}}}]}}"),
        "spec.nodes[0].name",
        &["longer than 40 characters"],
    );
}

#[test]
fn more_nodes_than_the_schema_allows_are_refused() {
    let mut nodes = vec!["{name: n0}".to_string()];
    nodes.extend((1..65).map(|i| format!("{{name: n{i}, readOnly: {{db: true, repo: true}}}}")));
    assert_error(
        &format!("spec: {{nodes: [{}]}}", nodes.join(", ")),
        "spec.nodes",
        &["has 65 nodes", "at most 64"],
    );
}

#[test]
fn grid_workers_may_not_take_the_masters_icegrid_names() {
    assert_error(
        "spec: {topology: Grid, nodes: [{name: main, master: true}, {name: master}]}",
        "spec.nodes[1].name",
        &["pick another worker name"],
    );
    assert_error(
        "spec: {topology: Grid, nodes: [{name: main, master: true}, {name: internal}]}",
        "spec.nodes[1].name",
        &["IceGrid"],
    );
    assert_valid("spec: {topology: Grid, nodes: [{name: master, master: true}, {name: worker}]}");
}

/// A grid has one more Service, `<cluster>-icegrid`, which gives the master's pod a DNS name
/// (an IPv6 master binds IceGrid to it): no node may take that name, and the cluster name must
/// leave room for it.
#[test]
fn a_grid_leaves_room_for_the_masters_dns_service() {
    assert_error(
        "spec: {topology: Grid, nodes: [{name: main, master: true}, {name: icegrid}]}",
        "spec.nodes[1].name",
        &["'omero-icegrid'", "grid master's DNS Service", "pick another node name"],
    );
    assert_error(
        "spec: {topology: Grid, nodes: [{name: icegrid, master: true}]}",
        "spec.nodes[0].name",
        &["pick another node name"],
    );
    assert_valid("spec: {nodes: [{name: icegrid}]}");
    let grid = "spec: {topology: Grid, nodes: [{name: m, master: true}]}";
    assert_error(
        &format!("metadata: {{name: a{}}}\n{grid}", "b".repeat(55)),
        "metadata.name",
        &["-icegrid' (the Service that gives the grid master's pod a DNS name)", "at most 55 characters"],
    );
    assert_valid(&format!("metadata: {{name: a{}}}\n{grid}", "b".repeat(54)));
    assert_valid(&format!("metadata: {{name: a{}}}", "b".repeat(55)));
}

/// A node's `servers`: names OMERO's templates have, each once, Blitz-0 among them, only in
/// independent topology, and not besides the same thing in the node's own config.
#[test]
fn a_nodes_servers_are_omero_servers_with_blitz_0() {
    assert_valid("spec: {nodes: [{name: main, servers: [Blitz-0, Tables-0, Processor-1, DropBox]}]}");
    assert_error(
        "spec: {nodes: [{name: main, servers: [Blitz-0, Tables]}]}",
        "spec.nodes[0].servers[1]",
        &["'Tables' is not an OMERO server", "Tables-<index> (e.g. Tables-0)", "DropBox, MonitorServer"],
    );
    assert_error(
        "spec: {nodes: [{name: main, servers: [Blitz-0, Repository-1]}]}",
        "spec.nodes[0].servers[1]",
        &["'Repository-1' is not an OMERO server"],
    );
    assert_error(
        "spec: {nodes: [{name: main, servers: [Blitz-0, Tables-0, Tables-0]}]}",
        "spec.nodes[0].servers[2]",
        &["listed twice"],
    );
    assert_error(
        "spec: {nodes: [{name: main, servers: [Tables-0]}]}",
        "spec.nodes[0].servers",
        &["does not include Blitz-0", "add it"],
    );
    // Bounded, as the CRD bounds it (the API server refuses a CEL rule over an unbounded list).
    let many: Vec<String> = (0..33).map(|i| format!("Blitz-{i}")).collect();
    assert_error(
        &format!("spec: {{nodes: [{{name: main, servers: [{}]}}]}}", many.join(", ")),
        "spec.nodes[0].servers",
        &["lists 33 servers; at most 32"],
    );
    assert_error(
        &format!("spec: {{nodes: [{{name: main, servers: [Blitz-0, Tables-{}]}}]}}", "1".repeat(40)),
        "spec.nodes[0].servers[1]",
        &["is not an OMERO server"],
    );
    assert_error(
        "spec: {nodes: [{name: main, servers: [Blitz-0], config: {omero.server.nodedescriptors: 'master:Blitz-0'}}]}",
        "spec.nodes[0].config[omero.server.nodedescriptors]",
        &["keep spec.nodes[0].servers and remove this"],
    );
    // The cluster's descriptors are every node's; a node's servers are more specific.
    assert_valid(
        "spec: {config: {omero.server.nodedescriptors: 'master:Blitz-0,Tables-0'}, nodes: [{name: main, servers: [Blitz-0]}]}",
    );
    assert_error(
        "spec: {topology: Grid, nodes: [{name: main, master: true, servers: [Blitz-0]}]}",
        "spec.nodes[0].servers",
        &["is for independent topology", "remove it"],
    );
}

#[test]
fn hold_at_the_deadline_needs_a_probe_on_every_node() {
    assert_valid("spec: {drain: {onDeadline: Hold}}");
    assert_error(
        "spec: {drain: {onDeadline: Hold}, nodes: [{name: main}, {name: ro, readOnly: {db: true, repo: true}}]}",
        "spec.drain.onDeadline",
        &["nodes ro have no session probe", "use Proceed"],
    );
}

#[test]
fn grid_only_properties_are_the_users_in_independent_topology() {
    assert_valid("spec: {config: {omero.server.nodedescriptors: 'master:Blitz-0,Indexer-0'}}");
    assert_error(
        "spec: {topology: Grid, config: {omero.server.nodedescriptors: x}, nodes: [{name: main, master: true}]}",
        "spec.config[omero.server.nodedescriptors]",
        &["is set by the operator"],
    );
}

#[test]
fn sidecar_names_must_not_clash_with_omero_or_each_other() {
    assert_valid("spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e}]}]}");
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: omero-server, image: e}]}]}",
        "spec.nodes[0].sidecars[0].name",
        &["'omero-server' is taken", "rename the sidecar"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: x, image: e}, {name: x, image: f}]}]}",
        "spec.nodes[0].sidecars[1].name",
        &["'x' is taken"],
    );
}

// --- what the API server would refuse, and OMERO's memory floor ---

#[test]
fn an_env_name_the_api_server_refuses_is_refused_here() {
    assert_error(
        r#"spec: {nodes: [{name: main, env: [{name: "1 bad", value: x}]}]}"#,
        "spec.nodes[0].env[0].name",
        &["'1 bad' is not an environment variable name"],
    );
    assert_valid(r#"spec: {nodes: [{name: main, env: [{name: JAVA_OPTS.extra-1, value: x}]}]}"#);
}

#[test]
fn a_quantity_the_api_server_refuses_is_refused_here() {
    assert_error(
        r#"spec: {nodes: [{name: main, resources: {limits: {cpu: lots}}}]}"#,
        "spec.nodes[0].resources.limits.cpu",
        &["'lots' is not a quantity", "500m"],
    );
    assert_valid(
        r#"spec: {nodes: [{name: main, resources: {requests: {cpu: 500m, memory: 6Gi}, limits: {memory: 8Gi}}}]}"#,
    );
}

#[test]
fn a_memory_limit_below_what_omero_sizes_its_jvms_for_is_refused_unless_sized_by_hand() {
    assert_error(
        r#"spec: {nodes: [{name: main, resources: {limits: {memory: 2Gi}}}]}"#,
        "spec.nodes[0].resources.limits.memory",
        &["is 2048Mi, below the 3414Mi", "at least 4Gi", "omero.jvmcfg.system_memory"],
    );
    assert_valid(
        r#"spec: {nodes: [{name: main, resources: {limits: {memory: 2Gi}}, config: {omero.jvmcfg.system_memory: "3414"}}]}"#,
    );
}

#[test]
fn two_grid_workers_whose_names_give_one_blitz_index_are_refused() {
    // Find two names that collide (there are 99999 indexes: a few thousand names hold a pair).
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..5000)
        .map(|i| format!("w{i}"))
        .find_map(|name| {
            let node: omero_operator::api::NodeSpec =
                serde_json::from_value(serde_json::json!({"name": name})).unwrap();
            seen.insert(node.blitz_index(), name.clone()).map(|other| (other, name))
        })
        .expect("a colliding pair");
    let errors = errors(&format!(
        "spec: {{topology: Grid, nodes: [{{name: main, master: true}}, {{name: {a}}}, {{name: {b}}}]}}"
    ));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_message(
        &errors[0],
        "spec.nodes[2].name",
        &[&format!("'{a}' and '{b}' would both host Blitz-"), "rename one"],
    );
}

#[test]
fn a_metrics_probe_names_the_exporters_user_which_is_not_guest() {
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449}}]}",
        "spec.nodes[0].sessionProbe.exporterUser",
        &["is required for a metrics probe", "its own sessions are then not counted", "not guest"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449, exporterUser: guest}}]}",
        "spec.nodes[0].sessionProbe.exporterUser",
        &["guest sees only its own session"],
    );
}

#[test]
fn ignored_sessions_is_refused_with_what_to_write_instead() {
    assert_error(
        "spec: {nodes: [{name: main, sessionProbe: {type: Metrics, port: 9449, exporterUser: monitor, ignoredSessions: 1}}]}",
        "spec.nodes[0].sessionProbe.ignoredSessions",
        &["is no longer supported", "write exporterUser", "root's sessions are left out"],
    );
}

const COUNTER: &str = "{spec: {sessionCounter: {credentialsSecret: {name: omero-monitor}}, nodes: [{name: main}, {name: ro, readOnly: {db: true, repo: true}}]}}";

#[test]
fn the_session_counter_is_the_default_of_read_only_nodes_once_it_has_credentials() {
    use omero_operator::api::SessionProbeKind;
    assert_valid(COUNTER);
    let c = cluster(COUNTER);
    let kinds: Vec<_> = c.spec.nodes.iter().map(|n| c.spec.session_probe_of(n).kind).collect();
    assert_eq!(kinds, [SessionProbeKind::Database, SessionProbeKind::Counter]);
    // Read-write nodes too when asked, per node or for all.
    assert_valid(
        "{spec: {sessionCounter: {credentialsSecret: {name: m}}, nodes: [{name: main, sessionProbe: {type: Counter}}]}}",
    );
    let all = cluster("{spec: {sessionCounter: {credentialsSecret: {name: m}, defaultFor: All}}}");
    assert_eq!(all.spec.session_probe_of(&all.spec.nodes[0]).kind, SessionProbeKind::Counter);
    // Without credentials nothing changes: read-only nodes have no probe.
    let none = cluster("{spec: {nodes: [{name: main}, {name: ro, readOnly: {db: true, repo: true}}]}}");
    assert_eq!(none.spec.session_probe_of(&none.spec.nodes[1]).kind, SessionProbeKind::None);
}

#[test]
fn a_counter_probe_without_credentials_is_refused_naming_the_field() {
    assert_error(
        "{spec: {nodes: [{name: main, sessionProbe: {type: Counter}}]}}",
        "spec.nodes[0].sessionProbe.type",
        &["spec.sessionCounter.credentialsSecret", "ReadSession"],
    );
    assert_error(
        "{spec: {sessionCounter: {credentialsSecret: {name: ' '}}}}",
        "spec.sessionCounter.credentialsSecret.name",
        &["Secret"],
    );
    assert_error(
        "{spec: {sessionCounter: {credentialsSecret: {name: m}}, nodes: [{name: main, sessionProbe: {type: Counter, port: 9449}}]}}",
        "spec.nodes[0].sessionProbe.port",
        &["remove it"],
    );
}

#[test]
fn the_counter_is_not_offered_in_grid_topology() {
    let grid = "{spec: {topology: Grid, nodes: [{name: main, master: true}, {name: w1, sessionProbe: {type: Counter}}]}}";
    let found = errors(grid);
    let probe =
        found.iter().find(|e| e.field == "spec.nodes[1].sessionProbe.type").expect("the worker's probe");
    assert_message(probe, "spec.nodes[1].sessionProbe.type", &["grid topology", "no Glacier2", "Database"]);
    assert_error(
        "{spec: {topology: Grid, sessionCounter: {credentialsSecret: {name: m}}, nodes: [{name: main, master: true}, {name: w1}]}}",
        "spec.sessionCounter",
        &["grid topology", "remove it"],
    );
}

#[test]
fn a_sidecar_may_not_take_the_counters_name() {
    assert_error(
        "{spec: {sessionCounter: {credentialsSecret: {name: m}}, nodes: [{name: main}, {name: ro, readOnly: {db: true, repo: true}, sidecars: [{name: session-counter, image: x}]}]}}",
        "spec.nodes[1].sidecars[0].name",
        &["rename the sidecar"],
    );
}

#[test]
fn a_sidecar_that_breaks_the_restricted_pod_security_standard_is_refused_by_field() {
    // Left unset, the settings are filled in by the operator: valid.
    assert_valid("spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e}]}]}");
    assert_valid(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {runAsUser: 2000, capabilities: {add: [NET_BIND_SERVICE]}}}]}]}",
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {privileged: true}}]}]}",
        "spec.nodes[0].sidecars[0].securityContext.privileged",
        &["privileged container is not allowed", "set false"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {runAsUser: 0}}]}]}",
        "spec.nodes[0].sidecars[0].securityContext.runAsUser",
        &["uid 0 is root"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {capabilities: {add: [NET_ADMIN]}}}]}]}",
        "spec.nodes[0].sidecars[0].securityContext.capabilities.add[0]",
        &["NET_ADMIN may not be added", "NET_BIND_SERVICE"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {allowPrivilegeEscalation: true}}]}]}",
        "spec.nodes[0].sidecars[0].securityContext.allowPrivilegeEscalation",
        &["privilege escalation is not allowed"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, securityContext: {seccompProfile: {type: Unconfined}}}]}]}",
        "spec.nodes[0].sidecars[0].securityContext.seccompProfile.type",
        &["'Unconfined' is not allowed", "RuntimeDefault"],
    );
    assert_error(
        "spec: {nodes: [{name: main, sidecars: [{name: exporter, image: e, ports: [{containerPort: 9449, hostPort: 9449}]}]}]}",
        "spec.nodes[0].sidecars[0].ports[0].hostPort",
        &["host ports are not allowed"],
    );
}

#[test]
fn maintenance_taint_keys_must_be_taint_keys() {
    assert_valid("spec: {maintenance: {taintKeys: [example.com/maintenance, upgrade]}}");
    assert_error(
        "spec: {maintenance: {taintKeys: [example.com/maintenance, 'bad key!']}}",
        "spec.maintenance.taintKeys[1]",
        &["'bad key!'", "e.g. example.com/maintenance"],
    );
    assert_error(
        "spec: {maintenance: {taintKeys: ['']}}",
        "spec.maintenance.taintKeys[0]",
        &["not a taint key"],
    );
    assert_error("spec: {maintenance: {taintKeys: [Example.com/x]}}", "spec.maintenance.taintKeys[0]", &[]);
}

// --- session lifetimes: OMERO's cap on what users ask for ---

#[test]
fn max_user_lifetime_is_a_cap_beside_max_lifetime_and_no_shorter() {
    assert_valid("spec: {sessions: {maxLifetime: 8h, maxUserLifetime: 8h}}");
    assert_valid("spec: {sessions: {maxLifetime: 8h, maxUserLifetime: 24h}}");
    assert_error(
        "spec: {sessions: {maxUserLifetime: 8h}}",
        "spec.sessions.maxUserLifetime",
        &["needs maxLifetime", "logins would stay unlimited"],
    );
    assert_error(
        "spec: {sessions: {maxLifetime: 8h, maxUserLifetime: 1h}}",
        "spec.sessions.maxUserLifetime",
        &["is shorter than maxLifetime (8h)", "make it at least 8h"],
    );
    assert_error(
        "spec: {sessions: {maxLifetime: 8h, maxUserLifetime: 0s}}",
        "spec.sessions.maxUserLifetime",
        &["must be a positive duration"],
    );
}

#[test]
fn omeros_cap_is_managed_with_the_field_to_use() {
    assert_error(
        "spec: {config: {omero.sessions.max_user_time_to_live: '0'}}",
        "spec.config[omero.sessions.max_user_time_to_live]",
        &["is set by the operator", "spec.sessions.maxUserLifetime", "follows spec.sessions.maxLifetime"],
    );
    assert_error(
        "spec: {nodes: [{name: main, config: {omero.sessions.max_user_time_to_live: '0'}}]}",
        "spec.nodes[0].config[omero.sessions.max_user_time_to_live]",
        &["is set by the operator"],
    );
}

#[test]
fn an_idle_cap_set_by_hand_below_the_idle_timeout_is_refused_once_the_cap_is_on() {
    let key = "omero.sessions.max_user_time_to_idle";
    assert_valid(&format!(
        "spec: {{sessions: {{idleTimeout: 30m, maxLifetime: 8h}}, config: {{{key}: '1800000'}}}}"
    ));
    // Without maxLifetime OMERO does not enforce it.
    assert_valid(&format!("spec: {{sessions: {{idleTimeout: 3h}}, config: {{{key}: '60000'}}}}"));
    assert_error(
        &format!("spec: {{sessions: {{idleTimeout: 3h, maxLifetime: 8h}}, config: {{{key}: '6000000'}}}}"),
        &format!("spec.config[{key}]"),
        &["is 6000000 ms, below the idle timeout every login gets (10800000 ms", "make it at least 10800000"],
    );
    // OMERO's default idle timeout (10 minutes) when idleTimeout is left out.
    assert_error(
        &format!(
            "spec: {{sessions: {{maxLifetime: 8h}}, nodes: [{{name: main, config: {{{key}: '60000'}}}}]}}"
        ),
        &format!("spec.nodes[0].config[{key}]"),
        &["(600000 ms"],
    );
    assert_error(
        &format!("spec: {{config: {{{key}: 100m}}}}"),
        &format!("spec.config[{key}]"),
        &["'100m' is not a number of milliseconds"],
    );
}

#[test]
fn the_drain_deadline_defaults_to_the_longest_lifetime_users_may_give_their_sessions() {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    assert_eq!(cluster("{}").spec.drain_timeout(), hours(1));
    assert_eq!(cluster("spec: {sessions: {maxLifetime: 8h}}").spec.drain_timeout(), hours(8));
    assert_eq!(
        cluster("spec: {sessions: {maxLifetime: 8h, maxUserLifetime: 24h}}").spec.drain_timeout(),
        hours(24),
        "the cap, not the default lifetime"
    );
    assert_eq!(
        cluster("spec: {sessions: {maxLifetime: 8h}, drain: {timeout: 2h}}").spec.drain_timeout(),
        hours(2)
    );
}

// --- omero.ports.* ---

#[test]
fn omero_ports_in_the_clusters_config_are_valid_when_they_give_ports() {
    assert_valid("spec: {config: {omero.ports.prefix: '1'}}");
    assert_valid(
        "spec: {config: {omero.ports.tcp: '5063', omero.ports.ssl: '5064', omero.ports.registry: '5061'}}",
    );
}

#[test]
fn omero_ports_that_give_no_port_are_refused_on_the_key_to_fix() {
    assert_error(
        "spec: {config: {omero.ports.prefix: '9'}}",
        "spec.config[omero.ports.prefix]",
        &["makes the IceGrid registry port 94061", "Glacier2's tcp port 94063", "not a port from 1 to 65535"],
    );
    assert_error(
        "spec: {config: {omero.ports.prefix: a}}",
        "spec.config[omero.ports.prefix]",
        &["'a' is not digits", "prefix 1 makes the tcp port 14063"],
    );
    assert_error(
        "spec: {config: {omero.ports.ssl: '70000'}}",
        "spec.config[omero.ports.ssl]",
        &["'70000' is not a port from 1 to 65535", "OMERO's default 4064"],
    );
}

#[test]
fn omero_ports_may_not_be_set_per_node() {
    for key in ["omero.ports.prefix", "omero.ports.tcp", "omero.ports.registry"] {
        assert_error(
            &format!("spec: {{nodes: [{{name: main, config: {{{key}: '1'}}}}]}}"),
            &format!("spec.nodes[0].config[{key}]"),
            &[
                "may not differ between nodes",
                "entry Service forwards one port number",
                "move it to spec.config",
            ],
        );
    }
}

#[test]
fn two_servers_of_a_pod_may_not_listen_on_one_port() {
    assert_error(
        "spec: {config: {omero.ports.ssl: '4063'}}",
        "spec.config[omero.ports.ssl]",
        &["makes Glacier2's ssl port 4063, which is also Glacier2's tcp port", "give each its own"],
    );
    assert_error(
        "spec: {config: {omero.ports.registry: '4064'}}",
        "spec.config[omero.ports.registry]",
        &["makes Glacier2's ssl port 4064, which is also the IceGrid registry port"],
    );
    // A transport nothing listens on collides with nothing.
    assert_valid("spec: {config: {omero.ports.ws: '4063'}}");
    assert_error(
        "spec: {config: {omero.ports.ws: '4063'}, nodes: [{name: main, config: {omero.client.icetransports: 'tcp,ws'}}]}",
        "spec.config[omero.ports.ws]",
        &["Glacier2's ws port 4063"],
    );
    // The session counter listens beside the server.
    let counter = "sessionCounter: {credentialsSecret: {name: m}, defaultFor: All}";
    assert_valid(&format!("spec: {{{counter}}}"));
    assert_error(
        &format!("spec: {{{counter}, config: {{omero.ports.tcp: '9450'}}}}"),
        "spec.config[omero.ports.tcp]",
        &["Glacier2's tcp port 9450, the port the session counter listens on"],
    );
}

// --- the redirector ---

#[test]
fn independent_topology_refuses_every_redirector_but_omeros_default() {
    assert_valid("spec: {config: {omero.cluster.redirector: nullRedirector}}");
    for redirector in ["configRedirector", "scaleRedirector", "x"] {
        assert_error(
            &format!("spec: {{config: {{omero.cluster.redirector: {redirector}}}}}"),
            "spec.config[omero.cluster.redirector]",
            &[
                &format!("'{redirector}' is refused in independent topology"),
                "redirect row (omero.cluster.redirect) that only grid topology maintains",
                "OMERO's default is nullRedirector",
            ],
        );
        assert_error(
            &format!("spec: {{nodes: [{{name: main, config: {{omero.cluster.redirector: {redirector}}}}}]}}"),
            "spec.nodes[0].config[omero.cluster.redirector]",
            &["is refused in independent topology"],
        );
    }
    assert_error(
        "spec: {topology: Grid, config: {omero.cluster.redirector: nullRedirector}, nodes: [{name: main, master: true}]}",
        "spec.config[omero.cluster.redirector]",
        &["is set by the operator"],
    );
}

// --- the image's omero-py ---

#[test]
fn an_official_image_built_before_omero_py_5_9_is_refused_where_node_descriptors_matter() {
    let grid = "topology: Grid, nodes: [{name: main, master: true}, {name: w1}]";
    assert_error(
        &format!("spec: {{image: 'openmicroscopy/omero-server:5.6.2', {grid}}}"),
        "spec.image",
        &["is OMERO.server 5.6.2", "before omero-py 5.9.0", "workers would host no Blitz", "5.6.3 or later"],
    );
    for newer in ["5.6.3", "5.6.3-1", "5.6", "5.6.17", "latest"] {
        assert_valid(&format!("spec: {{image: 'openmicroscopy/omero-server:{newer}', {grid}}}"));
    }
    assert_valid(&format!("spec: {{image: 'registry.example/omero:5.6.2', {grid}}}"));
    // Independent topology does not need the descriptors, unless they are set by hand or the
    // operator trims a read-only node's servers.
    assert_valid("spec: {image: 'openmicroscopy/omero-server:5.6.2'}");
    assert_error(
        "spec: {image: 'openmicroscopy/omero-server:5.6.2', nodes: [{name: rw}, {name: ro, readOnly: {db: true, repo: true}}]}",
        "spec.image",
        &["is OMERO.server 5.6.2", "a read-only node", "would be ignored"],
    );
    assert_error(
        "spec: {image: 'openmicroscopy/omero-server:5.6.2', nodes: [{name: rw, servers: [Blitz-0, Tables-0]}]}",
        "spec.image",
        &["nodes[].servers"],
    );
    assert_error(
        "spec: {image: 'openmicroscopy/omero-server:5.6.1', nodes: [{name: main, config: {omero.server.nodedescriptors: 'master:Blitz-0'}}]}",
        "spec.image",
        &["is OMERO.server 5.6.1", "omero.server.nodedescriptors set in config would be ignored"],
    );
}

#[test]
fn a_python_2_image_is_refused_in_any_topology() {
    assert_error(
        "spec: {image: 'openmicroscopy/omero-server:5.5.1'}",
        "spec.image",
        &["is OMERO.server 5.5.1, a Python 2 image without /opt/omero/server/venv3", "5.6.3 or later"],
    );
}

// --- the read-only pool ---

#[test]
fn a_pool_with_only_replicas_is_valid_and_makes_read_only_nodes() {
    assert_valid("spec: {readOnlyPool: {replicas: 3}}");
    assert_valid("spec: {readOnlyPool: {replicas: 0, minReplicas: 0, namePrefix: view}}");
    let c = cluster("spec: {readOnlyPool: {replicas: 2, template: {resources: {limits: {memory: 8Gi}}}}}");
    let resolved = omero_operator::pool::resolved(&c);
    let names: Vec<&str> = resolved.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["main", "ro-0", "ro-1"]);
    assert!(resolved.spec.nodes[1..].iter().all(|n| n.read_only_db() && n.read_only_repo()));
}

#[test]
fn a_pool_template_error_is_reported_once_at_the_template() {
    // Checked as a node even while the pool has none.
    for replicas in [0, 3] {
        assert_error(
            &format!(
                "spec: {{readOnlyPool: {{replicas: {replicas}, template: {{resources: {{limits: {{memory: 1Gi}}}}}}}}}}"
            ),
            "spec.readOnlyPool.template.resources.limits.memory",
            &["below the 3414Mi"],
        );
    }
    assert_error(
        "spec: {readOnlyPool: {replicas: 2, template: {sessionProbe: {type: Database}}}}",
        "spec.readOnlyPool.template.sessionProbe.type",
        &["read-only database node"],
    );
}

#[test]
fn a_pool_refuses_read_write_nodes_grid_topology_and_fewer_than_min_replicas() {
    assert_error(
        "spec: {readOnlyPool: {replicas: 1, template: {readOnly: {db: true, repo: false}}}}",
        "spec.readOnlyPool.template.readOnly",
        &["read-only", "leave readOnly out"],
    );
    assert_error(
        "spec: {readOnlyPool: {replicas: 1, minReplicas: 2}}",
        "spec.readOnlyPool.replicas",
        &["below minReplicas (2)", "scale to at least 2"],
    );
    let errors =
        errors("spec: {topology: Grid, readOnlyPool: {replicas: 1}, nodes: [{name: main, master: true}]}");
    assert!(fields(&errors).contains(&"spec.readOnlyPool"), "{errors:#?}");
}

#[test]
fn a_node_named_like_a_pool_node_is_refused_on_the_node() {
    assert_error(
        "spec: {readOnlyPool: {replicas: 1}, nodes: [{name: main}, {name: ro-4, readOnly: {db: true, repo: true}}]}",
        "spec.nodes[1].name",
        &["'ro-4'", "namePrefix"],
    );
    assert_valid(
        "spec: {readOnlyPool: {replicas: 1, namePrefix: pool}, nodes: [{name: main}, {name: ro-4, readOnly: {db: true, repo: true}}]}",
    );
}

#[test]
fn a_pool_counts_towards_the_node_limit_and_the_name_length() {
    assert_error(
        "spec: {readOnlyPool: {replicas: 64}}",
        "spec.readOnlyPool.replicas",
        &["makes 65 nodes", "at most 64"],
    );
    let long = "c".repeat(58);
    let errors = errors(&format!("metadata: {{name: {long}}}\nspec: {{readOnlyPool: {{replicas: 1}}}}"));
    assert!(fields(&errors).contains(&"spec.readOnlyPool.namePrefix"), "{errors:#?}");
}
