//! The operator's API client (`omero_operator::api_client`) against a local API server over TLS
//! that chooses HTTP/2 or HTTP/1.1 by ALPN, as kube-apiserver does, with a certificate made for
//! the test. The server counts the TCP connections it accepts and notes each request's HTTP
//! version and connection, so the tests see what kube's own client would not do: every request
//! and a watch multiplexed on one HTTP/2 connection. A server offering only HTTP/1.1 is still
//! spoken to.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{WatchEvent, WatchParams},
};
use serde_json::json;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{ServerConfig, pki_types::PrivatePkcs8KeyDer},
};

/// How long the server takes to answer a GET: long enough that the test's GETs are all in
/// flight at once, which over HTTP/1.1 would take a connection each.
const ANSWER_DELAY: Duration = Duration::from_millis(200);

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Each request's HTTP version and the number of the connection it came on.
    requests: Mutex<Vec<(Version, usize)>>,
    /// GETs being answered now, and the most at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// TCP connections closed.
    closed: AtomicUsize,
}

/// A small API server on 127.0.0.1 over TLS: GET of a ConfigMap in `default` answers that
/// ConfigMap after `ANSWER_DELAY`; a watch of ConfigMaps sends one ADDED event and stays open.
struct TlsApiServer {
    address: SocketAddr,
    /// The server's self-signed certificate (PEM), the client's only root.
    certificate: String,
    seen: Arc<Seen>,
    /// Each change closes every open connection gracefully (GOAWAY over HTTP/2), as an API
    /// server does when it shuts down.
    close: tokio::sync::watch::Sender<u64>,
}

impl TlsApiServer {
    /// Serves with ALPN offering `protocols` (in the server's order of preference); HTTP/2 is
    /// spoken only when offered, so a server without h2 refuses it outright.
    async fn start(protocols: &[&[u8]]) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let certificate = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key.into())
            .unwrap();
        tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let http2 = protocols.contains(&b"h2".as_slice());
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (close, _) = tokio::sync::watch::channel(0);
        tokio::spawn({
            let (seen, close) = (seen.clone(), close.clone());
            async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let connection = seen.connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, seen, mut closing) = (acceptor.clone(), seen.clone(), close.subscribe());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let service = service_fn({
                                let seen = seen.clone();
                                move |request| answer(seen.clone(), connection, request)
                            });
                            let builder = auto::Builder::new(TokioExecutor::new());
                            let builder = if http2 { builder } else { builder.http1_only() };
                            let serving = builder.serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(serving);
                            tokio::select! {
                                _ = serving.as_mut() => {}
                                _ = closing.changed() => {
                                    serving.as_mut().graceful_shutdown();
                                    let _ = serving.await;
                                }
                            }
                        }
                        seen.closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self { address, certificate: certified.cert.pem(), seen, close }
    }

    /// Closes every open connection gracefully, and waits until they are closed.
    async fn close_connections(&self) {
        self.close.send_modify(|generation| *generation += 1);
        let seen = &self.seen;
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.closed.load(Ordering::SeqCst) < seen.connections.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the connections close");
    }

    /// A client for this server, made by the operator's builder from a kubeconfig that trusts
    /// only the server's certificate (`certificate-authority-data`, as a cluster's CA is given).
    async fn client(&self) -> kube::Client {
        omero_operator::api_client::client_builder(&self.config().await).unwrap().build()
    }

    /// The same, counting its requests as the operator's client does.
    async fn counted_client(&self, requests: omero_operator::metrics::ApiRequests) -> kube::Client {
        let builder = omero_operator::api_client::client_builder(&self.config().await).unwrap();
        builder.with_layer(&omero_operator::api_client::CountRequestsLayer(requests)).build()
    }

    async fn config(&self) -> kube::Config {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.certificate);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"https://{}\", certificate-authority-data: {ca}}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
            self.address
        ))
        .unwrap();
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap()
    }

    fn versions(&self) -> Vec<Version> {
        self.seen.requests.lock().unwrap().iter().map(|(version, _)| *version).collect()
    }

    /// The connection each request came on, in the order they came.
    fn connections_used(&self) -> Vec<usize> {
        self.seen.requests.lock().unwrap().iter().map(|(_, connection)| *connection).collect()
    }
}

type Answer = Response<BoxBody<Bytes, Infallible>>;

async fn answer(
    seen: Arc<Seen>,
    connection: usize,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    seen.requests.lock().unwrap().push((request.version(), connection));
    let path = request.uri().path();
    let watch = request.uri().query().unwrap_or_default().split('&').any(|q| q == "watch=true");
    if watch && path == "/api/v1/namespaces/default/configmaps" {
        let added = json!({"type": "ADDED", "object": config_map("watched")});
        let line = Bytes::from(format!("{added}\n"));
        // One event, then open until the client goes: a watch that has nothing more to say.
        let events =
            futures::stream::once(async move { Ok(Frame::data(line)) }).chain(futures::stream::pending());
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(events)))
            .unwrap());
    }
    let Some(name) = path.strip_prefix("/api/v1/namespaces/default/configmaps/") else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404});
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(http_body_util::Full::new(Bytes::from(status.to_string())).boxed())
            .unwrap());
    };
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(ANSWER_DELAY).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(config_map(name).to_string())).boxed())
        .unwrap())
}

fn config_map(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "data": {"name": name},
    })
}

/// 40 GETs at once from a new client, while a watch streams: all answered over HTTP/2 on one
/// TCP connection, the GETs in flight together on it.
#[tokio::test]
async fn requests_and_a_watch_share_one_http2_connection() {
    let server = TlsApiServer::start(&[b"h2", b"http/1.1"]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

    let gets = futures::future::try_join_all((0..40).map(|i| {
        let config_maps = config_maps.clone();
        async move { config_maps.get(&format!("cm-{i}")).await }
    }));
    let watch = async {
        let mut events = config_maps.watch(&WatchParams::default(), "0").await?.boxed();
        let first = events.try_next().await?;
        Ok::<_, kube::Error>((first, events))
    };
    let (answers, (first, mut events)) = tokio::try_join!(gets, watch).unwrap();

    for (i, config_map) in answers.iter().enumerate() {
        assert_eq!(config_map.metadata.name.as_deref(), Some(format!("cm-{i}").as_str()));
    }
    assert!(
        matches!(&first, Some(WatchEvent::Added(cm)) if cm.metadata.name.as_deref() == Some("watched")),
        "the watch's first event: {first:?}"
    );
    // The watch is still open: nothing more, and not ended.
    assert!(tokio::time::timeout(Duration::from_millis(100), events.next()).await.is_err());
    assert_eq!(server.versions(), vec![Version::HTTP_2; 41], "every request over HTTP/2");
    assert_eq!(server.seen.connections.load(Ordering::SeqCst), 1, "one TCP connection");
    let most = server.seen.most_in_flight.load(Ordering::SeqCst);
    assert!(most >= 20, "the GETs were in flight together on that connection (at most {most} at once)");
}

/// 20 GETs at once, the server closes its connection gracefully (GOAWAY, as an API server that
/// shuts down), then 20 more: the second burst also makes one connection, not one a request.
#[tokio::test]
async fn a_burst_after_the_connection_closed_makes_one_new_connection() {
    let server = TlsApiServer::start(&[b"h2", b"http/1.1"]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let burst = || {
        futures::future::try_join_all((0..20).map(|i| {
            let config_maps = config_maps.clone();
            async move { config_maps.get(&format!("cm-{i}")).await }
        }))
    };

    burst().await.unwrap();
    server.close_connections().await;
    burst().await.unwrap();

    assert_eq!(server.versions(), vec![Version::HTTP_2; 40], "every request over HTTP/2");
    assert_eq!(server.seen.connections.load(Ordering::SeqCst), 2, "one TCP connection for each burst");
    let expected: Vec<usize> = [vec![0; 20], vec![1; 20]].concat();
    assert_eq!(server.connections_used(), expected, "each burst on its own connection");
}

/// A server offering only HTTP/1.1 by ALPN (and refusing HTTP/2): every request is answered over
/// HTTP/1.1, a connection for each one in flight, as with kube's own client, after the one that
/// learned which protocol the server speaks.
#[tokio::test]
async fn falls_back_to_http1_when_the_server_offers_only_http1() {
    let server = TlsApiServer::start(&[b"http/1.1"]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

    let answers = futures::future::try_join_all((0..8).map(|i| {
        let config_maps = config_maps.clone();
        async move { config_maps.get(&format!("cm-{i}")).await }
    }))
    .await
    .unwrap();

    for (i, config_map) in answers.iter().enumerate() {
        assert_eq!(config_map.metadata.name.as_deref(), Some(format!("cm-{i}").as_str()));
    }
    assert_eq!(server.versions(), vec![Version::HTTP_11; 8], "every request over HTTP/1.1");
    assert_eq!(
        server.seen.connections.load(Ordering::SeqCst),
        1 + 8,
        "the connection that learned the protocol, then one per request in flight"
    );
}

/// Every request is counted by verb and the status code answered (`/metrics`:
/// `omero_operator_api_requests_total`), a refusal as its code.
#[tokio::test]
async fn requests_are_counted_by_verb_and_answer() {
    let server = TlsApiServer::start(&[b"h2", b"http/1.1"]).await;
    let metrics = omero_operator::metrics::Metrics::new();
    let client = server.counted_client(metrics.api_requests()).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        config_maps.get(name).await.unwrap();
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "default");
    assert!(secrets.get("missing").await.is_err(), "answered 404");
    let text = metrics.encode();
    assert!(text.contains("omero_operator_api_requests_total{verb=\"get\",code=\"200\"} 3\n"), "{text}");
    assert!(text.contains("omero_operator_api_requests_total{verb=\"get\",code=\"404\"} 1\n"), "{text}");
}
