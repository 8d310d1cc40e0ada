//! One reconcile of one OmeroCluster: observe -> decide -> record -> act.
//!
//! - **observe** ([`observe`]) reads: the children from the caches, the names the cluster
//!   wants that nothing it labels holds, the session counts due. It decides nothing.
//! - **decide** ([`decide`]) is one pure function of the cluster, the observation and the
//!   time: the status to record, the writes, the redirect, the Events.
//! - **record** writes that status with the `resourceVersion` the reconcile read: a reconcile
//!   that started from a stale copy (a watch cache lagging behind the operator's own last
//!   write) is refused there and acts on nothing; an operator killed after the write finds the
//!   same decisions in status and carries them out.
//! - **act** ([`act`]) makes the writes in their order (every one idempotent); what the API
//!   server refused, or OMERO answered, is recorded once more ([`Decision::settle`]).
//!
//! Events are published only by the reconcile whose write recorded the transition: at most
//! once per transition (an operator killed between the write and the publish loses that
//! Event; status still says it).

use std::{sync::Arc, time::Duration as StdDuration};

use kube::ResourceExt;
use tracing::{debug, info, warn};

use super::{
    Context,
    act::act,
    decide::{Decision, decide},
    observe::observe,
    port::{ClusterPort, Event, OmeroPort, StatusWrite},
};
use crate::{Error, api::OmeroCluster};

pub use super::decide::RESYNC;

/// After a stale read (the status write was refused): look again almost at once, from the
/// watch cache, which by then holds the newer cluster.
pub const STALE_RETRY: StdDuration = StdDuration::from_millis(250);

/// Returns when to look at the cluster again without a watch event.
pub async fn reconcile<P: ClusterPort, O: OmeroPort>(
    cluster: Arc<OmeroCluster>,
    ctx: Arc<Context<P, O>>,
) -> Result<StdDuration, Error> {
    let ns = cluster.namespace().ok_or_else(|| Error::MissingNamespace(cluster.name_any()))?;
    // From here on the read-only pool's nodes are nodes of the spec like any other.
    let cluster = crate::pool::resolved(&cluster);
    let cluster: &OmeroCluster = &cluster;
    let now = ctx.clock.now();
    let observation = observe(&ctx, cluster, now).await?;
    let decision = decide(cluster, &observation, now)?;
    let Recorded::At(recorded) = record(&ctx.port, cluster, &decision).await? else {
        return Ok(STALE_RETRY);
    };
    let outcome = act(&ctx, cluster, &decision.actions).await?;
    let mut events = decision.events.clone();
    let status = match decision.settle(&outcome, now) {
        None => decision.status.clone(),
        Some(settled) => {
            let mut current = cluster.clone();
            current.metadata.resource_version = recorded;
            if ctx.port.write_status(&current, &settled).await? == StatusWrite::Stale {
                // The first write recorded its transitions: their Events go out all the same;
                // what acting found is recorded (and announced) by the next reconcile.
                ctx.probe_memory.remember(cluster, &decision.status);
                events.extend(decision.transition_events(&decision.status));
                publish(&ctx.port, cluster, &events).await;
                return Ok(STALE_RETRY);
            }
            settled
        }
    };
    ctx.probe_memory.remember(cluster, &status);
    events.extend(decision.transition_events(&status));
    ctx.metrics.observe_status(&ns, &cluster.name_any(), &decision.old, &status, now);
    publish(&ctx.port, cluster, &events).await;
    Ok(decision.requeue)
}

/// Where the record stands once [`record`] is done.
enum Recorded {
    /// The decision stands in status; the cluster's `resourceVersion` now.
    At(Option<String>),
    /// The reconcile read a stale copy: nothing is done.
    Stale,
}

/// Writes the decision's status when it must be, with the `resourceVersion` read.
async fn record<P: ClusterPort>(
    port: &P,
    cluster: &OmeroCluster,
    decision: &Decision,
) -> Result<Recorded, Error> {
    if !decision.record {
        return Ok(Recorded::At(cluster.metadata.resource_version.clone()));
    }
    Ok(match port.write_status(cluster, &decision.status).await? {
        StatusWrite::Written(resource_version) => Recorded::At(resource_version),
        StatusWrite::Stale => {
            debug!(cluster = %cluster.name_any(), "stale read: the cluster changed since it was read; looking again");
            Recorded::Stale
        }
    })
}

/// Publishes each Event. One that cannot be published is logged, not retried: status carries
/// the same facts and must not wait on it.
async fn publish<P: ClusterPort>(port: &P, cluster: &OmeroCluster, events: &[Event]) {
    for event in events {
        info!(cluster = %cluster.name_any(), reason = %event.reason, note = %event.note, "event");
        if let Err(error) = port.publish(cluster, event).await {
            warn!(cluster = %cluster.name_any(), reason = %event.reason, %error, "could not publish the event");
        }
    }
}
