//! Volumes of a node's pod: the user's claims (referenced, never created or owned) and the
//! writable scratch directories OMERO needs, most of all on read-only nodes.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
};

use crate::api::{NodeSpec, OmeroCluster};

/// `omero.data.dir`, the binary repository.
pub(crate) const REPOSITORY_DIR: &str = "/OMERO";
/// `omero.pixeldata.memoizer.dir`'s default, where the shared memo cache claim goes.
pub(crate) const MEMO_CACHE_DIR: &str = "/OMERO/BioFormatsCache";
/// Declared a volume by the image: logs, the IceGrid registry and node databases.
pub(crate) const VAR_DIR: &str = "/opt/omero/server/OMERO.server/var";
/// `OMERO_TMPDIR` on read-only nodes.
pub(crate) const TMP_DIR: &str = "/opt/omero/server/tmp";
/// `omero.pixeldata.memoizer.dir.local` on read-only repository nodes.
pub(crate) const MEMO_LOCAL_DIR: &str = "/opt/omero/server/memo-local";

/// Read-only nodes get their own scratch space for OMERO_TMPDIR, so nothing they need to
/// write depends on the image's home directory.
pub(crate) fn has_writable_tmp(node: &NodeSpec) -> bool {
    node.read_only_db() || node.read_only_repo()
}

/// The pod's volumes, in a fixed order.
pub(crate) fn volumes(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<Volume> {
    layout(cluster, node).into_iter().map(|(volume, _)| volume).collect()
}

/// The container's mounts, parents before the directories mounted inside them.
pub(crate) fn mounts(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<VolumeMount> {
    layout(cluster, node).into_iter().map(|(_, mount)| mount).collect()
}

fn layout(cluster: &OmeroCluster, node: &NodeSpec) -> Vec<(Volume, VolumeMount)> {
    let repo = &cluster.spec.repository;
    // A read-only repository node mounts the user's claims read-only, at the volume and
    // at the mount, so no OMERO code path can write to them.
    let read_only = node.read_only_repo();
    let mut layout = vec![claim("repository", &repo.claim_name, REPOSITORY_DIR, read_only)];
    if let Some(memo) = &repo.memo_cache_claim_name {
        layout.push(claim("memo-cache", memo, MEMO_CACHE_DIR, read_only));
    }
    // A claim keeps the grid registry's database across restarts (see NodeSpec::var_claim_name).
    layout.push(match &node.var_claim_name {
        Some(claim_name) => claim("var", claim_name, VAR_DIR, false),
        None => empty_dir("var", VAR_DIR),
    });
    if has_writable_tmp(node) {
        layout.push(empty_dir("tmp", TMP_DIR));
    }
    if node.read_only_repo() {
        layout.push(empty_dir("memo-local", MEMO_LOCAL_DIR));
    }
    layout
}

fn claim(name: &str, claim_name: &str, path: &str, read_only: bool) -> (Volume, VolumeMount) {
    let read_only = read_only.then_some(true);
    let volume = Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim_name.into(),
            read_only,
        }),
        ..Volume::default()
    };
    (volume, mount(name, path, read_only))
}

fn empty_dir(name: &str, path: &str) -> (Volume, VolumeMount) {
    let volume =
        Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() };
    (volume, mount(name, path, None))
}

fn mount(name: &str, path: &str, read_only: Option<bool>) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only, ..VolumeMount::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        render,
        tests::{BASE, cluster, container, pod_spec},
    };

    fn mounts_of(yaml: &str, node: &str) -> Vec<(String, String, Option<bool>)> {
        let desired = render(&cluster(yaml));
        container(&desired, node)
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.mount_path, m.read_only))
            .collect()
    }

    fn with_memo_cache() -> String {
        BASE.replace(
            "    claimName: omero-repo\n",
            "    claimName: omero-repo\n    memoCacheClaimName: omero-memo\n",
        )
    }

    fn m(name: &str, path: &str, ro: Option<bool>) -> (String, String, Option<bool>) {
        (name.into(), path.into(), ro)
    }

    #[test]
    fn a_var_claim_replaces_the_empty_var_so_a_grid_master_keeps_its_registry() {
        let yaml = BASE.replace("    - name: rw\n", "    - name: rw\n      varClaimName: omero-rw-var\n");
        let desired = render(&cluster(&yaml));
        let volumes = pod_spec(&desired, "rw").volumes.clone().unwrap();
        let var = volumes.iter().find(|v| v.name == "var").unwrap();
        assert_eq!(var.persistent_volume_claim.as_ref().unwrap().claim_name, "omero-rw-var");
        assert!(var.empty_dir.is_none());
        assert!(mounts_of(&yaml, "rw").contains(&m("var", "/opt/omero/server/OMERO.server/var", None)));
        let ro_var =
            pod_spec(&desired, "ro").volumes.clone().unwrap().into_iter().find(|v| v.name == "var").unwrap();
        assert!(ro_var.empty_dir.is_some(), "only the node that names a claim");
    }

    #[test]
    fn read_write_node_mounts_the_repository_writable_and_an_empty_var() {
        assert_eq!(
            mounts_of(BASE, "rw"),
            [m("repository", "/OMERO", None), m("var", "/opt/omero/server/OMERO.server/var", None)]
        );
    }

    #[test]
    fn read_only_node_mounts_the_repository_read_only_with_scratch_directories() {
        assert_eq!(
            mounts_of(BASE, "ro"),
            [
                m("repository", "/OMERO", Some(true)),
                m("var", VAR_DIR, None),
                m("tmp", TMP_DIR, None),
                m("memo-local", MEMO_LOCAL_DIR, None),
            ]
        );
        let desired = render(&cluster(BASE));
        let volumes = pod_spec(&desired, "ro").volumes.clone().unwrap();
        let repo = volumes[0].persistent_volume_claim.as_ref().unwrap();
        assert_eq!((repo.claim_name.as_str(), repo.read_only), ("omero-repo", Some(true)));
        // The log container's own scratch volume aside (render::server_logs).
        for v in volumes[1..].iter().filter(|v| v.name != "omero-logs-state") {
            assert_eq!(v.empty_dir, Some(EmptyDirVolumeSource::default()), "{}", v.name);
        }
    }

    #[test]
    fn memo_cache_claim_is_mounted_inside_the_repository_read_only_where_the_repo_is() {
        let yaml = with_memo_cache();
        assert_eq!(mounts_of(&yaml, "rw")[1], m("memo-cache", "/OMERO/BioFormatsCache", None));
        assert_eq!(mounts_of(&yaml, "ro")[1], m("memo-cache", "/OMERO/BioFormatsCache", Some(true)));
        let desired = render(&cluster(&yaml));
        let claim = pod_spec(&desired, "rw").volumes.as_ref().unwrap()[1].persistent_volume_claim.clone();
        assert_eq!(claim.unwrap().claim_name, "omero-memo");
    }

    #[test]
    fn read_only_db_only_node_gets_tmp_but_keeps_a_writable_repository() {
        let yaml = BASE.replace(
            "    - name: rw\n    - name: ro\n      readOnly: {db: true, repo: true}\n",
            "    - name: ro\n      readOnly: {db: true}\n",
        );
        assert_eq!(
            mounts_of(&yaml, "ro"),
            [m("repository", "/OMERO", None), m("var", VAR_DIR, None), m("tmp", TMP_DIR, None)]
        );
    }

    #[test]
    fn every_mount_has_a_volume_of_the_same_name() {
        let yaml = with_memo_cache();
        let desired = render(&cluster(&yaml));
        for node in ["rw", "ro"] {
            let volumes: Vec<_> =
                pod_spec(&desired, node).volumes.as_ref().unwrap().iter().map(|v| v.name.clone()).collect();
            let mounts: Vec<_> = container(&desired, node)
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .map(|v| v.name.clone())
                // The log container's own scratch volume, mounted by it alone.
                .chain(["omero-logs-state".to_string()])
                .collect();
            assert_eq!(volumes, mounts);
        }
    }
}
