//! The database adapters (the `database` session probe and the grid redirect row) against a
//! real PostgreSQL holding OMERO's tables (tests/fixtures/omero-sessions-schema.sql). Each test creates its own database, so they run
//! in parallel. Needs OMERO_OPERATOR_TEST_DATABASE_URL, which scripts/with-postgres.sh sets:
//!
//!   scripts/with-postgres.sh cargo test --test database_probe
//!
//! Without it the tests that need PostgreSQL print why and pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use omero_operator::api::{DatabaseEndpoint, SecretKeyRef, SessionProbe, SessionProbeKind};
use omero_operator::omero::{
    Client as OmeroClient, DatabaseCredentials, ProbeError, ProbeTarget, ProbeTimeouts,
};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

const URL_VAR: &str = "OMERO_OPERATOR_TEST_DATABASE_URL";
const SCHEMA: &str = include_str!("fixtures/omero-sessions-schema.sql");
const POD_A: &str = "10.1.2.3";
const POD_B: &str = "10.1.2.33";

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A fresh database with OMERO's tables, and a way to write rows as OMERO would.
struct OmeroDb {
    admin: Client,
    client: Client,
    name: String,
    endpoint: DatabaseEndpoint,
    password: String,
    next_session: i64,
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    client
}

impl OmeroDb {
    async fn create() -> Option<Self> {
        let Ok(url) = std::env::var(URL_VAR) else {
            eprintln!("skipped: {URL_VAR} is not set; run through scripts/with-postgres.sh");
            return None;
        };
        let config: Config = url.parse().unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
        let admin = connect(&config).await;
        let name = format!("omero_probe_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        let mut own = config.clone();
        own.dbname(&name);
        let client = connect(&own).await;
        client.batch_execute(SCHEMA).await.expect("load the OMERO schema fixture");

        let host = match &config.get_hosts()[0] {
            Host::Tcp(host) => host.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        };
        let endpoint = DatabaseEndpoint {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            name: name.clone(),
            user: config.get_user().expect("a user in the URL").to_owned(),
            password_secret: SecretKeyRef { name: "omero-db".into(), key: "password".into() },
        };
        let password =
            String::from_utf8(config.get_password().expect("a password in the URL").to_vec()).unwrap();
        Some(Self { admin, client, name, endpoint, password, next_session: 100 })
    }

    fn credentials(&self) -> DatabaseCredentials<'_> {
        DatabaseCredentials { endpoint: &self.endpoint, password: &self.password }
    }

    /// A node row as Blitz writes it at start-up: its proxy lists the pod IP and loopback.
    async fn add_node(&self, id: i64, ip: &str, down: bool) {
        let conn = format!(
            "{id:08}-5f1e-4c0a-9d2b-7e3f1a2b3c4d -t -e 1.1:tcp -h {ip} -p 45678 -t 60000:tcp -h 127.0.0.1 -p 45678 -t 60000"
        );
        let down = if down { "now() - interval '1 day'" } else { "NULL" };
        self.client
            .execute(
                &format!("INSERT INTO node (id, conn, uuid, down) VALUES ($1, $2, $3, {down})"),
                &[&id, &conn, &format!("node-uuid-{id}")],
            )
            .await
            .unwrap();
    }

    /// A session of a normal user (experimenter 2).
    async fn open_session(&mut self, node: i64, useragent: Option<&str>) -> i64 {
        self.open_session_of(node, useragent, 2).await
    }

    async fn open_session_of(&mut self, node: i64, useragent: Option<&str>, owner: i64) -> i64 {
        self.next_session += 1;
        let id = self.next_session;
        self.client
            .execute(
                "INSERT INTO session (id, uuid, node, useragent, owner) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &format!("session-uuid-{id}"), &node, &useragent, &owner],
            )
            .await
            .unwrap();
        id
    }

    /// What every node running the default servers holds from its start: Processor-0's and
    /// Tables-0's root logins.
    async fn service_sessions(&mut self, node: i64) {
        for _ in 0..2 {
            self.open_session_of(node, Some("Python service"), 0).await;
        }
    }

    async fn share(&mut self, node: i64) -> i64 {
        let id = self.open_session(node, Some("OMERO.web")).await;
        self.client
            .execute("INSERT INTO share (session_id, data) VALUES ($1, $2)", &[&id, &vec![0u8; 4]])
            .await
            .unwrap();
        id
    }

    async fn close_session(&self, id: i64) {
        self.client.execute("UPDATE session SET closed = now() WHERE id = $1", &[&id]).await.unwrap();
    }

    async fn set_node_down(&self, id: i64) {
        self.client.execute("UPDATE node SET down = now() WHERE id = $1", &[&id]).await.unwrap();
    }

    /// Server connections the operator holds on this database.
    async fn operator_connections(&self) -> i64 {
        let row = self
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'omero-operator'",
                &[&self.name],
            )
            .await
            .unwrap();
        row.get(0)
    }

    async fn drop(self) {
        self.drop_then("").await;
    }

    /// Drops the database (and the probes' connections to it), then runs `sql`.
    async fn drop_then(self, sql: &str) {
        drop(self.client);
        let drop_database = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.admin.batch_execute(&drop_database).await.expect("DROP DATABASE");
        self.admin.batch_execute(sql).await.expect(sql);
    }
}

fn database_probe() -> SessionProbe {
    SessionProbe { kind: SessionProbeKind::Database, ..SessionProbe::default() }
}

async fn count(
    probes: &OmeroClient,
    pod_ip: &str,
    credentials: DatabaseCredentials<'_>,
) -> Result<Option<u64>, ProbeError> {
    let probe = database_probe();
    let counted = probes.count(&ProbeTarget { pod_ip, probe: &probe, database: Some(credentials) }).await;
    // A database count is read live: never a named sample.
    counted.map(|c| {
        c.map(|c| {
            assert_eq!(c.sample, None);
            c.sessions
        })
    })
}

#[tokio::test]
async fn the_count_follows_open_user_sessions_of_the_pods_live_node() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let probes = OmeroClient::default();
    db.add_node(1, POD_A, false).await;
    db.add_node(2, POD_B, false).await;
    // The node that ran in pod A's IP before a restart; OMERO left one session open on it.
    db.add_node(3, POD_A, true).await;
    db.open_session(3, Some("OMERO.insight")).await;
    // OMERO's own service sessions (Processor-0, Tables-0: root, 'Python service') and each
    // JVM's internal session (no user agent, on the placeholder node 0) never count.
    db.service_sessions(1).await;
    db.service_sessions(2).await;
    db.open_session_of(0, None, 0).await;
    db.open_session(0, Some("OMERO.web")).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(0)), "a drained node reaches zero");

    let insight = db.open_session(1, Some("OMERO.insight")).await;
    let web = db.open_session(1, Some("OMERO.web")).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(2)));

    // Pod B's sessions are pod B's, although its IP starts with pod A's.
    let b_session = db.open_session(2, Some("OMERO.py")).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(2)));
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(1)));

    // A session without a user agent is a user's session.
    let anonymous = db.open_session(1, None).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(3)));

    // A share is not a login.
    db.share(1).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(3)));

    // A person working as root counts, and so does a normal user's script that sends the
    // services' agent string: only both together make a service session.
    let admin = db.open_session_of(1, Some("OMERO.insight"), 0).await;
    let script = db.open_session(1, Some("Python service")).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(5)));
    db.close_session(admin).await;
    db.close_session(script).await;

    db.close_session(insight).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(2)));
    db.close_session(web).await;
    db.close_session(anonymous).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(0)));
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(1)));
    db.close_session(b_session).await;
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(0)));
    db.drop().await;
}

/// The service-session rule is a rule about each session, not a number per node: a node whose
/// `servers` leave out Processor-0 (a read-only node's default, `[Blitz-0, Tables-0]`, or any
/// trimmed set on the read-write node, which writes session rows) holds one service session, or
/// none without Tables-0, and the count is still exactly the people's.
#[tokio::test]
async fn a_node_running_fewer_servers_has_fewer_service_sessions_and_counts_the_same_people() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let probes = OmeroClient::default();
    db.add_node(1, POD_A, false).await;
    db.add_node(2, POD_B, false).await;
    // Pod A runs Blitz-0 and Tables-0: only Tables-0's root login. Pod B runs Blitz-0 alone.
    db.open_session_of(1, Some("Python service"), 0).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(0)));
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(0)));
    let on_a = db.open_session(1, Some("OMERO.web")).await;
    let on_b = db.open_session(2, Some("OMERO.insight")).await;
    let admin_on_b = db.open_session_of(2, Some("OMERO.insight"), 0).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(2)));
    for session in [on_a, on_b, admin_on_b] {
        db.close_session(session).await;
    }
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(0)));
    assert_eq!(count(&probes, POD_B, db.credentials()).await, Ok(Some(0)));
    db.drop().await;
}

#[tokio::test]
async fn a_pod_without_a_live_node_is_an_error_not_zero() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let probes = OmeroClient::default();
    db.add_node(2, POD_B, false).await;
    db.add_node(3, POD_A, true).await;
    db.open_session(3, Some("OMERO.web")).await;
    let error = count(&probes, POD_A, db.credentials()).await.unwrap_err();
    let ProbeError::NodeNotRegistered { pod_ip, live, .. } = &error else { panic!("{error}") };
    assert_eq!((pod_ip.as_str(), live.as_str()), (POD_A, "live nodes publish 10.1.2.33"));
    assert!(error.to_string().contains(&format!("@127.0.0.1:{}/{}", db.endpoint.port, db.name)), "{error}");

    // Once pod A's server registers, its count is known; when it goes down, it is not.
    db.add_node(4, POD_A, false).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(0)));
    db.set_node_down(4).await;
    assert!(matches!(
        count(&probes, POD_A, db.credentials()).await,
        Err(ProbeError::NodeNotRegistered { .. })
    ));
    db.drop().await;
}

#[tokio::test]
async fn a_wrong_password_is_an_error_and_a_corrected_one_recovers() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let probes = OmeroClient::default();
    db.add_node(1, POD_A, false).await;
    db.open_session(1, Some("OMERO.web")).await;
    let wrong = DatabaseCredentials { endpoint: &db.endpoint, password: "not-the-password" };
    let error = count(&probes, POD_A, wrong).await.unwrap_err();
    let ProbeError::Database { reason, .. } = &error else { panic!("{error}") };
    assert!(reason.contains("password authentication failed"), "{reason}");
    assert!(reason.contains("28P01"), "{reason}");
    assert!(!error.to_string().contains("not-the-password"), "{error}");
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
    db.drop().await;
}

#[tokio::test]
async fn a_locked_table_ends_in_the_statement_timeout_and_the_next_probe_recovers() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let timeouts = ProbeTimeouts {
        statement: Duration::from_millis(300),
        total: Duration::from_secs(10),
        ..Default::default()
    };
    let probes = OmeroClient::new(timeouts);
    db.add_node(1, POD_A, false).await;
    db.open_session(1, Some("OMERO.web")).await;
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));

    // Another client (a migration, say) holds the session table.
    let mut config: Config = std::env::var(URL_VAR).unwrap().parse().unwrap();
    config.dbname(&db.name);
    let mut locker = connect(&config).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE session IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let started = std::time::Instant::now();
    let error = count(&probes, POD_A, db.credentials()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let ProbeError::Database { reason, .. } = &error else { panic!("{error}") };
    assert!(reason.contains("statement timeout") && reason.contains("57014"), "{reason}");

    lock.rollback().await.unwrap();
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
    db.drop().await;
}

#[tokio::test]
async fn clusters_on_one_database_share_one_small_pool() {
    let Some(mut db) = OmeroDb::create().await else { return };
    db.add_node(1, POD_A, false).await;
    db.add_node(2, POD_B, false).await;
    db.open_session(1, Some("OMERO.web")).await;
    db.open_session(2, Some("OMERO.web")).await;
    db.open_session(2, Some("OMERO.web")).await;

    // Two clusters: same database and user, their own Secret objects.
    let probes = OmeroClient::default();
    let other_cluster = probes.clone();
    let mut other_endpoint = db.endpoint.clone();
    other_endpoint.password_secret = SecretKeyRef { name: "second-cluster-db".into(), key: "pw".into() };
    let other = DatabaseCredentials { endpoint: &other_endpoint, password: &db.password };
    for _ in 0..5 {
        assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
        assert_eq!(count(&other_cluster, POD_B, other).await, Ok(Some(2)));
    }
    assert_eq!(probes.database_pools(), 1);
    assert_eq!(db.operator_connections().await, 1, "one after another, the probes reuse one connection");

    // At once, they never hold more than the pool's two connections.
    let many = (0..16).map(|i| {
        let probes = probes.clone();
        let credentials = if i % 2 == 0 { db.credentials() } else { other };
        async move { count(&probes, if i % 2 == 0 { POD_A } else { POD_B }, credentials).await }
    });
    for result in futures::future::join_all(many).await {
        assert!(matches!(result, Ok(Some(1 | 2))), "{result:?}");
    }
    assert!(db.operator_connections().await <= 2);
    assert_eq!(probes.database_pools(), 1);
    db.drop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let Some(mut db) = OmeroDb::create().await else { return };
    db.add_node(1, POD_A, false).await;
    db.open_session(1, Some("OMERO.web")).await;
    let probes =
        OmeroClient::new(ProbeTimeouts { idle: Duration::from_millis(300), ..ProbeTimeouts::default() });
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
    assert_eq!(db.operator_connections().await, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db.operator_connections().await > 0 {
        assert!(std::time::Instant::now() < deadline, "the idle connection stayed open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next probe opens a new one.
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(1)));
    db.drop().await;
}

#[tokio::test]
async fn a_select_only_role_is_enough() {
    let Some(mut db) = OmeroDb::create().await else { return };
    db.add_node(1, POD_A, false).await;
    db.open_session(1, Some("OMERO.web")).await;
    let role = format!("{}_ro", db.name);
    let created = db.admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'read-only-pw'")).await;
    if let Err(e) = created {
        let reason = e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned());
        eprintln!("skipped: the test role cannot create roles ({reason})");
        return db.drop().await;
    }
    // Membership lets DROP DATABASE ... WITH (FORCE) end that role's pooled connections.
    db.admin.batch_execute(&format!("GRANT {role} TO CURRENT_USER")).await.unwrap();
    db.admin.batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name)).await.unwrap();
    db.client.batch_execute(&format!("GRANT SELECT ON node, session, share TO {role}")).await.unwrap();
    let mut endpoint = db.endpoint.clone();
    endpoint.user = role.clone();
    let probes = OmeroClient::default();
    let read_only = DatabaseCredentials { endpoint: &endpoint, password: "read-only-pw" };
    assert_eq!(count(&probes, POD_A, read_only).await, Ok(Some(1)));

    db.client.batch_execute(&format!("REVOKE SELECT ON share FROM {role}")).await.unwrap();
    let error = count(&probes, POD_A, read_only).await.unwrap_err();
    assert!(error.to_string().contains("the probe needs SELECT on node, session and share"), "{error}");
    db.drop_then(&format!("DROP ROLE {role}")).await;
}

// The failures below need no PostgreSQL, so they always run.

fn unreachable_endpoint(port: u16) -> DatabaseEndpoint {
    DatabaseEndpoint {
        host: "127.0.0.1".into(),
        port,
        name: "omero".into(),
        user: "omero".into(),
        password_secret: SecretKeyRef { name: "db".into(), key: "password".into() },
    }
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = unreachable_endpoint(port);
    let credentials = DatabaseCredentials { endpoint: &endpoint, password: "pw" };
    let error = count(&OmeroClient::default(), POD_A, credentials).await.unwrap_err();
    assert_eq!(
        error,
        ProbeError::Database {
            endpoint: format!("omero@127.0.0.1:{port}/omero"),
            reason: "error connecting to server: Connection refused (os error 111)".into(),
        }
    );
    assert_eq!(
        error.to_string(),
        format!(
            "database omero@127.0.0.1:{port}/omero: error connecting to server: Connection refused (os error 111)"
        )
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and says nothing, like a hung server or a half-open proxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let probes =
        OmeroClient::new(ProbeTimeouts { total: Duration::from_millis(400), ..ProbeTimeouts::default() });
    let endpoint = unreachable_endpoint(port);
    let credentials = DatabaseCredentials { endpoint: &endpoint, password: "pw" };
    let started = std::time::Instant::now();
    let error = count(&probes, POD_A, credentials).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(error.to_string(), format!("database omero@127.0.0.1:{port}/omero: no answer within 0.4s"));
    silent.abort();
}

#[tokio::test]
async fn probe_kinds_and_misconfiguration() {
    let probes = OmeroClient::default();
    let none = SessionProbe { kind: SessionProbeKind::None, ..SessionProbe::default() };
    assert_eq!(probes.count(&ProbeTarget { pod_ip: "", probe: &none, database: None }).await, Ok(None));

    let database = database_probe();
    let error = probes.count(&ProbeTarget { pod_ip: POD_A, probe: &database, database: None }).await;
    assert!(matches!(error, Err(ProbeError::Config(_))), "{error:?}");

    let endpoint = unreachable_endpoint(5432);
    let credentials = Some(DatabaseCredentials { endpoint: &endpoint, password: "pw" });
    let error = probes.count(&ProbeTarget { pod_ip: "pod-a", probe: &database, database: credentials }).await;
    assert_eq!(error, Err(ProbeError::Config("pod IP \"pod-a\" is not an IP address".into())));
}

/// The value of `omero.cluster.redirect`, if the row exists.
async fn redirect_row(db: &OmeroDb) -> Option<String> {
    db.client
        .query_opt("SELECT value FROM configuration WHERE name = 'omero.cluster.redirect'", &[])
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test]
async fn the_grid_redirect_row_is_inserted_then_kept_on_the_live_node() {
    let Some(db) = OmeroDb::create().await else { return };
    let omero = OmeroClient::default();
    db.add_node(1, POD_A, false).await;
    db.add_node(2, POD_B, false).await;
    // OMERO creates the database with omero.db.uuid and never inserts the redirect row.
    db.client
        .execute("INSERT INTO configuration (name, value) VALUES ('omero.db.uuid', 'db-1')", &[])
        .await
        .unwrap();
    assert_eq!(redirect_row(&db).await, None);

    let set = omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap();
    assert_eq!((set.node_uuid.as_str(), set.changed), ("node-uuid-1", true));
    assert_eq!(redirect_row(&db).await.as_deref(), Some("node-uuid-1"));

    // Asserting it again writes nothing.
    let again = omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap();
    assert!(!again.changed);

    // The server rewrote it (a node joined): the operator puts it back.
    db.client
        .execute("UPDATE configuration SET value = 'node-uuid-2' WHERE name = 'omero.cluster.redirect'", &[])
        .await
        .unwrap();
    assert!(omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap().changed);
    assert_eq!(redirect_row(&db).await.as_deref(), Some("node-uuid-1"));

    // A restarted JVM in the same pod IP: its new, live row wins over the one marked down.
    db.set_node_down(1).await;
    db.add_node(3, POD_A, false).await;
    let restarted = omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap();
    assert_eq!(restarted.node_uuid, "node-uuid-3");
    db.drop().await;
}

#[tokio::test]
async fn a_redirect_to_a_pod_with_no_live_node_changes_nothing() {
    let Some(db) = OmeroDb::create().await else { return };
    let omero = OmeroClient::default();
    db.add_node(2, POD_B, false).await;
    let error = omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap_err();
    assert!(matches!(error, ProbeError::NodeNotRegistered { .. }), "{error}");
    assert_eq!(redirect_row(&db).await, None);
    db.drop().await;
}

/// The master's start-up step: a placeholder when the row is missing, NULL or empty (a Blitz
/// cannot start on NULL with configRedirector), never over a node's UUID.
#[tokio::test]
async fn the_redirect_placeholder_fills_a_missing_or_null_row_and_keeps_a_value() {
    let Some(db) = OmeroDb::create().await else { return };
    let placeholder = omero_operator::render::REDIRECT_PLACEHOLDER;
    let write =
        || async { db.client.execute(omero_operator::render::REDIRECT_PLACEHOLDER_SQL, &[]).await.unwrap() };
    // First bring-up: no row.
    write().await;
    assert_eq!(redirect_row(&db).await.as_deref(), Some(placeholder));
    // The named node left: OMERO set the row to NULL.
    for cleared in ["UPDATE configuration SET value = NULL", "UPDATE configuration SET value = ''"] {
        db.client.execute(&format!("{cleared} WHERE name = 'omero.cluster.redirect'"), &[]).await.unwrap();
        write().await;
        assert_eq!(redirect_row(&db).await.as_deref(), Some(placeholder), "{cleared}");
    }
    // A node's UUID is kept.
    db.client
        .execute("UPDATE configuration SET value = 'node-uuid-1' WHERE name = 'omero.cluster.redirect'", &[])
        .await
        .unwrap();
    write().await;
    assert_eq!(redirect_row(&db).await.as_deref(), Some("node-uuid-1"));
    db.drop().await;
}

/// After OMERO cleared the row (the named node left), the operator points it at a serving node.
#[tokio::test]
async fn a_null_redirect_row_is_pointed_at_the_serving_node() {
    let Some(db) = OmeroDb::create().await else { return };
    let omero = OmeroClient::default();
    db.add_node(1, POD_A, false).await;
    db.client
        .execute("INSERT INTO configuration (name, value) VALUES ('omero.cluster.redirect', NULL)", &[])
        .await
        .unwrap();
    let set = omero.redirect_new_sessions(&db.credentials(), POD_A).await.unwrap();
    assert!(set.changed);
    assert_eq!(redirect_row(&db).await.as_deref(), Some("node-uuid-1"));
    db.drop().await;
}

/// `kubectl omero sessions` on a database-probed node: the operator lists exactly the sessions
/// the probe counts (the same rule, from the same text), each with the owner's OMERO user name
/// and nothing that identifies a person further; oldest first; bounded, saying so.
#[tokio::test]
async fn the_listing_shows_the_counted_sessions_with_user_names_only() {
    let Some(mut db) = OmeroDb::create().await else { return };
    let probes = OmeroClient::default();
    db.client
        .batch_execute(
            "INSERT INTO experimenter (id, omename, firstname, lastname, email) VALUES \
             (2, 'alice', 'Alice', 'Liddell', 'alice@example.org'), (3, 'bob', 'Bob', 'Ross', 'bob@example.org')",
        )
        .await
        .unwrap();
    db.add_node(1, POD_A, false).await;
    db.add_node(2, POD_B, false).await;
    db.service_sessions(1).await;
    let insight = db.open_session_of(1, Some("OMERO.insight"), 2).await;
    let web = db.open_session_of(1, Some("OMERO.web"), 3).await;
    let admin = db.open_session_of(1, Some("OMERO.insight"), 0).await;
    let closed = db.open_session_of(1, Some("OMERO.web"), 2).await;
    db.close_session(closed).await;
    db.share(1).await;
    db.open_session_of(2, Some("OMERO.py"), 3).await;
    let no_owner_row = db.open_session_of(1, None, 99).await;
    for (id, started) in
        [(insight, "2026-01-01 09:00:00"), (web, "2026-01-01 10:30:00"), (admin, "2026-01-01 11:00:00")]
    {
        db.client
            .execute(
                &format!("UPDATE session SET started = '{started}', timetolive = 7200000 WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
    }
    db.client
        .execute("UPDATE session SET started = '2026-01-01 12:00:00' WHERE id = $1", &[&no_owner_row])
        .await
        .unwrap();

    let list = probes.list_database_sessions(&db.credentials(), POD_A).await.unwrap();
    assert_eq!(count(&probes, POD_A, db.credentials()).await, Ok(Some(list.count)), "the count's rule");
    assert_eq!((list.count, list.truncated, list.sample.as_deref()), (4, false, None));
    let shown: Vec<(Option<&str>, Option<&str>, Option<&str>)> =
        list.sessions.iter().map(|s| (s.user.as_deref(), s.agent.as_deref(), s.started.as_deref())).collect();
    assert_eq!(
        shown,
        [
            (Some("alice"), Some("OMERO.insight"), Some("2026-01-01T09:00:00Z")),
            (Some("bob"), Some("OMERO.web"), Some("2026-01-01T10:30:00Z")),
            (Some("root"), Some("OMERO.insight"), Some("2026-01-01T11:00:00Z")),
            (None, None, Some("2026-01-01T12:00:00Z")),
        ],
        "oldest first; a person working as root shows; the services' sessions, shares, closed sessions and \
         other nodes' do not"
    );
    let alice = &list.sessions[0];
    assert_eq!((alice.time_to_idle_seconds, alice.time_to_live_seconds), (Some(600.0), Some(7200.0)));
    assert_eq!(
        (alice.last_access.as_deref(), alice.idle_seconds),
        (None, None),
        "OMERO's table keeps no access"
    );
    let text = serde_json::to_string(&list).unwrap();
    for private in ["session-uuid", "Liddell", "example.org", "Alice"] {
        assert!(!text.contains(private), "{private} left the database: {text}");
    }
    let b = probes.list_database_sessions(&db.credentials(), POD_B).await.unwrap();
    assert_eq!(b.sessions.iter().map(|s| s.user.as_deref()).collect::<Vec<_>>(), [Some("bob")]);

    // More than the bound: the first ones, the whole count, and truncated.
    let limit = omero_operator::omero::session_list::MAX_DATABASE_LISTED;
    db.client
        .execute(
            "INSERT INTO session (id, uuid, node, useragent, owner, started) \
             SELECT 10000 + g, 'bulk-' || g, 1, 'OMERO.web', 2, timestamp '2026-01-02' + g * interval '1 second' \
             FROM generate_series(1, $1::bigint) g",
            &[&limit],
        )
        .await
        .unwrap();
    let many = probes.list_database_sessions(&db.credentials(), POD_A).await.unwrap();
    assert_eq!((many.count, many.truncated), (4 + limit as u64, true));
    assert_eq!(many.sessions.len() as i64, limit);
    assert_eq!(many.sessions[0].user.as_deref(), Some("alice"), "the oldest first");

    // A pod with no live node: the probe's error, not an empty list.
    let error = probes.list_database_sessions(&db.credentials(), "10.9.9.9").await.unwrap_err();
    assert!(matches!(error, ProbeError::NodeNotRegistered { .. }), "{error}");
    db.drop().await;
}
