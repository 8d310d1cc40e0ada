//! How `kubectl omero` reaches the API server: the kubeconfig, context and namespace, acting as
//! another user (`--as`, `--as-group`, `--as-uid`) and a bound on each request
//! (`--request-timeout`), with kubectl's meanings.

use std::{future::Future, path::PathBuf, pin::Pin, task::Poll, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use kube::{
    Client, Config,
    client::{Body, ClientBuilder},
    config::{KubeConfigOptions, Kubeconfig},
};
use tower::{BoxError, Layer, Service};

/// Where and as whom the plugin talks to the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// The kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    pub context: Option<String>,
    /// The namespace (default: the context's).
    pub namespace: Option<String>,
    /// `--as`: the user to act as (the `Impersonate-User` header).
    pub as_user: Option<String>,
    /// `--as-group`: the groups to act as, with `as_user`.
    pub as_groups: Vec<String>,
    /// `--as-uid`: the uid to act as, with `as_user`.
    pub as_uid: Option<String>,
    /// `--request-timeout`: how long each request may take; zero for no bound.
    pub request_timeout: Duration,
}

/// A client as `connection` says, and the namespace to work in.
pub async fn client(connection: &Connection) -> Result<(Client, String), String> {
    let options = KubeConfigOptions { context: connection.context.clone(), ..KubeConfigOptions::default() };
    let mut config = match &connection.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| e.to_string())?
        }
        None => Config::from_kubeconfig(&options).await.map_err(|e| format!("no usable kubeconfig: {e}"))?,
    };
    // As kubectl: the flags replace what the kubeconfig's user entry says (`as`, `as-groups`,
    // `as-uid`), and kube sends them as the Impersonate-* headers of every request.
    if let Some(user) = &connection.as_user {
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups =
            (!connection.as_groups.is_empty()).then(|| connection.as_groups.clone());
        config.auth_info.impersonate_uid = connection.as_uid.clone();
    }
    let namespace = connection.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = if connection.request_timeout.is_zero() {
        Client::try_from(config).map_err(|e| e.to_string())?
    } else {
        ClientBuilder::try_from(config)
            .map_err(|e| e.to_string())?
            .with_layer(&RequestTimeoutLayer(connection.request_timeout))
            .build()
    };
    Ok((client, namespace))
}

/// `--request-timeout` as kubectl reads it: `0` for no bound, a bare integer for seconds, or a
/// duration with its unit (`500ms`, `10s`, `1m30s`).
pub fn parse_request_timeout(value: &str) -> Result<Duration, String> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    value.parse::<crate::api::Duration>().map(|d| d.std()).map_err(|e| e.to_string())
}

/// A request that took longer than `--request-timeout`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the API server did not answer within {} (--request-timeout; 0 means no bound)",
    crate::api::Duration::from(*.0)
)]
pub struct RequestTimedOut(pub Duration);

/// Bounds each request: its answer must have come (headers and, but for a watch, the whole
/// body) within the duration, counted from when it is sent, the connection, authentication and
/// kube's retries included. A watch only has to start in time: it then streams for as long as
/// it lasts (the API server's own timeout ends it, and `--wait` has `--timeout`), where kubectl
/// would cut it off and a `--wait` would only start it again.
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer(pub Duration);

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout { inner, after: self.0 }
    }
}

#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    after: Duration,
}

impl<S, B> Service<Request<Body>> for RequestTimeout<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<BodyDeadline<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let watch = is_watch(request.uri());
        let after = self.after;
        let deadline = tokio::time::Instant::now() + after;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = tokio::time::timeout_at(deadline, answer)
                .await
                .map_err(|_| RequestTimedOut(after))?
                .map_err(Into::into)?;
            let deadline = (!watch).then(|| Box::pin(tokio::time::sleep_until(deadline)));
            Ok(response.map(|inner| BodyDeadline { inner, deadline, after }))
        })
    }
}

/// Whether a request is a watch (`?watch=true`, or `watch=1` as some clients write it).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().unwrap_or_default().split('&').any(|pair| pair == "watch=true" || pair == "watch=1")
}

/// A response body that fails once the request's deadline passes (none for a watch).
pub struct BodyDeadline<B> {
    inner: B,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    after: Duration,
}

impl<B> http_body::Body for BodyDeadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(RequestTimedOut(self.after).into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeouts_read_as_kubectl_reads_them() {
        assert_eq!(parse_request_timeout("0"), Ok(Duration::ZERO), "no bound");
        assert_eq!(parse_request_timeout("5"), Ok(Duration::from_secs(5)), "a bare number is seconds");
        assert_eq!(parse_request_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_request_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_request_timeout("soon").is_err());
        assert!(parse_request_timeout("-1").is_err());
    }

    #[test]
    fn only_watches_are_told_apart() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&uri("/apis/g/v1/namespaces/n/x?fieldSelector=a&watch=true&timeoutSeconds=290")));
        assert!(!is_watch(&uri("/apis/g/v1/namespaces/n/x?labelSelector=watch%3Dtrue")));
        assert!(!is_watch(&uri("/apis/g/v1/namespaces/n/x/omero")));
    }

    #[test]
    fn the_timeout_names_its_flag() {
        assert_eq!(
            RequestTimedOut(Duration::from_millis(1500)).to_string(),
            "the API server did not answer within 1500ms (--request-timeout; 0 means no bound)"
        );
    }

    /// A body that sends its first frame and then nothing: the deadline ends it, but not a
    /// watch's.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_at_the_deadline_but_a_watch_streams_on() {
        use http_body_util::BodyExt;
        for (uri, ends) in
            [("/api/v1/namespaces/n/pods", true), ("/api/v1/namespaces/n/pods?watch=true", false)]
        {
            let service = tower::service_fn(|_: Request<Body>| async {
                use futures::StreamExt;
                let first = Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from("{")));
                let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
                Ok::<_, BoxError>(Response::new(http_body_util::StreamBody::new(stalled)))
            });
            let mut timed = RequestTimeoutLayer(Duration::from_secs(2)).layer(service);
            let response = timed.call(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
            let mut body = response.into_body();
            assert!(body.frame().await.unwrap().unwrap().is_data(), "{uri}: the first frame");
            let next = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
            match (next, ends) {
                (Ok(Some(Err(e))), true) => assert!(e.is::<RequestTimedOut>(), "{uri}: {e}"),
                (Err(_), false) => {}
                (other, _) => panic!("{uri}: {:?}", other.map(|f| f.map(|f| f.map(|_| ())))),
            }
        }
    }
}
