//! Carries out a recorded decision's [`Actions`], in their order, and says what the API
//! server and OMERO answered. Every action is idempotent, so an operator killed midway does
//! them again from the record. A refusal is reported, never retried blindly: retrying would
//! not cure it.

use futures::future::join_all;
use kube::ResourceExt;
use tracing::{info, warn};

use super::{
    Context,
    decide::{Actions, Apply, Outcome, Redirect},
    port::{ChildObject, ClusterPort, OmeroPort},
};
use crate::{
    Error,
    api::{ObjectProblem, OmeroCluster},
    ownership,
};

pub async fn act<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    cluster: &OmeroCluster,
    actions: &Actions,
) -> Result<Outcome, Error> {
    let name = cluster.name_any();
    let ns = cluster.namespace().ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    let uid = cluster.uid();
    let mut outcome = Outcome {
        redirect: match &actions.redirect {
            Some(redirect) => Some(point_new_sessions(&ctx.omero, &name, redirect).await),
            None => None,
        },
        ..Outcome::default()
    };
    // The counter's ConfigMap first: a pod that mounts it does not start until it exists. The
    // rest are independent of each other: issued together, the client's request limit bounding
    // how many are in flight, so a new cluster costs one round trip per group, not per object.
    let (first, rest): (Vec<&Apply>, Vec<&Apply>) =
        actions.applies.iter().partition(|a| matches!(a.object, ChildObject::ConfigMap(_)));
    for group in [first, rest] {
        let (name, ns) = (&name, &ns);
        let results = join_all(group.iter().map(|apply| async move {
            let child = apply.object.as_child();
            info!(cluster = %name, kind = child.kind().as_str(), child = child.name(), "applying");
            (apply, ctx.port.apply(ns, child, apply.uid.as_deref()).await)
        }))
        .await;
        for (apply, result) in results {
            if apply.uid.is_none() && result.is_ok() {
                let child = apply.object.as_child();
                ctx.awaited.created(cluster, child.kind(), child.name(), ctx.clock.now());
            }
            if let Some(problem) = refusal_of(ctx, ns, uid.as_deref(), apply, result).await? {
                outcome.refusals.push(problem);
            }
        }
    }
    // A refused delete or label patch is reported like a refused apply.
    let mut refused = |kind: &str, object: &str, verb: &str, resource, result: Result<(), Error>| {
        let Err(error) = result else { return Ok(()) };
        let Some(refusal) = error.refusal() else { return Err(error) };
        let problem = ownership::refused(kind, object, &ns, verb, resource, &refusal);
        warn!(cluster = %name, kind, child = object, why = %problem.message, "refused");
        outcome.refusals.push(problem);
        Ok(())
    };
    for (kind, child, child_uid) in &actions.deletes {
        info!(cluster = %name, ?kind, child, "deleting: its node left the spec and is drained");
        let result = ctx.port.delete_child(&ns, *kind, child, child_uid).await;
        refused(kind.as_str(), child, "delete", kind.api_resource(), result)?;
    }
    for (pod, pod_uid) in &actions.pod_deletes {
        info!(cluster = %name, pod, "deleting the pod of a drained node: it moves off its Kubernetes node");
        let result = ctx.port.delete_pod(&ns, pod, pod_uid).await;
        refused("Pod", pod, "delete", ("", "pods"), result)?;
    }
    for (pod, routable) in &actions.labels {
        info!(cluster = %name, pod, routable, "labelling pod");
        let result = ctx.port.set_routable(&ns, pod, *routable).await;
        refused("Pod", pod, "patch", ("", "pods"), result)?;
    }
    Ok(outcome)
}

/// What a refused apply means for the record: a problem to report, or none (the object was
/// replaced by one of ours, or is gone: the next reconcile applies it from a fresh cache). An
/// error that is not a refusal is the reconcile's error.
async fn refusal_of<P: ClusterPort, O: OmeroPort>(
    ctx: &Context<P, O>,
    ns: &str,
    owner_uid: Option<&str>,
    apply: &Apply,
    result: Result<(), Error>,
) -> Result<Option<ObjectProblem>, Error> {
    let Err(error) = result else { return Ok(None) };
    if let Error::NameTaken { kind, name } = &error {
        // Created since the caches last heard of the name: by this operator (its own create,
        // not yet delivered by the watches) or by someone else. Nothing was written. The
        // object's watch event brings the next reconcile when it is the cluster's; a foreign
        // one is reported by the next reconcile, from the caches.
        info!(kind, child = name, "the name was taken since the caches saw it free: nothing written");
        return Ok(None);
    }
    let Some(refusal) = error.refusal() else { return Err(error) };
    let child = apply.object.as_child();
    let kind = child.kind();
    if apply.uid.is_some() && refusal.replaced_object() {
        // Replaced since the cache saw it: whose it is now decides the report, as far as the
        // look-up caches know; when they have not heard of the new holder yet, nothing is
        // reported now and the next reconcile reports it.
        let current = ctx.port.find(ns, kind, child.name()).await?;
        let foreign = current.filter(|m| !ownership::is_controlled_by(m, owner_uid));
        if foreign.is_some() {
            warn!(kind = kind.as_str(), child = child.name(), "replaced by an object not ours");
        }
        return Ok(foreign.map(|meta| ownership::not_owned(kind.as_str(), child.name(), &meta)));
    }
    // An apply without a uid precondition may create, and is authorized as create.
    let verb = if apply.uid.is_none() { "create" } else { "patch" };
    let problem = ownership::refused(kind.as_str(), child.name(), ns, verb, kind.api_resource(), &refusal);
    warn!(kind = kind.as_str(), child = child.name(), why = %problem.message, "refused");
    Ok(Some(problem))
}

/// Points the grid's new sessions at the redirect's node: its name, or why it failed.
async fn point_new_sessions<O: OmeroPort>(
    omero: &O,
    cluster: &str,
    redirect: &Redirect,
) -> Result<String, String> {
    if omero.redirect_new_sessions(&redirect.query).await? {
        info!(cluster, node = %redirect.node, "grid redirect set");
    }
    Ok(redirect.node.clone())
}
