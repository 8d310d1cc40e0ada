//! `kubectl omero sessions` with the real `kubectl-omero` binary, over real HTTP, against a small
//! API server in this test that serves what a real one would for it: the OmeroCluster, the pod
//! proxy to each node's pod, the Services, and the service proxy to the operator's Service. Behind
//! those proxies run the real pieces:
//!
//! - the session counter: the real script's HTTP server (`python3`), fed sessions shaped like
//!   OMERO's (with UUIDs, which must never come out) by a stand-in source;
//! - the operator's `/sessions/...` route: the real `http::router`, whose own API client reads
//!   the cluster, the pods and the password from a second served API, and whose database is a
//!   real PostgreSQL when `OMERO_OPERATOR_TEST_DATABASE_URL` is set (`scripts/with-postgres.sh`,
//!   as `scripts/test.sh` runs every test); without it, the route's failure to connect is what
//!   comes through, and the test checks that instead;
//! - an exporter's gauge, as omero-prometheus-tools serves it.
//!
//! Every request the plugin makes is noted as the verb an API server would authorize, and must be
//! among those `src/rbac.rs` lists for `sessions`.

#[path = "support/kubeconfig.rs"]
mod kubeconfig;

use std::{
    collections::BTreeSet,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const SCHEMA: &str = include_str!("fixtures/omero-sessions-schema.sql");
/// The loopback address the real counter script listens on (its port is the counter's).
const COUNTER_IP: &str = "127.0.0.97";
/// The rw node's pod IP, as OMERO's node row publishes it.
const RW_POD_IP: &str = "10.1.2.3";

type Reply = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

fn status_error(code: u16, reason: &str, message: &str) -> Reply {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    reply(StatusCode::from_u16(code).unwrap(), serde_json::to_vec(&body).unwrap())
}

/// What the served APIs hold, and what the plugin asked of them.
#[derive(Clone)]
struct World {
    cluster: Value,
    /// The database password the served Secret holds.
    password: String,
    operator: axum::Router,
    verbs: Arc<Mutex<BTreeSet<String>>>,
    /// Listing Services everywhere is refused (a namespace user).
    services_forbidden: Arc<Mutex<bool>>,
    /// The service proxy is refused (no sessionReaders binding).
    service_proxy_forbidden: Arc<Mutex<bool>>,
}

const EXPORTER: &str = "\
# TYPE omero_sessions_active gauge
omero_sessions_active{username=\"root\"} 2
omero_sessions_active{username=\"monitor\"} 1
omero_sessions_active{username=\"alice\"} 2
omero_sessions_active{username=\"dave\"} 1
omero_sessions_processing_seconds_count 4
";

/// The API the plugin talks to.
async fn front(world: World, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().replace("%3D", "=").replace("%2F", "/");
    let note = |what: &str| world.verbs.lock().unwrap().insert(what.to_string());
    if path == "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters/omero" {
        note("omeroclusters get");
        return Ok(reply(StatusCode::OK, serde_json::to_vec(&world.cluster).unwrap()));
    }
    if path.starts_with("/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters/") {
        note("omeroclusters get");
        return Ok(status_error(404, "NotFound", "omeroclusters.omero.openmicroscopy.org not found"));
    }
    if path == "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters" {
        note("omeroclusters list");
        let list = json!({"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroClusterList",
                          "metadata": {}, "items": [world.cluster]});
        return Ok(reply(StatusCode::OK, serde_json::to_vec(&list).unwrap()));
    }
    if let Some(rest) = path.strip_prefix("/api/v1/namespaces/omero/pods/") {
        note("pods/proxy get");
        let (target, proxied) = rest.split_once("/proxy").expect("a pod proxy path");
        return Ok(match target {
            "omero-ro-1-a:9450" => counter(proxied).await,
            "omero-ro-2-a:9449" if proxied == "/metrics" => reply(StatusCode::OK, EXPORTER),
            "omero-ro-4-a:9450" => status_error(
                403,
                "Forbidden",
                "pods \"omero-ro-4-a:9450\" is forbidden: User \"viewer\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"omero\"",
            ),
            other => panic!("the plugin proxied to {other}{proxied}"),
        });
    }
    if path == "/api/v1/services" {
        note("services list");
        assert!(query.contains("labelSelector=app.kubernetes.io/name=omero-operator"), "{query}");
        if *world.services_forbidden.lock().unwrap() {
            return Ok(status_error(
                403,
                "Forbidden",
                "services is forbidden: User \"viewer\" cannot list resource \"services\"",
            ));
        }
        let service = json!({"metadata": {"name": "omero-operator-metrics", "namespace": "omero-system",
                                          "labels": {"app.kubernetes.io/name": "omero-operator"}},
                             "spec": {"ports": [{"name": "http", "port": 8080}]}});
        let list = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [service]});
        return Ok(reply(StatusCode::OK, serde_json::to_vec(&list).unwrap()));
    }
    if let Some(asked) =
        path.strip_prefix("/api/v1/namespaces/omero-system/services/omero-operator-metrics:http/proxy")
    {
        note("services/proxy get");
        if *world.service_proxy_forbidden.lock().unwrap() {
            return Ok(status_error(
                403,
                "Forbidden",
                "services \"omero-operator-metrics:http\" is forbidden: User \"viewer\" cannot get resource \"services/proxy\" in API group \"\" in the namespace \"omero-system\"",
            ));
        }
        // The real operator route answers.
        let request = Request::get(asked).body(axum::body::Body::empty()).unwrap();
        let response = world.operator.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        return Ok(reply(status, body));
    }
    panic!("the plugin asked for {path}?{query}");
}

/// The pod proxy to the real counter script: the path, forwarded as it came.
async fn counter(path: &str) -> Reply {
    let mut stream =
        tokio::net::TcpStream::connect((COUNTER_IP, omero_operator::omero::COUNTER_PORT)).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {COUNTER_IP}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    reply(StatusCode::from_u16(code).unwrap(), body.to_string())
}

/// The API the operator's own client talks to: the cluster by a list with a field selector and
/// the database password (the node's pods come from the operator's pod cache, [`pod_cache`]).
async fn back(world: World, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let path = request.uri().path().to_string();
    let query =
        request.uri().query().unwrap_or_default().replace("%3D", "=").replace("%2F", "/").replace("%2C", ",");
    let list = |kind: &str, items: Vec<Value>| {
        let body = json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items});
        reply(StatusCode::OK, serde_json::to_vec(&body).unwrap())
    };
    Ok(match path.as_str() {
        "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters" => {
            assert!(query.contains("fieldSelector=metadata.name=omero"), "{query}");
            list("OmeroClusterList", vec![world.cluster.clone()])
        }
        "/api/v1/namespaces/omero/secrets/omero-db" => {
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "omero-db"},
                                "data": {"password": base64_of(&world.password)}});
            reply(StatusCode::OK, serde_json::to_vec(&secret).unwrap())
        }
        other => panic!("the operator asked for {other}?{query}"),
    })
}

/// The operator's pod cache as its watch fills it: rw's pods (the old pod of a restart, failed,
/// is not the node's) and a running pod of another cluster's node of the same name.
fn pod_cache()
-> kube::runtime::reflector::Store<omero_operator::controller::cache::Cached<k8s_openapi::api::core::v1::Pod>>
{
    use omero_operator::controller::cache::Cached;
    let (store, mut writer) = kube::runtime::reflector::store();
    let pod = |name: &str, cluster: &str, phase: &str, ip: &str| {
        let labels = omero_operator::render::node_selector_labels(cluster, "rw");
        let pod = json!({"metadata": {"name": name, "namespace": "omero", "labels": labels},
                         "status": {"phase": phase, "podIP": ip}});
        Cached::new(serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod).unwrap())
    };
    for cached in [
        pod("omero-rw-old", "omero", "Failed", "10.9.9.9"),
        pod("other-rw-a", "other", "Running", "10.9.9.8"),
        pod("omero-rw-a", "omero", "Running", RW_POD_IP),
    ] {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cached));
    }
    store
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn serve<F, Fut>(world: World, handler: F) -> String
where
    F: Fn(World, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (world, handler) = (world.clone(), handler.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| handler(world.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

/// The database the cluster's spec names: a real PostgreSQL with OMERO's tables, the rw node's
/// live row and its sessions, when the test has one; (host, port, name, user, password).
async fn database() -> Option<(String, u16, String, String, String, tokio_postgres::Client)> {
    let url = std::env::var("OMERO_OPERATOR_TEST_DATABASE_URL").ok()?;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let connect = |config: tokio_postgres::Config| async move {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    };
    let admin = connect(config.clone()).await;
    let name = format!("omero_plugin_sessions_{}", std::process::id());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut own = config.clone();
    own.dbname(&name);
    let db = connect(own).await;
    db.batch_execute(SCHEMA).await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO experimenter (id, omename, firstname, lastname, email) VALUES \
           (2, 'alice', 'Alice', 'Liddell', 'alice@example.org'), (3, 'bob', 'Bob', 'Ross', 'bob@example.org');
         INSERT INTO node (id, conn, uuid) VALUES (1, 'x -t -e 1.1:tcp -h {RW_POD_IP} -p 45678', 'node-1');
         INSERT INTO session (id, uuid, node, useragent, owner, started) VALUES
           (1, 'uuid-root-1', 1, 'Python service', 0, now()),
           (2, 'uuid-alice-db', 1, 'OMERO.insight', 2, now() - interval '2 hours'),
           (3, 'uuid-bob-db', 1, 'OMERO.web', 3, now() - interval '5 minutes');"
    ))
    .await
    .unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("a TCP host") };
    let password = String::from_utf8(config.get_password().unwrap().to_vec()).unwrap();
    Some((host.clone(), config.get_ports()[0], name, config.get_user().unwrap().to_string(), password, admin))
}

/// The real counter script on COUNTER_IP, with sessions shaped like OMERO's. Killed on drop.
fn run_counter() -> tokio::process::Child {
    let program = format!(
        r#"
import sys, threading, time
sys.path.insert(0, "counter")
import omero_session_counter as c
now = int(time.time() * 1000)
S = c.Session
sessions = [S("alice", uuid="uuid-alice-secret", agent="OMERO.web", started=now - 3600000, last_access=now - 65000, time_to_idle=600000),
            S("bob", uuid="uuid-bob-secret", agent="OMERO.insight", started=now - 600000, last_access=now - 2000, time_to_idle=600000),
            S("erin", uuid="uuid-erin-secret", detailed=False),
            S("root", uuid="uuid-root", agent="Python service", started=now - 86400000),
            S("monitor", uuid="own", agent=c.AGENT), S("carol", uuid="uuid-share", share=True)]
sampler = c.Sampler(lambda: (sessions, "own", "monitor"))
server = c.make_server(sampler, {port}, host="{COUNTER_IP}")
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#,
        port = omero_operator::omero::COUNTER_PORT
    );
    tokio::process::Command::new("python3")
        .args(["-c", &program])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the counter script")
}

async fn kubectl_omero(kubeconfig: &std::path::Path, args: &[&str]) -> (String, Option<i32>) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-omero"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ kubectl omero {}\n{text}", args.join(" "));
    (text, output.status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_every_kind_of_node_through_the_api_servers_proxies() {
    let database = database().await;
    let (host, port, name, user, password) = match &database {
        Some((host, port, name, user, password, _)) => {
            (host.clone(), *port, name.clone(), user.clone(), password.clone())
        }
        // Nothing listens on port 1: the route's database connection is refused.
        None => ("127.0.0.1".into(), 1, "omero".into(), "omero".into(), "none".into()),
    };
    let mut counter = run_counter();
    let mut ready = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(counter.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .await
    .unwrap();
    assert_eq!(ready.trim(), "ready");

    let node = |name: &str, phase: &str| {
        json!({"name": name, "phase": phase, "ready": true, "routable": phase == "Serving",
                                                "pod": format!("omero-{name}-a"), "upToDate": true})
    };
    let cluster = json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": "omero", "namespace": "omero", "uid": "u-1", "resourceVersion": "7", "generation": 1},
        "spec": {
            "image": "openmicroscopy/omero-server:5.6",
            "database": {"host": host, "port": port, "name": name, "user": user,
                         "passwordSecret": {"name": "omero-db", "key": "password"}},
            "repository": {"claimName": "omero-data"},
            "sessionCounter": {"credentialsSecret": {"name": "omero-monitor"}},
            "nodes": [
                {"name": "rw"},
                {"name": "ro-1", "readOnly": {"db": true, "repo": true}},
                {"name": "ro-2", "readOnly": {"db": true, "repo": true},
                 "sessionProbe": {"type": "Metrics", "port": 9449, "exporterUser": "monitor"}},
                {"name": "ro-3", "readOnly": {"db": true, "repo": true}, "sessionProbe": {"type": "None"}},
                {"name": "ro-4", "readOnly": {"db": true, "repo": true}}
            ]
        },
        "status": {"nodes": [node("rw", "Serving"), node("ro-1", "Draining"), node("ro-2", "Serving"),
                             node("ro-3", "Serving"), node("ro-4", "Serving")]}
    });
    let mut world = World {
        cluster,
        password,
        operator: axum::Router::new(),
        verbs: Arc::default(),
        services_forbidden: Arc::default(),
        service_proxy_forbidden: Arc::default(),
    };
    let back_url = serve(world.clone(), back).await;
    let operator_client = kube::Client::try_from(kube::Config::new(back_url.parse().unwrap()))
        .expect("a client of the served API");
    let lister = omero_operator::http::sessions::SessionLister::new(operator_client, pod_cache(), None);
    let endpoints = omero_operator::http::Endpoints::new(Arc::default());
    endpoints.serve_sessions(lister);
    world.operator = omero_operator::http::router(endpoints);
    let front_url = serve(world.clone(), front).await;

    let kubeconfig = kubeconfig::at_server("omero-plugin-sessions", &front_url);
    let needs: BTreeSet<String> = omero_operator::rbac::PLUGIN_COMMANDS
        .iter()
        .find(|c| c.name == "sessions")
        .expect("sessions in src/rbac.rs PLUGIN_COMMANDS")
        .needs
        .iter()
        .map(|n| format!("{} {}", n.resource, n.verb))
        .collect();
    let asked_only_what_is_listed = |world: &World| {
        let used = world.verbs.lock().unwrap().clone();
        assert!(used.is_subset(&needs), "asked for {used:?}; src/rbac.rs lists {needs:?}");
        world.verbs.lock().unwrap().clear();
    };

    let (out, code) = kubectl_omero(&kubeconfig, &["sessions", "omero"]).await;
    assert_eq!(code, Some(1), "ro-4's sessions could not be read: {out}");
    asked_only_what_is_listed(&world);
    assert!(!out.contains("uuid"), "a session's UUID is its login's credential: {out}");
    for private in ["Liddell", "example.org"] {
        assert!(!out.contains(private), "{private}: {out}");
    }
    // Each node in the spec's order.
    let headings: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ') && !l.is_empty()).collect();
    let order: Vec<&str> =
        headings.iter().filter_map(|l| l.split(' ').next()).filter(|n| n.starts_with("r")).collect();
    assert_eq!(order, ["rw", "ro-1", "ro-2", "ro-3", "ro-4"], "{out}");
    if database.is_some() {
        assert!(
            out.contains(
                "rw (Serving), pod omero-rw-a: 2 sessions, from OMERO's database through the operator"
            ),
            "{out}"
        );
        let alice =
            out.lines().find(|l| l.trim_start().starts_with("alice  OMERO.insight")).expect("alice on rw");
        assert!(alice.contains("(2h00m ago)") || alice.contains("(1h59m ago)"), "{alice}");
    } else {
        assert!(
            out.contains(
                "rw (Serving), pod omero-rw-a: sessions not read: the operator: database omero@127.0.0.1:1/omero: "
            ),
            "{out}"
        );
    }
    assert!(
        out.contains("ro-1 (Draining), pod omero-ro-1-a: 3 sessions, from the session counter (sample "),
        "{out}"
    );
    let ro1: Vec<&str> =
        out.lines().skip_while(|l| !l.starts_with("ro-1 ")).take_while(|l| !l.is_empty()).collect();
    let bob = ro1.iter().find(|l| l.trim_start().starts_with("bob")).expect("bob on ro-1");
    assert!(bob.contains("OMERO.insight") && bob.trim_end().ends_with("2s"), "{bob}");
    let erin = ro1.iter().find(|l| l.trim_start().starts_with("erin")).expect("erin on ro-1");
    assert_eq!(erin.split_whitespace().collect::<Vec<_>>(), ["erin", "?", "?", "?", "?"], "{erin}");
    assert!(!out.contains("carol") && !out.contains("monitor"), "a share and the counter's own login: {out}");
    assert!(
        out.contains(
            "ro-2 (Serving), pod omero-ro-2-a: 3 sessions, from the exporter's gauge: per user only (it gives no agents or times)\n  USER   SESSIONS\n  alice  2\n  dave   1\n"
        ),
        "{out}"
    );
    assert!(out.contains("ro-3 (Serving), pod omero-ro-3-a: not counted: no session probe\n"), "{out}");
    assert!(
        out.contains("ro-4 (Serving), pod omero-ro-4-a: sessions not read: forbidden: pods \"omero-ro-4-a:9450\" is forbidden")
            && out.contains("it needs get on pods/proxy in namespace omero, which the built-in edit and admin roles grant and view does not"),
        "{out}"
    );

    // One node, as JSON.
    let (out, code) = kubectl_omero(&kubeconfig, &["sessions", "omero", "ro-1", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{out}");
    asked_only_what_is_listed(&world);
    let nodes: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{out}");
    let ro1 = &nodes[0];
    assert_eq!(
        (ro1["node"].as_str(), ro1["source"].as_str(), ro1["draining"].as_bool()),
        (Some("ro-1"), Some("counter"), Some(true))
    );
    let users: Vec<&str> =
        ro1["list"]["sessions"].as_array().unwrap().iter().map(|s| s["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["alice", "bob", "erin"], "oldest first, the restricted one last");
    assert_eq!(ro1["list"]["count"], 3);
    let idle = ro1["list"]["sessions"][0]["idleSeconds"].as_f64().unwrap();
    assert!((65.0..70.0).contains(&idle), "alice last used the server 65 s before the sample: {idle}");

    // A user who may not list Services everywhere: the default release's Service is asked.
    *world.services_forbidden.lock().unwrap() = true;
    let (out, _) = kubectl_omero(&kubeconfig, &["sessions", "omero", "rw"]).await;
    asked_only_what_is_listed(&world);
    assert!(out.starts_with("rw (Serving), pod omero-rw-a: "), "{out}");
    assert!(!out.contains("looking for the operator"), "{out}");
    // And who may not use the operator's service proxy is told which right is missing.
    *world.service_proxy_forbidden.lock().unwrap() = true;
    let (out, code) = kubectl_omero(&kubeconfig, &["sessions", "omero", "rw"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("it needs get on services/proxy for omero-operator-metrics:http in namespace omero-system (the chart's sessionReaders value grants it)"),
        "{out}"
    );

    let (out, code) = kubectl_omero(&kubeconfig, &["sessions", "omero", "ro-9"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error: no node named ro-9; the nodes are rw, ro-1, ro-2, ro-3, ro-4"), "{out}");

    drop(counter.stdin.take());
    let _ = counter.kill().await;
    if let Some((_, _, name, _, _, admin)) = &database {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    }
}
