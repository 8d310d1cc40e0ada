//! `kubectl omero`: what the plugin shows and the annotation edits it makes. The views are
//! pure (status in, text out); `edit_annotations` is the one read-modify-write, with a
//! `resourceVersion` precondition, retried on conflict, so it never drops what someone else
//! put in an annotation meanwhile.

use std::{collections::BTreeMap, io::Write};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    api::{NodePhase, OmeroCluster, Topology, conditions},
    request::DRAIN_ANNOTATION,
};

/// Conflicts in a row before an edit gives up.
const MAX_CONFLICTS: usize = 5;

/// The cluster's conditions in words, one line each.
pub fn conditions_in_words(cluster: &OmeroCluster) -> Vec<String> {
    let Some(status) = &cluster.status else {
        return vec!["no status yet: is the operator running?".into()];
    };
    [conditions::READY, conditions::PROGRESSING, conditions::DEGRADED]
        .iter()
        .filter_map(|t| status.condition(t))
        .map(|c| {
            let state = match (c.type_.as_str(), c.status.as_str()) {
                ("Ready", "True") => "ready",
                ("Ready", _) => "not ready",
                ("Progressing", "True") => "progressing",
                ("Progressing", _) => "stable",
                ("Degraded", "True") => "degraded",
                _ => "not degraded",
            };
            format!("{state}: {}", c.message)
        })
        .collect()
}

/// The nodes as a table: name, role, phase, ready, routable, sessions (and how old that count
/// is), revision (and whether up to date), drain deadline, message.
pub fn node_table(cluster: &OmeroCluster, now: Timestamp) -> String {
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let _ = writeln!(out, "NODE\tROLE\tPHASE\tREADY\tROUTABLE\tSESSIONS\tREVISION\tDEADLINE\tMESSAGE");
    let statuses = cluster.status.as_ref().map(|s| s.nodes.as_slice()).unwrap_or_default();
    for node in statuses {
        let spec = cluster.spec.node(&node.name);
        let role = match (cluster.spec.topology, spec) {
            (_, None) => "leaving",
            (Topology::Grid, Some(n)) if n.is_master() => "master",
            (Topology::Grid, Some(_)) => "worker",
            (_, Some(n)) if n.is_read_write() => "read-write",
            _ => "read-only",
        };
        let mut sessions = match (node.sessions, &node.sessions_observed_at) {
            (Some(n), Some(at)) => format!("{n} ({} ago)", age(at.0, now)),
            (Some(n), None) => n.to_string(),
            _ => "-".into(),
        };
        if node.probe_error.is_some() {
            sessions.push_str(", probe failing");
        }
        let revision = match (&node.revision, node.up_to_date) {
            (Some(r), true) => r.clone(),
            (Some(r), false) => format!("{r} (out of date)"),
            (None, _) => "-".into(),
        };
        let deadline = node.drain_deadline.as_ref().map_or("-".to_string(), |d| d.0.to_string());
        let _ = writeln!(
            out,
            "{}\t{role}\t{}\t{}\t{}\t{sessions}\t{revision}\t{deadline}\t{}",
            node.name,
            phase(node.phase),
            yes_no(node.ready),
            yes_no(node.routable),
            node.message.as_deref().unwrap_or("")
        );
    }
    String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn phase(phase: NodePhase) -> &'static str {
    match phase {
        NodePhase::Pending => "Pending",
        NodePhase::Starting => "Starting",
        NodePhase::Serving => "Serving",
        NodePhase::Draining => "Draining",
        NodePhase::Drained => "Drained",
        NodePhase::Restarting => "Restarting",
        NodePhase::Failed => "Failed",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// The drain list with `add` added (kept in the order it was, new names at the end).
pub fn with_nodes(list: Option<&str>, add: &[String]) -> String {
    let mut names = names(list);
    for name in add {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names.join(",")
}

/// The drain list without `remove`; `None` when nothing is left (the annotation goes).
pub fn without_nodes(list: Option<&str>, remove: &[String]) -> Option<String> {
    let names: Vec<String> = names(list).into_iter().filter(|n| !remove.contains(n)).collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn names(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

/// Nodes of `names` that the cluster does not have, with the names it has, for the error.
pub fn unknown_nodes(cluster: &OmeroCluster, names: &[String]) -> Result<(), String> {
    let unknown: Vec<&str> =
        names.iter().filter(|n| cluster.spec.node(n).is_none()).map(String::as_str).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    Err(format!("no node named {}; the nodes are {}", unknown.join(", "), known.join(", ")))
}

/// An annotation change: the new value, or `None` to remove it.
pub type AnnotationChange = BTreeMap<String, Option<String>>;

/// Reads the cluster, lets `change` decide the annotation edit from what is there now, and
/// sends it as a merge patch that carries the `resourceVersion` read: if someone changed the
/// cluster meanwhile, the API server refuses it (409) and the edit starts over from a fresh
/// read. Returns the edit made.
pub async fn edit_annotations(
    api: &Api<OmeroCluster>,
    name: &str,
    change: impl Fn(&OmeroCluster) -> Result<AnnotationChange, String>,
) -> Result<AnnotationChange, String> {
    for _ in 0..MAX_CONFLICTS {
        let cluster = api.get(name).await.map_err(|e| describe(name, &e))?;
        let edit = change(&cluster)?;
        let patch =
            json!({"metadata": {"resourceVersion": cluster.metadata.resource_version, "annotations": edit}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(edit),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(describe(name, &e)),
        }
    }
    Err(format!("OmeroCluster {name} kept changing under this edit ({MAX_CONFLICTS} conflicts): try again"))
}

/// An API error in the words a user needs.
pub fn describe(name: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(e) if e.code == 404 => {
            format!("no OmeroCluster named {name} here (kubectl get omc lists them)")
        }
        kube::Error::Api(e) if e.code == 403 => format!("forbidden: {}", e.message),
        other => other.to_string(),
    }
}

/// The drain annotation change that adds `nodes`.
pub fn drain(cluster: &OmeroCluster, nodes: &[String]) -> Result<AnnotationChange, String> {
    unknown_nodes(cluster, nodes)?;
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(DRAIN_ANNOTATION));
    Ok(BTreeMap::from([(DRAIN_ANNOTATION.to_string(), Some(with_nodes(current.map(String::as_str), nodes)))]))
}

/// The drain annotation change that removes `nodes` (and only those).
pub fn undrain(cluster: &OmeroCluster, nodes: &[String]) -> Result<AnnotationChange, String> {
    unknown_nodes(cluster, nodes)?;
    let current = cluster.metadata.annotations.as_ref().and_then(|a| a.get(DRAIN_ANNOTATION));
    Ok(BTreeMap::from([(DRAIN_ANNOTATION.to_string(), without_nodes(current.map(String::as_str), nodes))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn drain_lists_keep_what_others_put_there() {
        assert_eq!(with_nodes(Some("ro-1"), &s(&["ro-2"])), "ro-1,ro-2");
        assert_eq!(with_nodes(Some("ro-1, ro-2"), &s(&["ro-2"])), "ro-1,ro-2");
        assert_eq!(with_nodes(None, &s(&["ro-2"])), "ro-2");
        assert_eq!(without_nodes(Some("ro-1,ro-2"), &s(&["ro-1"])).as_deref(), Some("ro-2"));
        assert_eq!(without_nodes(Some("ro-1"), &s(&["ro-1"])), None);
    }

    #[test]
    fn age_reads_as_a_duration() {
        let now = Timestamp::from_second(10_000).unwrap();
        assert_eq!(age(Timestamp::from_second(9_990).unwrap(), now), "10s");
        assert_eq!(age(Timestamp::from_second(9_000).unwrap(), now), "16m");
        assert_eq!(age(Timestamp::from_second(1_000).unwrap(), now), "2h");
    }
}
