//! `omero-operator`: run the controller, print the CRD, render a cluster offline.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use omero_operator::{
    api::{self, OmeroCluster, keys},
    api_client,
    controller::{self, RunOptions, leader},
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
        /// Most reconciles at once; bounds API connections when many clusters need work. The
        /// default is the fastest measured on a real API server (README, "How it is tested").
        #[arg(long, env = "OMERO_OPERATOR_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// Most API requests waiting for their response at once (watches hold none while they
        /// stream); the rest queue in order. Over HTTP/2 they share one connection with the
        /// watches; against a server that speaks only HTTP/1.1 each holds a connection of its own.
        #[arg(long, env = "OMERO_OPERATOR_MAX_API_REQUESTS", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
        max_api_requests: u16,
        /// Log level or tracing filter, e.g. `info` or `omero_operator=debug,kube=info`.
        #[arg(long, env = "OMERO_OPERATOR_LOG_LEVEL", default_value = "info")]
        log_level: String,
        #[arg(long, env = "OMERO_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: telemetry::LogFormat,
        /// Address of the HTTP endpoints `/metrics`, `/healthz` and `/readyz`.
        #[arg(long, env = "OMERO_OPERATOR_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
        http_address: String,
        /// Apply the operator's own CRD at start, unless the cluster has a newer one (needs
        /// get and patch on that CRD; refused is logged, not fatal).
        #[arg(long, env = "OMERO_OPERATOR_APPLY_CRD", default_value_t = false)]
        apply_crd: bool,
        /// Watch Kubernetes Nodes (needs cluster-scoped get/list/watch on nodes) and move OMERO
        /// nodes off cordoned ones, drained first. Off: PodDisruptionBudgets still make
        /// `kubectl drain` wait, but nothing drains by itself.
        #[arg(long, env = "OMERO_OPERATOR_WATCH_NODES", default_value_t = false)]
        watch_nodes: bool,
        /// Namespace of the leader election Lease (default: the pod's namespace, else the
        /// kubeconfig's).
        #[arg(long, env = "OMERO_OPERATOR_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Name of the leader election Lease; replicas with the same Lease take turns.
        #[arg(long, env = "OMERO_OPERATOR_LEASE_NAME", default_value = "omero-operator")]
        lease_name: String,
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
        Command::Run {
            namespace,
            concurrency,
            max_api_requests,
            log_level,
            log_format,
            http_address,
            apply_crd,
            watch_nodes,
            lease_namespace,
            lease_name,
        } => {
            telemetry::init(&log_level, log_format);
            let options =
                RunOptions { namespace, concurrency, max_api_requests, http_address, apply_crd, watch_nodes };
            run(options, LeaseOptions { namespace: lease_namespace, name: lease_name })
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

struct LeaseOptions {
    namespace: Option<String>,
    name: String,
}

#[tokio::main]
async fn run(options: RunOptions, lease: LeaseOptions) -> ExitCode {
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the Kubernetes API (no kubeconfig or in-cluster account)");
            return ExitCode::FAILURE;
        }
    };
    let lease_namespace = lease.namespace.unwrap_or_else(|| config.default_namespace.clone());
    // The lease has its own client, outside the request limit (a renewal must never queue
    // behind reconciles) and with short timeouts (a renewal that hangs fails before the lease
    // expires, so this replica steps down before another can take over). It is kube's own, on a
    // connection of its own: a renewal does not wait behind the reconciles' responses on the
    // shared HTTP/2 connection, and its read timeout is its request's alone.
    let mut lease_config = config.clone();
    lease_config.connect_timeout = Some(leader::LEASE_REQUEST_TIMEOUT);
    lease_config.read_timeout = Some(leader::LEASE_REQUEST_TIMEOUT);
    lease_config.write_timeout = Some(leader::LEASE_REQUEST_TIMEOUT);
    let metrics = std::sync::Arc::new(omero_operator::metrics::Metrics::new());
    let clients = api_client::client_builder(&config).and_then(|builder| {
        let lease_client = kube::Client::try_from(lease_config)?;
        let counted = builder.with_layer(&api_client::CountRequestsLayer(metrics.api_requests()));
        Ok((controller::limited_client(counted, usize::from(options.max_api_requests)), lease_client))
    });
    let (client, lease_client) = match clients {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a client for the Kubernetes API");
            return ExitCode::FAILURE;
        }
    };
    // The pod's name (the chart passes it; else the host's) says in the Lease which replica
    // leads, and must differ between replicas.
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|host| format!("{host}-{}", std::process::id()))
        .unwrap_or_else(|_| format!("{}-{}", keys::MANAGER, std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(lease_client, &lease.name)
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        .with_duration(leader::LEASE_DURATION.as_secs())
        .with_grace(leader::LEASE_GRACE.as_secs())
        // One field manager per replica: server-side apply's conflict between two managers is
        // what stops two replicas from taking the lease at once.
        .with_field_manager(format!("{}-{identity}", keys::MANAGER))
        .build()
        .await;
    let manager = match manager {
        Ok(manager) => manager,
        Err(e) => {
            tracing::error!(error = %e, namespace = %lease_namespace, lease = %lease.name, "cannot use the leader election Lease");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(namespace = %lease_namespace, lease = %lease.name, %identity, "leader election");
    match controller::run(client, manager, omero::Client::default(), options, metrics).await {
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
        // Each node's PodDisruptionBudget as while it serves (no status offline): no eviction.
        let budgets = render::budget::budgets(&cluster, &[]);
        // The counter's ConfigMap first, as the operator applies it before the Deployments.
        for yaml in desired
            .config_maps
            .iter()
            .map(serde_saphyr::to_string)
            .chain(desired.deployments.iter().map(serde_saphyr::to_string))
            .chain(desired.services.iter().map(serde_saphyr::to_string))
            .chain(budgets.iter().map(serde_saphyr::to_string))
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
