//! The controller: kube-runtime wiring around the reconcile pipeline.
//!
//! `reconcile` sequences pure steps (`observe`, `diff`, `status`, `crate::drain`,
//! `crate::render`) around two ports (`port`); `kube_port` is the real cluster adapter and
//! `crate::omero` the real session counter. `run` wires them: the HTTP endpoints, the watches
//! (on every replica), and the controller only while this replica holds the leader Lease
//! (`leader`); `crd` applies the operator's own CRD at start.

mod act;
pub mod awaited;
pub mod cache;
pub mod crd;
pub mod decide;
mod diff;
pub mod kube_port;
pub mod leader;
mod nodes;
pub mod observe;
mod omero_port;
mod pods;
pub mod port;
pub mod probe_memory;
mod reconcile;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Node, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::ObjectRef,
        watcher,
    },
};
use tracing::{info, warn};

pub use reconcile::{RESYNC, STALE_RETRY, reconcile};

use crate::{
    Error,
    api::{OmeroCluster, keys},
    metrics::{Metrics, ReconcileResult},
};
use cache::Cached;
use leader::{LeaderLease, LeaderOnly, Leadership, Term};
use port::{ClusterPort, OmeroPort};

/// Wall-clock time for decisions, at whole seconds (what a status timestamp can hold, so a
/// status read back compares equal). It advances with tokio's clock, so tests can pause it.
#[derive(Clone, Debug)]
pub struct Clock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn system() -> Self {
        Self::starting_at(Timestamp::now())
    }

    pub fn starting_at(base: Timestamp) -> Self {
        Self { base, start: tokio::time::Instant::now() }
    }

    pub fn now(&self) -> Timestamp {
        let now = self.base + self.start.elapsed();
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }
}

pub struct Context<P, O> {
    pub port: P,
    pub omero: O,
    pub clock: Clock,
    /// What `/metrics` reports; reconciles update it.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<OmeroCluster>, u32>>,
    /// What changes at every session probe, kept here rather than in status.
    pub probe_memory: probe_memory::ProbeMemory,
    /// The names this operator created that its watches have not delivered yet.
    pub awaited: awaited::Awaited,
}

impl<P, O> Context<P, O> {
    pub fn new(port: P, omero: O, clock: Clock) -> Self {
        Self {
            port,
            omero,
            clock,
            metrics: Arc::default(),
            failures: Mutex::default(),
            probe_memory: probe_memory::ProbeMemory::default(),
            awaited: awaited::Awaited::default(),
        }
    }

    /// The same, reporting into `metrics` (the registry `/metrics` serves).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics, ..self }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<OmeroCluster>, u32>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Retry after 5s, 10s, 20s, ... at most 5 minutes, per cluster.
pub fn error_policy<P: ClusterPort, O: OmeroPort>(
    cluster: Arc<OmeroCluster>,
    error: &Error,
    ctx: Arc<Context<P, O>>,
) -> Action {
    let failures = {
        let mut map = ctx.failures();
        let n = map.entry(ObjectRef::from_obj(&*cluster)).or_insert(0);
        *n += 1;
        *n
    };
    let wait = retry_delay(failures);
    warn!(cluster = %cluster.name_any(), %error, failures, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

pub fn retry_delay(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// How long a cluster's reconcile waits for more of its watch events (kube's trailing-edge
/// debounce: each event within it restarts it). A new cluster's objects and pods arrive as a
/// burst of events, one per object and per pod status; looked at once per burst, the cluster's
/// status records its pods in one write instead of one per pod (on a real API server: 2.17
/// status writes per new cluster without it). A second is short beside what a reconcile waits
/// for (a pod's start, a probe interval, a drain), and no child of a cluster changes every
/// second for long, so a reconcile is never held back for good.
pub const RECONCILE_DEBOUNCE: Duration = Duration::from_secs(1);

/// A client to the API server that has at most `max_requests` requests waiting for their
/// response at once, whatever the load: a restart facing hundreds of clusters neither opens
/// hundreds of connections nor queues hundreds of responses in memory; the rest wait, in
/// order, behind kube's request buffer. A request holds its place until its response's
/// headers arrive, so a watch (a long-lived response body) holds none while it streams and
/// can never starve the others.
pub fn limited_client<S, B>(builder: kube::client::ClientBuilder<S>, max_requests: usize) -> Client
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    builder.with_layer(&tower::limit::ConcurrencyLimitLayer::new(max_requests)).build()
}

/// Options of `omero-operator run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch only this namespace; all namespaces when None.
    pub namespace: Option<String>,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Most API requests waiting for a response at once.
    pub max_api_requests: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_address: String,
    /// Apply the operator's own CRD at start (see `crd`).
    pub apply_crd: bool,
    /// Watch Kubernetes Nodes (cluster-scoped read access) to move OMERO nodes off cordoned
    /// ones. Without it the budgets still block evictions, but nothing drains by itself.
    pub watch_nodes: bool,
}

/// Runs the operator until SIGTERM or SIGINT, reporting into `metrics` (which its client's
/// request counter shares): the HTTP endpoints at once, then the watches
/// (ready once their caches are filled), and the controller only while `lease` is held. Ends
/// with [`Error::LeaseLost`] when the lease is lost, so the process restarts as a standby.
pub async fn run<O: OmeroPort, L: LeaderLease>(
    client: Client,
    lease: L,
    omero: O,
    options: RunOptions,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    use futures::FutureExt;
    let endpoints = crate::http::Endpoints::new(metrics.clone());
    let shutdown = shutdown_signal().shared();
    let listener = tokio::net::TcpListener::bind(&options.http_address)
        .await
        .map_err(|source| Error::Http { address: options.http_address.clone(), source })?;
    // The bound address, port 0 resolved (the e2e suite finds the port here).
    let bound = listener.local_addr().map_or_else(|_| options.http_address.clone(), |a| a.to_string());
    info!(address = %bound, "serving /metrics, /healthz, /readyz and /sessions");
    let server = tokio::spawn(crate::http::serve(listener, endpoints.clone(), shutdown.clone()));

    if options.apply_crd {
        crd::apply_own(client.clone()).await;
    }
    let api = |client: &Client| -> Api<OmeroCluster> {
        match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    };
    let clusters = api(&client);
    clusters.list(&ListParams::default().limit(1)).await.map_err(Error::CrdMissing)?;
    let (deployments, services, config_maps, pods, budgets) = match &options.namespace {
        Some(ns) => (
            Api::<Cached<Deployment>>::namespaced(client.clone(), ns),
            Api::<Cached<Service>>::namespaced(client.clone(), ns),
            Api::<Cached<ConfigMap>>::namespaced(client.clone(), ns),
            Api::<Cached<Pod>>::namespaced(client.clone(), ns),
            Api::<Cached<PodDisruptionBudget>>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let ours = watcher::Config::default()
        .labels(&format!("{}={}", keys::MANAGED_BY_LABEL, keys::MANAGER))
        .page_size(LIST_PAGE);
    // One watch per kind feeds both a cache (what reconciles read) and the controller's triggers.
    // Every replica runs them, leader or not: a standby is ready and takes over with full caches.
    // What is kept of each object is its `Cached` form (pods: only what is read of their spec).
    let (deployment_cache, deployment_events, deployment_watch) = shared_watch(deployments, ours.clone());
    let (service_cache, service_events, service_watch) = shared_watch(services, ours.clone());
    // Only ConfigMaps with the operator's label: the session counter's script, one per cluster.
    let (config_map_cache, config_map_events, config_map_watch) = shared_watch(config_maps, ours.clone());
    let (budget_cache, budget_events, budget_watch) = shared_watch(budgets, ours.clone());
    let (pod_cache, pod_events, pod_watch) = shared_watch(pods, ours);
    // What holds each name a cluster wants, whosever it is: every object of the kinds the
    // operator writes, metadata only, kept as only what a look-up reads. They answer the
    // look-ups before a create with no request; no reconcile starts on their changes.
    let namespace = options.namespace.as_deref();
    let (deployment_names, deployment_names_watch) =
        name_watch(scoped::<PartialObjectMeta<Deployment>>(&client, namespace));
    let (service_names, service_names_watch) =
        name_watch(scoped::<PartialObjectMeta<Service>>(&client, namespace));
    let (config_map_names, config_map_names_watch) =
        name_watch(scoped::<PartialObjectMeta<ConfigMap>>(&client, namespace));
    let (budget_names, budget_names_watch) =
        name_watch(scoped::<PartialObjectMeta<PodDisruptionBudget>>(&client, namespace));
    let mut watches = vec![
        tokio::spawn(async move {
            futures::future::join4(deployment_watch, service_watch, config_map_watch, pod_watch).await;
        }),
        tokio::spawn(budget_watch),
        tokio::spawn(async move {
            futures::future::join4(
                deployment_names_watch,
                service_names_watch,
                config_map_names_watch,
                budget_names_watch,
            )
            .await;
        }),
    ];
    // Nodes: cluster-scoped, all of them (a pod may land on any), metadata and spec only.
    let (node_cache, node_events) = if options.watch_nodes {
        let (cache, events, watch) = node_watch(Api::<Node>::all(client.clone()));
        watches.push(tokio::spawn(watch));
        (Some(cache), Some(events))
    } else {
        (None, None)
    };
    let caches = kube_port::Caches {
        deployments: deployment_cache,
        services: service_cache,
        config_maps: config_map_cache,
        budgets: budget_cache,
        pods: pod_cache,
        names: kube_port::NameCaches {
            deployments: deployment_names,
            services: service_names,
            config_maps: config_map_names,
            budgets: budget_names,
        },
        nodes: node_cache,
    };
    let leadership = Leadership::start(lease);
    let leading = leadership.watch();
    // A shared watch waits for its slowest reader: until this replica leads, its change streams
    // are read and dropped, so the caches keep up; the controller takes them over when it starts.
    let deployment_events = tokio::spawn(read_until_leading(deployment_events, leading.clone()));
    let service_events = tokio::spawn(read_until_leading(service_events, leading.clone()));
    let config_map_events = tokio::spawn(read_until_leading(config_map_events, leading.clone()));
    let pod_events = tokio::spawn(read_until_leading(pod_events, leading.clone()));
    let budget_events = tokio::spawn(read_until_leading(budget_events, leading.clone()));
    let node_events = node_events.map(|events| tokio::spawn(read_until_leading(events, leading.clone())));

    info!("waiting for the watch caches to fill");
    for ready in [
        caches.deployments.wait_until_ready().await,
        caches.services.wait_until_ready().await,
        caches.config_maps.wait_until_ready().await,
        caches.pods.wait_until_ready().await,
        caches.budgets.wait_until_ready().await,
        caches.names.deployments.wait_until_ready().await,
        caches.names.services.wait_until_ready().await,
        caches.names.config_maps.wait_until_ready().await,
        caches.names.budgets.wait_until_ready().await,
    ] {
        ready.map_err(|e| Error::CacheClosed(e.to_string()))?;
    }
    if let Some(nodes) = &caches.nodes {
        nodes.wait_until_ready().await.map_err(|e| Error::CacheClosed(e.to_string()))?;
    }
    endpoints.set_ready();
    // `/sessions/...` finds pods in this replica's cache: every replica answers it, a standby too.
    endpoints.serve_sessions(crate::http::sessions::SessionLister::new(
        client.clone(),
        caches.pods.clone(),
        options.namespace.clone(),
    ));
    info!("watch caches filled: ready; waiting for the leader lease");

    let work_metrics = metrics.clone();
    let work = |shutdown: futures::future::Shared<_>| async move {
        let metrics = work_metrics;
        let (
            Ok(deployment_events),
            Ok(service_events),
            Ok(config_map_events),
            Ok(pod_events),
            Ok(budget_events),
        ) = (
            deployment_events.await,
            service_events.await,
            config_map_events.await,
            pod_events.await,
            budget_events.await,
        )
        else {
            warn!("a watch stream ended before the controller started");
            return;
        };
        let node_events = match node_events {
            Some(events) => match events.await {
                Ok(events) => Some(events),
                Err(_) => {
                    warn!("the Node watch stream ended before the controller started");
                    return;
                }
            },
            None => None,
        };
        let pods_by_host = caches.pods.clone();
        let port = LeaderOnly::new(kube_port::KubePort::new(client.clone(), caches), leading.clone());
        let ctx = Arc::new(
            Context::new(port, LeaderOnly::new(omero, leading.clone()), Clock::system())
                .with_metrics(metrics.clone()),
        );
        info!(namespace = ?options.namespace, concurrency = options.concurrency, "starting controller");
        // The clusters' own cache, without what is never read (`cache::slim_cluster`).
        use kube::runtime::WatchStreamExt;
        let (cluster_cache, cluster_writer) = kube::runtime::reflector::store();
        let cluster_changes = kube::runtime::reflector(
            cluster_writer,
            watcher(clusters, watcher::Config::default().any_semantic()).modify(cache::slim_cluster),
        );
        let controller = Controller::for_stream(cluster_changes.applied_objects(), cluster_cache)
            .owns_shared_stream(deployment_events)
            .owns_shared_stream(service_events)
            .owns_shared_stream(config_map_events)
            .owns_shared_stream(budget_events)
            // Pods are owned by ReplicaSets, so map them to their cluster by label.
            .watches_shared_stream(pod_events, |pod| {
                let cluster = pod.selected_label(keys::CLUSTER_LABEL).map(String::from);
                let ns = pod.namespace();
                cluster.map(|c| ObjectRef::<OmeroCluster>::new(&c).within(ns.as_deref().unwrap_or_default()))
            })
            .with_config(
                controller::Config::default().concurrency(options.concurrency).debounce(RECONCILE_DEBOUNCE),
            )
            .graceful_shutdown_on(shutdown);
        // A Node whose cordon or taints changed: every cluster with a pod on it looks again.
        let controller = match node_events {
            Some(events) => controller.watches_shared_stream(maintenance_changes(events), move |node| {
                clusters_on(&pods_by_host, &node.name_any())
            }),
            None => controller,
        };
        let store = controller.store();
        let memories_of = ctx.clone();
        controller
            .run(reconcile_and_reset::<LeaderOnly<kube_port::KubePort>, LeaderOnly<O>>, error_policy, ctx)
            .for_each(|result| {
                // The series and memories of a cluster that was deleted go with it.
                let gone =
                    |(ns, name): &(String, String)| store.get(&ObjectRef::new(name).within(ns)).is_none();
                for (ns, name) in metrics.clusters().iter().filter(|c| gone(c)) {
                    metrics.forget_cluster(ns, name);
                }
                for (ns, name) in memories_of.probe_memory.clusters().iter().filter(|c| gone(c)) {
                    memories_of.probe_memory.forget(ns, name);
                }
                for (ns, name) in memories_of.awaited.clusters().iter().filter(|c| gone(c)) {
                    memories_of.awaited.forget(ns, name);
                }
                match result {
                    Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile error"),
                }
                futures::future::ready(())
            })
            .await;
    };
    let term = lead(leadership.watch(), shutdown.clone(), work, &metrics).await;
    for watch in &watches {
        watch.abort();
    }
    leadership.resign().await;
    server.abort();
    info!(?term, "controller stopped");
    match term {
        Term::Shutdown => Ok(()),
        Term::Lost => Err(Error::LeaseLost),
    }
}

async fn lead<S, W, Fut>(
    leading: tokio::sync::watch::Receiver<bool>,
    shutdown: S,
    work: W,
    metrics: &Metrics,
) -> Term
where
    S: std::future::Future<Output = ()> + Clone,
    W: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    leader::lead(leading, shutdown, work, |leads| metrics.set_leader(leads)).await
}

/// Reads `events` (and drops them) until this replica leads, then hands the stream back.
async fn read_until_leading<S: futures::Stream + Unpin>(
    mut events: S,
    mut leading: tokio::sync::watch::Receiver<bool>,
) -> S {
    loop {
        tokio::select! {
            biased;
            _ = leading.wait_for(|l| *l) => return events,
            next = events.next() => if next.is_none() { return events },
        }
    }
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    info!("shutdown signal: finishing running reconciles");
}

/// Events each shared watch buffers for the controller before the slowest reader catches up.
const SHARED_BUFFER: usize = 256;

/// Objects per page of a watch's initial LIST (kube's default is 500). At a start or restart
/// the nine watches list at once, and each page is held whole as JSON while it is decoded: 500
/// Deployments with their managed fields are about 6 MB, and the allocator keeps what such a
/// burst took long after it is freed. A page of 100 costs a few more round trips at start
/// (a tenth of a second each for 1,000 objects) and a fifth of that memory.
const LIST_PAGE: u32 = 100;

/// A watch of the operator's own objects of one kind, in their cached form: its cache, its
/// stream of changes for the controller, and the future that drives it (restarting with
/// backoff on errors).
fn shared_watch<K: cache::Cacheable + Send + Sync + 'static>(
    api: Api<Cached<K>>,
    config: watcher::Config,
) -> (
    kube::runtime::reflector::Store<Cached<K>>,
    impl futures::Stream<Item = Arc<Cached<K>>> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    use kube::runtime::{WatchStreamExt, reflector};
    let (cache, writer) = reflector::store_shared(SHARED_BUFFER);
    let events = writer.subscribe().expect("a shared store hands out subscribers");
    let drive = watcher(api, config).default_backoff().reflect_shared(writer).for_each(|event| async move {
        if let Err(error) = event {
            warn!(%error, "watch error; retrying with backoff");
        }
    });
    (cache, events, drive)
}

/// `K` in `namespace`, or in every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A metadata-only watch of every object of one kind, with no label selector: its cache, each
/// entry slimmed to what a look-up by name reads (`cache::slim_look_up_entry`), and the future
/// that drives it (restarting with backoff on errors).
fn name_watch<K>(
    api: Api<PartialObjectMeta<K>>,
) -> (
    kube::runtime::reflector::Store<PartialObjectMeta<K>>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::{WatchStreamExt, reflector};
    let (cache, writer) = reflector::store();
    // An `Api` of `PartialObjectMeta` lists and watches with kube's metadata-only requests
    // (`Accept: ...;as=PartialObjectMetadataList`): the API server sends no spec or status.
    let events = watcher(api, watcher::Config::default().page_size(LIST_PAGE))
        .default_backoff()
        .modify(cache::slim_look_up_entry::<K>);
    let drive = reflector(writer, events).for_each(|event| async move {
        if let Err(error) = event {
            warn!(%error, kind = %K::kind(&()), "metadata watch error; retrying with backoff");
        }
    });
    (cache, drive)
}

/// A watch of every Kubernetes Node, kept without status and managed fields (heartbeats and
/// images are most of a Node and never read): its cache, its changes, and its driver.
fn node_watch(
    api: Api<Node>,
) -> (
    kube::runtime::reflector::Store<Node>,
    impl futures::Stream<Item = Arc<Node>> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    use kube::runtime::{WatchStreamExt, reflector};
    let (cache, writer) = reflector::store_shared(SHARED_BUFFER);
    let events = writer.subscribe().expect("a shared store hands out subscribers");
    let drive = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|node| {
            node.managed_fields_mut().clear();
            node.status = None;
        })
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                warn!(%error, "Node watch error; retrying with backoff");
            }
        });
    (cache, events, drive)
}

/// Only the Node changes maintenance decides from (cordon, taints): a Node's other updates
/// would reconcile every cluster on it for nothing.
fn maintenance_changes(
    events: impl futures::Stream<Item = Arc<Node>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<Node>> + Send + 'static {
    let mut seen: HashMap<String, String> = HashMap::new();
    events.filter(move |node| {
        let spec = node.spec.as_ref();
        let key =
            serde_json::json!([spec.and_then(|s| s.unschedulable), spec.and_then(|s| s.taints.clone()),])
                .to_string();
        futures::future::ready(seen.insert(node.name_any(), key.clone()).as_ref() != Some(&key))
    })
}

/// The clusters with a pod bound to the Kubernetes node `host`, from the pod cache.
fn clusters_on(
    pods: &kube::runtime::reflector::Store<Cached<Pod>>,
    host: &str,
) -> Vec<ObjectRef<OmeroCluster>> {
    let mut clusters: Vec<ObjectRef<OmeroCluster>> = pods
        .state()
        .iter()
        .filter(|p| {
            let pod = p.object().ok();
            pod.and_then(|p| p.spec?.node_name).as_deref() == Some(host)
        })
        .filter_map(|p| {
            let cluster = p.selected_label(keys::CLUSTER_LABEL)?;
            Some(ObjectRef::new(cluster).within(p.namespace().as_deref().unwrap_or_default()))
        })
        .collect();
    clusters.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    clusters.dedup();
    clusters
}

/// `reconcile`, and on success forget the cluster's failure count.
pub async fn reconcile_and_reset<P: ClusterPort, O: OmeroPort>(
    cluster: Arc<OmeroCluster>,
    ctx: Arc<Context<P, O>>,
) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*cluster);
    let started = tokio::time::Instant::now();
    let outcome = reconcile(cluster, ctx.clone()).await;
    let result = if outcome.is_ok() { ReconcileResult::Success } else { ReconcileResult::Error };
    ctx.metrics.reconciled(result, started.elapsed());
    let requeue = outcome?;
    ctx.failures().remove(&key);
    Ok(Action::requeue(requeue))
}
