//! Every file in `examples/`: each document parses, each OmeroCluster passes `validate`, and
//! every Secret key a cluster refers to is defined in the same file. New examples are picked up
//! from the directory.

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use omero_operator::api::{OmeroCluster, validate};
use serde_json::Value;

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    files
}

/// The objects of one example file, by kind.
#[derive(Default)]
struct Example {
    clusters: Vec<OmeroCluster>,
    secrets: Vec<Secret>,
}

fn load(path: &Path) -> Example {
    let name = path.display();
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut example = Example::default();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, doc) in documents.into_iter().enumerate() {
        if doc.is_null() {
            continue; // an empty document, e.g. comments before the first `---`
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Secret") => example.secrets.push(
                serde_json::from_value(doc).unwrap_or_else(|e| panic!("{name}: document {i} (Secret): {e}")),
            ),
            _ if api_version == OmeroCluster::api_version(&()) && kind == OmeroCluster::kind(&()) => {
                // Through the YAML text, as `kubectl apply -f` reads it.
                let yaml = serde_saphyr::to_string(&doc).expect("serialises");
                example.clusters.push(
                    serde_saphyr::from_str(&yaml)
                        .unwrap_or_else(|e| panic!("{name}: document {i} (OmeroCluster): {e}")),
                );
            }
            _ => panic!("{name}: document {i} is an unexpected {api_version} {kind}"),
        }
    }
    example
}

/// Every Secret key a cluster reads: `(where, secret name, key)`.
fn secret_refs(cluster: &OmeroCluster) -> Vec<(String, String, String)> {
    let db = &cluster.spec.database;
    let mut refs = vec![(
        "spec.database.passwordSecret".to_string(),
        db.password_secret.name.clone(),
        db.password_secret.key.clone(),
    )];
    if let Some(secret) = &db.root_password_secret {
        refs.push(("spec.database.rootPasswordSecret".into(), secret.name.clone(), secret.key.clone()));
    }
    if let Some(secret) = db.read_only.as_ref().and_then(|ro| ro.password_secret.as_ref()) {
        refs.push(("spec.database.readOnly.passwordSecret".into(), secret.name.clone(), secret.key.clone()));
    }
    if let Some(counter) = &cluster.spec.session_counter {
        let secret = &counter.credentials_secret;
        for (field, key) in [("userKey", secret.user_key()), ("passwordKey", secret.password_key())] {
            refs.push((
                format!("spec.sessionCounter.credentialsSecret.{field}"),
                secret.name.clone(),
                key.to_string(),
            ));
        }
    }
    for node in &cluster.spec.nodes {
        for env in &node.env {
            if let Some(secret) = env.value_from.as_ref().and_then(|from| from.secret_key_ref.as_ref()) {
                refs.push((
                    format!("spec.nodes[{}].env[{}]", node.name, env.name),
                    secret.name.clone(),
                    secret.key.clone(),
                ));
            }
        }
    }
    refs
}

fn has_key(secret: &Secret, key: &str) -> bool {
    secret.string_data.as_ref().is_some_and(|data| data.contains_key(key))
        || secret.data.as_ref().is_some_and(|data| data.contains_key(key))
}

#[test]
fn there_are_examples() {
    let names: Vec<String> =
        example_files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["minimal.yaml", "read-only-replicas.yaml", "read-only-pool.yaml"] {
        assert!(names.iter().any(|n| n == expected), "examples/{expected} is missing: {names:?}");
    }
}

#[test]
fn every_example_cluster_is_valid() {
    for path in example_files() {
        let example = load(&path);
        assert!(!example.clusters.is_empty(), "{}: no OmeroCluster", path.display());
        for cluster in &example.clusters {
            if let Err(errors) = validate(cluster) {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                panic!("{}: {}", path.display(), list.join("\n"));
            }
        }
    }
}

#[test]
fn every_secret_an_example_cluster_reads_is_in_the_same_file() {
    for path in example_files() {
        let example = load(&path);
        for cluster in &example.clusters {
            for (field, name, key) in secret_refs(cluster) {
                let secret = example
                    .secrets
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| {
                        panic!("{}: {field} names Secret {name}, not in the file", path.display())
                    });
                assert_eq!(
                    secret.metadata.namespace,
                    cluster.metadata.namespace,
                    "{}: Secret {name} is not in the cluster's namespace",
                    path.display()
                );
                assert!(has_key(secret, &key), "{}: {field}: Secret {name} has no key {key}", path.display());
            }
        }
    }
}

/// `kubectl apply -n my-ns -f examples/X.yaml` must work: no example names a namespace.
#[test]
fn examples_apply_to_any_namespace() {
    for path in example_files() {
        let text = fs::read_to_string(&path).unwrap();
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for (i, doc) in documents.into_iter().enumerate() {
            assert!(
                doc["metadata"]["namespace"].is_null(),
                "{}: document {i} names a namespace",
                path.display()
            );
        }
    }
}

#[test]
fn secret_refs_cover_every_place_a_cluster_reads_a_secret() {
    let example = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/read-only-replicas.yaml"));
    let refs = secret_refs(&example.clusters[0]);
    let fields: Vec<&str> = refs.iter().map(|(field, _, _)| field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.database.passwordSecret",
            "spec.database.rootPasswordSecret",
            "spec.database.readOnly.passwordSecret",
            "spec.sessionCounter.credentialsSecret.userKey",
            "spec.sessionCounter.credentialsSecret.passwordKey",
        ]
    );
    // The read-only nodes count their sessions with the built-in counter.
    let cluster = &example.clusters[0];
    let kinds: Vec<_> = cluster.spec.nodes.iter().map(|n| cluster.spec.session_probe_of(n).kind).collect();
    use omero_operator::api::SessionProbeKind::{Counter, Database};
    assert_eq!(kinds, [Database, Counter, Counter]);
}

#[test]
fn every_example_cluster_renders_a_deployment_and_a_service_per_node_and_the_entry_service() {
    for path in example_files() {
        for cluster in &load(&path).clusters {
            let desired = omero_operator::render::render(cluster);
            // The read-only pool's nodes are nodes like the others.
            let cluster = &*omero_operator::pool::resolved(cluster);
            let name = cluster.metadata.name.clone().unwrap();
            let deployments: Vec<String> =
                desired.deployments.iter().map(|d| d.metadata.name.clone().unwrap()).collect();
            let expected: Vec<String> = cluster
                .spec
                .nodes
                .iter()
                .map(|n| omero_operator::render::node_object_name(&name, &n.name))
                .collect();
            assert_eq!(deployments, expected, "{}", path.display());
            let services: Vec<String> =
                desired.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
            // A grid also has its master pod's DNS Service.
            let grid_dns =
                cluster.spec.grid_master().map(|_| omero_operator::render::grid_dns_service_name(&name));
            assert_eq!(
                services.len(),
                cluster.spec.nodes.len() + 1 + usize::from(grid_dns.is_some()),
                "{}: {services:?}",
                path.display()
            );
            assert!(grid_dns.is_none_or(|dns| services.contains(&dns)), "{}", path.display());
            assert!(
                services.contains(&omero_operator::render::entry_service_name(&name)),
                "{}",
                path.display()
            );
            for d in &desired.deployments {
                assert_eq!(d.metadata.namespace, cluster.metadata.namespace, "{}", path.display());
            }
        }
    }
}
