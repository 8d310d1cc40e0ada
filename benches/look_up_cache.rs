//! Heap per entry of a look-up cache (`controller::run`'s metadata-only watches of every
//! Deployment, Service, ConfigMap and budget), kept whole and as `cache::slim_look_up_entry`
//! keeps it: `cargo bench --bench look_up_cache`. 10,000 entries go into a real reflector store
//! through its writer, as a watch's first LIST fills it; a counting allocator reports the bytes
//! the store holds afterwards (entries, keys and its table), divided by the entries. These are
//! the bytes asked of the allocator: malloc adds its own few bytes per allocation, so the
//! allocations are counted too. The figures do not depend on the build's optimisation.

// The managed fields below are one deeply nested `json!`.
#![recursion_limit = "256"]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    core::PartialObjectMeta,
    runtime::{reflector, watcher},
};
use omero_operator::controller::cache::slim_look_up_entry;
use serde_json::{Value, json};

/// Counts the bytes and allocations live on the heap.
struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            BYTES.fetch_add(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        BYTES.fetch_sub(layout.size(), Relaxed);
        ALLOCATIONS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            BYTES.fetch_add(new_size, Relaxed);
            BYTES.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const ENTRIES: usize = 10_000;

/// A web Deployment someone made with `kubectl apply` (client-side), as a metadata-only LIST of
/// a Kubernetes 1.28 API server returns it: labels, kubectl's copy of the whole object it
/// applied, the revision annotation, and the managed fields of kubectl and the Deployment
/// controller.
fn kubectl_applied(i: usize) -> Value {
    let name = format!("web-{i}");
    let applied = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "lab", "labels": {"app": "web", "tier": "frontend"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web", "tier": "frontend"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                                       "ports": [{"containerPort": 8080, "name": "http"}],
                                                       "env": [{"name": "MODE", "value": "production"},
                                                               {"name": "CACHE_DIR", "value": "/var/cache/web"}],
                                                       "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                                     "limits": {"memory": "256Mi"}},
                                                       "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}]}}}
    });
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {
            "name": name, "namespace": "lab", "uid": format!("6f1c2a3b-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 812_000 + i), "generation": 3,
            "creationTimestamp": "2026-11-30T06:00:00Z",
            "labels": {"app": "web", "tier": "frontend"},
            "annotations": {
                "deployment.kubernetes.io/revision": "3",
                "kubectl.kubernetes.io/last-applied-configuration": format!("{}\n", applied)
            },
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-11-30T06:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                                             "f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                              "f:spec": {"f:progressDeadlineSeconds": {}, "f:replicas": {}, "f:revisionHistoryLimit": {},
                                         "f:selector": {}, "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}},
                                                                         "f:type": {}},
                                         "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                                                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:env": {}, "f:image": {},
                                                                   "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:readinessProbe": {},
                                                                   "f:resources": {}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
                                                                   "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                                                                   "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-11-30T06:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}},
                              "f:status": {"f:availableReplicas": {}, "f:conditions": {}, "f:observedGeneration": {},
                                           "f:readyReplicas": {}, "f:replicas": {}, "f:updatedReplicas": {}}}}
            ]
        }
    })
}

/// One of the operator's own node Deployments, as the same LIST returns it.
fn operators_own(i: usize) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {
            "name": format!("omero{i}-ro-1"), "namespace": "omero", "uid": format!("7a2b3c4d-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 912_000 + i), "generation": 2,
            "creationTimestamp": "2026-11-30T06:00:00Z",
            "labels": {"app.kubernetes.io/name": "omero-server", "app.kubernetes.io/instance": format!("omero{i}"),
                       "app.kubernetes.io/managed-by": "omero-operator", "app.kubernetes.io/component": "node",
                       "omero.openmicroscopy.org/cluster": format!("omero{i}"), "omero.openmicroscopy.org/node": "ro-1"},
            "annotations": {"omero.openmicroscopy.org/revision": "4f1d0c9a2b7e6f35", "deployment.kubernetes.io/revision": "1"},
            "ownerReferences": [{"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
                                 "name": format!("omero{i}"), "uid": format!("4f7e1c2a-0000-4000-8000-{i:012}"),
                                 "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "omero-operator", "operation": "Apply", "apiVersion": "apps/v1",
                 "time": "2026-11-30T06:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:omero.openmicroscopy.org/revision": {}},
                                             "f:labels": {"f:app.kubernetes.io/component": {}, "f:app.kubernetes.io/instance": {},
                                                          "f:app.kubernetes.io/managed-by": {}, "f:app.kubernetes.io/name": {},
                                                          "f:omero.openmicroscopy.org/cluster": {}, "f:omero.openmicroscopy.org/node": {}},
                                             "f:ownerReferences": {"k:{\"uid\":\"u\"}": {}}},
                              "f:spec": {"f:replicas": {}, "f:selector": {}, "f:strategy": {"f:type": {}}, "f:template": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-11-30T06:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:availableReplicas": {}, "f:conditions": {}, "f:observedGeneration": {}}}}
            ]
        }
    })
}

/// Heap bytes and allocations per entry of a store filled with `entries`.
fn per_entry(entries: &[PartialObjectMeta<Deployment>]) -> (f64, f64) {
    let (bytes, allocations) = (BYTES.load(Relaxed), ALLOCATIONS.load(Relaxed));
    let (store, mut writer) = reflector::store::<PartialObjectMeta<Deployment>>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for entry in entries {
        writer.apply_watcher_event(&watcher::Event::InitApply(entry.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let held = (BYTES.load(Relaxed) - bytes, ALLOCATIONS.load(Relaxed) - allocations);
    assert_eq!(store.state().len(), entries.len());
    drop((store, writer));
    (held.0 as f64 / entries.len() as f64, held.1 as f64 / entries.len() as f64)
}

fn main() {
    println!(
        "look-up cache: heap per entry, {ENTRIES} entries in a reflector store (bytes asked of the allocator)"
    );
    for (what, object) in [
        ("a Deployment made by kubectl apply", kubectl_applied as fn(usize) -> Value),
        ("one of the operator's own Deployments", operators_own),
    ] {
        let whole: Vec<PartialObjectMeta<Deployment>> =
            (0..ENTRIES).map(|i| serde_json::from_value(object(i)).unwrap()).collect();
        let mut slim = whole.clone();
        slim.iter_mut().for_each(slim_look_up_entry);
        let json = serde_json::to_string(&object(0)).unwrap().len();
        let (whole_bytes, whole_allocations) = per_entry(&whole);
        let (slim_bytes, slim_allocations) = per_entry(&slim);
        println!(
            "  {what} ({json} bytes of JSON): whole {whole_bytes:.0} bytes in {whole_allocations:.1} allocations; \
             slimmed {slim_bytes:.0} bytes in {slim_allocations:.1} allocations"
        );
    }
}
