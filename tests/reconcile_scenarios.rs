//! Whole reconciles through the port doubles, on tokio's paused clock: bring-up, no-op
//! reconciles, child removal, invalid specs, and drains (to zero, to the deadline, with a
//! failing probe, across an operator restart, undrained, refused).

mod support;

use std::time::Duration;

use omero_operator::{
    api::{NodePhase, SessionProbeKind, conditions},
    controller::{
        RESYNC,
        awaited::AWAIT_LIMIT,
        port::{ChildKind, Children},
    },
    request::{DRAIN_ANNOTATION, FORCE_ANNOTATION},
};
use support::*;

const CLUSTER: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  drain: {timeout: 30m}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-1
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
  - name: ro-2
    readOnly: {db: true, repo: true}
    sessionProbe: {type: Metrics, port: 9449, interval: 10s, exporterUser: monitor}
"#;

const IPS: [(&str, &str); 3] = [("rw", "10.0.0.1"), ("ro-1", "10.0.0.2"), ("ro-2", "10.0.0.3")];

fn setup(yaml: &str) -> (FakeCluster, FakeOmero, std::sync::Arc<Ctx>) {
    let fake = FakeCluster::new(cluster_from_yaml(yaml));
    fake.state().secrets.insert(("omero-db".into(), "password".into()), "s3cret".into());
    // A healthy cluster's probes answer: serving nodes are counted too.
    let sessions = FakeOmero::default();
    for (_, ip) in IPS {
        sessions.set(ip, Ok(0));
    }
    let ctx = context(&fake, &sessions);
    (fake, sessions, ctx)
}

/// Creates the objects, starts every pod ready, and labels them routable.
async fn bring_up(fake: &FakeCluster, ctx: &std::sync::Arc<Ctx>) {
    reconcile_once(fake, ctx).await.unwrap();
    for (node, ip) in IPS {
        fake.set_pod(node, ip, true);
    }
    reconcile_once(fake, ctx).await.unwrap();
    fake.take_writes();
}

/// Reconciles as the controller's requeue would, advancing the paused clock, until `done`
/// holds; returns the virtual time it took.
async fn run_until(
    fake: &FakeCluster,
    ctx: &std::sync::Arc<Ctx>,
    max_steps: usize,
    done: impl Fn(&FakeCluster) -> bool,
) -> Duration {
    let start = tokio::time::Instant::now();
    for _ in 0..max_steps {
        let requeue = reconcile_once(fake, ctx).await.unwrap();
        if done(fake) {
            return start.elapsed();
        }
        tokio::time::advance(requeue).await;
    }
    panic!("not done after {max_steps} reconciles; status: {:#?}", fake.status());
}

#[tokio::test(start_paused = true)]
async fn first_reconcile_creates_every_object_and_reports_pending_nodes() {
    let (fake, _, ctx) = setup(CLUSTER);
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.writes();
    for d in ["omero-rw", "omero-ro-1", "omero-ro-2"] {
        assert!(writes.contains(&Write::ApplyDeployment(d.into())), "{writes:?}");
        assert!(writes.contains(&Write::ApplyService(d.into())), "{writes:?}");
    }
    assert!(writes.contains(&Write::ApplyService("omero".into())), "entry service: {writes:?}");
    assert!(writes.contains(&Write::Status));
    let status = fake.status();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.node_count, 3);
    assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Pending));
    let progressing = status.condition(conditions::PROGRESSING).unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "NodesStarting"));
    assert_eq!(status.condition(conditions::READY).unwrap().status, "False");
}

/// A new cluster is created, not rolled out: its nodes' Deployments are made at their target
/// revision, so status is written once, nothing is pending, and no rollout "completes" on the
/// next look (which wrote status a second time and announced RolloutCompleted before any pod ran).
#[tokio::test(start_paused = true)]
async fn a_new_cluster_or_node_is_created_in_one_status_write_and_no_rollout() {
    let (fake, _, ctx) = setup(CLUSTER);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes().iter().filter(|w| **w == Write::Status).count(), 1);
    let rollout = fake.status().rollout.unwrap_or_default();
    assert!(rollout.pending.is_empty(), "{rollout:?}");
    // The watch brings the new objects back: nothing to write, nothing to announce.
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes(), []);
    assert!(!fake.event_reasons().iter().any(|r| r == "RolloutCompleted"), "{:?}", fake.event_reasons());

    // So is a node added to a running cluster: the others are not held behind it.
    bring_up(&fake, &ctx).await;
    fake.edit(|c| {
        let mut ro3 = c.spec.nodes[1].clone();
        ro3.name = "ro-3".into();
        c.spec.nodes.push(ro3);
    });
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.state().deployments.contains_key("omero-ro-3"));
    let rollout = fake.status().rollout.unwrap_or_default();
    assert!(rollout.pending.is_empty(), "{rollout:?}");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(!fake.event_reasons().iter().any(|r| r == "RolloutCompleted"), "{:?}", fake.event_reasons());
}

/// A reconcile woken before the watches deliver a new cluster's objects (each create wakes
/// one) writes none of them again: names the operator just created are awaited, not looked up.
/// On a real API server each such apply was refused with 409 (create-only, and the name was
/// the operator's own): a request per object for nothing. Past the limit a name still unseen
/// is looked up again, as any other.
#[tokio::test(start_paused = true)]
async fn objects_just_created_are_awaited_not_applied_again() {
    let (fake, _, ctx) = setup(CLUSTER);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.take_writes().contains(&Write::ApplyService("omero".into())));
    // The labelled caches have delivered none of the new objects yet.
    fake.state().cache = Some(Children::default());
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes(), [], "nothing created is applied again");

    tokio::time::advance(AWAIT_LIMIT).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(
        writes.contains(&Write::ApplyService("omero".into())),
        "looked up again past the limit: {writes:?}"
    );
}

/// Deployments an older operator made carry no revision: each node is rolled out once.
#[tokio::test(start_paused = true)]
async fn deployments_without_a_revision_are_rolled_out_once() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.edit(|c| {
        for node in &mut c.status.as_mut().unwrap().nodes {
            node.deployment_revision = None;
        }
    });
    for deployment in fake.state().deployments.values_mut() {
        deployment.metadata.annotations.as_mut().unwrap().remove("omero.openmicroscopy.org/revision");
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    let rollout = fake.status().rollout.unwrap_or_default();
    assert_eq!(rollout.pending, ["ro-1", "ro-2", "rw"], "{rollout:?}");
}

#[tokio::test(start_paused = true)]
async fn ready_pods_become_routable_and_an_unchanged_reconcile_writes_nothing() {
    let (fake, _, ctx) = setup(CLUSTER);
    reconcile_once(&fake, &ctx).await.unwrap();
    fake.take_writes();
    for (node, ip) in IPS {
        fake.set_pod(node, ip, true);
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::Label { pod: "omero-ro-1-pod".into(), routable: true }), "{writes:?}");
    assert!(
        writes.iter().all(|w| !matches!(w, Write::ApplyDeployment(_) | Write::ApplyService(_))),
        "{writes:?}"
    );
    assert!(fake.event_reasons().iter().filter(|r| *r == "NodeServing").count() == 3);
    let status = fake.status();
    assert_eq!((status.ready_nodes, status.serving_nodes), (3, 3));
    assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Serving && n.routable && n.ready));
    assert_eq!(status.condition(conditions::READY).unwrap().status, "True");

    // Serving nodes are counted at their serving interval (default 60s): the first count is
    // one status write, and the next look is due then.
    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes(), vec![Write::Status]);
    assert!(fake.status().nodes.iter().all(|n| n.sessions == Some(0) && n.sessions_since.is_some()));
    assert_eq!(requeue, Duration::from_secs(60));

    // The measure of the issue: an unchanged reconcile of a 3-node cluster.
    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes(), vec![], "an unchanged reconcile must not write");
    assert!(requeue <= Duration::from_secs(60) && requeue < RESYNC, "{requeue:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pod_template_change_never_reaches_a_serving_node_and_a_service_change_applies_at_once() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.edit(|c| {
        // (45: a read-only node's Blitz has 40 by default, and the same value is no change.)
        c.spec.nodes[1].config.insert("omero.jvmcfg.percent.blitz".into(), "45".into());
        c.spec.service = Some(omero_operator::api::ServiceSpec {
            session_affinity_timeout_seconds: Some(600),
            ..Default::default()
        });
    });
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    let applies: Vec<_> =
        writes.iter().filter(|w| matches!(w, Write::ApplyDeployment(_) | Write::ApplyService(_))).collect();
    assert_eq!(applies, [&Write::ApplyService("omero".into())], "only the entry Service: {writes:?}");
    // ro-1 is out of date: it leaves service first, keeping its running template.
    let ro1 = fake.node("ro-1");
    assert_eq!(
        (ro1.phase, ro1.drain_reason),
        (NodePhase::Draining, Some(omero_operator::api::DrainReason::Rollout))
    );
    assert_ne!(ro1.target_revision, ro1.deployment_revision);
    assert!(writes.contains(&Write::Label { pod: "omero-ro-1-pod".into(), routable: false }), "{writes:?}");
    assert_eq!(fake.status().observed_generation, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_node_removed_from_the_spec_is_drained_then_loses_its_objects_and_only_those() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.3", Ok(1));
    // An object labelled as this cluster's but not owned by it is left alone.
    {
        let mut state = fake.state();
        let mut stranger = state.services["omero-ro-2"].clone();
        stranger.metadata.name = Some("omero-handmade".into());
        stranger.metadata.owner_references = None;
        state.services.insert("omero-handmade".into(), stranger);
    }
    fake.edit(|c| c.spec.nodes.retain(|n| n.name != "ro-2"));
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert!(!writes.iter().any(|w| matches!(w, Write::Delete(..))), "drained first: {writes:?}");
    let leaving = fake.node("ro-2");
    assert!(leaving.leaving);
    assert_eq!(leaving.phase, NodePhase::Draining);
    assert_eq!(fake.status().node_count, 2, "counts the nodes of the spec");
    assert_eq!(
        leaving.session_probe.as_ref().map(|p| p.kind),
        Some(SessionProbeKind::Metrics),
        "counted with the probe it had in the spec"
    );

    // Its drain ends on its count, long before its 30-minute deadline.
    run_until(&fake, &ctx, 5, |f| f.node("ro-2").sessions == Some(1)).await;
    sessions.set("10.0.0.3", Ok(0));
    let took = run_until(&fake, &ctx, 60, |f| f.status().node("ro-2").is_none()).await;
    assert!(took < Duration::from_secs(120), "ended {took:?} after its count reached zero");
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::Delete(ChildKind::Deployment, "omero-ro-2".into())), "{writes:?}");
    assert!(writes.contains(&Write::Delete(ChildKind::Service, "omero-ro-2".into())), "{writes:?}");
    assert!(!writes.iter().any(|w| matches!(w, Write::Delete(_, n) if n == "omero-handmade")));
    assert!(fake.event_reasons().contains(&"NodeRemoved".to_string()), "{:?}", fake.event_reasons());
}

/// The operator's account may not patch a pod's label (RBAC): the drain's label patch is
/// refused; the reconcile reports it (reason `Forbidden`, naming the verb, the resource and
/// what to grant) with one Event, instead of failing into the retry backoff, and says it once.
#[tokio::test(start_paused = true)]
async fn a_forbidden_label_patch_is_reported_once_not_retried_blindly() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.state().forbid.insert("Pod/omero-ro-1-pod".into());
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    reconcile_once(&fake, &ctx).await.expect("reported, not an error to retry");
    let status = fake.status();
    let problem = status.object_problems.iter().find(|p| p.name == "omero-ro-1-pod").expect("reported");
    assert_eq!(problem.reason, omero_operator::api::ObjectProblemReason::Forbidden);
    assert!(
        problem.message.starts_with("the operator's account may not patch pods in namespace ")
            && problem.message.contains("give it the chart's RBAC"),
        "{problem:?}"
    );
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(
        fake.event_reasons().iter().filter(|r| *r == "WriteForbidden").count(),
        1,
        "{:?}",
        fake.event_reasons()
    );
    assert!(fake.status().object_problems.iter().any(|p| p.name == "omero-ro-1-pod"), "still reported");
}

/// An object of the cluster's deleted and created again by someone else while the watch cache
/// still shows the old one: the apply (with the uid it last saw) is refused as the API server
/// does (422, uid immutable), and the operator reports the new holder after a fresh read, as
/// not its own, never as a spec field to correct; nothing is written over it.
#[tokio::test(start_paused = true)]
async fn an_object_replaced_behind_the_cache_is_reported_as_not_owned() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    {
        let mut state = fake.state();
        let mut cache = Children {
            deployments: state.deployments.values().cloned().collect(),
            services: state.services.values().cloned().collect(),
            config_maps: state.config_maps.values().cloned().collect(),
            budgets: state.budgets.values().cloned().collect(),
            pods: state.pods.values().cloned().collect(),
            kube_nodes: None,
        };
        // The cache's copy drifted (a hand edit the operator sets back)...
        let drifted =
            cache.services.iter_mut().find(|s| s.metadata.name.as_deref() == Some("omero-ro-1")).unwrap();
        drifted.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 1;
        state.cache = Some(cache);
        // ...and the API server now holds another object of that name, not the cluster's.
        let replacement = state.services.get_mut("omero-ro-1").unwrap();
        replacement.metadata.uid = Some("someone-elses".into());
        replacement.metadata.owner_references = None;
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.writes().contains(&Write::ApplyService("omero-ro-1".into())), "tried: {:?}", fake.writes());
    let status = fake.status();
    let problem = status.object_problems.iter().find(|p| p.name == "omero-ro-1").expect("reported");
    assert_eq!(problem.reason, omero_operator::api::ObjectProblemReason::NotOwned, "{problem:?}");
    assert!(!problem.message.contains("correct the spec"), "{problem:?}");
    assert_eq!(fake.state().services["omero-ro-1"].metadata.uid.as_deref(), Some("someone-elses"));
}

/// A node removed under `drain.onDeadline: Hold` whose sessions never end holds past its
/// deadline (and its place in `maxUnavailable`) until forced by name, as a spec node can be:
/// `drain` and `drain-force` naming it are accepted, and it goes.
#[tokio::test(start_paused = true)]
async fn a_removal_held_under_hold_can_be_forced_by_name() {
    let yaml = CLUSTER.replace("drain: {timeout: 30m}", "drain: {timeout: 5m, onDeadline: Hold}");
    let (fake, sessions, ctx) = setup(&yaml);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.3", Ok(4));
    fake.edit(|c| c.spec.nodes.retain(|n| n.name != "ro-2"));
    for _ in 0..60 {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(requeue).await;
    }
    let held = fake.node("ro-2");
    assert!(held.deadline_reached && held.phase == NodePhase::Draining, "held past its deadline: {held:?}");
    assert_eq!(held.sessions, Some(4), "still counted");

    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-2"));
    fake.set_annotation(FORCE_ANNOTATION, Some("ro-2"));
    run_until(&fake, &ctx, 20, |f| f.status().node("ro-2").is_none()).await;
    let status = fake.status();
    assert!(
        !status.conditions.iter().any(|c| c.message.contains("no node named")),
        "the leaving node's name is accepted: {:#?}",
        status.conditions
    );
    assert!(fake.event_reasons().contains(&"NodeRemoved".to_string()));
}

/// kstatus (what Flux, kpt and cli-utils read): a new cluster is Reconciling until its nodes
/// serve, then Reconciled; a problem only a person can fix (here an invalid spec) is Stalled,
/// with the generation it describes, until it is fixed.
#[tokio::test(start_paused = true)]
async fn kstatus_reconciling_and_stalled_follow_progress_and_problems_a_person_must_fix() {
    let (fake, _, ctx) = setup(CLUSTER);
    let condition = |fake: &FakeCluster, type_: &str| {
        let c = fake.status().condition(type_).cloned().unwrap_or_else(|| panic!("no {type_}"));
        (c.status, c.reason, c.observed_generation)
    };
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(condition(&fake, conditions::RECONCILING), ("True".into(), "NodesStarting".into(), Some(1)));
    assert_eq!(condition(&fake, conditions::STALLED), ("False".into(), "NotStalled".into(), Some(1)));
    bring_up(&fake, &ctx).await;
    assert_eq!(condition(&fake, conditions::RECONCILING), ("False".into(), "Reconciled".into(), Some(1)));

    let valid = fake.cluster().spec.clone();
    fake.edit(|c| {
        c.spec.nodes[1].read_only = None; // a second read-write node
        c.spec.nodes[1].session_probe = None;
    });
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(condition(&fake, conditions::STALLED), ("True".into(), "InvalidSpec".into(), Some(2)));
    fake.edit(|c| c.spec = valid);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(condition(&fake, conditions::STALLED), ("False".into(), "NotStalled".into(), Some(3)));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_spec_changes_nothing_and_says_why_once() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    {
        let mut state = fake.state();
        let cluster = state.cluster.as_mut().unwrap();
        cluster.spec.nodes[1].read_only = None; // a second read-write node
        cluster.spec.nodes[1].session_probe = None;
        cluster.spec.nodes.retain(|n| n.name != "ro-2"); // would delete ro-2 if valid
        cluster.metadata.generation = Some(2);
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    let writes = fake.take_writes();
    assert_eq!(
        writes,
        vec![Write::Status, Write::Event("InvalidSpec".into())],
        "nothing but status and event"
    );
    let status = fake.status();
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidSpec"));
    assert!(degraded.message.contains("spec.nodes: independent topology allows at most one read-write node"));
    assert!(degraded.message.contains("rw, ro-1"), "{}", degraded.message);
    assert_eq!(degraded.observed_generation, Some(2));
    assert_eq!(status.serving_nodes, 3, "nodes keep serving");
    let event = fake.state().events.last().cloned().unwrap();
    assert_eq!(event.type_, omero_operator::controller::port::EventType::Warning);

    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.take_writes(), vec![], "the same invalid spec is not announced twice");

    // Fixed: the operator resumes and says so.
    {
        let mut state = fake.state();
        let cluster = state.cluster.as_mut().unwrap();
        cluster.spec.nodes[1].read_only = Some(omero_operator::api::ReadOnlySpec { db: true, repo: true });
        cluster.metadata.generation = Some(3);
    }
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.event_reasons().contains(&"SpecValid".to_string()));
    assert_eq!(fake.status().condition(conditions::DEGRADED).unwrap().status, "False");
}

#[tokio::test(start_paused = true)]
async fn drain_to_zero_sessions() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(3));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));

    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(!fake.pod_routable("ro-1"), "draining node leaves the entry Service");
    assert!(fake.pod_routable("ro-2") && fake.pod_routable("rw"));
    let node = fake.node("ro-1");
    assert_eq!(node.phase, NodePhase::Draining);
    assert_eq!(time(&node.drain_deadline), time(&node.drain_started_at) + Duration::from_secs(1800));
    assert_eq!(fake.event_reasons().last().unwrap(), "DrainStarted");
    assert_eq!(fake.status().draining_nodes, 1);

    // Three sessions: stays Draining, and the count shows.
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(3)).await;
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
    let query = sessions.queries().last().cloned().unwrap();
    assert_eq!((query.pod_ip.as_str(), query.probe.kind), ("10.0.0.2", SessionProbeKind::Metrics));

    // Sessions end: drained after the confirmation probe.
    sessions.set("10.0.0.2", Ok(0));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(0)).await;
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining, "one zero is not enough");
    let took = run_until(&fake, &ctx, 5, |f| f.node("ro-1").phase == NodePhase::Drained).await;
    assert!(
        took <= Duration::from_secs(10),
        "drained within one probe interval of the first zero, took {took:?}"
    );
    println!("first zero -> Drained: {took:?} (probe interval 10s)");
    assert!(fake.event_reasons().contains(&"DrainCompleted".to_string()));
    assert_eq!(fake.status().draining_nodes, 0);

    // Drained and idle: never probed again (the serving nodes still are, at their interval).
    let probed = |ip: &str| sessions.queries().iter().filter(|q| q.pod_ip == ip).count();
    let before = probed("10.0.0.2");
    for _ in 0..3 {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(requeue).await;
    }
    assert_eq!(probed("10.0.0.2"), before);
    assert_eq!(fake.node("ro-1").phase, NodePhase::Drained);
}

#[tokio::test(start_paused = true)]
async fn database_probe_uses_the_primary_endpoint_and_the_secret() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.1", Ok(0));
    fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    run_until(&fake, &ctx, 10, |f| f.node("rw").phase == NodePhase::Drained).await;
    let query = sessions.queries().into_iter().find(|q| q.pod_ip == "10.0.0.1").unwrap();
    let (endpoint, password) = query.database.unwrap();
    assert_eq!((endpoint.host.as_str(), endpoint.port, password.as_str()), ("db", 5432, "s3cret"));
}

#[tokio::test(start_paused = true)]
async fn a_missing_password_secret_is_a_failing_probe_not_a_drain() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.state().secrets.clear();
    sessions.set("10.0.0.1", Ok(0));
    fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    reconcile_once(&fake, &ctx).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    let node = fake.node("rw");
    assert_eq!(node.phase, NodePhase::Draining);
    assert!(node.probe_error.unwrap().contains("Secret omero-db has no key password"));
}

#[tokio::test(start_paused = true)]
async fn drain_to_the_deadline_reports_the_sessions_left() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(4));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    let took = run_until(&fake, &ctx, 400, |f| f.node("ro-1").phase == NodePhase::Drained).await;
    assert!(took >= Duration::from_secs(1800) && took <= Duration::from_secs(1801), "{took:?}");
    let node = fake.node("ro-1");
    assert!(node.deadline_reached);
    assert_eq!(node.message.as_deref(), Some("drained at the deadline with 4 sessions still open"));
    let event = fake.state().events.iter().find(|e| e.reason == "DrainDeadlineReached").cloned().unwrap();
    assert!(event.note.contains("with 4 sessions still open"), "{}", event.note);
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_keeps_the_node_draining_then_recovers() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(2));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(2)).await;

    sessions.set("10.0.0.2", Err("connection refused"));
    run_until(&fake, &ctx, 5, |f| f.remembered_node(&ctx, "ro-1").probe_failures == 3).await;
    let node = fake.remembered_node(&ctx, "ro-1");
    assert_eq!(node.phase, NodePhase::Draining, "a failing probe never drains");
    assert_eq!(node.sessions, Some(2), "the last good count stays");
    assert_eq!(node.probe_error.as_deref(), Some("connection refused"));
    // Backoff: the next probe waits longer than the interval.
    let wait = time(&node.next_probe_at).duration_since(ctx.clock.now());
    assert!(wait.as_secs() > 10, "{wait:?}");
    let degraded = fake.status().condition(conditions::DEGRADED).cloned().unwrap();
    assert_eq!(degraded.reason, "SessionProbeFailing");
    assert!(degraded.message.contains("connection refused"));

    sessions.set("10.0.0.2", Ok(0));
    run_until(&fake, &ctx, 10, |f| f.node("ro-1").phase == NodePhase::Drained).await;
    assert_eq!(fake.node("ro-1").probe_error, None);
    assert_eq!(fake.status().condition(conditions::DEGRADED).unwrap().status, "False");
}

#[tokio::test(start_paused = true)]
async fn an_operator_restart_resumes_the_same_drain() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(1));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(1)).await;
    let before = fake.node("ro-1");
    tokio::time::advance(Duration::from_secs(600)).await;

    // A new process: new context, same cluster state, clock continuing.
    let now = ctx.clock.now();
    drop(ctx);
    let ctx = restarted_context(&fake, &sessions, now);
    reconcile_once(&fake, &ctx).await.unwrap();
    let after = fake.node("ro-1");
    assert_eq!(after.phase, NodePhase::Draining);
    assert_eq!(after.drain_deadline, before.drain_deadline, "the deadline never moves");
    assert_eq!(after.drain_started_at, before.drain_started_at);
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "DrainStarted").count(), 1, "not restarted");
    let remaining = time(&after.drain_deadline).duration_since(now);
    assert!(remaining.as_secs() <= 1800 - 600, "the clock kept running across the restart: {remaining:?}");
}

#[tokio::test(start_paused = true)]
async fn undrain_mid_drain_puts_the_node_back() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(5));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(5)).await;
    fake.set_annotation(DRAIN_ANNOTATION, None);
    reconcile_once(&fake, &ctx).await.unwrap();
    let node = fake.node("ro-1");
    assert_eq!(node.phase, NodePhase::Serving);
    assert!(node.routable && fake.pod_routable("ro-1"));
    assert_eq!(node.drain_deadline, None);
    assert_eq!(node.sessions, Some(5), "counted as it came back");
    assert!(fake.event_reasons().contains(&"Undrained".to_string()));
}

#[tokio::test(start_paused = true)]
async fn draining_the_last_serving_node_is_refused_unless_forced() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.1", Ok(0));
    sessions.set("10.0.0.2", Ok(0));
    sessions.set("10.0.0.3", Ok(0));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1,ro-2,rw"));
    reconcile_once(&fake, &ctx).await.unwrap();
    // Requests are taken in spec order: rw and ro-1 drain, ro-2 would be the last.
    let status = fake.status();
    assert_eq!(status.node("ro-2").unwrap().phase, NodePhase::Serving, "the last serving node stays");
    assert!(fake.pod_routable("ro-2"));
    assert_eq!(status.draining_nodes, 2);
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!(degraded.reason, "DrainRefused");
    assert!(
        degraded.message.contains("node ro-2: drain refused: it is the last serving node"),
        "{}",
        degraded.message
    );
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "DrainRefused").count(), 1);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "DrainRefused").count(), 1, "announced once");

    // Forcing another node changes nothing for ro-2; forcing ro-2 (kubectl omero drain --force
    // ro-2) lets it go. The status shows the request as the operator read it.
    fake.set_annotation(FORCE_ANNOTATION, Some("ro-1"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-2").phase, NodePhase::Serving);
    assert_eq!(fake.status().observed_requests.get(FORCE_ANNOTATION).map(String::as_str), Some("ro-1"));
    fake.set_annotation(FORCE_ANNOTATION, Some("ro-1,ro-2"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-2").phase, NodePhase::Draining);
    assert!(!fake.pod_routable("ro-2"));
    assert_eq!(fake.status().condition(conditions::READY).unwrap().reason, "NoServingNode");
    let observed = fake.status().observed_requests;
    assert_eq!(
        (observed[DRAIN_ANNOTATION].as_str(), observed[FORCE_ANNOTATION].as_str()),
        ("ro-1,ro-2,rw", "ro-1,ro-2")
    );
}

#[tokio::test(start_paused = true)]
async fn bad_drain_entries_are_reported_and_the_good_ones_drain() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(1));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1,,nope"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
    let degraded = fake.status().condition(conditions::DEGRADED).cloned().unwrap();
    assert_eq!(degraded.reason, "InvalidDrainRequest");
    assert!(degraded.message.contains("no node named 'nope'"), "{}", degraded.message);
    assert!(degraded.message.contains("entry 2 is empty"), "{}", degraded.message);
    let warning = fake.state().events.iter().find(|e| e.reason == "InvalidDrainRequest").cloned().unwrap();
    assert!(warning.note.contains("'nope'"));
    tokio::time::advance(Duration::from_secs(10)).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(
        fake.event_reasons().iter().filter(|r| *r == "InvalidDrainRequest").count(),
        1,
        "announced once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_readiness_blip_is_not_a_drain_but_a_node_without_a_pod_drains_at_once() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.3", Ok(2));
    // ro-2's server runs but its pod is briefly not ready: it may hold sessions.
    fake.set_pod("ro-2", "10.0.0.3", false);
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-2"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-2").phase, NodePhase::Draining);
    reconcile_once(&fake, &ctx).await.unwrap();
    let node = fake.node("ro-2");
    assert_eq!(node.phase, NodePhase::Draining);
    assert_eq!(node.sessions, Some(2), "probed, not assumed empty");
    assert!(!fake.event_reasons().contains(&"DrainCompleted".to_string()));

    // Its pod goes away: nothing is left to hold a session.
    fake.remove_pod("ro-2");
    reconcile_once(&fake, &ctx).await.unwrap();
    let node = fake.node("ro-2");
    assert_eq!(node.phase, NodePhase::Drained);
    assert!(node.message.unwrap().contains("no pod"));
    assert!(fake.event_reasons().contains(&"DrainCompleted".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_failing_api_write_fails_the_reconcile_without_recording_progress() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    fake.state().fail_writes = true;
    assert!(reconcile_once(&fake, &ctx).await.is_err());
    assert_eq!(fake.node("ro-1").phase, NodePhase::Serving, "no status was written");
    fake.state().fail_writes = false;
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
}

/// An exporter refreshes its gauges once a minute: two probes of one sample are one
/// observation, so "zero twice" means zero in two different samples.
#[tokio::test(start_paused = true)]
async fn a_zero_counts_only_from_a_new_exporter_sample() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(0));
    sessions.samples.lock().unwrap().insert("10.0.0.2".into(), "41".into());
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    for _ in 0..6 {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(requeue).await;
    }
    let node = fake.remembered_node(&ctx, "ro-1");
    assert_eq!(node.phase, NodePhase::Draining, "one sample read six times is one zero");
    assert_eq!((node.zero_session_probes, node.probe_sample.as_deref()), (1, Some("41")));
    // The exporter refreshed: a second zero, from a new sample, ends the drain.
    sessions.samples.lock().unwrap().insert("10.0.0.2".into(), "42".into());
    run_until(&fake, &ctx, 3, |f| f.node("ro-1").phase == NodePhase::Drained).await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_held_past_its_deadline_ends_when_sessions_end_or_when_forced() {
    let yaml = CLUSTER.replace("drain: {timeout: 30m}", "drain: {timeout: 5m, onDeadline: Hold}");
    let (fake, sessions, ctx) = setup(&yaml);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(2));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    run_until(&fake, &ctx, 100, |f| f.node("ro-1").deadline_reached).await;
    tokio::time::advance(Duration::from_secs(600)).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    let node = fake.node("ro-1");
    assert_eq!(node.phase, NodePhase::Draining, "held: {:?}", node.message);
    assert!(node.message.unwrap().contains("holding"));
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "DrainDeadlineReached").count(), 1);

    fake.set_annotation(FORCE_ANNOTATION, Some("true"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-1").phase, NodePhase::Drained);
}

const GRID: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  topology: Grid
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  nodes:
  - name: rw
    master: true
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-1
    sessionProbe: {type: Database, interval: 10s}
  - name: ro-2
    sessionProbe: {type: Database, interval: 10s}
"#;

#[tokio::test(start_paused = true)]
async fn a_grid_drain_points_new_sessions_at_the_master_and_keeps_them_there() {
    let (fake, omero, ctx) = setup(GRID);
    // Before any node serves, nothing can be pointed at (the master's start-up writes a
    // placeholder); once the master serves, the row is the operator's for good.
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect(), None, "no node serves yet");
    bring_up(&fake, &ctx).await;
    assert_eq!(omero.redirect().as_deref(), Some("10.0.0.1"), "owned while every node serves");
    assert!(fake.event_reasons().contains(&"RedirectUpdated".to_string()));
    omero.set("10.0.0.2", Ok(2));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));

    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect().as_deref(), Some("10.0.0.1"), "new sessions go to the master");
    let status = fake.status();
    assert_eq!(status.redirect_node.as_deref(), Some("rw"));
    assert!(requeue <= Duration::from_secs(30), "the row is re-asserted: {requeue:?}");

    // Every node stops serving: status says the row cannot follow, and why it matters.
    for (node, ip) in IPS {
        fake.set_pod(node, ip, false);
    }
    fake.remove_pod("rw");
    fake.remove_pod("ro-2");
    reconcile_once(&fake, &ctx).await.unwrap();
    let status = fake.status();
    assert_eq!(status.redirect_node, None);
    assert!(status.redirect_error.as_deref().unwrap().contains("no node serves"), "{status:?}");
    assert_eq!(status.condition(conditions::DEGRADED).unwrap().reason, "RedirectFailing");
    for (node, ip) in IPS {
        fake.set_pod(node, ip, true);
    }
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.status().redirect_node.as_deref(), Some("rw"));

    // Re-asserted while paused too: it keeps OMERO itself working.
    fake.set_annotation(omero_operator::request::PAUSE_ANNOTATION, Some("true"));
    *omero.redirect.lock().unwrap() = None;
    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect().as_deref(), Some("10.0.0.1"));
    assert!(requeue <= Duration::from_secs(30));
    fake.set_annotation(omero_operator::request::PAUSE_ANNOTATION, None);

    // OMERO rewrites the row when a node joins: the next reconcile puts it back.
    *omero.redirect.lock().unwrap() = Some("10.0.0.3".into());
    tokio::time::advance(requeue).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect().as_deref(), Some("10.0.0.1"));
}

#[tokio::test(start_paused = true)]
async fn the_grid_master_cannot_be_drained() {
    let (fake, _, ctx) = setup(GRID);
    bring_up(&fake, &ctx).await;
    fake.set_annotation(DRAIN_ANNOTATION, Some("rw"));
    fake.set_annotation(FORCE_ANNOTATION, Some("true"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("rw").phase, NodePhase::Serving);
    let degraded = fake.status().condition(conditions::DEGRADED).cloned().unwrap();
    assert_eq!(degraded.reason, "InvalidDrainRequest");
    assert!(degraded.message.contains("'rw' is the grid master"), "{}", degraded.message);
}

/// The redirect is an action like any other: a reconcile that read a stale cluster (its status
/// write refused) points nothing anywhere; the next one, from the current cluster, does.
#[tokio::test(start_paused = true)]
async fn a_stale_read_points_new_sessions_nowhere() {
    let (fake, omero, ctx) = setup(GRID);
    bring_up(&fake, &ctx).await;
    omero.set("10.0.0.2", Ok(2));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    let stale = fake.cluster();
    fake.edit(|_| {}); // someone else wrote the cluster since
    *omero.redirect.lock().unwrap() = None;
    fake.take_writes();
    let requeue =
        omero_operator::controller::reconcile(std::sync::Arc::new(stale), ctx.clone()).await.unwrap();
    assert_eq!(requeue, omero_operator::controller::STALE_RETRY);
    assert_eq!(fake.take_writes(), [Write::Status], "only the refused status write");
    assert_eq!(omero.redirect(), None, "nothing acted on a stale read");
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect().as_deref(), Some("10.0.0.1"));
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
}

#[tokio::test(start_paused = true)]
async fn a_failing_redirect_is_reported_and_retried() {
    let (fake, omero, ctx) = setup(GRID);
    bring_up(&fake, &ctx).await;
    omero.set("10.0.0.3", Ok(0));
    *omero.redirect_failure.lock().unwrap() = Some("permission denied for table configuration".into());
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-2"));
    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    let status = fake.status();
    assert_eq!(status.redirect_node, None);
    assert_eq!(status.redirect_error.as_deref(), Some("permission denied for table configuration"));
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!(degraded.reason, "RedirectFailing");
    assert!(requeue <= Duration::from_secs(30));

    *omero.redirect_failure.lock().unwrap() = None;
    tokio::time::advance(requeue).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.status().redirect_node.as_deref(), Some("rw"));
    assert_eq!(fake.status().redirect_error, None);
}

#[tokio::test(start_paused = true)]
async fn independent_clusters_never_touch_the_redirect() {
    let (fake, omero, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    omero.set("10.0.0.2", Ok(1));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(omero.redirect(), None);
    assert_eq!(fake.status().redirect_node, None);
}

#[tokio::test(start_paused = true)]
async fn events_that_cannot_be_published_do_not_hold_up_the_status() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.state().fail_events = true;
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-2"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-2").phase, NodePhase::Draining);
    assert!(fake.event_reasons().iter().all(|r| r != "DrainStarted"));
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_per_cluster_and_a_success_resets_the_backoff() {
    use kube::runtime::controller::Action;
    use omero_operator::controller::{error_policy, reconcile_and_reset};

    let (fake, _, ctx) = setup(CLUSTER);
    fake.state().fail_writes = true;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let cluster = std::sync::Arc::new(fake.cluster());
        let error = reconcile_and_reset(cluster.clone(), ctx.clone()).await.unwrap_err();
        waits.push(error_policy(cluster, &error, ctx.clone()));
    }
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(waits, [secs(5), secs(10), secs(20), secs(40), secs(80), secs(160), secs(300), secs(300)]);

    fake.state().fail_writes = false;
    reconcile_and_reset(std::sync::Arc::new(fake.cluster()), ctx.clone()).await.unwrap();
    fake.state().fail_writes = true;
    fake.state().cluster.as_mut().unwrap().spec.image = "openmicroscopy/omero-server:5.6.12".into();
    let cluster = std::sync::Arc::new(fake.cluster());
    let error = reconcile_and_reset(cluster.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error_policy(cluster, &error, ctx.clone()), secs(5), "a success starts the backoff over");
}

/// The API server refuses what validation let through (e.g. an env var named `1 bad`): the
/// refusal shows in status, `Degraded` and one Event, never as a silent retry loop, and the
/// rest of the cluster goes on.
#[tokio::test(start_paused = true)]
async fn an_api_refusal_shows_in_status_and_one_event_and_clears_when_fixed() {
    let (fake, _, ctx) = setup(CLUSTER);
    let message = "Deployment.apps \"omero-ro-2\" is invalid: spec.template.spec.containers[0].env[0].name: \
                   Invalid value: \"1 bad\": a valid environment variable name must consist of alphabetic characters";
    fake.state().refuse.insert("Deployment/omero-ro-2".into(), message.into());
    reconcile_once(&fake, &ctx).await.expect("reported, not a retried error");
    let writes = fake.take_writes();
    assert!(writes.contains(&Write::ApplyDeployment("omero-rw".into())), "the others go on: {writes:?}");
    assert!(fake.state().deployments.contains_key("omero-ro-1"));
    let status = fake.status();
    let problem = status.object_problems.iter().find(|p| p.name == "omero-ro-2").expect("reported");
    assert_eq!(problem.reason, omero_operator::api::ObjectProblemReason::Refused);
    assert!(
        problem.message.contains("1 bad") && problem.message.contains("correct the spec field"),
        "{}",
        problem.message
    );
    let degraded = status.condition(conditions::DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ApplyRefused"));
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ApplyRefused").count(), 1);

    // Tried again at the next reconcile: still refused, still reported, not announced again.
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.status().object_problems.iter().any(|p| p.name == "omero-ro-2"));
    assert_eq!(fake.event_reasons().iter().filter(|r| *r == "ApplyRefused").count(), 1);

    // The spec is fixed: the Deployment is created and the report goes.
    fake.state().refuse.clear();
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.state().deployments.contains_key("omero-ro-2"));
    let status = fake.status();
    assert!(status.object_problems.is_empty(), "{:?}", status.object_problems);
    assert_eq!(status.condition(conditions::DEGRADED).unwrap().status, "False");
}

/// A reconcile from a copy older than the operator's own last status write is refused at its
/// status write, acts on nothing, publishes nothing, and looks again at once (not through the
/// error backoff).
#[tokio::test(start_paused = true)]
async fn a_stale_copy_acts_on_nothing_and_requeues_at_once() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    let stale = fake.cluster();
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
    fake.take_writes();
    // The copy before that write still wants ro-1 in service: it must not put it back.
    let requeue =
        omero_operator::controller::reconcile(std::sync::Arc::new(stale), ctx.clone()).await.unwrap();
    assert_eq!(requeue, omero_operator::controller::STALE_RETRY);
    assert_eq!(fake.take_writes(), [Write::Status], "only the refused status write");
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining);
    assert!(!fake.pod_routable("ro-1"));
}

/// What a reconcile from a stale copy learned of its probes is not kept: its status write
/// was refused, so the next reconcile (from the current copy) probes again rather than trusting
/// bookkeeping that went with a record nobody wrote.
#[tokio::test(start_paused = true)]
async fn a_refused_status_write_keeps_nothing_of_its_probes_in_memory() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(2));
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").phase == NodePhase::Draining).await;
    // A new count is written: the copy before that write is a draining one, and stale.
    sessions.set("10.0.0.2", Ok(1));
    run_until(&fake, &ctx, 5, |f| f.node("ro-1").sessions == Some(1)).await;
    let stale = fake.state().history.last().cloned().expect("a copy before the last status write");
    let before = fake.remembered_node(&ctx, "ro-1");
    tokio::time::advance(time(&before.next_probe_at).duration_since(ctx.clock.now()).unsigned_abs()).await;
    sessions.set("10.0.0.2", Err("connection refused"));
    let requeue =
        omero_operator::controller::reconcile(std::sync::Arc::new(stale), ctx.clone()).await.unwrap();
    assert_eq!(requeue, omero_operator::controller::STALE_RETRY);
    assert_eq!(fake.state().stale_writes, 1, "the failure's record was refused");
    assert_eq!(
        fake.remembered_node(&ctx, "ro-1"),
        before,
        "nothing of the refused reconcile's probe is kept"
    );
    // The current copy probes again at once (its probe is due) and records the failure.
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.remembered_node(&ctx, "ro-1").probe_failures, 1);
    assert_eq!(fake.node("ro-1").probe_error.as_deref(), Some("connection refused"));
}

/// The status write that records a drain's start succeeds, the refusal it then records finds
/// the cluster changed (someone else wrote it): the Events of the recorded transition are
/// published all the same, once, and the refusal is recorded by the next reconcile.
#[tokio::test(start_paused = true)]
async fn events_of_a_recorded_transition_survive_a_stale_second_write() {
    let (fake, _, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    fake.state().events.clear();
    fake.state().refuse.insert("Service/omero-ro-2".into(), "Service \"omero-ro-2\" is invalid: x".into());
    fake.state().services.remove("omero-ro-2");
    fake.state().changed_after_status_write = true;
    fake.set_annotation(DRAIN_ANNOTATION, Some("ro-1"));
    let requeue = reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(requeue, omero_operator::controller::STALE_RETRY);
    assert_eq!(fake.node("ro-1").phase, NodePhase::Draining, "recorded by the first write");
    assert_eq!(
        fake.event_reasons().iter().filter(|r| *r == "DrainStarted").count(),
        1,
        "{:?}",
        fake.event_reasons()
    );
    reconcile_once(&fake, &ctx).await.unwrap();
    assert!(fake.status().object_problems.iter().any(|p| p.name == "omero-ro-2"), "recorded next time");
    assert_eq!(
        fake.event_reasons().iter().filter(|r| *r == "DrainStarted").count(),
        1,
        "not announced twice"
    );
}

/// A crash-looping session counter beside a serving node's server: the kubelet reports the
/// counter container waiting in CrashLoopBackOff, and the pod not Ready (Kubernetes 1.28 counts
/// every container). The node's phase never changes for it, its Deployment is never rewritten
/// (so the server is never restarted), and a drain of it gets failures from the probe, never a
/// zero: only the deadline ends that drain.
#[tokio::test(start_paused = true)]
async fn a_crash_looping_counter_never_changes_a_serving_nodes_phase_nor_restarts_its_server() {
    let yaml = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server:5.6
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  sessionCounter: {credentialsSecret: {name: omero-monitor}}
  drain: {timeout: 10m}
  nodes:
  - name: rw
  - name: ro
    readOnly: {db: true, repo: true}
"#;
    let fake = FakeCluster::new(cluster_from_yaml(yaml));
    let omero = FakeOmero::default();
    let ctx = context(&fake, &omero);
    omero.set("10.0.0.1", Ok(0));
    omero.set(
        "10.0.0.2",
        Err("session counter http://10.0.0.2:9450/sessions: error trying to connect: Connection refused"),
    );
    reconcile_once(&fake, &ctx).await.unwrap();
    fake.set_pod("rw", "10.0.0.1", true);
    fake.set_pod("ro", "10.0.0.2", true);
    reconcile_once(&fake, &ctx).await.unwrap();
    assert_eq!(fake.node("ro").phase, NodePhase::Serving);
    // The counter crash-loops: the server container runs and started; the pod is not Ready.
    {
        let mut state = fake.state();
        let pod = state.pods.get_mut("omero-ro-pod").unwrap();
        let status = pod.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[0].status = "False".into();
        let server = status.container_statuses.as_ref().unwrap()[0].clone();
        let counter = serde_json::from_value(serde_json::json!({
            "name": "session-counter", "image": "openmicroscopy/omero-server:5.6", "imageID": "",
            "ready": false, "restartCount": 9, "started": false,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}
        }))
        .unwrap();
        status.container_statuses = Some(vec![server, counter]);
    }
    fake.take_writes();
    for _ in 0..5 {
        reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
    }
    let ro = fake.node("ro");
    assert_eq!(ro.phase, NodePhase::Serving, "{ro:?}");
    assert_eq!(ro.message, None);
    let writes = fake.take_writes();
    assert!(!writes.iter().any(|w| matches!(w, Write::ApplyDeployment(_) | Write::Delete(..))), "{writes:?}");
    assert!(!fake.event_reasons().iter().any(|r| r.contains("Fail")), "{:?}", fake.event_reasons());

    // Drained on request: the probe fails (nothing answers on the counter's port), which is
    // never a zero, so the drain lasts until its deadline.
    fake.set_annotation("omero.openmicroscopy.org/drain", Some("ro"));
    reconcile_once(&fake, &ctx).await.unwrap();
    for _ in 0..8 {
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        reconcile_once(&fake, &ctx).await.unwrap();
        let ro = fake.remembered_node(&ctx, "ro");
        assert_eq!(ro.phase, NodePhase::Draining, "{ro:?}");
        assert_eq!(ro.zero_session_probes, 0);
    }
    let ro = fake.node("ro");
    assert!(ro.probe_error.as_deref().is_some_and(|e| e.contains("session counter")), "{ro:?}");
    assert!(
        omero.queries().iter().any(|q| q.pod_ip == "10.0.0.2" && q.probe.kind == SessionProbeKind::Counter)
    );
    tokio::time::advance(std::time::Duration::from_secs(180)).await;
    reconcile_once(&fake, &ctx).await.unwrap();
    let ro = fake.node("ro");
    assert_eq!(ro.phase, NodePhase::Drained);
    assert!(ro.deadline_reached, "{ro:?}");
}

/// Every kind of object the operator writes, and the fields of each the API server fills in
/// or rewrites: a session counter (ConfigMap, a second container with `fieldRef` env), a
/// sidecar with a port and an HTTP probe that leave their protocol and thresholds out, resource
/// quantities not in canonical form, an image without a tag, a NodePort entry Service.
const EVERY_DEFAULT: &str = r#"
apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: omero}
spec:
  image: openmicroscopy/omero-server
  database: {host: db, passwordSecret: {name: omero-db, key: password}}
  repository: {claimName: omero-data}
  sessionCounter: {credentialsSecret: {name: omero-monitor}}
  service: {type: NodePort}
  nodes:
  - name: rw
    sessionProbe: {type: Database, interval: 10s}
    resources:
      requests: {cpu: "0.5", memory: "4294967296"}
      limits: {cpu: 2000m, memory: 4.5Gi}
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    tolerations: [{key: dedicated, operator: Equal, value: omero, effect: NoSchedule}]
    sidecars:
    - name: exporter
      image: ghcr.io/example/exporter:1
      ports: [{name: metrics, containerPort: 9449}]
      readinessProbe: {httpGet: {path: /metrics, port: 9449}}
      resources: {limits: {cpu: "0.1", memory: 64Mi}}
  - name: ro-1
    readOnly: {db: true, repo: true}
  - name: ro-2
    readOnly: {db: true, repo: true}
"#;

/// The measure of "an unchanged reconcile writes nothing", against what a real API server
/// stores: defaults filled in, IPs and node ports allocated, quantities canonical, system
/// metadata. The operator compares only the fields it sets, so none of that is a change.
#[tokio::test(start_paused = true)]
async fn an_unchanged_reconcile_against_the_api_servers_defaulted_objects_writes_nothing() {
    for yaml in [EVERY_DEFAULT, GRID] {
        let (fake, _, ctx) = setup(yaml);
        bring_up(&fake, &ctx).await;
        let status = fake.status();
        assert!(
            status.nodes.len() == 3 && status.nodes.iter().all(|n| n.phase == NodePhase::Serving),
            "{status:#?}"
        );
        // The objects as stored are not what the operator sent: the comparison below is not
        // of an object with itself.
        {
            let desired = omero_operator::render::render(&fake.cluster());
            let state = fake.state();
            let sent = serde_json::to_value(&desired.deployments[0]).unwrap();
            let name = desired.deployments[0].metadata.name.clone().unwrap();
            let stored = serde_json::to_value(&state.deployments[&name]).unwrap();
            assert_ne!(sent["spec"], stored["spec"], "{name}: stored with defaults");
            assert_eq!(stored["spec"]["revisionHistoryLimit"], 10);
            assert_eq!(stored["spec"]["template"]["spec"]["schedulerName"], "default-scheduler");
            let server = &stored["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(server["terminationMessagePath"], "/dev/termination-log");
            assert!(server["imagePullPolicy"].is_string(), "{server}");
            assert!(state.services.values().all(|s| s.spec.as_ref().unwrap().cluster_ip.is_some()));
            assert!(state.deployments.values().all(|d| d.metadata.uid.is_some()
                && d.metadata.resource_version.is_some()
                && d.metadata.generation == Some(1)));
        }
        if yaml == EVERY_DEFAULT {
            let state = fake.state();
            let pod = state.deployments["omero-rw"].spec.clone().unwrap().template.spec.unwrap();
            let server = &pod.containers[0];
            assert_eq!(server.image_pull_policy.as_deref(), Some("Always"), "no tag: latest");
            let requests = server.resources.as_ref().unwrap().requests.clone().unwrap();
            assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("500m", "4294967296"));
            let limits = server.resources.as_ref().unwrap().limits.clone().unwrap();
            assert_eq!((limits["cpu"].0.as_str(), limits["memory"].0.as_str()), ("2", "4608Mi"));
            let exporter = pod.containers.iter().find(|c| c.name == "exporter").unwrap();
            assert_eq!(exporter.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));
            let probe = exporter.readiness_probe.clone().unwrap();
            assert_eq!((probe.timeout_seconds, probe.failure_threshold), (Some(1), Some(3)));
            assert_eq!(probe.http_get.unwrap().scheme.as_deref(), Some("HTTP"));
            let entry = state.services["omero"].spec.clone().unwrap();
            assert!(entry.ports.unwrap().iter().all(|p| p.node_port.is_some()), "node ports allocated");
            assert!(state.config_maps.contains_key("omero-session-counter"));
        }

        // Serving nodes are counted once (a status write), then nothing is due.
        for _ in 0..3 {
            let requeue = reconcile_once(&fake, &ctx).await.unwrap();
            tokio::time::advance(requeue.min(Duration::from_secs(1))).await;
        }
        fake.take_writes();
        reconcile_once(&fake, &ctx).await.unwrap();
        assert_eq!(fake.take_writes(), vec![], "an unchanged reconcile must not write");
    }
}

/// The API server leaves out the empty value of an `omitempty` field (Go's encoding): an env
/// var's `value: ""` (so a `config` entry set to ""), a toleration's `value: ""`, a sidecar's
/// `readOnly: false`. Such a value is no change (`diff::needs_apply`), or each reconcile would
/// apply the node's Deployment again, with a status write, for ever.
#[tokio::test(start_paused = true)]
async fn an_empty_value_the_api_server_leaves_out_is_no_change() {
    for node_field in [
        "    config: {omero.mail.host: \"\"}\n",
        "    tolerations: [{key: dedicated, operator: Exists, value: \"\", effect: NoSchedule}]\n",
        "    sidecars: [{name: x, image: 'ex/x:1', volumeMounts: [{name: var, mountPath: /v, readOnly: false}]}]\n",
    ] {
        let yaml = CLUSTER.replace("  - name: ro-1\n", &format!("{node_field}  - name: ro-1\n"));
        let (fake, _, ctx) = setup(&yaml);
        bring_up(&fake, &ctx).await;
        for _ in 0..3 {
            let requeue = reconcile_once(&fake, &ctx).await.unwrap();
            tokio::time::advance(requeue.min(Duration::from_secs(1))).await;
        }
        fake.take_writes();
        reconcile_once(&fake, &ctx).await.unwrap();
        assert_eq!(fake.take_writes(), vec![], "{node_field}: an unchanged reconcile must not write");
    }
}

/// An idle fleet writes nothing: a steady cluster whose probes answer the same counts for an
/// hour is probed all along and makes no write at all; a changed count is one status write.
#[tokio::test(start_paused = true)]
async fn a_steady_cluster_writes_nothing_and_a_changed_count_writes_once() {
    let (fake, sessions, ctx) = setup(CLUSTER);
    bring_up(&fake, &ctx).await;
    sessions.set("10.0.0.2", Ok(4));
    run_until(&fake, &ctx, 10, |f| f.node("ro-1").sessions == Some(4)).await;
    fake.take_writes();
    let probes_before = sessions.queries().len();

    let hour = tokio::time::Instant::now() + Duration::from_secs(3600);
    while tokio::time::Instant::now() < hour {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(requeue).await;
    }
    let probes = sessions.queries().len() - probes_before;
    // Three serving nodes counted every minute (the default serving interval) for an hour.
    assert!(probes >= 3 * 59, "the nodes were probed all along: {probes} probes");
    assert_eq!(fake.take_writes(), [], "an hour of the same counts writes nothing");

    sessions.set("10.0.0.2", Ok(5));
    let minutes = tokio::time::Instant::now() + Duration::from_secs(600);
    while tokio::time::Instant::now() < minutes {
        let requeue = reconcile_once(&fake, &ctx).await.unwrap();
        tokio::time::advance(requeue).await;
    }
    assert_eq!(fake.take_writes(), [Write::Status], "a changed count is one write");
    assert_eq!(fake.node("ro-1").sessions, Some(5));
}
