//! OMERO configuration of a node, as the official image takes it: one `CONFIG_<x>` environment
//! variable per property (`/startup/50-config.py` runs `omero config set` for each).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector};

use super::{grid, servers, value::Value, volumes};
use crate::api::{
    DatabaseEndpoint, MAX_USER_IDLE_PROPERTY, NodeSpec, OMERO_DEFAULT_IDLE_MS,
    OMERO_DEFAULT_MAX_USER_IDLE_MS, OmeroCluster, property,
};

pub(crate) use crate::api::property::{POD_IP_ENV, ROOTPASS_ENV, TMPDIR_ENV};

/// The memory (MiB) OMERO sizes its JVMs for.
pub(crate) const JVM_SYSTEM_MEMORY: &str = "omero.jvmcfg.system_memory";

/// Every property of `node`, by name: the cluster's `config`, overridden by the node's, then
/// the ones the operator manages (validation keeps those out of both maps).
pub(crate) fn properties(cluster: &OmeroCluster, node: &NodeSpec) -> BTreeMap<String, Value> {
    let spec = &cluster.spec;
    let mut props: BTreeMap<String, Value> =
        spec.config.iter().chain(&node.config).map(|(k, v)| (k.clone(), Value::Literal(v.clone()))).collect();
    let mut set = |key: &str, value: Value| props.insert(key.to_string(), value);

    let db = database(cluster, node);
    set("omero.db.host", Value::Literal(db.host));
    set("omero.db.port", Value::Literal(db.port.to_string()));
    set("omero.db.name", Value::Literal(db.name));
    set("omero.db.user", Value::Literal(db.user));
    set("omero.db.pass", Value::Secret(db.password_secret));

    if let Some(sessions) = &spec.sessions {
        if let Some(idle) = sessions.idle_timeout {
            set("omero.sessions.timeout", Value::Literal(idle.as_millis().to_string()));
        }
        if let Some(max) = sessions.max_lifetime {
            set("omero.sessions.maximum", Value::Literal(max.as_millis().to_string()));
        }
        // `omero.sessions.maximum` is only the default time to live: any user may give their
        // own session a longer one, or none (ISession.createUserSession/updateSession check it
        // against this cap only when the cap is non-zero, OMERO's default; omero-server
        // `SessionManagerImpl.parseAndSetTimeouts`, read from source, not observed).
        if let Some(cap) = sessions.user_lifetime_cap() {
            set("omero.sessions.max_user_time_to_live", Value::Literal(cap.as_millis().to_string()));
            // The same check then also caps the idle timeout a user keeps or asks for at
            // `max_user_time_to_idle` (a bug: it tests the time-to-live cap). Raise OMERO's
            // default when every login's own idle timeout is longer, or a user's update of
            // their session that keeps it would be refused. A value set by hand is the user's
            // (validation refuses one below the idle timeout).
            let idle = sessions.idle_timeout.map_or(OMERO_DEFAULT_IDLE_MS, |d| d.as_millis());
            let by_hand = spec.config.contains_key(MAX_USER_IDLE_PROPERTY)
                || node.config.contains_key(MAX_USER_IDLE_PROPERTY);
            if !by_hand && idle > OMERO_DEFAULT_MAX_USER_IDLE_MS {
                set(MAX_USER_IDLE_PROPERTY, Value::Literal(idle.to_string()));
            }
        }
    }

    // OMERO sizes its JVM heaps from this, or else from the host's RAM (psutil), never from
    // the container's limit (omero-py `omero/install/jvmcfg.py`): without it a node on a big
    // host is OOM-killed. The user's own setting wins.
    let user_sized =
        spec.config.contains_key(JVM_SYSTEM_MEMORY) || node.config.contains_key(JVM_SYSTEM_MEMORY);
    if let Some(limit) = node.memory_limit_mib().filter(|_| !user_sized) {
        set(JVM_SYSTEM_MEMORY, Value::Literal(limit.to_string()));
    }

    // Set only when true: OMERO's default is false, and absent reads better in `render`.
    if node.read_only_db() {
        set("omero.cluster.read_only.db", Value::Literal("true".into()));
    }
    if node.read_only_repo() {
        set("omero.cluster.read_only.repo", Value::Literal("true".into()));
        // Memo files cannot be written next to the repository; OMERO uses this directory
        // (and only when the repository is read-only).
        set("omero.pixeldata.memoizer.dir.local", Value::Literal(volumes::MEMO_LOCAL_DIR.into()));
    }

    // Which servers run (a read-only node only Blitz and Tables by default), and Blitz's heap.
    for (key, value) in servers::properties(cluster, node) {
        set(key, value);
    }
    for (key, value) in grid::properties(cluster, node) {
        set(key, value);
    }
    props
}

/// The container's environment, in a fixed order: the pod IP (grid; it must come before the
/// variables that refer to it), the properties sorted by name, `OMERO_TMPDIR` on
/// read-only nodes, `ROOTPASS` on the node that initialises the database, then the node's own
/// `env` (validation refuses names the operator sets).
pub(crate) fn env(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if grid::is_grid(cluster) {
        env.push(EnvVar {
            name: POD_IP_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: None }),
                ..EnvVarSource::default()
            }),
            value: None,
        });
    }
    for (key, value) in properties(cluster, node) {
        let name = property::env_name(&key).unwrap_or_else(|why| {
            panic!("validate() rejects property '{key}' ({why}); render needs a valid cluster")
        });
        env.push(env_var(name, value));
    }
    // No PGPORT: the image's `/startup/60-database.sh` passes the port itself (`-p`, since
    // 2018) from omero.db.port.
    if volumes::has_writable_tmp(node) {
        env.push(env_var(TMPDIR_ENV.into(), Value::Literal(volumes::TMP_DIR.into())));
    }
    // Only the node that runs `/startup/60-database.sh` against the primary can initialise it.
    let initialises_db = !node.read_only_db() && (!grid::is_grid(cluster) || node.is_master());
    if let Some(secret) = cluster.spec.database.root_password_secret.as_ref().filter(|_| initialises_db) {
        env.push(env_var(ROOTPASS_ENV.into(), Value::Secret(secret.clone())));
    }
    env.extend(node.env.iter().cloned());
    env
}

/// The endpoint a node uses: the read-only one (with fallbacks) when it must not write.
fn database(cluster: &OmeroCluster, node: &NodeSpec) -> DatabaseEndpoint {
    let db = &cluster.spec.database;
    if node.read_only_db() { db.for_read_only() } else { db.primary() }
}

fn env_var(name: String, value: Value) -> EnvVar {
    match value {
        Value::Literal(v) => EnvVar { name, value: Some(escape(&v)), value_from: None },
        Value::Expand(v) => EnvVar { name, value: Some(v), value_from: None },
        Value::Secret(secret) => EnvVar {
            name,
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name,
                    key: secret.key,
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    }
}

/// Kubernetes expands `$(NAME)` in `value` and turns `$$` into `$`; doubling every `$` makes
/// any string come out exactly as written.
fn escape(value: &str) -> String {
    value.replace('$', "$$")
}

#[cfg(test)]
mod jvm_tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::render::{
        render,
        tests::{base_with, env_of, env_value},
    };

    fn with_memory_limit(c: &mut OmeroCluster, limit: &str) {
        let resources = c.spec.nodes[0].resources.get_or_insert_default();
        resources.limits.get_or_insert_default().insert("memory".into(), Quantity(limit.into()));
    }

    #[test]
    fn the_jvms_are_sized_from_the_memory_limit_not_the_host() {
        let desired = render(&base_with(|c| with_memory_limit(c, "8Gi")));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_jvmcfg_system__memory"), "8192");
        assert!(
            env_of(&desired, "ro", "CONFIG_omero_jvmcfg_system__memory").is_none(),
            "no limit: OMERO's own sizing"
        );
        let by_hand = render(&base_with(|c| {
            with_memory_limit(c, "8Gi");
            c.spec.config.insert(JVM_SYSTEM_MEMORY.into(), "6000".into());
        }));
        assert_eq!(
            env_value(&by_hand, "rw", "CONFIG_omero_jvmcfg_system__memory"),
            "6000",
            "the user's setting wins"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeyRef;
    use crate::render::{
        render,
        tests::{BASE, base_with, cluster, container, env_of, env_value},
    };

    fn names(env: &[EnvVar]) -> Vec<&str> {
        env.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn database_endpoint_of_a_read_write_node_is_the_primary_with_defaults() {
        let desired = render(&cluster(BASE));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_host"), "db.example");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_port"), "5432");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_name"), "omero");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_user"), "omero");
        assert!(env_of(&desired, "rw", "PGPORT").is_none(), "the image's scripts pass -p themselves");
    }

    #[test]
    fn password_comes_from_the_secret_by_reference() {
        let desired = render(&cluster(BASE));
        let pass = env_of(&desired, "rw", "CONFIG_omero_db_pass").unwrap();
        assert_eq!(pass.value, None);
        let secret = pass.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("omero-db", "password"));
        assert_eq!(secret.optional, None);
    }

    #[test]
    fn the_password_never_appears_inline_anywhere() {
        // Secret names and keys that would show up if anything copied them into a value.
        let yaml = BASE.replace("{name: omero-db, key: password}", "{name: s3cr3t-name, key: s3cr3t-key}");
        let desired = render(&cluster(&yaml));
        for c in desired.deployments.iter().map(|d| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap())
        {
            for e in c.containers[0].env.as_ref().unwrap() {
                let v = e.value.as_deref().unwrap_or("");
                assert!(!v.contains("s3cr3t"), "{} = {v}", e.name);
            }
        }
        for node in ["rw", "ro"] {
            assert_eq!(env_of(&desired, node, "CONFIG_omero_db_pass").unwrap().value, None);
        }
    }

    #[test]
    fn read_only_db_nodes_use_the_read_only_endpoint_field_by_field() {
        let yaml = BASE.replace(
            "    passwordSecret: {name: omero-db, key: password}\n",
            "    passwordSecret: {name: omero-db, key: password}\n    port: 5433\n    readOnly:\n      \
             host: replica.example\n      user: reader\n      passwordSecret: {name: reader-db, key: pw}\n",
        );
        let desired = render(&cluster(&yaml));
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_db_host"), "replica.example");
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_db_user"), "reader");
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_db_port"), "5433", "falls back to the primary's");
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_db_name"), "omero");
        let secret = env_of(&desired, "ro", "CONFIG_omero_db_pass").unwrap().value_from.clone().unwrap();
        assert_eq!(secret.secret_key_ref.unwrap().name, "reader-db");
        // The read-write node keeps the primary.
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_host"), "db.example");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_user"), "omero");
    }

    #[test]
    fn read_only_flags_follow_the_node() {
        let desired = render(&cluster(BASE));
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_cluster_read__only_db"), "true");
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_cluster_read__only_repo"), "true");
        assert!(env_of(&desired, "rw", "CONFIG_omero_cluster_read__only_db").is_none());
        assert!(env_of(&desired, "rw", "CONFIG_omero_cluster_read__only_repo").is_none());
    }

    #[test]
    fn read_only_db_alone_sets_only_the_db_flag() {
        let c = base_with(|c| {
            c.spec.nodes.remove(0);
            c.spec.nodes[0].read_only = Some(crate::api::ReadOnlySpec { db: true, repo: false });
        });
        let desired = render(&c);
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_cluster_read__only_db"), "true");
        assert!(env_of(&desired, "ro", "CONFIG_omero_cluster_read__only_repo").is_none());
        assert!(env_of(&desired, "ro", "CONFIG_omero_pixeldata_memoizer_dir_local").is_none());
    }

    #[test]
    fn read_only_repo_nodes_get_a_local_memo_directory() {
        let desired = render(&cluster(BASE));
        assert_eq!(
            env_value(&desired, "ro", "CONFIG_omero_pixeldata_memoizer_dir_local"),
            volumes::MEMO_LOCAL_DIR
        );
        assert!(env_of(&desired, "rw", "CONFIG_omero_pixeldata_memoizer_dir_local").is_none());
    }

    #[test]
    fn read_only_nodes_get_omero_tmpdir() {
        let desired = render(&cluster(BASE));
        assert_eq!(env_value(&desired, "ro", "OMERO_TMPDIR"), volumes::TMP_DIR);
        assert!(env_of(&desired, "rw", "OMERO_TMPDIR").is_none());
    }

    #[test]
    fn sessions_are_passed_in_milliseconds() {
        let yaml = format!("{BASE}  sessions: {{idleTimeout: 30m, maxLifetime: 8h}}\n");
        let desired = render(&cluster(&yaml));
        for node in ["rw", "ro"] {
            assert_eq!(env_value(&desired, node, "CONFIG_omero_sessions_timeout"), "1800000");
            assert_eq!(env_value(&desired, node, "CONFIG_omero_sessions_maximum"), "28800000");
        }
    }

    /// `omero.sessions.maximum` is only the default: without the cap any user may make their
    /// own session unlimited, so `maxLifetime` sets the cap too.
    #[test]
    fn max_lifetime_caps_what_users_may_give_their_own_sessions() {
        const CAP: &str = "CONFIG_omero_sessions_max__user__time__to__live";
        const IDLE_CAP: &str = "CONFIG_omero_sessions_max__user__time__to__idle";
        let desired = render(&cluster(&format!("{BASE}  sessions: {{maxLifetime: 8h}}\n")));
        for node in ["rw", "ro"] {
            assert_eq!(env_value(&desired, node, "CONFIG_omero_sessions_maximum"), "28800000");
            assert_eq!(env_value(&desired, node, CAP), "28800000", "the same value unless set");
            assert!(env_of(&desired, node, IDLE_CAP).is_none(), "OMERO's 100-minute default covers 10m");
        }
        let desired =
            render(&cluster(&format!("{BASE}  sessions: {{maxLifetime: 8h, maxUserLifetime: 24h}}\n")));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_sessions_maximum"), "28800000");
        assert_eq!(env_value(&desired, "rw", CAP), "86400000");
        // No default lifetime: no cap either (validation refuses maxUserLifetime alone).
        let desired = render(&cluster(&format!("{BASE}  sessions: {{idleTimeout: 3h}}\n")));
        assert!(env_of(&desired, "rw", CAP).is_none());
        assert!(env_of(&desired, "rw", IDLE_CAP).is_none(), "no cap, no idle cap");
    }

    /// With the cap on, OMERO also caps a user's idle timeout at `max_user_time_to_idle`
    /// (6000000 ms): an idle timeout longer than that would be refused on a user's update.
    #[test]
    fn the_idle_cap_is_raised_to_an_idle_timeout_longer_than_omeros_unless_set_by_hand() {
        const IDLE_CAP: &str = "CONFIG_omero_sessions_max__user__time__to__idle";
        let desired = render(&cluster(&format!("{BASE}  sessions: {{idleTimeout: 3h, maxLifetime: 8h}}\n")));
        assert_eq!(env_value(&desired, "rw", IDLE_CAP), "10800000");
        let by_hand = format!(
            "{BASE}  sessions: {{idleTimeout: 3h, maxLifetime: 8h}}\n  config: {{omero.sessions.max_user_time_to_idle: \"20000000\"}}\n"
        );
        assert_eq!(env_value(&render(&cluster(&by_hand)), "rw", IDLE_CAP), "20000000", "the user's value");
    }

    #[test]
    fn sessions_left_out_are_not_set() {
        let desired = render(&cluster(&format!("{BASE}  sessions: {{idleTimeout: 90s}}\n")));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_sessions_timeout"), "90000");
        assert!(env_of(&desired, "rw", "CONFIG_omero_sessions_maximum").is_none());
        let desired = render(&cluster(BASE));
        assert!(env_of(&desired, "rw", "CONFIG_omero_sessions_timeout").is_none());
    }

    #[test]
    fn node_config_overrides_cluster_config() {
        let yaml = BASE.replace(
            "    - name: rw\n",
            "    - name: rw\n      config:\n        omero.jvmcfg.percent.blitz: \"70\"\n        omero.search.batch: \"9\"\n",
        ) + "  config:\n    omero.jvmcfg.percent.blitz: \"50\"\n    omero.mail.host: smtp.example\n";
        let desired = render(&cluster(&yaml));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_jvmcfg_percent_blitz"), "70");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_search_batch"), "9");
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_mail_host"), "smtp.example");
        assert_eq!(env_value(&desired, "ro", "CONFIG_omero_jvmcfg_percent_blitz"), "50");
        assert!(env_of(&desired, "ro", "CONFIG_omero_search_batch").is_none());
    }

    #[test]
    fn property_names_use_the_images_underscore_escaping() {
        let yaml = format!("{BASE}  config:\n    omero.policy.binary_access: \"-read,+write\"\n");
        let desired = render(&cluster(&yaml));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_policy_binary__access"), "-read,+write");
    }

    #[test]
    fn dollar_signs_in_values_survive_kubernetes_expansion() {
        let yaml = format!("{BASE}  config:\n    omero.mail.from: \"$(HOSTNAME) costs $$5 $\"\n");
        let desired = render(&cluster(&yaml));
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_mail_from"), "$$(HOSTNAME) costs $$$$5 $$");
    }

    #[test]
    fn properties_come_sorted_by_name_between_fixed_variables() {
        let yaml = format!(
            "{BASE}  config:\n    omero.zzz.last: \"1\"\n    Ice.IPv6: \"0\"\n    omero.aaa.first: \"1\"\n"
        );
        let c = cluster(&yaml);
        let env = container(&render(&c), "ro").env.clone().unwrap();
        let props: Vec<_> = properties(&c, &c.spec.nodes[1]).into_keys().collect();
        let mut sorted = props.clone();
        sorted.sort();
        assert_eq!(props, sorted);
        let expected: Vec<String> = props
            .iter()
            .map(|k| property::env_name(k).unwrap())
            .chain(["OMERO_TMPDIR".to_string()])
            .collect();
        assert_eq!(names(&env), expected);
        assert_eq!(env[0].name, "CONFIG_Ice_IPv6");
    }

    #[test]
    fn extra_env_comes_last_in_the_order_given() {
        // Names the operator sets are refused by validation (api::property::reserved_env).
        let yaml = BASE.replace(
            "    - name: rw\n",
            "    - name: rw\n      env:\n        - {name: JAVA_OPTS, value: \"-Xss2m\"}\n        \
             - {name: TZ, value: UTC}\n",
        );
        let desired = render(&cluster(&yaml));
        let env = container(&desired, "rw").env.clone().unwrap();
        assert_eq!(names(&env)[env.len() - 2..], ["JAVA_OPTS", "TZ"]);
        assert_eq!(env_value(&desired, "rw", "CONFIG_omero_db_host"), "db.example");
    }

    #[test]
    fn independent_nodes_have_no_pod_ip_variable() {
        let desired = render(&cluster(BASE));
        assert!(env_of(&desired, "rw", POD_IP_ENV).is_none());
    }

    #[test]
    fn root_password_goes_by_secret_reference_to_the_node_that_initialises_the_database() {
        let desired = render(&base_with(|c| {
            c.spec.database.root_password_secret =
                Some(SecretKeyRef { name: "omero-db".into(), key: "root-password".into() });
            c.spec
                .nodes
                .push(serde_saphyr::from_str("{name: ro, readOnly: {db: true, repo: true}}").unwrap());
        }));
        let rootpass = env_of(&desired, "rw", ROOTPASS_ENV).expect("ROOTPASS on the read-write node");
        assert_eq!(rootpass.value, None, "never inlined");
        let key = rootpass.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("omero-db", "root-password"));
        assert!(env_of(&desired, "ro", ROOTPASS_ENV).is_none(), "a read-only node never initialises");
    }
}
