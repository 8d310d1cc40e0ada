//! `omero-operator`: run the controller, print the CRD, render a cluster offline.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use omero_operator::{
    api::{self, OmeroCluster},
    controller::{self, RunOptions},
    omero, render, telemetry,
};

#[derive(Parser)]
#[command(name = "omero-operator", version, about = "Runs OMERO.server clusters on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster in the kubeconfig (or the in-cluster account).
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "OMERO_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// Most reconciles at once; bounds API connections when many clusters need work.
        #[arg(long, env = "OMERO_OPERATOR_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// Most API requests waiting for their response at once (watches hold none while they
        /// stream); the rest queue in order.
        #[arg(long, env = "OMERO_OPERATOR_MAX_API_REQUESTS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
        max_api_requests: u16,
        /// Log level or tracing filter, e.g. `info` or `omero_operator=debug,kube=info`.
        #[arg(long, env = "OMERO_OPERATOR_LOG_LEVEL", default_value = "info")]
        log_level: String,
        #[arg(long, env = "OMERO_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: telemetry::LogFormat,
    },
    /// Print the OmeroCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the operator would create for the OmeroClusters in FILE, offline.
    Render {
        /// A YAML file with one or more documents; documents other than OmeroClusters are skipped.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for clusters that do not name one.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { namespace, concurrency, max_api_requests, log_level, log_format } => {
            telemetry::init(&log_level, log_format);
            run(RunOptions { namespace, concurrency, max_api_requests })
        }
        Command::Crd => {
            print!("{}", crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Render { file, namespace } => render_file(&file, namespace.as_deref()),
        Command::Version => {
            println!("omero-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

#[tokio::main]
async fn run(options: RunOptions) -> ExitCode {
    let builder = match kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)
        .and_then(kube::client::ClientBuilder::try_from)
    {
        Ok(builder) => builder,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the Kubernetes API (no kubeconfig or in-cluster account)");
            return ExitCode::FAILURE;
        }
    };
    let client = controller::limited_client(builder, usize::from(options.max_api_requests));
    match controller::run(client, omero::Client::default(), options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controller failed");
            ExitCode::FAILURE
        }
    }
}

fn crd_yaml() -> String {
    serde_saphyr::to_string(&api::crd()).expect("the CRD is plain data and serialises")
}

fn render_file(path: &PathBuf, namespace: Option<&str>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: reading {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let clusters = match clusters_in(&text) {
        Ok(clusters) if clusters.is_empty() => {
            eprintln!("error: {} holds no OmeroCluster (kind: OmeroCluster)", path.display());
            return ExitCode::FAILURE;
        }
        Ok(clusters) => clusters,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut out = String::new();
    for mut cluster in clusters {
        if cluster.metadata.namespace.is_none() {
            cluster.metadata.namespace = namespace.map(String::from);
        }
        let name = cluster.metadata.name.clone().unwrap_or_default();
        if let Err(errors) = api::validate(&cluster) {
            failed = true;
            eprintln!("error: OmeroCluster {name} is invalid:");
            for e in errors {
                eprintln!("  {e}");
            }
            continue;
        }
        let desired = render::render(&cluster);
        // The counter's ConfigMap first, as the operator applies it before the Deployments.
        for yaml in desired
            .config_maps
            .iter()
            .map(serde_saphyr::to_string)
            .chain(desired.deployments.iter().map(serde_saphyr::to_string))
            .chain(desired.services.iter().map(serde_saphyr::to_string))
        {
            out.push_str("---\n");
            out.push_str(&yaml.expect("Kubernetes objects serialise"));
        }
    }
    print!("{out}");
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Every OmeroCluster document of a multi-document YAML file.
fn clusters_in(text: &str) -> Result<Vec<OmeroCluster>, String> {
    let mut clusters = Vec::new();
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    for (i, value) in documents.into_iter().enumerate() {
        if value.get("kind").and_then(|k| k.as_str()) != Some("OmeroCluster") {
            continue;
        }
        let cluster: OmeroCluster =
            serde_json::from_value(value).map_err(|e| format!("document {} (OmeroCluster): {e}", i + 1))?;
        clusters.push(cluster);
    }
    Ok(clusters)
}
