//! What an image reference tells about the omero-py inside: only for the official image
//! (`openmicroscopy/omero-server`, built by ome/omero-server-docker, under any registry that
//! mirrors it), and only when its tag is a version. Anything else (another repository, a
//! digest, `latest`) tells nothing, and nothing is refused for it.
//!
//! Read in repositories, not observed by pulling images:
//! - Images before 5.6 are Python 2 builds with no `/opt/omero/server/venv3` (ome/omero-server-docker
//!   `99-run.sh` at tag 5.5.1-1 runs `OMERO.server/bin/omero`); the operator's probes, session
//!   counter and grid start-up run the venv's `omero` and `python`.
//! - omero-py is not pinned to the OMERO.server version: the image's Ansible role installs
//!   `omero-py>=5.6.0` (ome/ansible-role-omero-server `defaults/main.yml`), the newest on PyPI
//!   when the image is built. omero-py 5.9.0, the first whose `omero admin rewrite` reads
//!   `omero.server.nodedescriptors` (omero-py commit 29d19687, "admin rewrite: templates can
//!   be modified to enable/disable servers"), was tagged on 2021-01-20.
//! - A rebuild `X.Y.Z-N` is pushed as `X.Y.Z` too (the workflow's
//!   jupyterhub/action-major-minor-tag-calculator: `1.2.3-4` gives `1.2.3-4, 1.2.3, 1.2, 1,
//!   latest`; the Makefile's `docker-build-versions` before it), so `X.Y.Z` names the last
//!   build of a version. The builds
//!   (ome/omero-server-docker tags): every 5.6.0, 5.6.1 and 5.6.2 build is from 2020 (the last,
//!   5.6.2-1, 2020-09-08); 5.6.3 from 2020-10-01, rebuilt as 5.6.3-1 on 2021-01-20 (the day
//!   omero-py 5.9.0 came out: which one it got is not known) and as 5.6.3-2 to 5.6.3-4 in
//!   2021; 5.6.4 on 2022-04-26.
//!
//! So a 5.6.0 to 5.6.2 tag certainly holds an omero-py older than 5.9.0; `5.6.3-1` may (not
//! refused: it cannot be told); `5.6.3` and later hold a newer one, unless a Kubernetes node
//! still caches a `5.6.3` pulled before 2021 (`imagePullPolicy: IfNotPresent`).

/// The version an official image's tag names: major, minor (if given), patch (if given).
fn official_version(image: &str) -> Option<(u32, Option<u32>, Option<u32>)> {
    if image.contains('@') {
        return None; // a digest decides what runs, whatever the tag says
    }
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => return None, // no tag: `latest`
    };
    let path: Vec<&str> = name.split('/').collect();
    if !path.ends_with(&["openmicroscopy", "omero-server"]) {
        return None;
    }
    let version = tag.strip_prefix('v').unwrap_or(tag);
    // A build or pre-release suffix (`-1`, `-m4`, `-rc1`) keeps the version it follows.
    let version = version.split_once('-').map_or(version, |(v, _)| v);
    let mut parts = version.split('.');
    let number = |part: Option<&str>| -> Option<Option<u32>> {
        match part {
            None => Some(None),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok().map(Some),
            Some(_) => None,
        }
    };
    let major = number(parts.next())??;
    let minor = number(parts.next())?;
    let patch = number(parts.next())?;
    if parts.next().is_some() || (minor.is_none() && patch.is_some()) {
        return None;
    }
    Some((major, minor, patch))
}

const INSTEAD: &str = "use 5.6.3 or later, e.g. openmicroscopy/omero-server:5.6";

/// Why `image` cannot run this cluster, if its tag shows that: any cluster needs the Python 3
/// venv (5.6 and later); `needs_node_descriptors` says what breaks when omero-py is older than
/// 5.9.0, if anything does.
pub fn too_old(image: &str, needs_node_descriptors: Option<&str>) -> Option<String> {
    let (major, minor, patch) = official_version(image)?;
    let shown = |v: Option<u32>| v.map(|v| format!(".{v}")).unwrap_or_default();
    let version = format!("{major}{}{}", shown(minor), shown(patch));
    if (major, minor.unwrap_or(u32::MAX)) < (5, 6) {
        return Some(format!(
            "is OMERO.server {version}, a Python 2 image without /opt/omero/server/venv3, whose omero and python the \
             operator's probes, session counter and grid start-up run: {INSTEAD}"
        ));
    }
    let why = needs_node_descriptors?;
    if major == 5 && minor == Some(6) && patch.is_some_and(|p| p < 3) {
        return Some(format!(
            "is OMERO.server {version}, whose images were all built before omero-py 5.9.0 (January 2021), the first \
             to read omero.server.nodedescriptors: {why}; {INSTEAD}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_version_tags_of_the_official_image_tell_a_version() {
        assert_eq!(official_version("openmicroscopy/omero-server:5.6.10"), Some((5, Some(6), Some(10))));
        assert_eq!(official_version("docker.io/openmicroscopy/omero-server:5.6"), Some((5, Some(6), None)));
        assert_eq!(
            official_version("mirror.example:5000/hub/openmicroscopy/omero-server:5"),
            Some((5, None, None))
        );
        assert_eq!(official_version("openmicroscopy/omero-server:5.6.3-1"), Some((5, Some(6), Some(3))));
        assert_eq!(official_version("openmicroscopy/omero-server:5.6.0-m4"), Some((5, Some(6), Some(0))));
        assert_eq!(official_version("openmicroscopy/omero-server:v5.6.15"), Some((5, Some(6), Some(15))));
        for unknown in [
            "openmicroscopy/omero-server",
            "openmicroscopy/omero-server:latest",
            "openmicroscopy/omero-server:5.6.2@sha256:0123",
            "example.org/omero-server:5.6.2",
            "example.org/my-openmicroscopy/omero-server:5.6.2",
            "openmicroscopy/omero-web:5.6.2",
            "mirror.example:5000/openmicroscopy/omero-server",
            "openmicroscopy/omero-server:5.6.2.1",
            "openmicroscopy/omero-server:5..2",
        ] {
            assert_eq!(official_version(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn python2_images_are_too_old_for_any_cluster() {
        for image in [
            "openmicroscopy/omero-server:5.5.1",
            "openmicroscopy/omero-server:5.5",
            "openmicroscopy/omero-server:4",
        ] {
            let why = too_old(image, None).unwrap_or_else(|| panic!("{image}"));
            assert!(
                why.contains("Python 2") && why.contains("venv3") && why.contains("5.6.3 or later"),
                "{why}"
            );
        }
        for image in [
            "openmicroscopy/omero-server:5",
            "openmicroscopy/omero-server:5.6.0",
            "openmicroscopy/omero-server:6.0",
        ] {
            assert_eq!(too_old(image, None), None, "{image}");
        }
    }

    #[test]
    fn images_built_before_omero_py_5_9_are_too_old_where_node_descriptors_matter() {
        let why = Some("a grid's workers would host no Blitz");
        for image in [
            "openmicroscopy/omero-server:5.6.0",
            "openmicroscopy/omero-server:5.6.0-m1",
            "openmicroscopy/omero-server:5.6.2",
            "openmicroscopy/omero-server:5.6.2-1",
        ] {
            let message = too_old(image, why).unwrap_or_else(|| panic!("{image}"));
            assert!(
                message.contains("omero-py 5.9.0") && message.contains("workers would host no Blitz"),
                "{message}"
            );
        }
        // 5.6.3-1 was built the day omero-py 5.9.0 came out: it cannot be told, so it passes.
        for image in [
            "openmicroscopy/omero-server:5.6.3",
            "openmicroscopy/omero-server:5.6.3-1",
            "openmicroscopy/omero-server:5.6.10",
            "openmicroscopy/omero-server:5.6",
            "openmicroscopy/omero-server:latest",
            "example.org/omero-server:5.6.2",
        ] {
            assert_eq!(too_old(image, why), None, "{image}");
        }
    }
}
