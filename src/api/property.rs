//! OMERO property names and the official image's `CONFIG_*` environment convention.
//!
//! `/startup/50-config.py` turns `CONFIG_<x>` into a property by
//! `re.sub("([^_])_([^_])", r"\1.\2", x)` and then `re.sub("__", "_", ...)`. Python's `re.sub`
//! takes non-overlapping matches, so not every name survives the trip (a one-letter part such
//! as `a.b.c`, or `_` next to `.`): `env_name` refuses those rather than set the wrong property.

use super::Topology;

/// Properties the operator sets itself, with the spec field to use instead.
pub const MANAGED: &[(&str, &str)] = &[
    ("omero.db.host", "spec.database.host"),
    ("omero.db.port", "spec.database.port"),
    ("omero.db.name", "spec.database.name"),
    ("omero.db.user", "spec.database.user"),
    ("omero.db.pass", "spec.database.passwordSecret"),
    ("omero.cluster.read_only", "spec.nodes[].readOnly"),
    ("omero.cluster.read_only.db", "spec.nodes[].readOnly.db"),
    ("omero.cluster.read_only.repo", "spec.nodes[].readOnly.repo"),
    ("omero.sessions.timeout", "spec.sessions.idleTimeout"),
    ("omero.sessions.maximum", "spec.sessions.maxLifetime"),
    (
        "omero.sessions.max_user_time_to_live",
        "spec.sessions.maxUserLifetime (it follows spec.sessions.maxLifetime unless set)",
    ),
    (
        "omero.pixeldata.memoizer.dir.local",
        "spec.nodes[].readOnly.repo (the operator provides a writable directory)",
    ),
    ("omero.data.dir", "spec.repository.claimName (mounted at /OMERO, OMERO's default data directory)"),
];

/// Properties the operator sets only in grid topology; in `independent` they are the user's
/// (e.g. trimming `omero.server.nodedescriptors` to the services a node runs).
pub const MANAGED_IN_GRID: &[(&str, &str)] = &[
    ("omero.cluster.redirector", "spec.topology (grid enables configRedirector)"),
    ("omero.master.host", "spec.topology and spec.nodes[].master (grid wiring)"),
    ("omero.server.nodedescriptors", "spec.nodes (grid: the master lists one Blitz per worker)"),
];

/// Properties no node may have, with why.
pub const REFUSED: &[(&str, &str)] = &[(
    "Ice.Default.Host",
    "it makes Ice publish that host (e.g. 127.0.0.1) instead of the pod IP in OMERO's node table, \
     so the database session probe can never find the node and a drain can only end at its \
     deadline (and grid nodes could not reach each other); remove it: each node binds to its pod",
)];

/// Why `key` may not be set at all, if it may not.
pub fn refused(key: &str) -> Option<&'static str> {
    REFUSED.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

/// OMERO's own value of `omero.cluster.redirector` (omero-common `omero-common.properties`).
pub const DEFAULT_REDIRECTOR: &str = "nullRedirector";

/// Why `key` may not have `value` in this topology, if it may not.
pub fn refused_value(key: &str, value: &str, topology: Topology) -> Option<String> {
    if key == "omero.cluster.redirector" && topology == Topology::Independent && value != DEFAULT_REDIRECTOR {
        // configRedirector reads the row `omero.cluster.redirect`, which only the grid topology
        // maintains; with it NULL a Blitz cannot start (omero-blitz `ConfigRedirector`,
        // `fire/Ring.java`: read from source, not observed).
        return Some(format!(
            "'{value}' is refused in independent topology, where every node is an OMERO.server of its own with one \
             Blitz: there is no other Blitz to redirect to, and a redirector would look for the redirect row \
             (omero.cluster.redirect) that only grid topology maintains, so every node would fail at start; remove it \
             (OMERO's default is {DEFAULT_REDIRECTOR}), or use topology: Grid for a cluster that redirects"
        ));
    }
    None
}

/// The spec field that sets `key`, when the operator manages it in this topology.
pub fn managed_by(key: &str, topology: Topology) -> Option<&'static str> {
    let grid: &[(&str, &str)] = if topology == Topology::Grid { MANAGED_IN_GRID } else { &[] };
    MANAGED.iter().chain(grid).find(|(k, _)| *k == key).map(|(_, field)| *field)
}

/// Downward-API variable holding the pod IP; grid wiring refers to it as `$(OMERO_POD_IP)`.
pub const POD_IP_ENV: &str = "OMERO_POD_IP";
/// Where OMERO's TempFileManager writes (`omero.util.temp_files`).
pub const TMPDIR_ENV: &str = "OMERO_TMPDIR";
/// OMERO root's password for `omego db init` on an empty database (`/startup/60-database.sh`).
pub const ROOTPASS_ENV: &str = "ROOTPASS";

/// Why a node's extra `env` may not set `name`, if it may not: the operator sets it.
pub fn reserved_env(name: &str) -> Option<&'static str> {
    if name.starts_with("CONFIG_") {
        Some("CONFIG_ variables are OMERO properties: put the property in config instead")
    } else if [POD_IP_ENV, TMPDIR_ENV].contains(&name) {
        Some("the operator sets it")
    } else if name == ROOTPASS_ENV {
        Some("the operator sets it from spec.database.rootPasswordSecret")
    } else {
        None
    }
}

/// The environment variable that sets `key`, or why no variable can.
pub fn env_name(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("the property name is empty".into());
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "'{c}' cannot appear in a property name (letters, digits, '.', '_' and '-' only)"
        ));
    }
    let encoded: String = key
        .chars()
        .map(|c| match c {
            '.' => "_".to_string(),
            '_' => "__".to_string(),
            c => c.to_string(),
        })
        .collect();
    let name = format!("CONFIG_{encoded}");
    if decode(&encoded) != key {
        return Err(format!(
            "the image's CONFIG_ convention would read {name} back as '{}', not '{key}'",
            decode(&encoded)
        ));
    }
    Ok(name)
}

/// What `50-config.py` makes of the part after `CONFIG_`.
pub fn decode(encoded: &str) -> String {
    let chars: Vec<char> = encoded.chars().collect();
    let mut dotted = String::with_capacity(chars.len());
    let mut i = 0;
    // re.sub("([^_])_([^_])", r"\1.\2"): scan left to right, each match consumes three chars.
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i] != '_' && chars[i + 1] == '_' && chars[i + 2] != '_' {
            dotted.push(chars[i]);
            dotted.push('.');
            dotted.push(chars[i + 2]);
            i += 3;
        } else {
            dotted.push(chars[i]);
            i += 1;
        }
    }
    dotted.replace("__", "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_dots_and_underscores_as_the_image_expects() {
        assert_eq!(env_name("omero.db.host").unwrap(), "CONFIG_omero_db_host");
        assert_eq!(env_name("omero.policy.binary_access").unwrap(), "CONFIG_omero_policy_binary__access");
        assert_eq!(env_name("Ice.IPv6").unwrap(), "CONFIG_Ice_IPv6");
        assert_eq!(
            env_name("omero.pixeldata.memoizer.dir.local").unwrap(),
            "CONFIG_omero_pixeldata_memoizer_dir_local"
        );
        assert_eq!(env_name("omero.jvmcfg.percent.blitz").unwrap(), "CONFIG_omero_jvmcfg_percent_blitz");
    }

    #[test]
    fn decode_matches_python_non_overlapping_substitution() {
        // Known outputs of the Python expression for these inputs.
        assert_eq!(decode("omero_db_host"), "omero.db.host");
        assert_eq!(decode("a_b_c"), "a.b_c");
        assert_eq!(decode("omero_policy_binary__access"), "omero.policy.binary_access");
    }

    #[test]
    fn refuses_names_that_would_not_round_trip() {
        let err = env_name("omero.a.b").unwrap_err();
        assert!(err.contains("would read CONFIG_omero_a_b back as 'omero.a_b'"), "{err}");
        assert!(env_name("omero._x").is_err());
        assert!(env_name(".omero").is_err());
        assert!(env_name("omero.x y").unwrap_err().contains("' ' cannot appear"));
        assert!(env_name("").is_err());
    }
}
