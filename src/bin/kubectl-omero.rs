//! `kubectl omero`: see an OmeroCluster's nodes and sessions, and drive drains, restarts and
//! pauses through its annotations. Put this binary on the PATH as `kubectl-omero`.

use std::{collections::BTreeMap, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use omero_operator::{
    api::OmeroCluster,
    plugin,
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
    /// Example: kubectl omero drain omero ro-1 ro-2
    Drain {
        cluster: String,
        #[arg(required = true)]
        nodes: Vec<String>,
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
    },
    /// Stop every change to the cluster's running objects.
    ///
    /// Example: kubectl omero pause omero
    Pause { cluster: String },
    /// Resume changes after a pause.
    ///
    /// Example: kubectl omero resume omero
    Resume { cluster: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Yaml,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn client(cli: &Cli) -> Result<(Client, String), String> {
    let options = KubeConfigOptions { context: cli.context.clone(), ..KubeConfigOptions::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| e.to_string())?
        }
        None => Config::from_kubeconfig(&options).await.map_err(|e| format!("no usable kubeconfig: {e}"))?,
    };
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config).map_err(|e| e.to_string())?, namespace))
}

async fn run(cli: Cli) -> Result<(), String> {
    let (client, namespace) = client(&cli).await?;
    let api: Api<OmeroCluster> = Api::namespaced(client, &namespace);
    let set = |pairs: &[(&str, Option<String>)]| -> plugin::AnnotationChange {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    match cli.command {
        Command::Status { cluster, output } => {
            let found = api.get(&cluster).await.map_err(|e| plugin::describe(&cluster, &e))?;
            match output {
                Some(Output::Json) => {
                    println!("{}", serde_json::to_string_pretty(&found.status).map_err(|e| e.to_string())?)
                }
                Some(Output::Yaml) => {
                    print!("{}", serde_saphyr::to_string(&found.status).map_err(|e| e.to_string())?)
                }
                None => {
                    for line in plugin::conditions_in_words(&found) {
                        println!("{line}");
                    }
                    println!();
                    print!("{}", plugin::node_table(&found, Timestamp::now()));
                }
            }
            Ok(())
        }
        Command::Drain { cluster, nodes } => {
            let edit = plugin::edit_annotations(&api, &cluster, |c| plugin::drain(c, &nodes)).await?;
            report(&cluster, &edit);
            Ok(())
        }
        Command::Undrain { cluster, nodes } => {
            let edit = plugin::edit_annotations(&api, &cluster, |c| plugin::undrain(c, &nodes)).await?;
            report(&cluster, &edit);
            Ok(())
        }
        Command::Restart { cluster, nodes, all: _, allow_downtime } => {
            let token =
                Timestamp::from_second(Timestamp::now().as_second()).map_err(|e| e.to_string())?.to_string();
            let value = if nodes.is_empty() { token } else { format!("{}@{token}", nodes.join(",")) };
            let edit = plugin::edit_annotations(&api, &cluster, |c| {
                plugin::unknown_nodes(c, &nodes)?;
                let mut edit = set(&[(RESTART_ANNOTATION, Some(value.clone()))]);
                if allow_downtime {
                    edit.insert(ALLOW_DOWNTIME_ANNOTATION.into(), Some("true".into()));
                }
                Ok(edit)
            })
            .await?;
            report(&cluster, &edit);
            Ok(())
        }
        Command::Pause { cluster } => {
            let edit = plugin::edit_annotations(&api, &cluster, |_| {
                Ok(set(&[(PAUSE_ANNOTATION, Some("true".into()))]))
            })
            .await?;
            report(&cluster, &edit);
            Ok(())
        }
        Command::Resume { cluster } => {
            let edit =
                plugin::edit_annotations(&api, &cluster, |_| Ok(set(&[(PAUSE_ANNOTATION, None)]))).await?;
            report(&cluster, &edit);
            Ok(())
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
