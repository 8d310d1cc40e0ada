//! Never touch what is not ours: objects the operator did not create are never changed, adopted
//! or deleted, whatever their name or labels; each is reported once, and the rest of the
//! cluster goes on. Whole reconciles through the port doubles.

mod support;

use omero_operator::{
    api::{NodePhase, ObjectProblemReason, conditions, keys},
    controller::port::ChildKind,
};
use support::*;

const WEB: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: web}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - name: main
  - name: ro
    readOnly: {db: true, repo: true}
"#;

fn setup(yaml: &str) -> (FakeCluster, std::sync::Arc<Ctx>) {
    let fake = FakeCluster::new(cluster_from_yaml(yaml));
    let ctx = context(&fake, &FakeOmero::default());
    (fake, ctx)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

fn touched(writes: &[Write], name: &str) -> bool {
    writes.iter().any(|w| match w {
        Write::ApplyDeployment(n) | Write::ApplyService(n) | Write::Delete(_, n) => n == name,
        Write::Label { pod, .. } => pod.starts_with(name),
        _ => false,
    })
}

#[tokio::test(start_paused = true)]
async fn a_foreign_service_with_a_nodes_name_is_left_alone_reported_once_and_replaced_when_gone() {
    let (fake, ctx) = setup(WEB);
    let foreign = fake.seed_service("web-main", &[("app.kubernetes.io/managed-by", "Helm")], None);

    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::ApplyDeployment("web-main".into())), "that name is free: {writes:?}");
    assert!(!writes.contains(&Write::ApplyService("web-main".into())), "{writes:?}");
    assert_eq!(json(&fake.state().services["web-main"]), json(&foreign), "byte for byte unchanged");
    // The rest of the cluster goes on: the other node, the main node's Deployment, the entry.
    for w in ["web-ro", "web"] {
        assert!(writes.contains(&Write::ApplyService(w.into())), "{w}: {writes:?}");
    }
    assert!(writes.contains(&Write::ApplyDeployment("web-ro".into())));

    let status = fake.status();
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ObjectNotOwned"));
    assert!(
        degraded.message.contains(
            "Service web-main already exists and belongs to an object created outside the operator (managed by Helm)"
        ),
        "{}",
        degraded.message
    );
    let problem = &status.object_problems[0];
    assert_eq!((problem.kind.as_str(), problem.name.as_str()), ("Service", "web-main"));
    assert_eq!(problem.reason, ObjectProblemReason::NotOwned);
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ObjectNotOwned").count(), 1);

    reconcile_once(&fake, &ctx).await.unwrap();
    let again = fake.take_writes();
    assert!(!again.contains(&Write::ApplyService("web-main".into())), "{again:?}");
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ObjectNotOwned").count(), 1, "one Event");
    assert_eq!(json(&fake.state().services["web-main"]), json(&foreign));

    // The other application's Service goes away: the node's own is created next time.
    fake.state().services.remove("web-main");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.take_writes().contains(&Write::ApplyService("web-main".into())));
    let status = fake.status();
    assert!(status.object_problems.is_empty());
    assert_eq!(status.condition(conditions::DEGRADED).unwrap().status, "False");
    let owner = &fake.state().services["web-main"].metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("OmeroCluster", "web"));
}

#[tokio::test(start_paused = true)]
async fn a_foreign_deployment_and_its_pod_are_never_written_even_with_the_operators_labels() {
    let (fake, ctx) = setup(WEB);
    // Another controller's Deployment under the node's name, carrying the cluster's labels, and
    // a ready pod of it that also carries them.
    let labels =
        [(keys::MANAGED_BY_LABEL, keys::MANAGER), (keys::CLUSTER_LABEL, "web"), (keys::NODE_LABEL, "main")];
    let foreign = fake.seed_deployment("web-main", &labels, Some(("Rollout", "web-main", "argo-uid")));
    reconcile_once(&fake, &ctx).await.unwrap();
    {
        // Its pod: controlled by one of the foreign Deployment's ReplicaSets.
        fake.set_pod("main", "127.0.0.9", true);
        fake.set_pod("ro", "127.0.0.2", true);
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.writes();
    assert!(!writes.contains(&Write::ApplyDeployment("web-main".into())), "{writes:?}");
    assert!(
        !writes.iter().any(|w| matches!(w, Write::Label { pod, .. } if pod == "web-main-pod")),
        "{writes:?}"
    );
    assert!(writes.contains(&Write::Label { pod: "web-ro-pod".into(), routable: true }), "{writes:?}");
    assert_eq!(json(&fake.state().deployments["web-main"]), json(&foreign));
    assert!(!fake.pod_routable("main"));

    let status = fake.status();
    assert!(status.object_problems.iter().any(|p| p.kind == "Deployment"
        && p.name == "web-main"
        && p.message.contains("belongs to Rollout web-main")));
    assert_eq!(status.node("main").unwrap().phase, NodePhase::Pending, "the node has no pod of its own");
    assert_eq!(status.node("ro").unwrap().phase, NodePhase::Serving);
}

#[tokio::test(start_paused = true)]
async fn two_clusters_whose_names_collide_the_first_keeps_the_object_the_second_reports_it() {
    // Cluster `a` node `b-c` and cluster `a-b` node `c` both name `a-b-c`.
    let a = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: a, uid: 00000000-0000-4000-8000-0000000000aa}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes: [{name: b-c}]
"#;
    let ab = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: a-b, uid: 00000000-0000-4000-8000-0000000000ab}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes: [{name: c}]
"#;
    let (fake_a, ctx_a) = setup(a);
    reconcile_once(&fake_a, &ctx_a).await.unwrap();
    // One namespace: cluster `a-b` sees what `a` created.
    let (fake_ab, ctx_ab) = setup(ab);
    {
        let created = fake_a.state();
        let mut namespace = fake_ab.state();
        namespace.deployments.extend(created.deployments.clone());
        namespace.services.extend(created.services.clone());
        namespace.next_uid = 100;
    }
    let snapshot = |fake: &FakeCluster| {
        let state = fake.state();
        (json(&state.deployments["a-b-c"]), json(&state.services["a-b-c"]))
    };
    let before = snapshot(&fake_ab);
    reconcile_once(&fake_ab, &ctx_ab).await.unwrap();
    let writes = fake_ab.take_writes();
    assert!(!touched(&writes, "a-b-c"), "{writes:?}");
    assert!(writes.contains(&Write::ApplyService("a-b".into())), "its entry Service is free: {writes:?}");
    assert_eq!(before, snapshot(&fake_ab));
    let problems = fake_ab.status().object_problems;
    let names: Vec<_> = problems.iter().map(|p| (p.kind.as_str(), p.name.as_str())).collect();
    assert_eq!(names, [("Deployment", "a-b-c"), ("Service", "a-b-c")]);
    assert!(
        problems[0].message.contains("belongs to OmeroCluster a (uid 00000000-0000-4000-8000-0000000000aa)")
    );
}

#[tokio::test(start_paused = true)]
async fn node_removal_and_cluster_deletion_leave_foreign_objects_alone() {
    let (fake, ctx) = setup(WEB);
    reconcile_once(&fake, &ctx).await.unwrap();
    let uid = fake.cluster().metadata.uid.unwrap();
    // Carries the cluster's and a node's labels, and even an owner reference to the cluster,
    // but not as controller (e.g. so that it goes with the cluster): still not ours to delete.
    let labels =
        [(keys::MANAGED_BY_LABEL, keys::MANAGER), (keys::CLUSTER_LABEL, "web"), (keys::NODE_LABEL, "ro")];
    let referencing = {
        let mut s = fake.seed_service("web-ro-metrics", &labels, None);
        s.metadata.owner_references =
            Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "omero.openmicroscopy.org/v1alpha1".into(),
                kind: "OmeroCluster".into(),
                name: "web".into(),
                uid: uid.clone(),
                controller: None,
                block_owner_deletion: None,
            }]);
        fake.state().services.insert("web-ro-metrics".into(), s.clone());
        s
    };
    let labelled = fake.seed_service("web-old", &labels, None);
    fake.take_writes();

    fake.state().cluster.as_mut().unwrap().spec.nodes.retain(|n| n.name != "ro");
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::Delete(ChildKind::Deployment, "web-ro".into())), "{writes:?}");
    assert!(!touched(&writes, "web-ro-metrics") && !touched(&writes, "web-old"), "{writes:?}");
    assert_eq!(json(&fake.state().services["web-ro-metrics"]), json(&referencing));
    assert_eq!(json(&fake.state().services["web-old"]), json(&labelled));

    // The cluster is deleted: the garbage collector takes only what carries an owner
    // reference to it, and the operator never put one on anything foreign.
    let foreign = fake.seed_service("web-extra", &[], None);
    fake.collect_garbage_of(&uid);
    let state = fake.state();
    assert!(!state.deployments.contains_key("web-main") && !state.services.contains_key("web"));
    assert_eq!(json(&state.services["web-extra"]), json(&foreign));
    assert_eq!(json(&state.services["web-old"]), json(&labelled));
}

#[tokio::test(start_paused = true)]
async fn a_topology_switch_is_reported_not_retried_for_ever() {
    let grid = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  topology: Grid
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - {name: master, master: true}
  - {name: w1}
"#;
    let (fake, ctx) = setup(grid);
    reconcile_once(&fake, &ctx).await.unwrap();
    let headless = json(&fake.state().services["omero-w1"]);
    fake.take_writes();
    // The API server refuses this change (a CEL transition rule); an older CRD without the rule
    // lets it through, and then the operator must not loop on the immutable clusterIP.
    {
        let mut state = fake.state();
        let cluster = state.cluster.as_mut().unwrap();
        cluster.spec.topology = omero_operator::api::Topology::Independent;
        cluster.spec.nodes[0].master = None;
        cluster.spec.nodes[1].read_only = Some(omero_operator::api::ReadOnlySpec { db: true, repo: true });
        cluster.spec.nodes[1].session_probe = Some(omero_operator::api::SessionProbe {
            kind: omero_operator::api::SessionProbeKind::None,
            ..Default::default()
        });
    }
    reconcile_once(&fake, &ctx).await.expect("reported, not an error to retry");
    let writes = fake.take_writes();
    assert!(!writes.contains(&Write::ApplyService("omero-w1".into())), "{writes:?}");
    assert_eq!(json(&fake.state().services["omero-w1"]), headless);
    let status = fake.status();
    let problem = status.object_problems.iter().find(|p| p.name == "omero-w1").expect("reported");
    assert_eq!(problem.reason, ObjectProblemReason::ImmutableField);
    assert!(problem.message.contains("create a new OmeroCluster"), "{}", problem.message);
    assert_eq!(status.condition(conditions::DEGRADED).unwrap().reason, "ImmutableField");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ImmutableField").count(), 1);
}

const WEB_COUNTED: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: web}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  sessionCounter: {credentialsSecret: {name: omero-monitor}}
  nodes:
  - name: main
  - name: ro
    readOnly: {db: true, repo: true}
"#;

/// The session counter's ConfigMap is a kind the operator writes like any other: a foreign
/// ConfigMap with its name (here another application's, even carrying the operator's labels)
/// is never written, adopted or deleted; it is reported, and the cluster's own is created once
/// the name is free.
#[tokio::test(start_paused = true)]
async fn a_foreign_config_map_with_the_counters_name_is_never_written() {
    let (fake, ctx) = setup(WEB_COUNTED);
    let labels = [(keys::MANAGED_BY_LABEL, keys::MANAGER), (keys::CLUSTER_LABEL, "web")];
    let foreign = fake.seed_config_map("web-session-counter", &labels, None);
    let helm =
        fake.seed_config_map("web-session-counter-x", &[("app.kubernetes.io/managed-by", "Helm")], None);

    for _ in 0..3 {
        reconcile_once(&fake, &ctx).await.unwrap();
    }
    let writes = fake.take_writes();
    assert!(!writes.contains(&Write::ApplyConfigMap("web-session-counter".into())), "{writes:?}");
    assert!(!writes.iter().any(|w| matches!(w, Write::Delete(ChildKind::ConfigMap, _))), "{writes:?}");
    assert_eq!(json(&fake.state().config_maps["web-session-counter"]), json(&foreign), "byte for byte");
    assert_eq!(json(&fake.state().config_maps["web-session-counter-x"]), json(&helm));
    // The rest of the cluster goes on.
    assert!(writes.contains(&Write::ApplyDeployment("web-ro".into())), "{writes:?}");
    let status = fake.status();
    let problem = status.object_problems.iter().find(|p| p.kind == "ConfigMap").expect("reported");
    assert_eq!(
        (problem.name.as_str(), problem.reason),
        ("web-session-counter", ObjectProblemReason::NotOwned)
    );
    assert!(
        problem.message.contains("carries the operator's labels but no owner reference"),
        "{}",
        problem.message
    );
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ObjectNotOwned").count(), 1, "one Event");

    // The name is freed: the cluster's own ConfigMap holds the script.
    fake.state().config_maps.remove("web-session-counter");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.take_writes().contains(&Write::ApplyConfigMap("web-session-counter".into())));
    let ours = fake.state().config_maps["web-session-counter"].clone();
    assert_eq!(ours.metadata.owner_references.unwrap()[0].name, "web");
    assert!(ours.data.unwrap()["omero_session_counter.py"].contains("def count_sessions("));
    assert!(fake.status().object_problems.is_empty());
}

/// Once no node runs the counter, its ConfigMap goes, but only after no Deployment of the
/// cluster mounts it any more (a node keeps its template until it is drained); never a foreign one.
#[tokio::test(start_paused = true)]
async fn the_counters_config_map_goes_only_once_no_deployment_mounts_it() {
    let (fake, ctx) = setup(WEB_COUNTED);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.state().config_maps.contains_key("web-session-counter"));
    fake.take_writes();
    fake.edit(|c| c.spec.session_counter = None);
    let mounts = |fake: &FakeCluster| {
        fake.state().deployments["web-ro"]
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.config_map.is_some()))
    };
    let mut kept_while_mounted = false;
    for _ in 0..4 {
        let mounted_before = mounts(&fake);
        reconcile_once(&fake, &ctx).await.unwrap();
        let deleted =
            fake.take_writes().contains(&Write::Delete(ChildKind::ConfigMap, "web-session-counter".into()));
        assert!(!(deleted && mounted_before), "deleted while a Deployment still mounted it");
        kept_while_mounted |= mounted_before && !deleted;
    }
    assert!(kept_while_mounted, "the first reconcile saw it mounted and kept it");
    assert!(!mounts(&fake), "the node got its new template");
    assert!(!fake.state().config_maps.contains_key("web-session-counter"), "then the ConfigMap went");
}

#[tokio::test(start_paused = true)]
async fn a_foreign_budget_with_a_nodes_name_is_left_alone_reported_once_and_replaced_when_gone() {
    let (fake, ctx) = setup(WEB);
    let foreign = fake.seed_budget("web-main", &[("app.kubernetes.io/managed-by", "Helm")], None);

    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(!writes.contains(&Write::ApplyBudget("web-main".into())), "{writes:?}");
    assert!(!writes.iter().any(|w| matches!(w, Write::Delete(ChildKind::PodDisruptionBudget, _))));
    assert!(writes.contains(&Write::ApplyBudget("web-ro".into())), "the other node's budget: {writes:?}");
    assert!(writes.contains(&Write::ApplyDeployment("web-main".into())), "the rest goes on");
    assert_eq!(json(&fake.state().budgets["web-main"]), json(&foreign), "byte for byte unchanged");
    let status = fake.status();
    let problem = &status.object_problems[0];
    assert_eq!((problem.kind.as_str(), problem.name.as_str()), ("PodDisruptionBudget", "web-main"));
    assert_eq!(problem.reason, ObjectProblemReason::NotOwned);
    assert!(
        problem.message.contains("PodDisruptionBudget web-main already exists and belongs to an object created outside the operator (managed by Helm)"),
        "{}",
        problem.message
    );
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ObjectNotOwned").count(), 1);

    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(!fake.take_writes().contains(&Write::ApplyBudget("web-main".into())));
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ObjectNotOwned").count(), 1, "one Event");
    assert_eq!(json(&fake.state().budgets["web-main"]), json(&foreign));

    // Gone: the node's own budget is created next time, controlled by the cluster.
    fake.state().budgets.remove("web-main");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.take_writes().contains(&Write::ApplyBudget("web-main".into())));
    assert!(fake.status().object_problems.is_empty());
    let owner = &fake.state().budgets["web-main"].metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("OmeroCluster", "web"));
}

#[tokio::test(start_paused = true)]
async fn a_removed_nodes_budget_goes_once_it_is_drained_and_a_foreign_one_never() {
    let (fake, ctx) = setup(WEB);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.state().budgets.contains_key("web-ro"));
    let foreign = fake.seed_budget("web-extra", &[(keys::CLUSTER_LABEL, "web")], None);
    // `ro` leaves the spec; it never served (no pod), so it has nothing to protect.
    fake.edit(|c| c.spec.nodes.retain(|n| n.name != "ro"));
    fake.take_writes();
    reconcile_once(&fake, &ctx).await.unwrap();
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::Delete(ChildKind::PodDisruptionBudget, "web-ro".into())), "{writes:?}");
    assert!(!fake.state().budgets.contains_key("web-ro"));
    assert_eq!(json(&fake.state().budgets["web-extra"]), json(&foreign));
}

/// Another namespace's objects of the same names, one of them even carrying the cluster's
/// labels: not the cluster's, not reported (the API server scopes both the label selector and
/// the look-up by name to the cluster's namespace), and the cluster's own are created beside
/// them. Nothing of theirs is touched.
#[tokio::test(start_paused = true)]
async fn objects_of_the_same_names_in_another_namespace_are_neither_taken_nor_reported() {
    let (fake, ctx) = setup(WEB);
    let helm = fake.seed_service_in("lab", "web-main", &[("app.kubernetes.io/managed-by", "Helm")], None);
    let labels =
        [(keys::MANAGED_BY_LABEL, keys::MANAGER), (keys::CLUSTER_LABEL, "web"), (keys::NODE_LABEL, "ro")];
    let argo = fake.seed_deployment_in("lab", "web-ro", &labels, Some(("Rollout", "web-ro", "argo-uid")));
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    for w in [Write::ApplyService("web-main".into()), Write::ApplyDeployment("web-ro".into())] {
        assert!(writes.contains(&w), "{w:?}: {writes:?}");
    }
    let status = fake.status();
    assert!(status.object_problems.is_empty(), "{:?}", status.object_problems);
    assert_eq!(status.condition(conditions::DEGRADED).map(|c| c.reason.as_str()), Some("AsExpected"));
    let state = fake.state();
    let owner = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.as_ref().map(|o| o[0].name.clone())
    };
    assert_eq!(owner(&state.services["web-main"].metadata).as_deref(), Some("web"), "its own, beside");
    assert_eq!(owner(&state.deployments["web-ro"].metadata).as_deref(), Some("web"));
    assert_eq!(json(state.services.get_in("lab", "web-main").unwrap()), json(&helm), "byte for byte");
    assert_eq!(json(state.deployments.get_in("lab", "web-ro").unwrap()), json(&argo), "byte for byte");
}

/// Two clusters named `web`, in namespaces `omero` and `lab`, in one API server: every name and
/// label of their children is the same. The cluster in `omero` creates, labels and, when a node
/// leaves its spec, deletes only its own; `lab`'s children and pods stay byte for byte.
#[tokio::test(start_paused = true)]
async fn a_cluster_never_sees_nor_deletes_the_children_of_its_namesake_in_another_namespace() {
    let lab = WEB.replace(
        "metadata: {name: web}",
        "metadata: {name: web, namespace: lab, uid: 00000000-0000-4000-8000-0000000000bb}",
    );
    let (fake_lab, ctx_lab) = setup(&lab);
    reconcile_once(&fake_lab, &ctx_lab).await.unwrap();
    fake_lab.set_pod("main", "10.1.0.1", true);
    fake_lab.set_pod("ro", "10.1.0.2", true);
    reconcile_once(&fake_lab, &ctx_lab).await.unwrap();
    assert!(fake_lab.pod_routable("ro"), "lab's node serves");

    let (fake, ctx) = setup(&WEB.replace("  nodes:\n", "  drain: {timeout: 1m}\n  nodes:\n"));
    let everything_in_lab = |fake: &FakeCluster| {
        let state = fake.state();
        let mut objects: Vec<String> = Vec::new();
        objects.extend(state.deployments.values_in("lab").map(json));
        objects.extend(state.services.values_in("lab").map(json));
        objects.extend(state.budgets.values_in("lab").map(json));
        objects.extend(state.pods.values_in("lab").map(json));
        objects
    };
    {
        let from = fake_lab.state();
        let mut to = fake.state();
        to.deployments.extend(from.deployments.clone());
        to.services.extend(from.services.clone());
        to.budgets.extend(from.budgets.clone());
        to.pods.extend(from.pods.clone());
        to.next_uid = 100;
        to.resource_version = from.resource_version;
    }
    let theirs = everything_in_lab(&fake);
    assert_eq!(theirs.len(), 2 + 3 + 2 + 2);

    reconcile_once(&fake, &ctx).await.unwrap();
    fake.set_pod("main", "10.0.0.1", true);
    fake.set_pod("ro", "10.0.0.2", true);
    reconcile_once(&fake, &ctx).await.unwrap();
    let status = fake.status();
    assert!(status.object_problems.is_empty(), "{:?}", status.object_problems);
    assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Serving), "{:?}", status.nodes);
    assert!(fake.pod_routable("ro"));

    // `ro` leaves the spec: drained (no probe on a read-only database node: until the
    // deadline), then its objects go.
    fake.edit(|c| c.spec.nodes.retain(|n| n.name != "ro"));
    for _ in 0..30 {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        if fake.status().node("ro").is_none() {
            break;
        }
        tokio::time::advance(requeue.min(std::time::Duration::from_secs(10))).await;
    }
    assert!(fake.status().node("ro").is_none(), "{:?}", fake.status().nodes);
    let writes = fake.writes();
    assert!(writes.contains(&Write::Delete(ChildKind::Deployment, "web-ro".into())), "{writes:?}");
    let state = fake.state();
    assert!(!state.deployments.contains_key("web-ro") && !state.services.contains_key("web-ro"));
    assert!(!state.budgets.contains_key("web-ro"));
    drop(state);
    assert_eq!(everything_in_lab(&fake), theirs, "lab's children and pods, byte for byte");
}
