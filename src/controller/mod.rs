//! The controller: kube-runtime wiring around the reconcile pipeline.
//!
//! `reconcile` sequences pure steps (`observe`, `diff`, `status`, `crate::drain`,
//! `crate::render`) around two ports (`port`); `kube_port` is the real cluster adapter and
//! `crate::omero` the real session counter.

mod diff;
pub mod kube_port;
mod nodes;
mod observe;
mod omero_port;
pub mod port;
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
        core::v1::{Pod, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
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
};
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
    /// Consecutive failures per cluster, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<OmeroCluster>, u32>>,
}

impl<P, O> Context<P, O> {
    pub fn new(port: P, omero: O, clock: Clock) -> Self {
        Self { port, omero, clock, failures: Mutex::default() }
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

/// Options of `omero-operator run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch only this namespace; all namespaces when None.
    pub namespace: Option<String>,
    /// Most reconciles running at once.
    pub concurrency: u16,
}

/// Runs the controller until SIGTERM or SIGINT, then lets running reconciles finish.
pub async fn run<O: OmeroPort>(client: Client, omero: O, options: RunOptions) -> Result<(), Error> {
    let api = |client: &Client| -> Api<OmeroCluster> {
        match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    };
    let clusters = api(&client);
    clusters.list(&ListParams::default().limit(1)).await.map_err(Error::CrdMissing)?;
    let (deployments, services, pods) = match &options.namespace {
        Some(ns) => (
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let ours = watcher::Config::default().labels(&format!("{}={}", keys::MANAGED_BY_LABEL, keys::MANAGER));
    let ctx = Arc::new(Context::new(kube_port::KubePort::new(client.clone()), omero, Clock::system()));
    info!(namespace = ?options.namespace, concurrency = options.concurrency, "starting controller");
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(deployments, ours.clone())
        .owns(services, ours.clone())
        // Pods are owned by ReplicaSets, so map them to their cluster by label.
        .watches(pods, ours, |pod| {
            let cluster = pod.labels().get(keys::CLUSTER_LABEL).cloned();
            let ns = pod.namespace();
            cluster.map(|c| ObjectRef::<OmeroCluster>::new(&c).within(ns.as_deref().unwrap_or_default()))
        })
        .with_config(controller::Config::default().concurrency(options.concurrency))
        .shutdown_on_signal()
        .run(reconcile_and_reset::<kube_port::KubePort, O>, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}

/// `reconcile`, and on success forget the cluster's failure count.
pub async fn reconcile_and_reset<P: ClusterPort, O: OmeroPort>(
    cluster: Arc<OmeroCluster>,
    ctx: Arc<Context<P, O>>,
) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*cluster);
    let requeue = reconcile(cluster, ctx.clone()).await?;
    ctx.failures().remove(&key);
    Ok(Action::requeue(requeue))
}
