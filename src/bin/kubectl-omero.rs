//! `kubectl omero`: see an OmeroCluster's nodes and sessions, and drive drains, restarts and
//! pauses through its annotations. Put this binary on the PATH as `kubectl-omero`.

use std::{collections::BTreeMap, io::IsTerminal, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use omero_operator::{
    api::OmeroCluster,
    plugin::{self, Ending, Operation},
    request::{ALLOW_DOWNTIME_ANNOTATION, PAUSE_ANNOTATION, RESTART_ANNOTATION},
};

#[derive(Parser)]
#[command(name = "kubectl omero", version, about = "See and drive OMERO clusters (OmeroCluster resources)")]
struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Act as this user (impersonation, as kubectl's --as): the API server authorizes every
    /// request as that user.
    #[arg(long = "as", global = true, value_name = "USER")]
    as_user: Option<String>,
    /// With --as: act as this group too; repeat for several.
    #[arg(long = "as-group", global = true, value_name = "GROUP", requires = "as_user")]
    as_group: Vec<String>,
    /// With --as: act with this uid.
    #[arg(long = "as-uid", global = true, value_name = "UID", requires = "as_user")]
    as_uid: Option<String>,
    /// How long each request to the API server may take (e.g. 10s, 1m; a bare number is
    /// seconds), as kubectl's: 0 for no bound. A watch (--wait) only has to start in time.
    #[arg(long, global = true, value_name = "DURATION", value_parser = plugin::connect::parse_request_timeout, default_value = "0")]
    request_timeout: std::time::Duration,
    /// How long the operator has to acknowledge a request in status before the command says
    /// it is not running (exit 1).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s")]
    ack_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The cluster's conditions in words, then its nodes.
    ///
    /// Example: kubectl omero status omero
    Status {
        cluster: String,
        /// Print the status object instead.
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Take nodes out of service until their sessions end (adds them to the drain list).
    ///
    /// Example: kubectl omero drain omero ro-1 ro-2 --wait
    Drain {
        cluster: String,
        #[arg(required = true)]
        nodes: Vec<String>,
        /// For these nodes only: drain even the last serving node, and end the drain at its
        /// deadline even under `drain.onDeadline: Hold`. Ends with the drain (`undrain`).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Put drained nodes back in service (removes only them from the drain list).
    ///
    /// Example: kubectl omero undrain omero ro-1
    Undrain {
        cluster: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Restart nodes one at a time, each drained first (all nodes unless some are named).
    ///
    /// Example: kubectl omero restart omero --all; kubectl omero restart omero ro-1
    Restart {
        cluster: String,
        nodes: Vec<String>,
        /// Every node (the default when no node is named).
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        /// Allow restarting the last serving node or a grid master (downtime).
        #[arg(long)]
        allow_downtime: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Follow what is under way until it ends: drains (--drained) or the rollout (nodes serve
    /// the revision the spec asks for). Resumes watching after Ctrl-C.
    ///
    /// Example: kubectl omero wait omero ro-1 --drained; kubectl omero wait omero
    Wait {
        cluster: String,
        /// The nodes to follow (default: every node).
        nodes: Vec<String>,
        /// Wait for the named nodes to be drained.
        #[arg(long, requires = "nodes")]
        drained: bool,
        /// Give up after this long (e.g. 90s, 30m, 2h); exit code 2.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Stop the whole cluster (spec.stopped: true), a downtime: every node leaves service at
    /// once, and each is scaled to zero once its sessions end (or at its drain deadline).
    /// Services, budgets, volumes and status stay.
    ///
    /// Example: kubectl omero stop omero --wait
    Stop {
        cluster: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a stopped cluster (spec.stopped: false): read-only nodes first, the read-write
    /// node last (a grid's master first).
    ///
    /// Example: kubectl omero start omero --wait
    Start {
        cluster: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop every change to the cluster's running objects.
    ///
    /// Example: kubectl omero pause omero
    Pause { cluster: String },
    /// Resume changes after a pause.
    ///
    /// Example: kubectl omero resume omero
    Resume { cluster: String },
    /// OMERO's own logs of one node (Blitz-0.log, Tables-0.log, master.err, ...), from the
    /// omero-logs container of its pod: each record whole, a stack trace with its line breaks.
    ///
    /// Example: kubectl omero logs omero ro-1 --file Blitz-0 --tail 50 -f
    Logs {
        cluster: String,
        node: String,
        /// Go on showing new records, across restarts of the node's pod, until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// Only this file's records: Blitz-0 (or Blitz-0.log), Tables-0, Processor-0, master
        /// (master.out and master.err), ...
        #[arg(long, value_name = "FILE")]
        file: Option<String>,
        /// Only the last N records (of that file, with --file).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Only records logged within this long (e.g. 10m, 1h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// The plugin's version, the Kubernetes API server's, and the operator's as deployed (its
    /// Deployments, found by the chart's labels); warns when the plugin and an operator differ
    /// in minor version.
    ///
    /// Example: kubectl omero version
    Version {
        /// Print the versions as JSON or YAML.
        #[arg(short, long)]
        output: Option<Output>,
        /// Look for the operator in this namespace only (default: every namespace, and where
        /// Deployments may not be listed in every namespace, omero-system).
        #[arg(long, env = "KUBECTL_OMERO_OPERATOR_NAMESPACE", value_name = "NAMESPACE")]
        operator_namespace: Option<String>,
    },
    /// Print a completion script for kubectl-omero's commands and flags (bash, zsh or fish).
    /// `kubectl omero` itself completes through kubectl_complete-omero, cluster and node names
    /// too (README).
    ///
    /// Example: kubectl omero completion bash > ~/.local/share/bash-completion/completions/kubectl-omero
    Completion { shell: clap_complete::Shell },
    /// Who is on each node before a drain: the sessions its probe counts (user, agent, started,
    /// last access, idle), read through the API server: the session counter's list through the
    /// pod proxy (needs get on pods/proxy: the edit and admin roles), an exporter's count per
    /// user likewise, and a database-probed node's from the operator through the service proxy
    /// (needs get on services/proxy for its Service: the chart's sessionReaders). Exit 1 when a
    /// counted node could not be read.
    ///
    /// Example: kubectl omero sessions omero ro-2
    Sessions {
        cluster: String,
        /// Only this node.
        node: Option<String>,
        /// Print the sessions as JSON or YAML.
        #[arg(short, long)]
        output: Option<Output>,
        /// The operator's namespace, where its Service is looked for (default: every namespace,
        /// and where Services may not be listed in every namespace, omero-system).
        #[arg(long, env = "KUBECTL_OMERO_OPERATOR_NAMESPACE", value_name = "NAMESPACE")]
        operator_namespace: Option<String>,
        /// The operator's metrics Service, when it cannot be found by the chart's labels
        /// (default there: omero-operator-metrics).
        #[arg(long, env = "KUBECTL_OMERO_OPERATOR_SERVICE", value_name = "SERVICE")]
        operator_service: Option<String>,
    },
}

#[derive(clap::Args, Clone, Copy, Default)]
struct WaitArgs {
    /// Follow the operation live until it ends; exit 0 when done, 1 when refused or failed,
    /// 2 when --timeout passes, 130 on Ctrl-C (the operation goes on).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (e.g. 90s, 30m, 2h).
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    timeout: Option<std::time::Duration>,
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    value.parse::<omero_operator::api::Duration>().map(|d| d.std()).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Yaml,
}

#[tokio::main]
async fn main() -> ExitCode {
    // `kubectl_complete-omero` (what kubectl runs to complete `kubectl omero ...`) passes the
    // line here as it stands, unfinished and maybe invalid: read apart from clap's parsing.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__complete") {
        let plan = plugin::complete::plan(Cli::command(), &args[1..]);
        print!("{}", plugin::complete::complete(plan).await);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where and as whom the global flags say to connect.
fn connection(cli: &Cli) -> plugin::connect::Connection {
    plugin::connect::Connection {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
        as_user: cli.as_user.clone(),
        as_groups: cli.as_group.clone(),
        as_uid: cli.as_uid.clone(),
        request_timeout: cli.request_timeout,
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "kubectl-omero", &mut script);
        // Written at once, and a closed pipe (`| head`) is no error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return Ok(ExitCode::SUCCESS);
    }
    let (client, namespace) = plugin::connect::client(&connection(&cli)).await?;
    if let Command::Version { output, operator_namespace } = &cli.command {
        return version(&client, *output, operator_namespace.as_deref()).await;
    }
    let objects_client = client.clone();
    let ack_timeout = cli.ack_timeout;
    let api: Api<OmeroCluster> = Api::namespaced(client, &namespace);
    let set = |pairs: &[(&str, Option<String>)]| -> plugin::AnnotationChange {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    match cli.command {
        Command::Status { cluster, output } => {
            let found = plugin::get(&api, &cluster).await?;
            match output {
                Some(Output::Json) => {
                    println!("{}", serde_json::to_string_pretty(&found.status).map_err(|e| e.to_string())?)
                }
                Some(Output::Yaml) => {
                    print!("{}", serde_saphyr::to_string(&found.status).map_err(|e| e.to_string())?)
                }
                None => {
                    let objects = plugin::status::read_objects(&objects_client, &namespace, &found).await;
                    print!("{}", plugin::status::in_words(&found, &objects, Timestamp::now()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { cluster, nodes, force, wait } => {
            let edit = plugin::edit_annotations(&api, &cluster, |c| plugin::drain(c, &nodes, force)).await?;
            report(&cluster, &edit);
            follow(&api, ack_timeout, &cluster, Ack::Annotations(&edit), Operation::Drain(nodes), wait).await
        }
        Command::Undrain { cluster, nodes } => {
            let edit = plugin::edit_annotations(&api, &cluster, |c| plugin::undrain(c, &nodes)).await?;
            report(&cluster, &edit);
            follow(
                &api,
                ack_timeout,
                &cluster,
                Ack::Annotations(&edit),
                Operation::Settle(nodes),
                WaitArgs::default(),
            )
            .await
        }
        Command::Wait { cluster, nodes, drained, timeout } => {
            let found = plugin::get(&api, &cluster).await?;
            plugin::unknown_nodes(&found, &nodes)?;
            let op = if drained { Operation::Drain(nodes) } else { Operation::Settle(nodes) };
            follow(&api, ack_timeout, &cluster, Ack::Nothing, op, WaitArgs { wait: true, timeout }).await
        }
        Command::Restart { cluster, nodes, all: _, allow_downtime, wait } => {
            let token =
                Timestamp::from_second(Timestamp::now().as_second()).map_err(|e| e.to_string())?.to_string();
            let edit = plugin::edit_annotations(&api, &cluster, |c| {
                plugin::unknown_nodes(c, &nodes)?;
                // Added after a restart under way, so its nodes still to do keep their token.
                let current = c.metadata.annotations.as_ref().and_then(|a| a.get(RESTART_ANNOTATION));
                let value = omero_operator::request::add_restart(current.map(String::as_str), &nodes, &token);
                let mut edit = set(&[(RESTART_ANNOTATION, Some(value))]);
                if allow_downtime {
                    // Consent for this restart only: it lapses once every node named has it.
                    edit.insert(ALLOW_DOWNTIME_ANNOTATION.into(), Some(token.clone()));
                }
                Ok(edit)
            })
            .await?;
            report(&cluster, &edit);
            if allow_downtime {
                println!(
                    "consent to downtime is for this restart only: it lapses once every node named has restarted, \
                     and later changes ask again"
                );
            }
            follow(&api, ack_timeout, &cluster, Ack::Annotations(&edit), Operation::Settle(nodes), wait).await
        }
        Command::Stop { cluster, wait } => stop(&api, ack_timeout, &cluster, true, wait).await,
        Command::Start { cluster, wait } => stop(&api, ack_timeout, &cluster, false, wait).await,
        Command::Pause { cluster } => pause(&api, ack_timeout, &cluster, true).await,
        Command::Resume { cluster } => pause(&api, ack_timeout, &cluster, false).await,
        Command::Logs { cluster, node, follow, file, tail, since } => {
            let options = plugin::logs::LogsOptions { follow, file, tail, since };
            let (mut out, mut notes) = (std::io::stdout(), std::io::stderr());
            plugin::logs::logs(objects_client, &namespace, &cluster, &node, &options, &mut out, &mut notes)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions { cluster, node, output, operator_namespace, operator_service } => {
            let found = plugin::get(&api, &cluster).await?;
            let options = plugin::sessions::SessionsOptions { node, operator_namespace, operator_service };
            let nodes = plugin::sessions::read(&objects_client, &namespace, &found, &options).await?;
            match output {
                Some(Output::Json) => {
                    println!("{}", serde_json::to_string_pretty(&nodes).map_err(|e| e.to_string())?)
                }
                Some(Output::Yaml) => {
                    print!("{}", serde_saphyr::to_string(&nodes).map_err(|e| e.to_string())?)
                }
                None => print!("{}", plugin::sessions::in_words(&nodes, Timestamp::now())),
            }
            Ok(if nodes.iter().any(|n| n.failed()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Version { .. } | Command::Completion { .. } => unreachable!("answered before"),
    }
}

/// `kubectl omero version`: the versions, and a warning on standard error for each operator
/// whose minor version is not the plugin's (kubectl only warns of skew: exit 0).
async fn version(
    client: &Client,
    output: Option<Output>,
    operator_namespace: Option<&str>,
) -> Result<ExitCode, String> {
    use plugin::version;
    let plugin_version = version::PluginVersion::current();
    let server_version = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            // As `kubectl version`: what is known, then the error.
            if output.is_none() {
                print!("{}", version::plugin_in_words(&plugin_version));
            }
            return Err(format!("the Kubernetes API server's version: {}", plugin::describe("", &e)));
        }
    };
    let operator = version::find_operators(client, operator_namespace).await;
    let versions = version::Versions { plugin_version, server_version, operator };
    match output {
        Some(Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&versions).map_err(|e| e.to_string())?)
        }
        Some(Output::Yaml) => print!("{}", serde_saphyr::to_string(&versions).map_err(|e| e.to_string())?),
        None => print!("{}", version::in_words(&versions)),
    }
    for warning in versions.warnings() {
        eprintln!("WARNING: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets (or removes) the pause annotation and waits for the operator to acknowledge it.
async fn pause(
    api: &Api<OmeroCluster>,
    ack_timeout: std::time::Duration,
    cluster: &str,
    paused: bool,
) -> Result<ExitCode, String> {
    let value = paused.then(|| "true".to_string());
    let edit = plugin::edit_annotations(api, cluster, |_| {
        Ok(BTreeMap::from([(PAUSE_ANNOTATION.to_string(), value.clone())]))
    })
    .await?;
    report(cluster, &edit);
    let op = Operation::Settle(Vec::new());
    follow(api, ack_timeout, cluster, Ack::Annotations(&edit), op, WaitArgs::default()).await
}

/// Sets `spec.stopped`, waits for the operator to observe it, and with `--wait` follows the
/// stop (or start) until every node is stopped (or serves).
async fn stop(
    api: &Api<OmeroCluster>,
    ack_timeout: std::time::Duration,
    cluster: &str,
    stopped: bool,
    wait: WaitArgs,
) -> Result<ExitCode, String> {
    let generation = plugin::set_stopped(api, cluster, stopped).await?;
    println!("omerocluster/{cluster}: spec.stopped={stopped}");
    let op = if stopped { Operation::Stop } else { Operation::Start };
    follow(api, ack_timeout, cluster, Ack::Generation(generation), op, wait).await
}

/// What the operator must show it has read before a command says its request was taken.
enum Ack<'a> {
    /// Nothing was asked (`kubectl omero wait`).
    Nothing,
    /// These annotations, in `status.observedRequests`.
    Annotations(&'a plugin::AnnotationChange),
    /// This generation of the spec, in `status.observedGeneration`.
    Generation(i64),
}

/// Waits for the operator to acknowledge what was asked (`ack`), then with `--wait` follows
/// `op` until it ends.
async fn follow(
    api: &Api<OmeroCluster>,
    ack_timeout: std::time::Duration,
    cluster: &str,
    ack: Ack<'_>,
    op: Operation,
    wait: WaitArgs,
) -> Result<ExitCode, String> {
    let options = plugin::FollowOptions {
        ack: if let Ack::Annotations(edit) = ack { Some(edit.clone()) } else { None },
        ack_generation: if let Ack::Generation(generation) = ack { Some(generation) } else { None },
        ack_timeout,
        wait: wait.wait || matches!(ack, Ack::Nothing),
        timeout: wait.timeout,
        redraw: std::io::stdout().is_terminal().then_some(std::time::Duration::from_secs(1)),
    };
    let resume = match &op {
        Operation::Drain(nodes) => format!("kubectl omero wait {cluster} {} --drained", nodes.join(" ")),
        Operation::Settle(nodes) => {
            format!("kubectl omero wait {cluster} {}", nodes.join(" ")).trim_end().to_string()
        }
        Operation::Stop => format!("kubectl omero stop {cluster} --wait"),
        Operation::Start => format!("kubectl omero start {cluster} --wait"),
    };
    let started = std::time::Instant::now();
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let ending = if options.redraw.is_some() && options.wait {
        let mut display = Terminal::default();
        let ending = plugin::follow(api.clone(), cluster, op, &options, &mut display, interrupt).await;
        display.finish();
        ending?
    } else {
        let mut display = plugin::Log { out: std::io::stdout() };
        plugin::follow(api.clone(), cluster, op, &options, &mut display, interrupt).await?
    };
    let took = format_took(started.elapsed());
    Ok(match ending {
        Ending::Acknowledged => ExitCode::SUCCESS,
        Ending::Done(summary) => {
            println!("{summary} in {took}");
            ExitCode::SUCCESS
        }
        Ending::Failed(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
        Ending::NotAcknowledged(after) => {
            eprintln!(
                "error: the operator has not acknowledged the request within {}s (status.observedRequests): \
                 is it running? (kubectl get pods -A -l app.kubernetes.io/name=omero-operator). The request \
                 stays in the annotations and is carried out once the operator runs.",
                after.as_secs()
            );
            ExitCode::FAILURE
        }
        Ending::TimedOut(after) => {
            eprintln!("timed out after {}; the operation goes on. Watch again: {resume}", format_took(after));
            ExitCode::from(2)
        }
        Ending::Interrupted => {
            eprintln!("stopped watching; the operation goes on. Watch again: {resume}");
            ExitCode::from(130)
        }
    })
}

fn format_took(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{}.{}s", secs, d.subsec_millis() / 100),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Progress redrawn in place: one spinner line per node (indicatif).
#[derive(Default)]
struct Terminal {
    multi: indicatif::MultiProgress,
    bars: BTreeMap<String, indicatif::ProgressBar>,
}

impl plugin::Display for Terminal {
    fn show(&mut self, nodes: &[plugin::NodeProgress], _: &[String]) {
        for node in nodes {
            let bar = self.bars.entry(node.name.clone()).or_insert_with(|| {
                let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                        .expect("a valid template"),
                );
                bar.set_prefix(node.name.clone());
                bar
            });
            bar.set_message(node.line.clone());
            if node.done {
                bar.finish();
            } else {
                bar.tick();
            }
        }
    }

    fn say(&mut self, line: &str) {
        let _ = self.multi.println(line);
    }
}

impl Terminal {
    fn finish(&self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

/// What was asked for, in one line per annotation.
fn report(cluster: &str, edit: &BTreeMap<String, Option<String>>) {
    for (key, value) in edit {
        match value {
            Some(v) => println!("omerocluster/{cluster}: {key}={v}"),
            None => println!("omerocluster/{cluster}: {key} removed"),
        }
    }
}
