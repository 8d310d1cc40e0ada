//! The operator's client for the Kubernetes API: kube's own stack, but speaking HTTP/2.
//!
//! kube 5's `ClientBuilder::try_from(Config)` offers only HTTP/1.1, so every request in flight
//! holds a TCP connection of its own: 55 to one API server at `--max-api-requests 32` with a
//! dozen watches. This builds the same stack (TLS from the kubeconfig, kube's timeouts, base URI,
//! retries, authentication, extra headers and request spans) on a connection that offers h2 by
//! ALPN, so against an API server every request and watch shares one TCP connection. A server
//! that offers only HTTP/1.1, or a plain `http://` URL (no ALPN), is spoken to as kube would.

use std::{future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use http::{Request, Response, Uri, header::HeaderMap};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http2},
};
use hyper_util::{
    client::legacy::connect::{Connection, HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody, retry::RetryPolicy};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt as _, retry::RetryLayer, util::BoxService};
use tower_http::{ServiceExt as _, classify::ServerErrorsFailureClass, trace::TraceLayer};
use tracing::Span;

/// The client's service, boxed as kube boxes its own (`kube::client::ClientBuilder::try_from`),
/// so that the HTTP/2 stack and kube's own (for a proxy) are one type.
pub type ApiService = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// How long a connection may go without receiving a frame before the client pings the server:
/// client-go's HTTP/2 `ReadIdleTimeout`. Watches that see no event for minutes are normal, so
/// only a ping tells a quiet connection from a dead one.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long the server has to answer that ping before the connection, and every request and
/// watch on it, is given up: client-go's HTTP/2 `PingTimeout`. The watches then start again on a
/// new connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Flow-control window of each stream: how much of one response the server may send before the
/// operator has read it (client-go's 4 MiB).
const STREAM_WINDOW: u32 = 4 << 20;

/// Flow-control window of the whole connection (client-go's 1 GiB). Far larger than a stream's
/// window on purpose: data received but not yet read counts against both, so with equal windows
/// (hyper's adaptive window starts both at 64 KiB) one watch whose events the operator is slow to
/// read would stall every other response on the connection, among them those the operator
/// awaits before it reads that watch again. A stream's window still bounds what each buffers.
const CONNECTION_WINDOW: u32 = 1 << 30;

/// A client builder for the API server of `config`, speaking HTTP/2 where the server offers it.
///
/// Mirrors kube's `ClientBuilder::try_from(config)` (kube-client 5.0, `make_generic_builder`)
/// except for the connection beneath. With `config.proxy_url` set, kube's own builder is used:
/// its proxy tunnels are built inside kube and not reachable from here, and through a proxy
/// HTTP/1.1 is acceptable. kube's `valid_until` (the expiry of a client certificate from an exec
/// plugin) is not set: kube keeps it to itself, and the operator does not read it.
pub fn client_builder(config: &kube::Config) -> Result<ClientBuilder<ApiService>, kube::Error> {
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config.clone());
    }
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(trace_layer())
        .service(MultiplexedConnection::new(config)?)
        .map_response_body(|body| {
            Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
        })
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace.clone()))
}

/// Counts each request the client makes in `crate::metrics::ApiRequests`, by verb and the
/// status code answered: 409s (stale reads, names taken) and 429s (the API server's priority and
/// fairness) show there.
#[derive(Clone)]
pub struct CountRequestsLayer(pub crate::metrics::ApiRequests);

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests { inner, requests: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    requests: crate::metrics::ApiRequests,
}

impl<S, B> Service<Request<Body>> for CountRequests<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let verb = verb_of(request.method(), request.uri());
        let answer = self.inner.call(request);
        let requests = self.requests.clone();
        Box::pin(async move {
            let result = answer.await;
            let code =
                result.as_ref().map_or_else(|_| "error".to_string(), |r| r.status().as_u16().to_string());
            requests.count(verb, &code);
            result
        })
    }
}

/// The Kubernetes verb of a request, from its method and path: a GET of a collection is a list
/// (a watch with `watch=true`), of one object a get; a DELETE of a collection is deletecollection.
pub fn verb_of(method: &http::Method, uri: &Uri) -> &'static str {
    // /api/v1/... or /apis/GROUP/VERSION/..., then [namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]].
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, resource, more @ ..] => [&[*resource][..], more].concat(),
        other => other.to_vec(),
    };
    let collection = rest.len() <= 1;
    let watch = uri.query().unwrap_or_default().split('&').any(|q| q == "watch=true" || q == "watch=1");
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if collection => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if collection => "deletecollection",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// kube's connector: TCP, then TLS as the kubeconfig says, within kube's timeouts.
type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;

/// Sends every request to the API server over one HTTP/2 connection when the server chooses h2
/// by ALPN, and through hyper-util's pooled HTTP/1.1 client (kube's own: a connection per request
/// in flight) when it does not.
///
/// hyper-util's client cannot do the first on its own: offered both protocols, it learns that a
/// connection is HTTP/2 only once its TLS handshake is done, so a burst of requests on a new
/// client (the operator's watches at start, or again after a connection closes) opens a
/// connection for each before one is shared (41 TCP connections for the 40 requests and a watch
/// of `tests/api_client.rs`, with hyper-util's client built as kube builds it but offering h2).
/// Here one request at a time connects, and the others wait for it.
///
/// Every request goes to the cluster's address (kube's base-URI layer above sets it), so one
/// connection is all there is to keep.
#[derive(Clone)]
struct MultiplexedConnection {
    /// The cluster's address (scheme and authority), where the connection goes.
    origin: Uri,
    /// Offers h2 and HTTP/1.1.
    connector: Connector,
    http2: http2::Builder<TokioExecutor>,
    /// Offers only HTTP/1.1, for servers that do not choose h2.
    http1: hyper_util::client::legacy::Client<Connector, Body>,
    /// What the server speaks; held while connecting, so that a burst of requests opens one
    /// connection.
    protocol: Arc<tokio::sync::Mutex<Protocol>>,
}

/// What the API server speaks, as its first connection showed.
enum Protocol {
    /// Not known yet: the next request connects.
    Unknown,
    /// The server chose h2: every request goes on this connection. Once it is closed (it
    /// failed, or the server sent GOAWAY and takes no new requests on it), the next request
    /// connects again.
    Http2(http2::SendRequest<Body>),
    /// The server chose HTTP/1.1 (or no TLS, so no ALPN): hyper-util's pool from now on.
    Http1,
}

impl MultiplexedConnection {
    fn new(config: &kube::Config) -> Result<Self, kube::Error> {
        let url = &config.cluster_url;
        let mut origin = Uri::builder().path_and_query("/");
        if let (Some(scheme), Some(authority)) = (url.scheme(), url.authority()) {
            origin = origin.scheme(scheme.clone()).authority(authority.clone());
        }
        let origin = origin.build().map_err(kube::Error::HttpError)?;
        // One TLS configuration for both connectors: in a pod, kube's verifier in it re-reads the
        // service account's CA as it rotates.
        let tls = config.rustls_client_config()?;
        let with_tls = || hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone());
        let connector = timeouts(config, https_connector(config, with_tls(), true)?);
        let http1 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(timeouts(config, https_connector(config, with_tls(), false)?));
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            // The keep-alive pings need a timer.
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            // Also with no stream open: a connection waiting for the next request is checked
            // too, so that a dead one is found before a request is sent into it.
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        // Plain HTTP has no ALPN, and API servers do not speak HTTP/2 in the clear.
        let protocol =
            if url.scheme() == Some(&http::uri::Scheme::HTTPS) { Protocol::Unknown } else { Protocol::Http1 };
        Ok(Self { origin, connector, http2, http1, protocol: Arc::new(tokio::sync::Mutex::new(protocol)) })
    }

    /// The HTTP/2 connection, made now if there is none (one caller at a time); None when the
    /// server speaks HTTP/1.1.
    async fn http2_sender(&self) -> Result<Option<http2::SendRequest<Body>>, BoxError> {
        let mut protocol = self.protocol.lock().await;
        match &*protocol {
            Protocol::Http2(sender) if !sender.is_closed() => return Ok(Some(sender.clone())),
            Protocol::Http1 => return Ok(None),
            Protocol::Http2(_) | Protocol::Unknown => {}
        }
        let io = self.connector.clone().call(self.origin.clone()).await?;
        if !io.connected().is_negotiated_h2() {
            // This one connection is dropped unused: hyper-util's pool makes its own.
            tracing::debug!("the API server chose HTTP/1.1: a connection per request in flight");
            *protocol = Protocol::Http1;
            return Ok(None);
        }
        let (sender, connection) = self.http2.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection to the API server closed");
            }
        });
        *protocol = Protocol::Http2(sender.clone());
        Ok(Some(sender))
    }

    async fn send(self, mut request: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        // A request that a closing connection never sent (hyper hands it back) is sent again on
        // a new connection, once, as hyper-util's pool does; one that was sent fails, since the
        // server may have acted on it.
        let mut retried = false;
        loop {
            let Some(mut sender) = self.http2_sender().await? else {
                return Ok(self.http1.request(request).await?);
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => return Err(TrySendError::into_error(error).into()),
                },
            }
        }
    }
}

impl Service<Request<Body>> for MultiplexedConnection {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    /// Always ready: requests wait for the connection in `call`, where the first of a burst
    /// makes it.
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// kube's TLS connector (`ConfigExt::rustls_https_connector_with_connector`: the kubeconfig's CA,
/// client certificate and `tls-server-name`), offering h2 by ALPN when `http2`.
fn https_connector(
    config: &kube::Config,
    with_tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
    http2: bool,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, kube::Error> {
    let mut http = HttpConnector::new();
    // The scheme is TLS's business (`https_or_http` below), not the TCP connector's.
    http.enforce_http(false);
    let mut builder = with_tls.https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name
            .clone()
            .try_into()
            .map_err(|e| kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e)))?;
        builder = builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let builder = builder.enable_http1();
    Ok(if http2 { builder.enable_http2().wrap_connector(http) } else { builder.wrap_connector(http) })
}

/// kube's timeouts, applied as kube applies them (its `hyper-timeout` connector): the connect
/// timeout covers the TLS handshake too; the read and write timeouts count on the connection, not
/// on a request. kube 5 sets no read timeout, nor does the operator for this client; one longer
/// than `KEEP_ALIVE_INTERVAL` never closes a live HTTP/2 connection, as the pings' answers are
/// read, and a shorter one would close a connection carrying only quiet watches.
fn timeouts(config: &kube::Config, https: hyper_rustls::HttpsConnector<HttpConnector>) -> Connector {
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    connector
}

/// kube's `TraceLayer` for each API request, its callbacks as kube has them.
type ApiTraceLayer = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request<Body>) -> Span,
    fn(&Request<Body>, &Span),
    fn(&Response<Incoming>, Duration, &Span),
    (),
    fn(Option<&HeaderMap>, Duration, &Span),
    fn(ServerErrorsFailureClass, Duration, &Span),
>;

/// kube's span for each API request (`HTTP`, at debug level, with its method, URL and status),
/// so that the operator's logs read as with kube's own client.
fn trace_layer() -> ApiTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request<Body>) -> Span)
        .on_request(on_request as fn(&Request<Body>, &Span))
        .on_response(on_response as fn(&Response<Incoming>, Duration, &Span))
        .on_body_chunk(())
        .on_eos(on_end_of_stream as fn(Option<&HeaderMap>, Duration, &Span))
        .on_failure(on_failure as fn(ServerErrorsFailureClass, Duration, &Span))
}

fn request_span(request: &Request<Body>) -> Span {
    tracing::debug_span!(
        "HTTP",
        http.method = %request.method(),
        http.url = %request.uri(),
        http.status_code = tracing::field::Empty,
        otel.name = request.extensions().get::<&'static str>().unwrap_or(&"HTTP"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
    )
}

fn on_request(_: &Request<Body>, _: &Span) {
    tracing::debug!("requesting");
}

fn on_response(response: &Response<Incoming>, _: Duration, span: &Span) {
    let status = response.status();
    span.record("http.status_code", status.as_u16());
    if status.is_client_error() || status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

fn on_end_of_stream(_: Option<&HeaderMap>, _: Duration, _: &Span) {
    tracing::debug!("stream closed");
}

/// A request that failed, or whose answer is a server error.
fn on_failure(failure: ServerErrorsFailureClass, _: Duration, span: &Span) {
    span.record("otel.status_code", "ERROR");
    match failure {
        ServerErrorsFailureClass::StatusCode(status) => {
            span.record("http.status_code", status.as_u16());
            tracing::error!("failed with status {status}")
        }
        ServerErrorsFailureClass::Error(error) => tracing::error!("failed with error {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_the_method_and_whether_the_path_names_one_object() {
        let verb = |method: &str, uri: &str| verb_of(&method.parse().unwrap(), &uri.parse().unwrap());
        assert_eq!(verb("GET", "/api/v1/namespaces/ns/pods"), "list");
        assert_eq!(verb("GET", "/api/v1/namespaces/ns/pods?watch=true&resourceVersion=5"), "watch");
        assert_eq!(verb("GET", "/api/v1/namespaces/ns/pods/p"), "get");
        assert_eq!(verb("GET", "/api/v1/namespaces"), "list");
        assert_eq!(verb("GET", "/api/v1/namespaces/ns"), "get");
        assert_eq!(verb("GET", "/apis/apps/v1/deployments"), "list");
        assert_eq!(verb("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d?fieldManager=x"), "patch");
        assert_eq!(
            verb("PUT", "/apis/omero.openmicroscopy.org/v1alpha1/namespaces/ns/omeroclusters/c/status"),
            "update"
        );
        assert_eq!(verb("POST", "/apis/events.k8s.io/v1/namespaces/ns/events"), "create");
        assert_eq!(verb("DELETE", "/api/v1/namespaces/ns/pods/p"), "delete");
        assert_eq!(verb("DELETE", "/api/v1/namespaces/ns/pods"), "deletecollection");
    }
}
