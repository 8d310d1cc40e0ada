//! A kubeconfig for the plugin's tests: one context, namespace `omero`, no credentials, at a
//! scripted API server on loopback. Its own module so the plugin tests that need nothing else of
//! `support` include only this (`#[path = "support/kubeconfig.rs"] mod kubeconfig;`).

use std::path::PathBuf;

/// Writes the kubeconfig into a new temporary folder named `folder` (plus the process id) and
/// returns its path.
pub fn at_server(folder: &str, server: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{folder}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster: {{server: \"{server}\"}}\n\
             users:\n- name: admin\n  user: {{}}\ncontexts:\n- name: scripted\n  context: {{cluster: scripted, user: admin, namespace: omero}}\n\
             current-context: scripted\n"
        ),
    )
    .unwrap();
    kubeconfig
}
