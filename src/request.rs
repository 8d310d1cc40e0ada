//! What a user asks for through the OmeroCluster's annotations: drains, restarts, pause,
//! consent to downtime. Pure: parsed against the spec's node names, bad entries reported
//! (each with the fix) and skipped, the good ones kept.

use std::collections::{BTreeMap, BTreeSet};

/// `omero.openmicroscopy.org/drain: "backup,ro-2"` drains those nodes; removing a name
/// undrains it.
pub const DRAIN_ANNOTATION: &str = "omero.openmicroscopy.org/drain";
/// `omero.openmicroscopy.org/drain-force: "true"` lets the drain take the last serving node,
/// and ends drains held past their deadline (`drain.onDeadline: Hold`), for every node;
/// `"ro-1,ro-2"` does so for those nodes' requested drains only (`kubectl omero drain --force`;
/// `undrain` removes the names again, so the force ends with the drain).
pub const FORCE_ANNOTATION: &str = "omero.openmicroscopy.org/drain-force";
/// `omero.openmicroscopy.org/restart: "<token>"` restarts every node, one at a time, each
/// drained first; `"<node>,<node>@<token>"` restarts those nodes. A token (e.g. the time of
/// the request) is carried out once per node; a new token asks again. Requests separated by
/// `;` stand together, a later one winning for the nodes it names (`"<token>;ro-2@<token2>"`:
/// `kubectl omero restart ro-2` during a restart of every node keeps the nodes still to do).
pub const RESTART_ANNOTATION: &str = "omero.openmicroscopy.org/restart";
/// `omero.openmicroscopy.org/paused: "true"` stops every change to running objects.
pub const PAUSE_ANNOTATION: &str = "omero.openmicroscopy.org/paused";
/// `omero.openmicroscopy.org/allow-downtime: "true"`: consent to rollouts and restarts that
/// interrupt service: the last serving node, and a grid's master, until it is removed.
/// `"<token>"` (what `kubectl omero restart --allow-downtime` writes): consent for the restart
/// asked with that token only, which lapses once every node it names has been given it.
pub const ALLOW_DOWNTIME_ANNOTATION: &str = "omero.openmicroscopy.org/allow-downtime";

/// A rolling restart asked for with [`RESTART_ANNOTATION`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartRequest {
    pub token: String,
    /// `None`: every node.
    pub nodes: Option<BTreeSet<String>>,
}

/// Everything the annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Nodes to drain.
    pub drain: BTreeSet<String>,
    /// Force for every node (`drain-force: "true"`).
    pub force: bool,
    /// Force for these nodes' requested drains only.
    pub force_nodes: BTreeSet<String>,
    /// The restart requests, in the order written: a later one wins for the nodes it names.
    pub restart: Vec<RestartRequest>,
    pub paused: bool,
    pub allow_downtime: bool,
    /// The restart token that `allow-downtime` consents to, when it names one: the consent holds
    /// only while that restart is under way (see [`settle_consent`]).
    pub downtime_for: Option<String>,
    /// Entries that were ignored, each with why.
    pub problems: Vec<String>,
}

impl Request {
    /// Whether `node`'s drain may take the last serving node and end at its deadline even
    /// under `onDeadline: Hold`.
    pub fn forced(&self, node: &str) -> bool {
        self.force || self.force_nodes.contains(node)
    }

    /// The restart token `node` is asked to run with, if the restart request covers it.
    pub fn restart_token(&self, node: &str) -> Option<&str> {
        let restart =
            self.restart.iter().rev().find(|r| r.nodes.as_ref().is_none_or(|n| n.contains(node)))?;
        Some(restart.token.as_str())
    }
}

/// Every annotation a user asks through.
pub const REQUEST_ANNOTATIONS: [&str; 5] =
    [DRAIN_ANNOTATION, FORCE_ANNOTATION, RESTART_ANNOTATION, PAUSE_ANNOTATION, ALLOW_DOWNTIME_ANNOTATION];

/// The request annotations as they are, for `status.observedRequests`: written with the status
/// that acts on them, so whoever asked (`kubectl omero`) sees that the operator runs and has
/// taken the request in.
pub fn observed(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    REQUEST_ANNOTATIONS
        .iter()
        .filter_map(|key| Some((key.to_string(), annotations.get(*key)?.clone())))
        .collect()
}

/// Longest restart token: it is stamped on pod templates as an annotation value.
pub const MAX_TOKEN_LEN: usize = 63;

/// Reads the annotations against the cluster's node names.
pub fn parse(annotations: &BTreeMap<String, String>, node_names: &[&str]) -> Request {
    let mut request = Request::default();
    let mut flag = |key: &str| -> bool {
        match annotations.get(key).map(|v| v.trim()) {
            Some("true") => true,
            Some("false" | "") | None => false,
            Some(other) => {
                request
                    .problems
                    .push(format!("{key}: '{other}' is not a boolean; write \"true\" or remove it"));
                false
            }
        }
    };
    let paused = flag(PAUSE_ANNOTATION);
    request.paused = paused;
    if let Some(value) = annotations.get(DRAIN_ANNOTATION) {
        request.drain = node_list(DRAIN_ANNOTATION, value, node_names, &mut request.problems);
    }
    if let Some(value) = annotations.get(FORCE_ANNOTATION) {
        match value.trim() {
            "true" => request.force = true,
            "false" | "" => {}
            list => {
                let nodes = node_list(FORCE_ANNOTATION, list, node_names, &mut request.problems);
                for name in &nodes {
                    if !request.drain.contains(name) {
                        request.problems.push(format!(
                            "{FORCE_ANNOTATION}: '{name}' is not asked to drain, so nothing is forced; remove \
                             it (it would force that node's next drain) or add it to {DRAIN_ANNOTATION}"
                        ));
                    }
                }
                request.force_nodes = nodes.intersection(&request.drain).cloned().collect();
            }
        }
    }
    if let Some(value) = annotations.get(RESTART_ANNOTATION) {
        request.restart =
            value.split(';').filter_map(|entry| restart(entry, node_names, &mut request.problems)).collect();
    }
    match annotations.get(ALLOW_DOWNTIME_ANNOTATION).map(|v| v.trim()) {
        Some("true") => request.allow_downtime = true,
        Some("false" | "") | None => {}
        Some(token) if request.restart.iter().any(|r| r.token == token) => {
            request.downtime_for = Some(token.to_string());
        }
        Some(other) => request.problems.push(format!(
            "{ALLOW_DOWNTIME_ANNOTATION}: '{other}' is neither \"true\" nor the token of a restart asked for in \
             {RESTART_ANNOTATION}; write \"true\" (consent until removed) or remove it"
        )),
    }
    request
}

fn restart(value: &str, node_names: &[&str], problems: &mut Vec<String>) -> Option<RestartRequest> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let (nodes, token) = match value.rsplit_once('@') {
        Some((nodes, token)) => (Some(nodes), token.trim()),
        None => (None, value),
    };
    let token_ok = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.:+".contains(&c));
    if !token_ok {
        problems.push(format!(
            "{RESTART_ANNOTATION}: '{token}' is not a restart token; use up to {MAX_TOKEN_LEN} letters, digits and \
             '-_.:+', e.g. the time: \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", or \"ro-1,ro-2@<token>\" for some nodes"
        ));
        return None;
    }
    let nodes = match nodes {
        None => None,
        Some(list) => {
            let nodes = node_list(RESTART_ANNOTATION, list, node_names, problems);
            if nodes.is_empty() {
                return None;
            }
            Some(nodes)
        }
    };
    Some(RestartRequest { token: token.to_string(), nodes })
}

/// A comma-separated list of node names; bad entries are reported and skipped.
fn node_list(key: &str, value: &str, node_names: &[&str], problems: &mut Vec<String>) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    if value.trim().is_empty() {
        return nodes;
    }
    for (i, entry) in value.split(',').enumerate() {
        let name = entry.trim();
        if name.is_empty() {
            problems.push(format!(
                "{key}: entry {} is empty; list node names separated by commas, e.g. \"backup,ro-2\"",
                i + 1
            ));
        } else if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
            problems.push(format!("{key}: '{name}' is not a node name; list node names separated by commas"));
        } else if !node_names.contains(&name) {
            problems.push(format!("{key}: no node named '{name}'; nodes are {}", node_names.join(", ")));
        } else {
            nodes.insert(name.to_string());
        }
    }
    nodes
}

/// The names a request may name: the spec's nodes, then the nodes that left it and are still
/// being drained (status `leaving`), so a removal held under `drain.onDeadline: Hold` can be
/// forced by name (`kubectl omero drain --force NODE`).
pub fn nameable_nodes(cluster: &crate::api::OmeroCluster) -> Vec<&str> {
    let leaving = cluster.status.iter().flat_map(|s| &s.nodes).filter(|n| n.leaving).map(|n| n.name.as_str());
    let mut names: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    for name in leaving {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Consent given for one restart (`allow-downtime: "<token>"`) holds while that restart is under
/// way: while a node it names has not been given its token (`current`: the token a node's
/// Deployment carries). Once each has, the consent has lapsed, and later rollouts and moves ask
/// again. Pure.
pub fn settle_consent(request: &mut Request, nodes: &[&str], current: impl Fn(&str) -> Option<String>) {
    let Some(token) = request.downtime_for.as_deref() else { return };
    let under_way = nodes
        .iter()
        .filter(|node| request.restart_token(node) == Some(token))
        .any(|node| current(node).as_deref() != Some(token));
    request.allow_downtime |= under_way;
}

/// The restart annotation once `nodes` (all of them when empty) are asked to restart with
/// `token`, given its value now: a restart of every node replaces it; a restart of some nodes
/// is added after what is there, so the nodes an earlier request still covers keep its token
/// (their restart goes on, and nodes done with it do not restart again). Earlier requests
/// that name only nodes the new one names are dropped.
pub fn add_restart(current: Option<&str>, nodes: &[String], token: &str) -> String {
    if nodes.is_empty() {
        return token.to_string();
    }
    let mut entries: Vec<&str> = current
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .filter(|entry| match entry.rsplit_once('@') {
            Some((named, _)) => !named.split(',').map(str::trim).all(|n| nodes.iter().any(|m| m == n)),
            None => true,
        })
        .collect();
    let new = format!("{}@{token}", nodes.join(","));
    entries.push(&new);
    entries.join(";")
}

/// Grid topology: the master runs the registry and Glacier2, the grid's only way in, so it
/// is never drained on request. A request to drain it is dropped and reported; restarting it
/// goes through a rollout, with consent.
pub fn keep_grid_master(request: &mut Request, master: &str) {
    if request.drain.remove(master) {
        request.problems.push(format!(
            "{DRAIN_ANNOTATION}: '{master}' is the grid master (registry and Glacier2, the grid's only entry) and cannot be drained; drain its workers"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const NODES: &[&str] = &["rw", "ro-1", "ro-2"];

    #[test]
    fn consent_for_a_restart_lapses_once_every_node_it_names_has_its_token() {
        let asked = annotations(&[(RESTART_ANNOTATION, "ro-1,rw@t1"), (ALLOW_DOWNTIME_ANNOTATION, "t1")]);
        let consent = |deployments: &[(&str, &str)]| {
            let mut r = parse(&asked, NODES);
            assert!(r.problems.is_empty() && !r.allow_downtime, "{:?}", r.problems);
            let tokens: BTreeMap<String, String> =
                deployments.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
            settle_consent(&mut r, NODES, |n| tokens.get(n).cloned());
            r.allow_downtime
        };
        assert!(consent(&[]), "under way: no node has t1 yet");
        assert!(consent(&[("ro-1", "t1"), ("rw", "t0")]), "rw still to do");
        assert!(!consent(&[("ro-1", "t1"), ("rw", "t1")]), "done: lapsed");
        // Standing consent is unchanged.
        let mut standing = parse(&annotations(&[(ALLOW_DOWNTIME_ANNOTATION, "true")]), NODES);
        settle_consent(&mut standing, NODES, |_| None);
        assert!(standing.allow_downtime);
    }

    #[test]
    fn a_restart_of_one_node_during_a_restart_of_all_keeps_the_others_token() {
        let value = add_restart(Some("t1"), &["ro-2".to_string()], "t2");
        assert_eq!(value, "t1;ro-2@t2");
        let r = parse(&annotations(&[(RESTART_ANNOTATION, &value)]), NODES);
        assert_eq!(
            (r.restart_token("rw"), r.restart_token("ro-1"), r.restart_token("ro-2")),
            (Some("t1"), Some("t1"), Some("t2"))
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        // A later request for the same nodes replaces the earlier one; --all replaces everything.
        assert_eq!(add_restart(Some(&value), &["ro-2".to_string()], "t3"), "t1;ro-2@t3");
        assert_eq!(
            add_restart(Some("ro-1@t1"), &["ro-1".to_string(), "ro-2".to_string()], "t2"),
            "ro-1,ro-2@t2"
        );
        assert_eq!(add_restart(Some(&value), &[], "t4"), "t4");
        assert_eq!(add_restart(None, &["rw".to_string()], "t5"), "rw@t5");
    }

    #[test]
    fn a_bare_token_restarts_every_node() {
        let r = parse(&annotations(&[(RESTART_ANNOTATION, "2026-11-30T10.00.00Z")]), NODES);
        assert_eq!(r.restart, [RestartRequest { token: "2026-11-30T10.00.00Z".into(), nodes: None }]);
        assert!(NODES.iter().all(|n| r.restart_token(n) == Some("2026-11-30T10.00.00Z")));
        assert!(r.problems.is_empty());
    }

    #[test]
    fn nodes_at_a_token_restart_those_nodes() {
        let r = parse(&annotations(&[(RESTART_ANNOTATION, "ro-1, ro-2@t1")]), NODES);
        assert_eq!(r.restart_token("ro-2"), Some("t1"));
        assert_eq!(r.restart_token("rw"), None);
    }

    #[test]
    fn bad_restart_requests_are_reported_and_do_nothing() {
        for (value, says) in [
            ("ro-1@", "is not a restart token"),
            ("a b", "is not a restart token"),
            ("nope@t1", "no node named 'nope'"),
        ] {
            let r = parse(&annotations(&[(RESTART_ANNOTATION, value)]), NODES);
            assert!(r.restart.is_empty(), "{value}");
            assert!(r.problems.iter().any(|p| p.contains(says)), "{value}: {:?}", r.problems);
        }
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(parse(&annotations(&[(RESTART_ANNOTATION, &long)]), NODES).restart.is_empty());
    }

    #[test]
    fn flags_are_booleans_and_garbage_is_reported() {
        let r = parse(&annotations(&[(PAUSE_ANNOTATION, "true"), (ALLOW_DOWNTIME_ANNOTATION, "yes")]), NODES);
        assert!(r.paused && !r.allow_downtime);
        assert_eq!(
            r.problems,
            [
                "omero.openmicroscopy.org/allow-downtime: 'yes' is neither \"true\" nor the token of a restart asked \
                 for in omero.openmicroscopy.org/restart; write \"true\" (consent until removed) or remove it"
            ]
        );
    }
}
