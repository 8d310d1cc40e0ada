//! The `omero-operator` binary: `crd` matches the committed CRD, `render` prints objects for
//! valid files and errors (non-zero exit) for invalid ones, `version`.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omero-operator")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn the_committed_crd_is_what_the_binary_prints() {
    let out = run(&["crd"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/omerocluster.yaml")).unwrap();
    assert!(
        stdout(&out) == committed,
        "crds/omerocluster.yaml is stale: regenerate it with `cargo run -- crd > crds/omerocluster.yaml`"
    );
}

#[test]
fn render_prints_every_object_of_an_example() {
    let out =
        run(&["render", "-f", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/read-only-replicas.yaml")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let docs: Vec<serde_json::Value> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> =
        docs.iter().map(|d| (d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(kinds.iter().filter(|(k, _)| *k == "Deployment").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|(k, _)| *k == "Service").count(), 4, "{kinds:?}");
    let budgets: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "PodDisruptionBudget").collect();
    assert_eq!(budgets.len(), 3, "one per node: {kinds:?}");
    for budget in budgets {
        assert_eq!(budget["apiVersion"], "policy/v1");
        assert_eq!(budget["spec"]["maxUnavailable"], 0, "as while the node serves");
        assert_eq!(budget["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    }
    assert!(!text.contains("ownerReferences"), "offline objects have no owner (no uid to point at)");
}

#[test]
fn render_puts_clusters_without_a_namespace_in_the_one_asked_for() {
    let dir = std::env::temp_dir().join(format!("omero-operator-cli-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("no-namespace.yaml");
    std::fs::write(
        &file,
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: o}\nspec:\n  image: i\n  database: {host: db, passwordSecret: {name: s, key: k}}\n  repository: {claimName: c}\n  nodes: [{name: a}]\n",
    )
    .unwrap();
    let out = run(&["render", "-f", file.to_str().unwrap(), "-n", "imaging"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.matches("\n  namespace: imaging\n").count(),
        4,
        "Deployment, two Services and the PodDisruptionBudget: {text}"
    );
}

#[test]
fn render_refuses_an_invalid_cluster_with_the_field_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("omero-operator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  config: {omero.db.host: elsewhere}
  nodes: [{name: a}, {name: b}]
"#,
    )
    .unwrap();
    let out = run(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("OmeroCluster omero is invalid"), "{err}");
    assert!(
        err.contains("spec.config[omero.db.host]: is set by the operator: use spec.database.host instead"),
        "{err}"
    );
    assert!(
        err.contains("spec.nodes: independent topology allows at most one read-write node, found 2 (a, b)"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "nothing rendered for an invalid cluster");
}

#[test]
fn render_reports_a_file_without_a_cluster_or_with_bad_yaml() {
    let dir = std::env::temp_dir().join(format!("omero-operator-cli2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("secret-only.yaml");
    std::fs::write(&empty, "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n").unwrap();
    let out = run(&["render", "-f", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds no OmeroCluster"), "{}", stderr(&out));

    let bad = dir.join("bad-duration.yaml");
    std::fs::write(
        &bad,
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: o}\nspec:\n  image: i\n  database: {host: db, passwordSecret: {name: s, key: k}}\n  repository: {claimName: c}\n  drain: {timeout: 10 minutes}\n  nodes: [{name: a}]\n",
    )
    .unwrap();
    let out = run(&["render", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a duration"), "{}", stderr(&out));

    let missing = run(&["render", "-f", "/nonexistent/cluster.yaml"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("reading /nonexistent/cluster.yaml"));
}

#[test]
fn version_prints_the_crate_version() {
    let out = run(&["version"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), format!("omero-operator {}", env!("CARGO_PKG_VERSION")));
}

/// `kubectl omero`: every command has help with an example, and a drain names its nodes.
#[test]
fn kubectl_omero_parses_its_commands() {
    let plugin = env!("CARGO_BIN_EXE_kubectl-omero");
    for command in ["status", "drain", "undrain", "restart", "pause", "resume"] {
        let out = std::process::Command::new(plugin).args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains(&format!("Example: kubectl omero {command} omero")), "{command}: {help}");
    }
    let out = std::process::Command::new(plugin).args(["drain", "omero"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a drain without nodes is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("<NODES>"));
    // No kubeconfig: a clear error, exit 1.
    let out = std::process::Command::new(plugin)
        .args(["status", "omero", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: /nonexistent/kubeconfig"));
}

fn kubectl_omero(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-omero")).args(args).output().expect("the binary runs")
}

/// `kubectl omero`'s arguments: what clap refuses (exit 2, before any API call), and a help
/// with an example for every command.
#[test]
fn kubectl_omero_arguments_are_checked_and_every_command_has_an_example() {
    for (args, says) in [
        (&["drain", "omero"][..], "required arguments were not provided"),
        (&["restart", "omero", "ro-1", "--all"], "cannot be used with"),
        (&["drain", "omero", "ro-1", "--timeout", "5m"], "--wait"),
        (&["wait", "omero", "--drained"], "<NODES>"),
        (&["drain", "omero", "ro-1", "--wait", "--timeout", "soon"], "not a duration"),
        (&["status", "omero", "-o", "table"], "possible values: json, yaml"),
        (&["status", "omero", "--request-timeout", "soon"], "not a duration"),
        (&["status", "omero", "--as-group", "staff"], "--as <USER>"),
        (&["completion", "tcsh"], "possible values: bash, elvish, fish, powershell, zsh"),
    ] {
        let out = kubectl_omero(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    for command in
        ["status", "drain", "undrain", "restart", "wait", "pause", "resume", "version", "completion"]
    {
        let out = kubectl_omero(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        assert!(stdout(&out).contains("Example: kubectl omero"), "{command}: {}", stdout(&out));
    }
    let wait = stdout(&kubectl_omero(&["drain", "--help"]));
    assert!(
        wait.contains("exit 0 when done, 1 when refused or failed") && wait.contains("--force"),
        "{wait}"
    );
}
