//! `kubectl omero version`, completion (`kubectl_complete-omero`, as kubectl runs it), `--as`
//! and `--request-timeout`: the real binaries, over real HTTP, against a small scripted API
//! server in this test that notes every request it gets (with its impersonation headers), or
//! one that never answers.

#[path = "support/kubeconfig.rs"]
mod kubeconfig;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// One request as the server saw it: method, path and query, and its Impersonate-* headers.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    impersonate_user: Option<String>,
    impersonate_groups: Vec<String>,
}

/// The answers: from the method and the path with its query (`%3D` read as `=`, `%2C` as `,`),
/// a status code and a body; `None` never answers.
type Answers = Arc<dyn Fn(&str, &str) -> Option<(StatusCode, Value)> + Send + Sync>;

/// A scripted API server on a free loopback port; a kubeconfig for it (namespace `omero`) in a
/// file of its own; every request it got.
struct ServedApi {
    kubeconfig: std::path::PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ServedApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(name: &str, answers: Answers) -> ServedApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let server = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, answers) = (seen.clone(), answers.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (seen, answers) = (seen.clone(), answers.clone());
                        async move { Ok::<_, Infallible>(answer(&seen, &answers, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    let kubeconfig =
        kubeconfig::at_server(&format!("omero-plugin-basics-{name}"), &format!("http://{address}"));
    ServedApi { kubeconfig, seen, server }
}

async fn answer(seen: &Mutex<Vec<Seen>>, answers: &Answers, request: Request<Incoming>) -> Reply {
    let header = |name: &str| -> Vec<String> {
        request.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    };
    let uri = request.uri().to_string().replace("%3D", "=").replace("%2C", ",").replace("%2F", "/");
    let method = request.method().to_string();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        uri: uri.clone(),
        impersonate_user: header("impersonate-user").into_iter().next(),
        impersonate_groups: header("impersonate-group"),
    });
    let Some((code, body)) = answers(&method, &uri) else {
        return std::future::pending().await;
    };
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())).boxed())
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
               "code": code.as_u16(), "message": message}),
    )
}

/// Runs `binary ARGS` with `KUBECONFIG` set; its stdout, stderr, exit code and how long it took.
async fn run(
    binary: &str,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (String, String, Option<i32>, Duration) {
    let started = Instant::now();
    let output = tokio::process::Command::new(binary)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code(),
        started.elapsed(),
    )
}

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-omero");
const COMPLETE: &str = env!("CARGO_BIN_EXE_kubectl_complete-omero");

fn server_version() -> Value {
    json!({"major": "1", "minor": "28", "gitVersion": "v1.28.7", "gitCommit": "c8dcb00", "gitTreeState": "clean",
           "buildDate": "2024-02-14T10:32:40Z", "goVersion": "go1.21.7", "compiler": "gc", "platform": "linux/amd64"})
}

fn operator_deployment(namespace: &str, tag: &str) -> Value {
    json!({"metadata": {"name": "omero-operator", "namespace": namespace,
                        "labels": {"app.kubernetes.io/name": "omero-operator", "app.kubernetes.io/version": tag}},
           "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [
               {"name": "operator", "image": format!("registry.example.org/omero-operator:{tag}")}]}}},
           "status": {"readyReplicas": 2}})
}

fn list(items: Vec<Value>) -> (StatusCode, Value) {
    (StatusCode::OK, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
}

/// `version` against a user who may not list Deployments in every namespace: the plugin's
/// version, the API server's, the operator found in omero-system with its image, and a
/// warning (on stderr, exit 0, as kubectl) when its minor version is not the plugin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_finds_the_operator_and_warns_of_skew() {
    let (major, minor) = omero_operator::plugin::version::minor_version(env!("CARGO_PKG_VERSION")).unwrap();
    let next_minor = format!("{major}.{}.0", minor + 1);
    let same = format!("{major}.{minor}.99");
    let (served_next, served_same) = (next_minor.clone(), same.clone());
    let answers: Answers = Arc::new(move |_, uri| {
        let selector = "labelSelector=app.kubernetes.io/name=omero-operator";
        Some(match uri {
            "/version" => (StatusCode::OK, server_version()),
            _ if uri.starts_with("/apis/apps/v1/deployments?") && uri.contains(selector) => status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "deployments.apps is forbidden: User \"jane\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope",
            ),
            _ if uri.starts_with("/apis/apps/v1/namespaces/omero-system/deployments?")
                && uri.contains(selector) =>
            {
                list(vec![operator_deployment("omero-system", &served_next)])
            }
            _ if uri.starts_with("/apis/apps/v1/namespaces/same/deployments?") => {
                list(vec![operator_deployment("same", &served_same)])
            }
            _ if uri.starts_with("/apis/apps/v1/namespaces/") => list(vec![]),
            _ => status(StatusCode::NOT_FOUND, "NotFound", "no such path"),
        })
    });
    let api = serve("version", answers).await;

    let (out, err, code, _) = run(PLUGIN, &api.kubeconfig, &["version"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "Plugin Version: {}\nKubernetes Version: v1.28.7\nOperator Version: {next_minor} (omero-system/omero-operator, \
             2 of 2 ready, image registry.example.org/omero-operator:{next_minor})\n(you may not list Deployments in \
             every namespace; looked in omero-system)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!(
            "WARNING: version difference between the plugin ({major}.{minor}) and the operator \
             omero-system/omero-operator ({major}.{}): the plugin may write requests that operator does not \
             understand, or misread its status; use the plugin of the operator's release",
            minor + 1
        )]
    );

    let (out, err, code, _) =
        run(PLUGIN, &api.kubeconfig, &["version", "-o", "json", "--operator-namespace", "same"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(err, "", "a patch release apart is no skew");
    let versions: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(versions["pluginVersion"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions["serverVersion"]["gitVersion"], "v1.28.7");
    assert_eq!(versions["operator"]["deployments"][0]["version"], same.as_str());
    assert_eq!(versions["operator"]["deployments"][0]["namespace"], "same");
    let asked: Vec<String> = api.seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    assert!(
        !asked.iter().any(|u| u.starts_with("/apis/apps/v1/deployments") && u.contains("json")),
        "a named namespace only: {asked:?}"
    );

    let (out, _, code, _) =
        run(PLUGIN, &api.kubeconfig, &["version", "--operator-namespace", "elsewhere"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.ends_with(
            "Operator Version: unknown: no Deployment labelled app.kubernetes.io/name=omero-operator in namespace elsewhere\n"
        ),
        "{out}"
    );
}

fn cluster(name: &str, nodes: &[&str], serving: i32) -> Value {
    let spec_nodes: Vec<Value> = nodes
        .iter()
        .map(|n| {
            if n.starts_with("ro") {
                json!({"name": n, "readOnly": {"db": true, "repo": true}})
            } else {
                json!({"name": n})
            }
        })
        .collect();
    let status_nodes: Vec<Value> =
        nodes.iter().map(|n| json!({"name": n, "phase": "Serving", "ready": true})).collect();
    json!({
        "apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroCluster",
        "metadata": {"name": name, "namespace": "imaging", "resourceVersion": "7"},
        "spec": {"image": "openmicroscopy/omero-server:5.6",
                 "database": {"host": "db", "passwordSecret": {"name": "omero-db", "key": "password"}},
                 "repository": {"claimName": "omero-data"}, "nodes": spec_nodes},
        "status": {"nodes": status_nodes, "servingNodes": serving, "nodeCount": nodes.len()}
    })
}

/// Completion as kubectl runs it: `kubectl_complete-omero` with the plugin's arguments (the
/// word being completed last), the namespace on the line honoured, cobra's format back, and
/// nothing on stderr (kubectl passes it to the terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_offers_the_namespaces_clusters_and_the_named_clusters_nodes() {
    let answers: Answers = Arc::new(|method, uri| {
        let base = "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/imaging/omeroclusters";
        Some(match uri.split_once('?').map_or(uri, |(path, _)| path) {
            path if path == base && method == "GET" => (
                StatusCode::OK,
                json!({"apiVersion": "omero.openmicroscopy.org/v1alpha1", "kind": "OmeroClusterList",
                                        "metadata": {"resourceVersion": "7"},
                                        "items": [cluster("omero", &["rw", "ro-1", "ro-2"], 3), cluster("other", &["rw"], 0)]}),
            ),
            path if path == format!("{base}/omero") => {
                (StatusCode::OK, cluster("omero", &["rw", "ro-1", "ro-2"], 3))
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound", "no such path"),
        })
    });
    let api = serve("complete", answers).await;

    let (out, err, code, _) = run(COMPLETE, &api.kubeconfig, &["-n", "imaging", "drain", ""]).await;
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert_eq!(out, "omero\t3 nodes, 3 serving\nother\t1 node, 0 serving\n:4\n");
    let (out, err, _, _) = run(COMPLETE, &api.kubeconfig, &["restart", "--namespace=imaging", "o"]).await;
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("omero\t3 nodes, 3 serving\nother\t1 node, 0 serving\n:4\n", "")
    );
    let (out, err, _, _) =
        run(COMPLETE, &api.kubeconfig, &["-n", "imaging", "drain", "omero", "ro-1", ""]).await;
    assert_eq!((out.as_str(), err.as_str()), ("rw\tread-write, Serving\nro-2\tread-only, Serving\n:4\n", ""));
    let (out, _, _, _) = run(COMPLETE, &api.kubeconfig, &["-n", "imaging", "wait", "omero", "r"]).await;
    assert_eq!(out, "rw\tread-write, Serving\nro-1\tread-only, Serving\nro-2\tread-only, Serving\n:4\n");
    let (out, _, _, _) = run(COMPLETE, &api.kubeconfig, &["dr"]).await;
    assert!(out.starts_with("drain\tTake nodes out of service") && out.ends_with("\n:4\n"), "{out}");
    let (out, _, _, _) = run(COMPLETE, &api.kubeconfig, &["status", "omero", "-o", ""]).await;
    assert_eq!(out, "json\nyaml\n:4\n");
    // Every read was in the namespace on the line, none in the kubeconfig's.
    let seen = api.seen.lock().unwrap().clone();
    assert!(!seen.is_empty() && seen.iter().all(|s| s.uri.contains("/namespaces/imaging/")), "{seen:?}");

    // The cluster the nodes are asked of does not exist: nothing, and no file names.
    let (out, err, code, _) = run(COMPLETE, &api.kubeconfig, &["-n", "imaging", "drain", "gone", ""]).await;
    assert_eq!((out.as_str(), err.as_str(), code), (":4\n", "", Some(0)));
}

/// An API server that never answers: completion gives up within its bound, quietly; a command
/// gives up after `--request-timeout` with a message that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_is_given_up_on() {
    let api = serve("silent", Arc::new(|_, _| None)).await;
    let (out, err, code, took) = run(COMPLETE, &api.kubeconfig, &["drain", ""]).await;
    assert_eq!((out.as_str(), err.as_str(), code), (":4\n", "", Some(0)));
    let bound = omero_operator::plugin::complete::COMPLETION_TIMEOUT;
    assert!(took >= bound && took < bound + Duration::from_secs(3), "gave up after {took:?}");

    let (out, err, code, took) =
        run(PLUGIN, &api.kubeconfig, &["--request-timeout", "1s", "status", "omero"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(err, "error: the API server did not answer within 1s (--request-timeout; 0 means no bound)\n");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "gave up after {took:?}");
    let (_, err, code, took) = run(PLUGIN, &api.kubeconfig, &["version", "--request-timeout", "500ms"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("did not answer within 500ms"), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// `--as` and `--as-group` reach the API server as the Impersonate-* headers of every request
/// (it then authorizes each as that user); `--as-group` alone is refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_acts_as_another_user_on_every_request() {
    let answers: Answers = Arc::new(|_, uri| {
        Some(
            if uri.starts_with("/apis/omero.openmicroscopy.org/v1alpha1/namespaces/omero/omeroclusters/omero")
            {
                let mut cluster = cluster("omero", &["rw"], 1);
                cluster["metadata"]["namespace"] = json!("omero");
                (StatusCode::OK, cluster)
            } else {
                status(StatusCode::FORBIDDEN, "Forbidden", "only the cluster here")
            },
        )
    });
    let api = serve("as", answers).await;
    let (out, err, code, _) = run(
        PLUGIN,
        &api.kubeconfig,
        &["status", "omero", "--as", "jane", "--as-group", "omero-users", "--as-group", "staff"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Warnings:  not readable (forbidden: only the cluster here)"), "{out}");
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "the cluster, then its Service, pods and Events: {seen:?}");
    for request in &seen {
        assert_eq!(request.impersonate_user.as_deref(), Some("jane"), "{request:?}");
        assert_eq!(request.impersonate_groups, ["omero-users", "staff"], "{request:?}");
        assert_eq!(request.method, "GET");
    }
    let (_, err, code, _) = run(PLUGIN, &api.kubeconfig, &["status", "omero", "--as-group", "staff"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--as <USER>"), "{err}");
    assert_eq!(api.seen.lock().unwrap().len(), 4, "refused before any request");
}

/// `kubectl omero completion SHELL`: clap's script for `kubectl-omero`, with every command and
/// the global flags, no API server needed.
#[test]
fn completion_scripts_know_every_command_and_flag() {
    for (shell, registers) in [
        ("bash", "complete -F _kubectl__omero"),
        ("zsh", "#compdef kubectl-omero"),
        ("fish", "complete -c kubectl-omero"),
    ] {
        let output = std::process::Command::new(PLUGIN).args(["completion", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(registers), "{shell}: {script}");
        for word in ["drain", "restart", "version", "request-timeout", "as-group"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
}
