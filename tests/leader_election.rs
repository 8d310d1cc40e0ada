//! Leader election with two replicas against a lease double, on tokio's paused clock: exactly
//! one leads; the other takes over when the leader dies (after the lease expires), stops
//! cleanly (at once) or is partitioned (after it has stepped down); never both at once. And the
//! write guard: a replica that does not lead writes nothing, even mid-reconcile. The failover
//! times printed are the double's, which renews and expires as kube-lease-manager does with the
//! operator's lease settings (15 s lease, renewed 5 s before it expires, 2 s request timeout).

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use omero_operator::{
    Error,
    controller::{
        Context,
        leader::{
            LEASE_DURATION, LEASE_GRACE, LEASE_REQUEST_TIMEOUT, LeaderLease, LeaderOnly, Leadership, Term,
            lead,
        },
        port::{ClusterPort, StatusWrite},
    },
};
use support::*;
use tokio::{sync::watch, time::Instant};

/// The Lease object, as the API server holds it.
#[derive(Default)]
struct LeaseObject {
    holder: Option<String>,
    renewed: Option<Instant>,
}

impl LeaseObject {
    fn expired(&self) -> bool {
        self.renewed.is_none_or(|at| Instant::now() >= at + LEASE_DURATION)
    }
}

/// One replica's view of the Lease, with kube-lease-manager's `changed` loop: renew `grace`
/// before expiry while holding; take the lease when free or expired; else wait for expiry.
struct FakeLease {
    id: String,
    server: Arc<Mutex<LeaseObject>>,
    held: AtomicBool,
    /// The replica cannot reach the API server: every request times out.
    partitioned: Arc<AtomicBool>,
    /// The process is dead: nothing more happens.
    dead: Arc<AtomicBool>,
}

impl FakeLease {
    async fn request(&self) -> Result<(), String> {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.partitioned.load(Ordering::SeqCst) {
            tokio::time::sleep(LEASE_REQUEST_TIMEOUT).await;
            return Err("request timed out".into());
        }
        Ok(())
    }
}

impl LeaderLease for FakeLease {
    async fn changed(&self) -> Result<bool, String> {
        loop {
            self.request().await?;
            let (holds, wait) = {
                let lease = self.server.lock().unwrap();
                let holds = lease.holder.as_deref() == Some(self.id.as_str()) && !lease.expired();
                let expiry = lease.renewed.map(|at| at + LEASE_DURATION);
                (holds, expiry)
            };
            if holds != self.held.load(Ordering::SeqCst) {
                self.held.store(holds, Ordering::SeqCst);
                return Ok(holds);
            }
            if holds {
                tokio::time::sleep_until(wait.unwrap() - LEASE_GRACE).await;
                self.request().await?;
                self.server.lock().unwrap().renewed = Some(Instant::now());
                continue;
            }
            let free = {
                let lease = self.server.lock().unwrap();
                lease.holder.is_none() || lease.expired()
            };
            if free {
                self.request().await?;
                let mut lease = self.server.lock().unwrap();
                if lease.holder.is_none() || lease.expired() {
                    lease.holder = Some(self.id.clone());
                    lease.renewed = Some(Instant::now());
                }
            } else {
                match wait {
                    Some(expiry) => tokio::time::sleep_until(expiry).await,
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    }

    async fn release(&self) -> Result<(), String> {
        self.request().await?;
        let mut lease = self.server.lock().unwrap();
        if lease.holder.as_deref() == Some(self.id.as_str()) {
            lease.holder = None;
            lease.renewed = None;
        }
        Ok(())
    }
}

/// Who acts, and every overlap seen.
#[derive(Default)]
struct Acting {
    now: Option<String>,
    overlaps: Vec<String>,
    terms: Vec<(String, Instant)>,
}

/// Clears the acting replica when its work is dropped (the lease lost) or ends.
struct ActingGuard(Arc<Mutex<Acting>>, String);

impl Drop for ActingGuard {
    fn drop(&mut self) {
        let mut acting = self.0.lock().unwrap();
        if acting.now.as_deref() == Some(self.1.as_str()) {
            acting.now = None;
        }
    }
}

struct Replica {
    partitioned: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    leading: watch::Receiver<bool>,
    leadership: Option<Leadership>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    run: tokio::task::JoinHandle<Term>,
}

fn replica(id: &str, server: &Arc<Mutex<LeaseObject>>, acting: &Arc<Mutex<Acting>>) -> Replica {
    let partitioned = Arc::new(AtomicBool::new(false));
    let dead = Arc::new(AtomicBool::new(false));
    let lease = FakeLease {
        id: id.into(),
        server: server.clone(),
        held: AtomicBool::new(false),
        partitioned: partitioned.clone(),
        dead: dead.clone(),
    };
    let leadership = Leadership::start(lease);
    let leading = leadership.watch();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = futures::FutureExt::shared(async move {
        let _ = stopped.await;
    });
    let acting = acting.clone();
    let id = id.to_string();
    let watch = leadership.watch();
    let run = tokio::spawn(async move {
        lead(
            watch,
            shutdown,
            |shutdown| async move {
                {
                    let mut now = acting.lock().unwrap();
                    if let Some(other) = &now.now {
                        let overlap = format!("{id} started while {other} acts");
                        now.overlaps.push(overlap);
                    }
                    now.now = Some(id.clone());
                    now.terms.push((id.clone(), Instant::now()));
                }
                let _guard = ActingGuard(acting.clone(), id.clone());
                shutdown.await;
            },
            |_| {},
        )
        .await
    });
    Replica { partitioned, dead, leading, leadership: Some(leadership), stop: Some(stop), run }
}

async fn settle(secs: u64) {
    for _ in 0..secs * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leaders(replicas: &[&Replica]) -> usize {
    replicas.iter().filter(|r| *r.leading.borrow()).count()
}

async fn wait_until_leading(r: &mut Replica) -> Instant {
    r.leading.wait_for(|l| *l).await.unwrap();
    Instant::now()
}

#[tokio::test(start_paused = true)]
async fn one_leads_and_the_other_takes_over_when_the_leader_dies() {
    let server = Arc::new(Mutex::new(LeaseObject::default()));
    let acting = Arc::new(Mutex::new(Acting::default()));
    let mut a = replica("a", &server, &acting);
    let mut b = replica("b", &server, &acting);
    settle(60).await;
    assert_eq!(leaders(&[&a, &b]), 1, "exactly one leads");
    let (leader, standby) = if *a.leading.borrow() { (&mut a, &mut b) } else { (&mut b, &mut a) };

    // The leader's process dies: no more renewals, no release; its work is gone with it.
    let last_renewal = server.lock().unwrap().renewed.unwrap();
    leader.dead.store(true, Ordering::SeqCst);
    leader.run.abort();
    let died = Instant::now();
    let took_over = wait_until_leading(standby).await;
    let failover = took_over - died;
    println!(
        "failover after the leader died: {:.1} s (lease {} s; the standby waits for the lease to expire)",
        failover.as_secs_f64(),
        LEASE_DURATION.as_secs()
    );
    assert!(took_over >= last_renewal + LEASE_DURATION, "taken over before the dead leader's lease expired");
    settle(5).await;
    let acting = acting.lock().unwrap();
    assert!(acting.overlaps.is_empty(), "{:?}", acting.overlaps);
    assert_eq!(acting.terms.len(), 2, "each replica led once: {:?}", acting.terms);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_stops_cleanly_hands_over_at_once() {
    let server = Arc::new(Mutex::new(LeaseObject::default()));
    let acting = Arc::new(Mutex::new(Acting::default()));
    let mut a = replica("a", &server, &acting);
    settle(5).await;
    assert!(*a.leading.borrow());
    let mut b = replica("b", &server, &acting);
    settle(60).await;
    assert!(!*b.leading.borrow(), "the standby waits while the leader renews");

    // SIGTERM: the work ends, then the lease is released.
    a.stop.take().unwrap().send(()).unwrap();
    assert_eq!((&mut a.run).await.unwrap(), Term::Shutdown);
    let stopped = Instant::now();
    a.leadership.take().unwrap().resign().await;
    let took_over = wait_until_leading(&mut b).await;
    println!("failover after a clean stop (lease released): {:.1} s", (took_over - stopped).as_secs_f64());
    assert!(server.lock().unwrap().holder.as_deref() == Some("b"));
    assert!(acting.lock().unwrap().overlaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_steps_down_before_the_other_takes_over() {
    let server = Arc::new(Mutex::new(LeaseObject::default()));
    let acting = Arc::new(Mutex::new(Acting::default()));
    let mut a = replica("a", &server, &acting);
    settle(5).await;
    assert!(*a.leading.borrow());
    let mut b = replica("b", &server, &acting);
    settle(3).await;

    a.partitioned.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let stepped_down = {
        a.leading.wait_for(|l| !*l).await.unwrap();
        Instant::now()
    };
    assert_eq!((&mut a.run).await.unwrap(), Term::Lost, "the controller stopped when the lease was lost");
    let took_over = wait_until_leading(&mut b).await;
    println!(
        "partition: the old leader stepped down {:.1} s after the cut, the standby took over {:.1} s after it",
        (stepped_down - cut).as_secs_f64(),
        (took_over - cut).as_secs_f64()
    );
    assert!(stepped_down < took_over, "both led at once");
    settle(5).await;
    assert!(acting.lock().unwrap().overlaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let fake = FakeCluster::new(cluster_from_yaml(
        "apiVersion: omero.openmicroscopy.org/v1alpha1\nkind: OmeroCluster\nmetadata: {name: omero}\nspec:\n  image: openmicroscopy/omero-server:5.6\n  database: {host: db, passwordSecret: {name: omero-db, key: password}}\n  repository: {claimName: omero-data}\n  nodes: [{name: rw}]\n",
    ));
    let (leading, watch) = watch::channel(false);
    let ctx = Arc::new(Context::new(
        LeaderOnly::new(fake.clone(), watch.clone()),
        LeaderOnly::new(FakeOmero::default(), watch),
        omero_operator::controller::Clock::starting_at(START.parse().unwrap()),
    ));
    let error =
        omero_operator::controller::reconcile(Arc::new(fake.cluster()), ctx.clone()).await.unwrap_err();
    assert!(matches!(error, Error::NotLeader), "{error}");
    assert!(fake.writes().is_empty(), "a standby wrote: {:?}", fake.writes());
    let status = fake.status();
    assert!(matches!(ctx.port.write_status(&fake.cluster(), &status).await, Err(Error::NotLeader)));

    leading.send_replace(true);
    omero_operator::controller::reconcile(Arc::new(fake.cluster()), ctx.clone()).await.unwrap();
    assert!(!fake.writes().is_empty(), "the leader acts");
    let written = ctx.port.write_status(&fake.cluster(), &fake.status()).await.unwrap();
    assert!(matches!(written, StatusWrite::Written(_)));
}
