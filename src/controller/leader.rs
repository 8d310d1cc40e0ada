//! Leader election: with several replicas (a rolling upgrade briefly runs two), exactly one
//! acts. Every replica runs its watches and fills its caches (so it is ready and can take over
//! at once); only the holder of the Lease reconciles.
//!
//! Three layers, so that "never two at once" does not rest on one of them:
//! - [`Leadership`] turns a [`LeaderLease`] (kube-lease-manager's `LeaseManager` in
//!   production, a double in the tests) into a watch channel: `true` while this replica holds
//!   the lease. A failed renewal (the API server unreachable, a partition) counts as lost at
//!   once: the other replica may take the lease as soon as it expires, and this one cannot
//!   know whether it did.
//! - [`lead`] runs the controller only while leading, and drops it the moment the lease is
//!   lost (its in-flight reconciles stop at their next await). The process then exits and
//!   comes back as a standby: a fresh start is simpler to trust than a controller resumed on
//!   caches and state from another term.
//! - [`LeaderOnly`] wraps the ports: every write (apply, delete, label, status, Event, the
//!   grid redirect row) checks leadership first and is refused with [`Error::NotLeader`]
//!   otherwise, covering the instant between losing the lease and the controller being dropped.

use std::{future::Future, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::watch;
use tracing::{info, warn};

use super::port::{
    Child, ChildKind, Children, ClusterPort, Event, OmeroPort, RedirectQuery, SessionCount, SessionQuery,
    StatusWrite,
};
use crate::{
    Error,
    api::{OmeroCluster, OmeroClusterStatus, SecretKeyRef},
};

/// How long a lease holds without renewal. A standby looks again when the holder's lease would
/// expire (kube-lease-manager sleeps until then), so it takes over at most this long after the
/// leader's last renewal, whether the leader died or stopped cleanly; a replica that starts
/// after a clean stop (which releases the lease) takes it at once.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder renews this long before the lease expires; also the clock skew tolerated
/// between replicas.
pub const LEASE_GRACE: Duration = Duration::from_secs(5);
/// Longest a lease request may take: a renewal that hangs (a partition) fails before the lease
/// expires, so the holder steps down before anyone else can take over.
pub const LEASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One replica's hold on the shared lease. `changed` waits until this replica's hold changes
/// and says whether it now holds the lease, renewing it meanwhile (kube-lease-manager's
/// `LeaseManager::changed` contract); an error means this replica could not renew or read it.
pub trait LeaderLease: Send + Sync + 'static {
    fn changed(&self) -> impl Future<Output = Result<bool, String>> + Send;
    /// Gives the lease up if held, so the next replica to look takes it without waiting for
    /// it to expire.
    fn release(&self) -> impl Future<Output = Result<(), String>> + Send;
}

impl LeaderLease for kube_lease_manager::LeaseManager {
    async fn changed(&self) -> Result<bool, String> {
        kube_lease_manager::LeaseManager::changed(self).await.map_err(|e| e.to_string())
    }

    async fn release(&self) -> Result<(), String> {
        kube_lease_manager::LeaseManager::release(self).await.map_err(|e| e.to_string())
    }
}

/// This replica's leadership, kept by a background task.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Starts competing for the lease.
    pub fn start<L: LeaderLease>(lease: L) -> Self {
        let (sender, leading) = watch::channel(false);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    changed = lease.changed() => match changed {
                        Ok(true) => {
                            info!("leader lease acquired");
                            sender.send_replace(true);
                        }
                        Ok(false) => {
                            let held = sender.send_replace(false);
                            if held {
                                // A term ends for good: `lead` stops and the process starts afresh.
                                warn!("leader lease lost to another replica");
                                break;
                            }
                        }
                        Err(error) => {
                            if sender.send_replace(false) {
                                // Whether the lease is still ours cannot be known: step down for good.
                                warn!(%error, "cannot renew the leader lease: stepping down");
                                break;
                            }
                            warn!(%error, "cannot read the leader lease; retrying");
                            tokio::time::sleep(LEASE_GRACE).await;
                        }
                    },
                }
            }
            if let Err(error) = lease.release().await {
                warn!(%error, "could not release the leader lease; it expires on its own");
            }
        });
        Self { leading, stop: Some(stop), task }
    }

    /// `true` while this replica leads.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops competing and releases the lease if held.
    pub async fn resign(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// How [`lead`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// Shut down (a signal) before or while leading; the lease was not lost.
    Shutdown,
    /// Led, then lost the lease: the work was stopped at once.
    Lost,
}

/// Waits for leadership (or `shutdown`), then runs `work` while leading: until it finishes
/// (it is handed `shutdown`, for a graceful stop) or the lease is lost, when it is dropped at
/// once. `on_change` is told when leading starts and stops (the `leader` metric).
pub async fn lead<S, W, Fut>(
    mut leading: watch::Receiver<bool>,
    shutdown: S,
    work: W,
    on_change: impl Fn(bool),
) -> Term
where
    S: Future<Output = ()> + Clone,
    W: FnOnce(S) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::select! {
        biased;
        () = shutdown.clone() => return Term::Shutdown,
        // The lease task only ends on its own after losing the lease (or failing to renew it).
        became = leading.wait_for(|l| *l) => if became.is_err() { return Term::Lost },
    }
    info!("leading: starting the controller");
    on_change(true);
    let term = tokio::select! {
        biased;
        _ = leading.wait_for(|l| !*l) => Term::Lost,
        () = work(shutdown) => Term::Shutdown,
    };
    on_change(false);
    if term == Term::Lost {
        warn!("lost the leader lease: the controller stopped");
    }
    term
}

/// A port whose writes go through only while this replica leads.
#[derive(Clone)]
pub struct LeaderOnly<P> {
    inner: P,
    leading: watch::Receiver<bool>,
}

impl<P> LeaderOnly<P> {
    pub fn new(inner: P, leading: watch::Receiver<bool>) -> Self {
        Self { inner, leading }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn check(&self) -> Result<(), Error> {
        if *self.leading.borrow() { Ok(()) } else { Err(Error::NotLeader) }
    }
}

impl<P: ClusterPort> ClusterPort for LeaderOnly<P> {
    async fn children(&self, cluster: &OmeroCluster) -> Result<Children, Error> {
        self.inner.children(cluster).await
    }

    async fn find(&self, ns: &str, kind: ChildKind, name: &str) -> Result<Option<ObjectMeta>, Error> {
        self.inner.find(ns, kind, name).await
    }

    async fn apply(&self, ns: &str, child: Child<'_>, uid: Option<&str>) -> Result<(), Error> {
        self.check()?;
        self.inner.apply(ns, child, uid).await
    }

    async fn delete_child(&self, ns: &str, kind: ChildKind, name: &str, uid: &str) -> Result<(), Error> {
        self.check()?;
        self.inner.delete_child(ns, kind, name, uid).await
    }

    async fn delete_pod(&self, ns: &str, pod: &str, uid: &str) -> Result<(), Error> {
        self.check()?;
        self.inner.delete_pod(ns, pod, uid).await
    }

    async fn set_routable(&self, ns: &str, pod: &str, routable: bool) -> Result<(), Error> {
        self.check()?;
        self.inner.set_routable(ns, pod, routable).await
    }

    async fn secret_value(&self, ns: &str, secret: &SecretKeyRef) -> Result<String, Error> {
        self.inner.secret_value(ns, secret).await
    }

    async fn write_status(
        &self,
        cluster: &OmeroCluster,
        status: &OmeroClusterStatus,
    ) -> Result<StatusWrite, Error> {
        self.check()?;
        self.inner.write_status(cluster, status).await
    }

    async fn publish(&self, cluster: &OmeroCluster, event: &Event) -> Result<(), Error> {
        self.check()?;
        self.inner.publish(cluster, event).await
    }
}

impl<O: OmeroPort> OmeroPort for LeaderOnly<O> {
    async fn count_sessions(&self, query: &SessionQuery) -> Result<Option<SessionCount>, String> {
        self.inner.count_sessions(query).await
    }

    async fn redirect_new_sessions(&self, query: &RedirectQuery) -> Result<bool, String> {
        self.check().map_err(|e| e.to_string())?;
        self.inner.redirect_new_sessions(query).await
    }
}
