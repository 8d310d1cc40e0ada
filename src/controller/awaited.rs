//! The objects this operator created that its watches have not delivered yet: what Kubernetes'
//! own ReplicaSet controller calls expectations.
//!
//! Why: a new cluster's creates wake reconciles (each object's watch event does) before the
//! other objects' events arrive. Such a reconcile finds some of the cluster's names in no
//! cache, and would apply them once more: an apply made to only create, which the API server
//! refuses (409) as the operator's own object holds the name. Nothing was ever written
//! twice, but on a real API server each new cluster cost ~1.85 such requests. A name awaited
//! here is neither looked up nor written; its watch event brings the next reconcile.
//!
//! Only names found free and created by this process are awaited, and never for long: after
//! [`AWAIT_LIMIT`] the name is looked up again as any other (a watch that lost the event, an
//! object deleted before its event came), which at worst costs the refused apply above.
//! Losing it all (a restart) costs the same and nothing more.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::port::{ChildKind, Children};
use crate::api::OmeroCluster;

/// How long a created name is awaited: far longer than a watch's delivery on a busy API
/// server (seconds), short enough that a lost event delays a write by little.
pub const AWAIT_LIMIT: Duration = Duration::from_secs(30);

/// A name created, and when.
type Created = Vec<(ChildKind, String, Timestamp)>;

/// Each cluster's uid (a cluster created again under its name is another) and its names
/// created and not yet seen.
type Clusters = HashMap<ObjectRef<OmeroCluster>, (Option<String>, Created)>;

#[derive(Debug, Default)]
pub struct Awaited {
    clusters: Mutex<Clusters>,
}

impl Awaited {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clusters> {
        self.clusters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that this operator just created `name` for `cluster`.
    pub fn created(&self, cluster: &OmeroCluster, kind: ChildKind, name: &str, now: Timestamp) {
        let mut clusters = self.lock();
        let entry =
            clusters.entry(ObjectRef::from_obj(cluster)).or_insert_with(|| (cluster.uid(), Vec::new()));
        if entry.0 != cluster.uid() {
            *entry = (cluster.uid(), Vec::new());
        }
        entry.1.retain(|(k, n, _)| (*k, n.as_str()) != (kind, name));
        entry.1.push((kind, name.to_string(), now));
    }

    /// The names of `cluster` still awaited at `now`: created less than [`AWAIT_LIMIT`] ago
    /// and not among `children` (the caches). The others are forgotten.
    pub fn still_awaited(
        &self,
        cluster: &OmeroCluster,
        children: &Children,
        now: Timestamp,
    ) -> BTreeSet<(ChildKind, String)> {
        let key = ObjectRef::from_obj(cluster);
        let mut clusters = self.lock();
        let Some((uid, created)) = clusters.get_mut(&key) else { return BTreeSet::new() };
        if *uid != cluster.uid() {
            clusters.remove(&key);
            return BTreeSet::new();
        }
        let limit = now - AWAIT_LIMIT;
        created.retain(|(kind, name, at)| *at > limit && !children.holds(*kind, name));
        let awaited = created.iter().map(|(kind, name, _)| (*kind, name.clone())).collect();
        if created.is_empty() {
            clusters.remove(&key);
        }
        awaited
    }

    /// Forgets a cluster that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&ObjectRef::new(name).within(namespace));
    }

    /// Clusters with names awaited, as (namespace, name).
    pub fn clusters(&self) -> Vec<(String, String)> {
        self.lock().keys().map(|k| (k.namespace.clone().unwrap_or_default(), k.name.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;

    use super::*;

    fn cluster(uid: &str) -> OmeroCluster {
        crate::render::tests::base_with(|c| c.metadata.uid = Some(uid.into()))
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn a_created_name_is_awaited_until_the_caches_hold_it_or_the_limit_passes() {
        let awaited = Awaited::default();
        let c = cluster("u1");
        awaited.created(&c, ChildKind::Service, "omc-rw", at(100));
        awaited.created(&c, ChildKind::Deployment, "omc-rw", at(100));
        let none = Children::default();
        assert_eq!(awaited.still_awaited(&c, &none, at(101)).len(), 2);

        let service = Service {
            metadata: ObjectMeta { name: Some("omc-rw".into()), ..ObjectMeta::default() },
            ..Service::default()
        };
        let cached = Children { services: vec![service], ..Children::default() };
        assert_eq!(
            awaited.still_awaited(&c, &cached, at(102)),
            BTreeSet::from([(ChildKind::Deployment, "omc-rw".to_string())]),
            "the Service arrived; the Deployment of the same name did not"
        );
        assert_eq!(awaited.still_awaited(&c, &none, at(102)).len(), 1, "a seen name is not awaited again");

        let past_limit = at(100) + AWAIT_LIMIT;
        assert!(awaited.still_awaited(&c, &none, past_limit).is_empty(), "awaited no longer than the limit");
        assert!(awaited.clusters().is_empty(), "nothing left to remember");
    }

    #[test]
    fn a_cluster_created_again_awaits_nothing_of_the_old_one() {
        let awaited = Awaited::default();
        awaited.created(&cluster("u1"), ChildKind::Service, "omc-rw", at(100));
        assert!(awaited.still_awaited(&cluster("u2"), &Children::default(), at(101)).is_empty());
        awaited.created(&cluster("u1"), ChildKind::Service, "omc-rw", at(100));
        awaited.forget("imaging", "omc");
        assert!(awaited.still_awaited(&cluster("u1"), &Children::default(), at(101)).is_empty());
    }
}
