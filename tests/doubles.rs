//! The port doubles themselves, against what a Kubernetes 1.28 API server does: what it stores
//! for what it is sent (defaults, allocations, canonical quantities, what Go's encoding leaves
//! out, system metadata), objects in namespaces, and pods that terminate when deleted.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use omero_operator::{
    api::keys,
    controller::port::{ChildKind, ClusterPort},
};
use serde_json::{Value, json};
use support::{sim::Sim, *};

fn typed<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn value<K: serde::Serialize>(object: &K) -> Value {
    serde_json::to_value(object).unwrap()
}

/// A Deployment as a client might send it: no strategy, no grace period, containers without
/// pull policy, protocols or probe thresholds, and every kind of volume that has defaults.
fn bare_deployment() -> Deployment {
    typed(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                    "containers": [{
                        "name": "web",
                        "image": "registry.example:5000/web",
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "EMPTY", "value": ""}],
                        "resources": {"requests": {"cpu": "0.5", "memory": "1073741824"},
                                      "limits": {"cpu": "1000m", "memory": "1024Mi"}},
                        "readinessProbe": {"httpGet": {"port": 8080}, "periodSeconds": 20},
                        "livenessProbe": {"exec": {"command": ["true"]}},
                        "startupProbe": {"grpc": {"port": 9000}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/web", "readOnly": false}],
                        "securityContext": {"allowPrivilegeEscalation": false}
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "web"}},
                        {"name": "secret", "secret": {"secretName": "web"}},
                        {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                        {"name": "scratch"}
                    ]
                }
            }
        }
    }))
}

#[test]
fn a_deployment_is_stored_with_the_defaults_of_kubernetes_1_28() {
    let fake = FakeCluster::default();
    let stored = value(&fake.state().admit("Deployment", "omero", &bare_deployment(), None).unwrap());
    let spec = &stored["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["securityContext"], json!({}));
    assert_eq!(pod["schedulerName"], "default-scheduler");
    for container in [&pod["containers"][0], &pod["initContainers"][0]] {
        assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(container["terminationMessagePolicy"], "File");
    }
    assert_eq!(pod["initContainers"][0]["imagePullPolicy"], "IfNotPresent", "tagged");
    let web = &pod["containers"][0];
    assert_eq!(web["imagePullPolicy"], "Always", "no tag (the :5000 is the registry's port): latest");
    assert_eq!(web["ports"][0]["protocol"], "TCP");
    assert_eq!(web["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(web["env"][1], json!({"name": "EMPTY"}), "Go leaves out an empty value");
    assert_eq!(
        web["resources"],
        json!({"requests": {"cpu": "500m", "memory": "1073741824"}, "limits": {"cpu": "1", "memory": "1Gi"}})
    );
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "periodSeconds": 20,
               "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(web["livenessProbe"]["periodSeconds"], 10);
    assert_eq!(web["startupProbe"]["grpc"], json!({"port": 9000, "service": ""}));
    assert_eq!(
        web["volumeMounts"][0],
        json!({"name": "config", "mountPath": "/etc/web"}),
        "readOnly: false left out"
    );
    assert_eq!(web["securityContext"]["allowPrivilegeEscalation"], false, "a pointer keeps false");
    assert_eq!(pod["volumes"][0]["configMap"]["defaultMode"], 420);
    assert_eq!(pod["volumes"][1]["secret"]["defaultMode"], 420);
    assert_eq!(pod["volumes"][2]["downwardAPI"]["defaultMode"], 420);
    assert_eq!(pod["volumes"][2]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(pod["volumes"][3], json!({"name": "scratch", "emptyDir": {}}), "no source: an emptyDir");

    // Recreate takes no rollingUpdate; what the client set stays.
    let mut recreate = bare_deployment();
    let spec = recreate.spec.as_mut().unwrap();
    spec.strategy = Some(typed(json!({"type": "Recreate"})));
    spec.replicas = Some(3);
    spec.progress_deadline_seconds = Some(2400);
    let stored = value(&fake.state().admit("Deployment", "omero", &recreate, None).unwrap());
    assert_eq!(stored["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(
        (&stored["spec"]["replicas"], &stored["spec"]["progressDeadlineSeconds"]),
        (&json!(3), &json!(2400))
    );
}

#[test]
fn the_api_server_sets_the_system_metadata_and_counts_changes() {
    let fake = FakeCluster::new(cluster_from_yaml(
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: omero}\n\
         spec: {image: x, database: {host: db, passwordSecret: {name: s, key: k}}, repository: {claimName: r}, nodes: [{name: rw}]}\n",
    ));
    let mut state = fake.state();
    let sent = bare_deployment();
    let created = state.admit("Deployment", "omero", &sent, None).unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("omero"), "the request's namespace");
    assert!(meta.uid.is_some() && meta.resource_version.is_some());
    assert_eq!(meta.creation_timestamp.as_ref().map(|t| t.0.to_string()).as_deref(), Some(START));
    assert_eq!(meta.generation, Some(1));
    assert_eq!(created.status, Some(Default::default()), "created with an empty status");

    // The same object again: no change, no new version.
    let again = state.admit("Deployment", "omero", &sent, Some(&created)).unwrap();
    assert_eq!(value(&again), value(&created));
    // A label: a new version, the same generation.
    let mut labelled = sent.clone();
    labelled.metadata.labels.as_mut().unwrap().insert("tier".into(), "front".into());
    let relabelled = state.admit("Deployment", "omero", &labelled, Some(&again)).unwrap();
    assert_ne!(relabelled.metadata.resource_version, again.metadata.resource_version);
    assert_eq!((relabelled.metadata.generation, &relabelled.metadata.uid), (Some(1), &created.metadata.uid));
    // The spec, or a Deployment's annotations (copied to its ReplicaSets): a new generation.
    let mut scaled = labelled.clone();
    scaled.spec.as_mut().unwrap().replicas = Some(2);
    let scaled = state.admit("Deployment", "omero", &scaled, Some(&relabelled)).unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    let mut annotated = labelled.clone();
    annotated.spec.as_mut().unwrap().replicas = Some(2);
    annotated.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
    assert_eq!(
        state.admit("Deployment", "omero", &annotated, Some(&scaled)).unwrap().metadata.generation,
        Some(3)
    );

    // A budget counts spec changes too; a Service and a ConfigMap have no generation.
    let budget: PodDisruptionBudget =
        typed(json!({"metadata": {"name": "b"}, "spec": {"maxUnavailable": 0}}));
    let stored = state.admit("PodDisruptionBudget", "omero", &budget, None).unwrap();
    assert_eq!(stored.metadata.generation, Some(1));
    let mut opened = budget.clone();
    opened.spec.as_mut().unwrap().max_unavailable =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
    assert_eq!(
        state.admit("PodDisruptionBudget", "omero", &opened, Some(&stored)).unwrap().metadata.generation,
        Some(2)
    );
    let config_map: ConfigMap = typed(json!({"metadata": {"name": "c"}, "data": {"k": ""}}));
    let stored = state.admit("ConfigMap", "omero", &config_map, None).unwrap();
    assert_eq!(
        (stored.metadata.generation, stored.data.unwrap()["k"].as_str()),
        (None, ""),
        "a map keeps \"\""
    );

    // Sent to another namespace than it names: refused.
    let mut elsewhere = bare_deployment();
    elsewhere.metadata.namespace = Some("other".into());
    let error = state.admit("Deployment", "omero", &elsewhere, None).unwrap_err().to_string();
    assert!(error.contains("does not match the namespace sent on the request"), "{error}");
    // An immutable field: refused.
    let mut reselected = sent.clone();
    reselected.spec.as_mut().unwrap().selector = typed(json!({"matchLabels": {"app": "other"}}));
    let error = state.admit("Deployment", "omero", &reselected, Some(&created)).unwrap_err().to_string();
    assert!(error.contains("spec.selector") && error.contains("immutable"), "{error}");
}

#[test]
fn a_service_is_defaulted_and_keeps_what_the_registry_allocated() {
    let fake = FakeCluster::default();
    let mut state = fake.state();
    let plain: Service = typed(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
    }));
    let stored = state.admit("Service", "omero", &plain, None).unwrap();
    let spec = value(&stored)["spec"].clone();
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["ports"][0], json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}));
    let ip = spec["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(spec["clusterIPs"], json!([ip]));
    assert_eq!((&spec["ipFamilies"], &spec["ipFamilyPolicy"]), (&json!(["IPv4"]), &json!("SingleStack")));
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(value(&stored)["status"], json!({"loadBalancer": {}}));
    // Applied again without an IP: it keeps the one it has; a switch to headless is refused.
    let again = state.admit("Service", "omero", &plain, Some(&stored)).unwrap();
    assert_eq!(again.spec.as_ref().unwrap().cluster_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(again.metadata.resource_version, stored.metadata.resource_version, "no change");
    let mut headless = plain.clone();
    headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let error = state.admit("Service", "omero", &headless, Some(&again)).unwrap_err().to_string();
    assert!(error.contains("spec.clusterIPs[0]") && error.contains("immutable"), "{error}");
    // Created headless: no IP.
    let stored = state.admit("Service", "omero", &headless, None).unwrap();
    let spec = value(&stored)["spec"].clone();
    assert_eq!((&spec["clusterIP"], &spec["clusterIPs"]), (&json!("None"), &json!(["None"])));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack", "headless with a selector");

    // Client-IP affinity gets its default timeout; NodePort gets node ports, kept by port name.
    let node_port: Service = typed(json!({
        "metadata": {"name": "entry"},
        "spec": {"type": "NodePort", "sessionAffinity": "ClientIP", "selector": {"app": "web"},
                 "ports": [{"name": "a", "port": 4063}, {"name": "b", "port": 4064}]}
    }));
    let stored = state.admit("Service", "omero", &node_port, None).unwrap();
    let spec = value(&stored)["spec"].clone();
    assert_eq!(spec["sessionAffinityConfig"], json!({"clientIP": {"timeoutSeconds": 10800}}));
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    let ports: Vec<Value> = spec["ports"].as_array().unwrap().iter().map(|p| p["nodePort"].clone()).collect();
    assert!(ports.iter().all(|p| p.as_i64().is_some_and(|p| (30000..32768).contains(&p))), "{ports:?}");
    let mut reordered = node_port.clone();
    reordered.spec.as_mut().unwrap().ports.as_mut().unwrap().reverse();
    let again = value(&state.admit("Service", "omero", &reordered, Some(&stored)).unwrap());
    assert_eq!(again["spec"]["ports"][0]["nodePort"], ports[1], "port b keeps its node port");
}

#[test]
fn a_budget_and_a_config_map_get_no_spec_defaults() {
    let fake = FakeCluster::default();
    let mut state = fake.state();
    let budget: PodDisruptionBudget = typed(json!({
        "metadata": {"name": "b"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}}
    }));
    let stored = state.admit("PodDisruptionBudget", "omero", &budget, None).unwrap();
    assert_eq!(value(&stored)["spec"], value(&budget)["spec"], "unhealthyPodEvictionPolicy is not defaulted");
    assert_eq!(
        value(&stored)["status"],
        json!({"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0})
    );
    let config_map: ConfigMap = typed(json!({"metadata": {"name": "c"}, "data": {"a": "1"}}));
    let stored = state.admit("ConfigMap", "omero", &config_map, None).unwrap();
    assert_eq!((value(&stored)["data"].clone(), stored.metadata.uid.is_some()), (json!({"a": "1"}), true));
}

/// `Quantity.String()` after `ParseQuantity` (apimachinery's quantity_test.go), and resource
/// lists rounded up to milli-units first (`SetDefaults_ResourceList`).
#[test]
fn quantities_are_stored_in_canonical_form() {
    for (written, stored) in [
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1080m", "1080m"),
        ("1.08", "1080m"),
        ("0.1", "100m"),
        ("1000000000", "1G"),
        ("1000M", "1G"),
        ("3000", "3k"),
        ("1073741824", "1073741824"), // no suffix is decimal: never 1Gi
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("6Ki", "6Ki"),
        ("1025", "1025"),
        (".5Ki", "512"), // below 1024: decimal
        ("1e9", "1e9"),
        ("1e3", "1e3"),
        ("1E3", "1e3"),
        ("0", "0"),
        ("0.0001", "1m"), // rounded up to milli-units
        ("1n", "1m"),
    ] {
        assert_eq!(defaults::canonical_quantity(written, true).as_deref(), Some(stored), "{written}");
    }
    // Elsewhere (e.g. a divisor) only nano-units.
    assert_eq!(defaults::canonical_quantity("1n", false).as_deref(), Some("1n"));
    assert_eq!(defaults::canonical_quantity("0.5", false).as_deref(), Some("500m"));
    for bad in ["", "Gi", "1.2.3", "8GB", "x"] {
        assert_eq!(defaults::canonical_quantity(bad, true), None, "{bad}");
    }
}

#[test]
fn objects_live_in_namespaces_and_names_alone_mean_the_test_namespace() {
    let mut objects: Objects<ConfigMap> = Objects::default();
    let named = |ns: Option<&str>| -> ConfigMap {
        typed(json!({"metadata": {"name": "c", "namespace": ns}, "data": {"ns": ns.unwrap_or("none")}}))
    };
    objects.insert("c".into(), named(None));
    objects.put(named(Some("other")));
    assert_eq!(objects.len(), 1, "the test namespace's");
    assert_eq!(objects["c"].metadata.namespace.as_deref(), Some(TEST_NAMESPACE), "given the namespace");
    assert_eq!(objects.get_in("other", "c").unwrap().data.as_ref().unwrap()["ns"], "other");
    assert_eq!(objects.values_in("other").count(), 1);
    assert_eq!(objects.all().count(), 2);
    objects.retain(|_, _| false);
    assert!(
        objects.get("c").is_none() && objects.get_in("other", "c").is_some(),
        "retain keeps other namespaces"
    );
    assert!(objects.remove("c").is_none());
    assert!(objects.remove_in("other", "c").is_some());
}

/// A pod of a cluster in the test namespace, as `set_pod` reports it.
fn one_node() -> FakeCluster {
    FakeCluster::new(cluster_from_yaml(
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: omero}\n\
         spec: {image: 'openmicroscopy/omero-server:5.6', database: {host: db, passwordSecret: {name: s, key: k}},\n\
         \x20 repository: {claimName: r}, nodes: [{name: rw}]}\n",
    ))
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_terminates_and_a_second_delete_changes_nothing() {
    let fake = one_node();
    fake.set_pod("rw", "10.0.0.1", true);
    let pod: Pod = fake.state().pods["omero-rw-pod"].clone();
    let uid = pod.metadata.uid.clone().expect("the API server gave it a uid");
    assert_eq!(pod.spec.as_ref().unwrap().termination_grace_period_seconds, Some(30), "defaulted");

    tokio::time::advance(Duration::from_secs(5)).await;
    fake.delete_pod("omero", "omero-rw-pod", "another-uid").await.unwrap();
    assert!(fake.state().pods["omero-rw-pod"].metadata.deletion_timestamp.is_none(), "409: not this pod");
    fake.delete_pod("omero", "omero-rw-pod", &uid).await.unwrap();
    let terminating = fake.state().pods["omero-rw-pod"].clone();
    let meta = &terminating.metadata;
    let deleted_at: k8s_openapi::jiff::Timestamp = "2026-11-25T10:00:05Z".parse().unwrap();
    assert_eq!(
        meta.deletion_timestamp.as_ref().unwrap().0,
        deleted_at + Duration::from_secs(30),
        "now + grace"
    );
    assert_eq!(meta.deletion_grace_period_seconds, Some(30));
    assert_ne!(meta.resource_version, pod.metadata.resource_version);
    // Still there, and still the cluster's: the operator sees it terminating.
    let cluster = fake.cluster();
    let children = fake.children(&cluster).await.unwrap();
    assert!(children.pods.iter().any(|p| p.metadata.deletion_timestamp.is_some()));

    tokio::time::advance(Duration::from_secs(5)).await;
    fake.delete_pod("omero", "omero-rw-pod", &uid).await.unwrap();
    assert_eq!(value(&fake.state().pods["omero-rw-pod"]), value(&terminating), "a second delete: no change");
    fake.finish_terminations();
    assert!(fake.state().pods.is_empty());

    // A pod no node runs (pending, unscheduled) goes at once.
    fake.state().store_pod(
        "omero",
        json!({"metadata": {"name": "pending"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]},
               "status": {"phase": "Pending"}}),
    );
    let uid = fake.state().pods["pending"].metadata.uid.clone().unwrap();
    fake.delete_pod("omero", "pending", &uid).await.unwrap();
    assert!(fake.state().pods.get("pending").is_none());
}

#[tokio::test(start_paused = true)]
async fn the_port_sees_only_the_namespace_it_is_asked_about() {
    let fake = one_node();
    fake.seed_service_in("other", "omero-rw", &[], None);
    fake.state().secrets.insert_in("other", "s", "k", "elsewhere".into());
    assert_eq!(fake.find("omero", ChildKind::Service, "omero-rw").await.unwrap(), None);
    assert!(fake.find("other", ChildKind::Service, "omero-rw").await.unwrap().is_some());
    let secret = omero_operator::api::SecretKeyRef { name: "s".into(), key: "k".into() };
    assert!(fake.secret_value("omero", &secret).await.is_err());
    assert_eq!(fake.secret_value("other", &secret).await.unwrap(), "elsewhere");
    // A pod of that name in another namespace is not labelled.
    fake.set_pod("rw", "10.0.0.1", true);
    let mut elsewhere = fake.state().pods["omero-rw-pod"].clone();
    elsewhere.metadata.namespace = Some("other".into());
    fake.state().pods.put(elsewhere);
    fake.set_routable("omero", "omero-rw-pod", true).await.unwrap();
    let state = fake.state();
    let routable = |p: &Pod| p.metadata.labels.as_ref().unwrap().contains_key(keys::ROUTABLE_LABEL);
    assert!(routable(&state.pods["omero-rw-pod"]));
    assert!(!routable(state.pods.get_in("other", "omero-rw-pod").unwrap()));
}

/// The simulation's part: a pod deleted through the port stops at once (out of the endpoints,
/// its sessions killed as of the deletion, its Ready condition lagging), its ReplicaSet replaces
/// it at once, and it is gone after `TERMINATION`; a template change instead waits for the old
/// pod to be gone.
#[tokio::test(start_paused = true)]
async fn the_simulated_kubelet_stops_a_deleted_pod_and_its_replicaset_replaces_it() {
    let fake = one_node();
    let sim = Sim::new(&fake, Duration::from_secs(30));
    let ctx = sim.context();
    reconcile_once(&fake, &ctx).await.unwrap();
    sim.kubelet();
    tokio::time::advance(Duration::from_secs(30)).await;
    sim.kubelet();
    let first = sim.pod_of("rw").unwrap();
    assert_eq!(sim.serving(), 0, "not routable yet");
    sim.open_sessions("rw", 2, Duration::from_secs(60));
    let uid = fake.state().pods[&first].metadata.uid.clone().unwrap();

    tokio::time::advance(Duration::from_secs(1)).await;
    fake.delete_pod("omero", &first, &uid).await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;
    sim.kubelet();
    {
        let state = fake.state();
        let old = &state.pods[&first];
        assert!(old.metadata.deletion_timestamp.is_some());
        let ready = old.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].status.clone();
        assert_eq!(ready, "True", "the kubelet's readiness lags: the server has not stopped yet");
        assert_eq!(state.pods.len(), 2, "replaced at once, beside the terminating pod");
    }
    assert_eq!(sim.world().killed, 2, "its sessions died with the server");
    // Labelled routable, it would still be out of the entry Service's endpoints.
    fake.set_routable("omero", &first, true).await.unwrap();
    assert_eq!(sim.serving(), 0, "a terminating pod is no endpoint");
    let second = sim.pod_of("rw").unwrap();
    assert_ne!(second, first, "the node's pod is the live one");
    // A second delete and an eviction of the terminating pod change nothing.
    fake.delete_pod("omero", &first, &uid).await.unwrap();
    assert_eq!(sim.evict(&first), Ok(()));
    tokio::time::advance(sim::TERMINATION).await;
    sim.kubelet();
    assert!(fake.state().pods.get(&first).is_none(), "gone once stopped");
    assert_eq!(sim.world().pods_created, 2);

    // A new template: the old pod stops first, the new one comes once it is gone.
    tokio::time::advance(Duration::from_secs(30)).await;
    sim.kubelet();
    fake.state().deployments["omero-rw"]
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .insert(keys::REVISION_ANNOTATION.into(), "new-revision".into());
    sim.kubelet();
    assert!(fake.state().pods[&second].metadata.deletion_timestamp.is_some());
    assert_eq!(fake.state().pods.len(), 1, "Recreate: no new pod while the old one runs");
    tokio::time::advance(sim::TERMINATION).await;
    sim.kubelet();
    let third = sim.pod_of("rw").unwrap();
    assert!(third != second && fake.state().pods.len() == 1);
    assert_eq!(sim.world().restarts.get("rw"), Some(&1));
}
