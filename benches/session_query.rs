//! Times the database probe on an OMERO-sized session table: 100,000 closed and 1,000 open
//! sessions over four live nodes and twenty that are down (earlier server starts). Measured through
//! `OmeroClient::count` (pool, read-only transaction, two queries) and as the raw count
//! query, first on the fixture's tables, then with the index on `session(node)` that OMERO's
//! own schema creates (`i_session_node`, sql/psql/*/psql-footer.sql). The operator never
//! creates indexes in OMERO's database; this only shows what OMERO's schema gives it.
//!
//!   scripts/with-postgres.sh cargo bench --bench session_query

use std::time::{Duration, Instant};

use omero_operator::api::{DatabaseEndpoint, SecretKeyRef, SessionProbe, SessionProbeKind};
use omero_operator::omero::{Client as OmeroClient, DatabaseCredentials, OPEN_SESSIONS_SQL, ProbeTarget};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

const URL_VAR: &str = "OMERO_OPERATOR_TEST_DATABASE_URL";
const SCHEMA: &str = include_str!("../tests/fixtures/omero-sessions-schema.sql");
const RUNS: usize = 200;
const WARM_UP: usize = 20;
const LIVE_NODES: i64 = 4;
const DOWN_NODES: i64 = 20;

const DATA: &str = "
INSERT INTO node (id, conn, uuid, down)
SELECT n, format('%s -t -e 1.1:tcp -h 10.1.2.%s -p 45678 -t 60000:tcp -h 127.0.0.1 -p 45678 -t 60000',
                 md5(n::text), 3 + (n - 1) % 4),
       md5(n::text), CASE WHEN n > 4 THEN now() - n * interval '1 day' END
FROM generate_series(1, 24) n;

-- Closed sessions in the order they were opened: node ids are new at every server start, so
-- the older 90% belong to the down nodes, a block each, and the newest to the live ones.
INSERT INTO session (id, uuid, node, useragent, started, closed)
SELECT g, 'closed-' || g, CASE WHEN g <= 90000 THEN 5 + (g - 1) / 4500 ELSE 1 + g % 4 END,
       (ARRAY['OMERO.web', 'OMERO.insight', 'OMERO.py'])[1 + g % 3],
       now() - g * interval '1 minute', now() - g * interval '1 minute' + interval '10 minutes'
FROM generate_series(1, 100000) g;

-- Open sessions of the live nodes (normal users), a few without a user agent.
INSERT INTO session (id, uuid, node, useragent, owner)
SELECT 100000 + g, 'open-' || g, 1 + g % 4, CASE WHEN g % 50 = 0 THEN NULL ELSE 'OMERO.web' END, 2
FROM generate_series(1, 1000) g;

-- Processor-0's and Tables-0's root sessions on each live node, sessions a down node never
-- closed, and shares.
INSERT INTO session (id, uuid, node, useragent, owner)
SELECT 200000 + n, 'service-' || n, 1 + n % 4, 'Python service', 0 FROM generate_series(1, 8) n;
INSERT INTO session (id, uuid, node, useragent)
SELECT 300000 + g, 'stale-' || g, 5 + g % 20, 'OMERO.web' FROM generate_series(1, 40) g;
INSERT INTO share (session_id, data) SELECT 100000 + g, '\\x00' FROM generate_series(4, 400, 4) g;
ANALYZE;
";

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var(URL_VAR) else {
        println!("session_query: skipped: {URL_VAR} is not set");
        println!("  run: scripts/with-postgres.sh cargo bench --bench session_query");
        return;
    };
    let config: Config = url.parse().unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
    let admin = connect(&config).await;
    let name = format!("omero_bench_{}", std::process::id());
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut own = config.clone();
    own.dbname(&name);
    let client = connect(&own).await;

    let started = Instant::now();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(DATA).await.unwrap();
    let sessions: i64 = client.query_one("SELECT count(*) FROM session", &[]).await.unwrap().get(0);
    println!(
        "session_query: {sessions} sessions, {} nodes ({LIVE_NODES} live), loaded in {:.0?}",
        LIVE_NODES + DOWN_NODES,
        started.elapsed()
    );

    let endpoint = DatabaseEndpoint {
        host: match &config.get_hosts()[0] {
            Host::Tcp(host) => host.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        },
        port: config.get_ports().first().copied().unwrap_or(5432),
        name: name.clone(),
        user: config.get_user().unwrap().to_owned(),
        password_secret: SecretKeyRef { name: "bench".into(), key: "password".into() },
    };
    let password = String::from_utf8(config.get_password().unwrap().to_vec()).unwrap();
    let credentials = DatabaseCredentials { endpoint: &endpoint, password: &password };
    let probes = OmeroClient::default();

    for (label, setup) in [
        ("fixture tables (no index on session.node)", None),
        (
            "with OMERO's i_session_node index",
            Some("CREATE INDEX i_session_node ON session(node); ANALYZE session;"),
        ),
    ] {
        if let Some(sql) = setup {
            client.batch_execute(sql).await.unwrap();
        }
        println!("\n{label}");
        let expected = expected_open(&client).await;
        let probe = SessionProbe { kind: SessionProbeKind::Database, ..SessionProbe::default() };
        let target = ProbeTarget { pod_ip: "10.1.2.3", probe: &probe, database: Some(credentials) };
        let through_probe = time(|| async {
            assert_eq!(probes.count(&target).await.map(|c| c.map(|c| c.sessions)), Ok(Some(expected)));
        })
        .await;
        report("OmeroClient::count", &through_probe);

        let statement = client.prepare(OPEN_SESSIONS_SQL).await.unwrap();
        let ids: Vec<i64> = vec![1];
        let raw = time(|| async {
            let open: i64 = client.query_one(&statement, &[&ids]).await.unwrap().get(0);
            assert_eq!(u64::try_from(open).unwrap(), expected);
        })
        .await;
        report("raw count query", &raw);

        let plan = client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) {}", OPEN_SESSIONS_SQL), &[&ids])
            .await
            .unwrap();
        for row in plan {
            println!("    | {}", row.get::<_, &str>(0));
        }
    }

    drop(probes);
    drop(client);
    admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Open user sessions of node 1, counted the slow, obvious way.
async fn expected_open(client: &Client) -> u64 {
    let sql = "SELECT count(*) FROM session WHERE node = 1 AND closed IS NULL \
               AND NOT (owner = 0 AND coalesce(useragent, '') = 'Python service') \
               AND id NOT IN (SELECT session_id FROM share)";
    let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    u64::try_from(n).unwrap()
}

async fn time<F, Fut>(mut run: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..WARM_UP {
        run().await;
    }
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        run().await;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times
}

fn report(what: &str, sorted: &[Duration]) {
    let at = |p: usize| sorted[(sorted.len() * p).div_ceil(100) - 1];
    println!(
        "  {what:<22} median {:>9.3?}  p95 {:>9.3?}  max {:>9.3?}  ({} runs)",
        at(50),
        at(95),
        sorted[sorted.len() - 1],
        sorted.len()
    );
}
