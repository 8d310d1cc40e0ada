//! The `metrics` session probe against a small HTTP/1.1 server in the test, which stands in
//! for a sessions exporter on the node's pod.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omero_operator::api::{SessionProbe, SessionProbeKind};
use omero_operator::omero::{Client as OmeroClient, ProbeError, ProbeTarget, ProbeTimeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an exporter beside an OMERO node might serve: the sessions gauge by agent, and metrics
/// whose names start like it.
const EXPOSITION: &str = "\
# HELP omero_sessions_active Open OMERO sessions on this server, by agent.
# TYPE omero_sessions_active gauge
omero_sessions_active{agent=\"OMERO.web\",server=\"omero-ro-0\"} 12
omero_sessions_active{agent=\"OMERO.insight\",server=\"omero-ro-0\"} 3
omero_sessions_active{agent=\"OMERO.py\",server=\"omero-ro-0\",note=\"a \\\"quoted\\\" value, with {braces}\"} 1 1700000000000
# HELP omero_sessions_active_total Sessions opened since start.
# TYPE omero_sessions_active_total counter
omero_sessions_active_total 4521
# HELP omero_sessions_activeX Not the gauge.
# TYPE omero_sessions_activeX gauge
omero_sessions_activeX 99
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.147483648e+09
";

#[derive(Clone)]
enum Reply {
    Ok(&'static str),
    Status(&'static str, &'static str),
    /// Promises more bytes than it sends, then closes.
    Truncated(&'static str),
    Silent,
}

/// An HTTP server on 127.0.0.1 that answers every request with `reply` and records the
/// request heads it got.
struct Exporter {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let reply = reply.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                    let response = match reply {
                        Reply::Ok(body) => response("200 OK", body, body.len()),
                        Reply::Status(status, body) => response(status, body, body.len()),
                        Reply::Truncated(body) => response("200 OK", body, body.len() + 100),
                        Reply::Silent => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { port, requests, task }
    }

    fn probe(&self) -> SessionProbe {
        SessionProbe { kind: SessionProbeKind::Metrics, port: Some(self.port), ..SessionProbe::default() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn response(status: &str, body: &str, length: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    )
}

async fn count(probes: &OmeroClient, probe: &SessionProbe) -> Result<Option<u64>, ProbeError> {
    let counted = probes.count(&ProbeTarget { pod_ip: "127.0.0.1", probe, database: None }).await;
    counted.map(|c| c.map(|c| c.sessions))
}

/// What omero-prometheus-tools publishes: sessions per user (OMERO's own services log in as
/// root; the exporter as its own user), and the summary it updates at each refresh.
const BY_USER: &str = "\
# HELP omero_sessions_active Active OMERO sessions
# TYPE omero_sessions_active gauge
omero_sessions_active{username=\"root\"} 2.0
omero_sessions_active{username=\"monitor\"} 1.0
omero_sessions_active{username=\"alice\"} 2.0
# HELP omero_sessions_processing_seconds Time spent collecting sessions
# TYPE omero_sessions_processing_seconds summary
omero_sessions_processing_seconds_count 12.0
omero_sessions_processing_seconds_sum 0.41
";

#[tokio::test]
async fn root_and_the_exporters_own_user_are_left_out_and_the_sample_is_named() {
    let exporter = Exporter::start(Reply::Ok(BY_USER)).await;
    let probe = SessionProbe { exporter_user: Some("monitor".into()), ..exporter.probe() };
    let counted = OmeroClient::default()
        .count(&ProbeTarget { pod_ip: "127.0.0.1", probe: &probe, database: None })
        .await;
    assert_eq!(
        counted,
        Ok(Some(omero_operator::omero::SessionCount { sessions: 2, sample: Some("12".into()) }))
    );
}

fn metrics_error(url: String, reason: &str) -> ProbeError {
    ProbeError::Metrics { url, reason: reason.into() }
}

#[tokio::test]
async fn sums_every_label_set_of_the_gauge_and_nothing_else() {
    let exporter = Exporter::start(Reply::Ok(EXPOSITION)).await;
    assert_eq!(count(&OmeroClient::default(), &exporter.probe()).await, Ok(Some(16)));
    let requests = exporter.requests.lock().unwrap();
    let head = requests[0].to_ascii_lowercase();
    assert!(head.starts_with("get /metrics http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\naccept: text/plain;version=0.0.4"), "{head}");
}

#[tokio::test]
async fn path_and_metric_come_from_the_probe() {
    let exporter = Exporter::start(Reply::Ok(EXPOSITION)).await;
    let probe = SessionProbe {
        path: Some("omero/sessions".into()),
        metric: Some("omero_sessions_active_total".into()),
        ..exporter.probe()
    };
    assert_eq!(count(&OmeroClient::default(), &probe).await, Ok(Some(4521)));
    assert!(exporter.requests.lock().unwrap()[0].starts_with("GET /omero/sessions HTTP/1.1\r\n"));
}

#[tokio::test]
async fn zero_sessions_is_zero() {
    let exporter =
        Exporter::start(Reply::Ok("# TYPE omero_sessions_active gauge\nomero_sessions_active 0\n")).await;
    assert_eq!(count(&OmeroClient::default(), &exporter.probe()).await, Ok(Some(0)));
}

#[tokio::test]
async fn a_missing_metric_is_an_error_not_zero() {
    let exporter = Exporter::start(Reply::Ok("# TYPE jvm_threads gauge\njvm_threads 42\n")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await.unwrap_err();
    assert_eq!(error, metrics_error(exporter.url("/metrics"), "no sample of omero_sessions_active"));
    assert_eq!(
        error.to_string(),
        format!("metrics http://127.0.0.1:{}/metrics: no sample of omero_sessions_active", exporter.port)
    );
}

#[tokio::test]
async fn an_http_error_status_is_an_error() {
    let exporter =
        Exporter::start(Reply::Status("500 Internal Server Error", "omero_sessions_active 0\n")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await;
    assert_eq!(error, Err(metrics_error(exporter.url("/metrics"), "HTTP status 500 Internal Server Error")));

    let exporter = Exporter::start(Reply::Status("404 Not Found", "")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await;
    assert_eq!(error, Err(metrics_error(exporter.url("/metrics"), "HTTP status 404 Not Found")));
}

#[tokio::test]
async fn a_garbage_body_is_an_error() {
    let exporter = Exporter::start(Reply::Ok("<html><body>omero_sessions_active 3</body></html>\n")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await;
    let reason = "not the Prometheus text format: line 1, column 1: expected a metric name";
    assert_eq!(error, Err(metrics_error(exporter.url("/metrics"), reason)));

    // A good sample does not excuse a broken line elsewhere.
    let exporter =
        Exporter::start(Reply::Ok("omero_sessions_active 3\nomero_sessions_active{agent=web} 1\n")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await.unwrap_err();
    assert!(
        error.to_string().contains("line 2, column 29: expected '\"' to open the label value"),
        "{error}"
    );
}

#[tokio::test]
async fn values_that_are_not_session_counts_are_errors() {
    for (body, problem) in [
        ("omero_sessions_active NaN\n", "is NaN"),
        ("omero_sessions_active{agent=\"web\"} -2\n", "is negative"),
        ("omero_sessions_active +Inf\n", "is too large"),
        ("omero_sessions_active 1.5\n", "is not a whole number"),
        ("omero_sessions_active three\n", "invalid value \"three\""),
    ] {
        let exporter = Exporter::start(Reply::Ok(body)).await;
        let error = count(&OmeroClient::default(), &exporter.probe()).await.unwrap_err();
        assert!(error.to_string().contains(problem), "{body:?}: {error}");
    }
}

#[tokio::test]
async fn a_truncated_body_is_an_error() {
    let exporter = Exporter::start(Reply::Truncated("omero_sessions_active 12\n")).await;
    let error = count(&OmeroClient::default(), &exporter.probe()).await.unwrap_err();
    let ProbeError::Metrics { reason, .. } = &error else { panic!("{error}") };
    assert!(reason.starts_with("reading the body: "), "{reason}");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let exporter = Exporter::start(Reply::Silent).await;
    let probes =
        OmeroClient::new(ProbeTimeouts { total: Duration::from_millis(300), ..ProbeTimeouts::default() });
    let started = Instant::now();
    let error = count(&probes, &exporter.probe()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(error, Err(metrics_error(exporter.url("/metrics"), "no answer within 0.3s")));
}

#[tokio::test]
async fn a_closed_port_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let probe = SessionProbe { kind: SessionProbeKind::Metrics, port: Some(port), ..SessionProbe::default() };
    let error = count(&OmeroClient::default(), &probe).await.unwrap_err();
    let ProbeError::Metrics { url, reason } = &error else { panic!("{error}") };
    assert_eq!(url, &format!("http://127.0.0.1:{port}/metrics"));
    assert!(reason.contains("Connection refused"), "{reason}");
}

#[tokio::test]
async fn misconfigured_probes_are_config_errors() {
    let probes = OmeroClient::default();
    let no_port = SessionProbe { kind: SessionProbeKind::Metrics, ..SessionProbe::default() };
    assert!(matches!(count(&probes, &no_port).await, Err(ProbeError::Config(_))));
    let bad_path = SessionProbe { path: Some("/a b".into()), port: Some(9449), ..no_port };
    let error = count(&probes, &bad_path).await;
    assert!(
        matches!(&error, Err(ProbeError::Config(m)) if m.starts_with("metrics URL http://127.0.0.1:9449/a b"))
    );
}
