//! Shell completion of `kubectl omero` through kubectl (1.26 and later): for `kubectl omero
//! ARGS<TAB>`, kubectl runs the executable `kubectl_complete-omero` found on the PATH with the
//! plugin's arguments, the word being completed last (empty when it is a new word), and reads
//! cobra's `__complete` format back: one candidate a line (`value<TAB>description`), then
//! `:<directive>` as the last line (kubectl `pkg/cmd/plugin/plugin_completion.go`). kubectl
//! passes the executable's standard error to the terminal and the shell shows it, so nothing is
//! ever written there.
//!
//! `kubectl-omero __complete ARGS` does the work (`kubectl_complete-omero` runs it): [`plan`]
//! reads the line against the plugin's clap command (pure), and [`complete`] answers it: the
//! subcommands, flags and flag values from the command itself, the OmeroClusters of the
//! namespace (`-n` and the kubeconfig flags on the line are honoured) for a `CLUSTER` argument,
//! and the nodes of the cluster named on the line for a `NODE` argument. The API server gets
//! [`COMPLETION_TIMEOUT`] at most; a failure completes nothing.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use kube::{Api, ResourceExt};

use super::connect::Connection;
use crate::api::{OmeroCluster, Topology};

/// The longest a completion waits for the API server (kubeconfig, credentials and requests).
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(3);

/// Cobra's `ShellCompDirective` values, which kubectl passes on to the shell.
pub mod directive {
    /// The shell's default: it completes file names when there is no candidate.
    pub const DEFAULT: u8 = 0;
    /// No file names, whatever the candidates.
    pub const NO_FILE_COMP: u8 = 4;
}

/// The arguments whose values are OmeroCluster names, and node names of that cluster (their ids
/// in the plugin's clap command: the fields `cluster`, `nodes` or `node`).
const CLUSTER_ARG: &str = "cluster";
const NODE_ARGS: &[&str] = &["nodes", "node"];

/// One candidate: the word, and a description that zsh and fish show beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub value: String,
    pub description: Option<String>,
}

impl Candidate {
    fn new(value: impl Into<String>, description: Option<String>) -> Self {
        Self { value: value.into(), description: description.filter(|d| !d.is_empty()) }
    }
}

/// What the word being completed is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// Known without the API server: subcommands, flags, a flag's possible values.
    Words(Vec<Candidate>),
    /// The names of the OmeroClusters in the namespace.
    Clusters,
    /// The nodes of `cluster`, but those already named on the line.
    Nodes { cluster: String, given: Vec<String> },
    /// The contexts of the kubeconfig (`--context`).
    Contexts,
    /// A file name (`--kubeconfig`): the shell's own completion.
    Files,
    /// Nothing to offer.
    Nothing,
}

/// A completion to answer: what is wanted, the word typed so far, and the connection the
/// flags on the line describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub want: Want,
    pub prefix: String,
    pub connection: Connection,
}

/// Reads `args` (the plugin's arguments, the word being completed last) against `command`
/// (the plugin's clap command): which subcommand, which of its arguments the last word is, and
/// the values of the flags given. Pure.
pub fn plan(mut command: clap::Command, args: &[String]) -> Plan {
    command.build();
    let (typed, before) = match args.split_last() {
        Some((last, before)) => (last.clone(), before),
        None => (String::new(), &[][..]),
    };
    let mut current = &command;
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut positionals: Vec<String> = Vec::new();
    let mut pending: Option<&clap::Arg> = None;
    let mut only_positionals = false;
    for word in before {
        if let Some(arg) = pending.take() {
            values.entry(arg.get_id().to_string()).or_default().push(word.clone());
            continue;
        }
        if only_positionals || word == "-" || !word.starts_with('-') {
            match current.find_subcommand(word).filter(|_| positionals.is_empty() && !only_positionals) {
                Some(sub) => current = sub,
                None => positionals.push(word.clone()),
            }
            continue;
        }
        if word == "--" {
            only_positionals = true;
            continue;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            let Some(arg) = current
                .get_arguments()
                .find(|a| a.get_long_and_visible_aliases().is_some_and(|l| l.contains(&name)))
            else {
                continue;
            };
            if arg.get_action().takes_values() {
                match inline {
                    Some(value) => values.entry(arg.get_id().to_string()).or_default().push(value.into()),
                    None => pending = Some(arg),
                }
            }
            continue;
        }
        // Short flags, stacked (`-ab`) or with their value attached (`-nomero`).
        let shorts: Vec<char> = word.chars().skip(1).collect();
        for (i, short) in shorts.iter().enumerate() {
            let Some(arg) = current.get_arguments().find(|a| a.get_short() == Some(*short)) else { break };
            if arg.get_action().takes_values() {
                let rest: String = shorts[i + 1..].iter().collect();
                let rest = rest.strip_prefix('=').unwrap_or(&rest).to_string();
                if rest.is_empty() {
                    pending = Some(arg);
                } else {
                    values.entry(arg.get_id().to_string()).or_default().push(rest);
                }
                break;
            }
        }
    }
    let connection = connection_from(&values);
    let want = if let Some(arg) = pending {
        value_of(arg)
    } else if typed.starts_with('-') && !only_positionals {
        Want::Words(flags(current, &typed))
    } else if current.has_subcommands() && positionals.is_empty() {
        Want::Words(
            current
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| Candidate::new(s.get_name(), s.get_about().map(|a| a.to_string())))
                .collect(),
        )
    } else {
        positional_at(current, &positionals)
    };
    Plan { want, prefix: typed, connection }
}

/// The flags of `command` (its own and the global ones), long forms, with their help; short
/// forms too when only `-` is typed.
fn flags(command: &clap::Command, typed: &str) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for arg in command.get_arguments().filter(|a| !a.is_positional() && !a.is_hide_set()) {
        let help = arg.get_help().map(|h| h.to_string().lines().next().unwrap_or_default().to_string());
        if let Some(long) = arg.get_long() {
            candidates.push(Candidate::new(format!("--{long}"), help.clone()));
        }
        if typed == "-"
            && let Some(short) = arg.get_short()
        {
            candidates.push(Candidate::new(format!("-{short}"), help));
        }
    }
    candidates
}

/// What a flag's value can be.
fn value_of(arg: &clap::Arg) -> Want {
    match arg.get_id().as_str() {
        "kubeconfig" => Want::Files,
        "context" => Want::Contexts,
        _ => possible_values(arg),
    }
}

fn possible_values(arg: &clap::Arg) -> Want {
    let values: Vec<Candidate> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| Candidate::new(v.get_name(), v.get_help().map(|h| h.to_string())))
        .collect();
    if values.is_empty() { Want::Nothing } else { Want::Words(values) }
}

/// The positional argument the next word fills, after `given`: a cluster, a node of the
/// cluster given first, or one of its possible values.
fn positional_at(command: &clap::Command, given: &[String]) -> Want {
    let mut index = 0;
    for arg in command.get_positionals() {
        let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        if index < given.len() && !many {
            index += 1;
            continue;
        }
        let id = arg.get_id().as_str();
        return if id == CLUSTER_ARG {
            Want::Clusters
        } else if NODE_ARGS.contains(&id) {
            match given.first() {
                Some(cluster) => Want::Nodes { cluster: cluster.clone(), given: given[1..].to_vec() },
                None => Want::Nothing,
            }
        } else {
            possible_values(arg)
        };
    }
    Want::Nothing
}

/// The connection the global flags on the line describe (their ids are the plugin's field
/// names: `kubeconfig`, `context`, `namespace`, `as_user`, `as_group`, `as_uid`,
/// `request_timeout`).
fn connection_from(values: &BTreeMap<String, Vec<String>>) -> Connection {
    let last = |id: &str| values.get(id).and_then(|v| v.last()).cloned();
    Connection {
        kubeconfig: last("kubeconfig").map(Into::into),
        context: last("context"),
        namespace: last("namespace"),
        as_user: last("as_user"),
        as_groups: values.get("as_group").cloned().unwrap_or_default(),
        as_uid: last("as_uid"),
        request_timeout: last("request_timeout")
            .and_then(|t| super::connect::parse_request_timeout(&t).ok())
            .filter(|t| !t.is_zero())
            .map_or(COMPLETION_TIMEOUT, |t| t.min(COMPLETION_TIMEOUT)),
    }
}

/// The answer in cobra's format: the candidates that start with `prefix`, one a line with its
/// description after a tab, then `:<directive>`.
pub fn render(candidates: &[Candidate], prefix: &str, directive: u8) -> String {
    let mut out = String::new();
    for candidate in candidates.iter().filter(|c| c.value.starts_with(prefix)) {
        // A tab or line break in a description would end it early or start another candidate.
        match &candidate.description {
            Some(description) => {
                let description = description.replace(['\t', '\n'], " ");
                let _ = writeln!(out, "{}\t{description}", candidate.value);
            }
            None => {
                let _ = writeln!(out, "{}", candidate.value);
            }
        }
    }
    let _ = writeln!(out, ":{directive}");
    out
}

/// Answers `plan`: from the command alone, from the kubeconfig, or from the API server, all
/// within [`COMPLETION_TIMEOUT`]. A failure or a timeout completes nothing (and no file names).
pub async fn complete(plan: Plan) -> String {
    let nothing = render(&[], "", directive::NO_FILE_COMP);
    let candidates = match &plan.want {
        Want::Words(words) => return render(words, &plan.prefix, directive::NO_FILE_COMP),
        Want::Files => return render(&[], "", directive::DEFAULT),
        Want::Nothing => return nothing,
        Want::Contexts => contexts(&plan.connection),
        Want::Clusters | Want::Nodes { .. } => {
            // Spawned, so that a kubeconfig credential plugin blocking its thread cannot hold
            // the timeout back.
            let task = tokio::spawn(from_the_api_server(plan.clone()));
            match tokio::time::timeout(COMPLETION_TIMEOUT, task).await {
                Ok(Ok(Some(candidates))) => candidates,
                _ => return nothing,
            }
        }
    };
    render(&candidates, &plan.prefix, directive::NO_FILE_COMP)
}

async fn from_the_api_server(plan: Plan) -> Option<Vec<Candidate>> {
    let (client, namespace) = super::connect::client(&plan.connection).await.ok()?;
    let api: Api<OmeroCluster> = Api::namespaced(client, &namespace);
    match plan.want {
        Want::Clusters => {
            let list = api.list(&kube::api::ListParams::default()).await.ok()?;
            Some(
                list.items
                    .iter()
                    .map(|c| Candidate::new(c.name_any(), Some(cluster_description(c))))
                    .collect(),
            )
        }
        Want::Nodes { cluster, given } => {
            // `plugin::get`: the cluster as every command sees it.
            let cluster = super::get(&api, &cluster).await.ok()?;
            Some(node_candidates(&cluster, &given))
        }
        _ => None,
    }
}

/// The kubeconfig's context names.
fn contexts(connection: &Connection) -> Vec<Candidate> {
    let kubeconfig = match &connection.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path),
        None => kube::config::Kubeconfig::read(),
    };
    kubeconfig
        .map(|k| k.contexts.into_iter().map(|c| Candidate::new(c.name, None)).collect())
        .unwrap_or_default()
}

/// A cluster in a few words: its nodes and how many serve.
pub fn cluster_description(cluster: &OmeroCluster) -> String {
    let nodes = cluster.spec.nodes.len();
    let serving = cluster.status.as_ref().map_or(0, |s| s.serving_nodes);
    format!("{nodes} node{}, {serving} serving", if nodes == 1 { "" } else { "s" })
}

/// The nodes a request may name (the spec's, and those leaving it), but those in `given`, each
/// with its role and phase.
pub fn node_candidates(cluster: &OmeroCluster, given: &[String]) -> Vec<Candidate> {
    crate::request::nameable_nodes(cluster)
        .into_iter()
        .filter(|name| !given.iter().any(|g| g == name))
        .map(|name| {
            let role = match cluster.spec.node(name) {
                None => "leaving",
                Some(n) if cluster.spec.topology == Topology::Grid && n.is_master() => "master",
                Some(_) if cluster.spec.topology == Topology::Grid => "worker",
                Some(n) if n.is_read_write() => "read-write",
                Some(_) => "read-only",
            };
            let phase = cluster.status.as_ref().and_then(|s| s.node(name)).map(|n| format!("{:?}", n.phase));
            let description = match phase {
                Some(phase) => format!("{role}, {phase}"),
                None => role.to_string(),
            };
            Candidate::new(name, Some(description))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin's shape: global connection flags, subcommands with a cluster, nodes, flags
    /// with values and possible values.
    #[derive(clap::Parser)]
    #[allow(dead_code)]
    struct Plugin {
        #[arg(long, global = true)]
        kubeconfig: Option<String>,
        #[arg(long, global = true)]
        context: Option<String>,
        #[arg(short, long, global = true)]
        namespace: Option<String>,
        #[arg(long = "as", global = true)]
        as_user: Option<String>,
        #[arg(long = "as-group", global = true)]
        as_group: Vec<String>,
        #[arg(long, global = true)]
        request_timeout: Option<String>,
        #[command(subcommand)]
        command: Subcommand,
    }

    #[derive(clap::Subcommand)]
    #[allow(dead_code)]
    enum Subcommand {
        /// The status.
        Status {
            cluster: String,
            /// Print the status object instead.
            #[arg(short, long, value_parser = ["json", "yaml"])]
            output: Option<String>,
        },
        /// Drain nodes.
        Drain {
            cluster: String,
            nodes: Vec<String>,
            #[arg(long)]
            wait: bool,
        },
        /// A script.
        Completion {
            #[arg(value_parser = ["bash", "zsh", "fish"])]
            shell: String,
        },
        #[command(hide = true)]
        Secret,
    }

    fn plan_of(line: &[&str]) -> Plan {
        use clap::CommandFactory;
        let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
        plan(Plugin::command(), &args)
    }

    fn values(want: &Want) -> Vec<&str> {
        match want {
            Want::Words(words) => words.iter().map(|w| w.value.as_str()).collect(),
            other => panic!("not words: {other:?}"),
        }
    }

    #[test]
    fn the_first_word_is_a_visible_subcommand() {
        let plan = plan_of(&["st"]);
        assert_eq!(values(&plan.want), ["status", "drain", "completion", "help"]);
        assert_eq!(plan.prefix, "st");
        let Want::Words(words) = &plan.want else { unreachable!() };
        assert_eq!(render(words, &plan.prefix, directive::NO_FILE_COMP), "status\tThe status\n:4\n");
    }

    #[test]
    fn a_cluster_argument_asks_the_api_server_for_clusters() {
        assert_eq!(plan_of(&["status", ""]).want, Want::Clusters);
        assert_eq!(plan_of(&["drain", "om"]).want, Want::Clusters);
        assert_eq!(plan_of(&["status", "omero", ""]).want, Want::Nothing, "status takes one cluster");
    }

    #[test]
    fn node_arguments_are_the_named_clusters_nodes_but_those_given() {
        let nodes = |cluster: &str, given: &[&str]| Want::Nodes {
            cluster: cluster.into(),
            given: given.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(plan_of(&["drain", "omero", ""]).want, nodes("omero", &[]));
        assert_eq!(plan_of(&["drain", "omero", "ro-1", "r"]).want, nodes("omero", &["ro-1"]));
        assert_eq!(plan_of(&["drain", "--wait", "omero", "-n", "imaging", ""]).want, nodes("omero", &[]));
    }

    #[test]
    fn flag_values_and_flags() {
        assert_eq!(values(&plan_of(&["status", "omero", "-o", ""]).want), ["json", "yaml"]);
        assert_eq!(values(&plan_of(&["completion", ""]).want), ["bash", "zsh", "fish"]);
        assert_eq!(plan_of(&["status", "--kubeconfig", ""]).want, Want::Files);
        assert_eq!(plan_of(&["--context", ""]).want, Want::Contexts);
        let long = values(&plan_of(&["status", "--"]).want).into_iter().map(String::from).collect::<Vec<_>>();
        assert!(long.contains(&"--output".into()) && long.contains(&"--namespace".into()), "{long:?}");
        assert!(!long.contains(&"-o".into()), "short forms only for a lone '-': {long:?}");
        let all = values(&plan_of(&["status", "-"]).want).into_iter().map(String::from).collect::<Vec<_>>();
        assert!(all.contains(&"-o".into()) && all.contains(&"-n".into()), "{all:?}");
    }

    #[test]
    fn the_connection_flags_on_the_line_are_honoured() {
        let plan = plan_of(&[
            "-nimaging",
            "--kubeconfig=/k",
            "--as",
            "jane",
            "--as-group",
            "a",
            "--as-group",
            "b",
            "drain",
            "omero",
            "",
        ]);
        let c = &plan.connection;
        assert_eq!(c.namespace.as_deref(), Some("imaging"));
        assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(
            (c.as_user.as_deref(), c.as_groups.as_slice()),
            (Some("jane"), &["a".to_string(), "b".into()][..])
        );
        assert_eq!(c.request_timeout, COMPLETION_TIMEOUT, "completion never waits longer");
        let shorter = plan_of(&["--request-timeout", "1s", "status", ""]);
        assert_eq!(shorter.connection.request_timeout, Duration::from_secs(1));
        let longer = plan_of(&["--request-timeout", "0", "status", ""]);
        assert_eq!(longer.connection.request_timeout, COMPLETION_TIMEOUT);
    }

    #[test]
    fn the_answer_is_cobras_format() {
        let candidates = [
            Candidate::new("omero", Some("3 nodes,\t3 serving\nnow".into())),
            Candidate::new("other", None),
            Candidate::new("imaging", Some(String::new())),
        ];
        assert_eq!(render(&candidates, "", 4), "omero\t3 nodes, 3 serving now\nother\nimaging\n:4\n");
        assert_eq!(render(&candidates, "o", 4), "omero\t3 nodes, 3 serving now\nother\n:4\n");
        assert_eq!(render(&[], "", 0), ":0\n", "nothing: the last line is still the directive");
    }

    #[test]
    fn nodes_are_described_by_role_and_phase() {
        let mut cluster: OmeroCluster = serde_saphyr::from_str(
            r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - name: rw
  - name: ro-1
    readOnly: {db: true, repo: true}
"#,
        )
        .unwrap();
        cluster.status = Some(crate::api::OmeroClusterStatus {
            nodes: vec![crate::api::NodeStatus {
                name: "ro-1".into(),
                phase: crate::api::NodePhase::Draining,
                ..Default::default()
            }],
            serving_nodes: 1,
            ..Default::default()
        });
        let nodes = node_candidates(&cluster, &["rw".to_string()]);
        assert_eq!(nodes, [Candidate::new("ro-1", Some("read-only, Draining".into()))]);
        assert_eq!(node_candidates(&cluster, &[])[0], Candidate::new("rw", Some("read-write".into())));
        assert_eq!(cluster_description(&cluster), "2 nodes, 1 serving");
    }
}
