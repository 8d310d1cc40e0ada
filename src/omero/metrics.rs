//! The `metrics` probe: a node's open sessions read from a Prometheus text endpoint on its pod
//! (e.g. a sessions exporter beside a read-only node, whose sessions never reach the database).

use std::net::IpAddr;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::prometheus_text::{self, Line};
use super::{ProbeError, ProbeTimeouts, SessionCount, error};
use crate::api::{DEFAULT_METRICS_PATH, DEFAULT_SESSIONS_METRIC, SessionProbe};

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A sessions gauge is a few hundred bytes; a whole JVM exporter, tens of kilobytes.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Counts only up to here are exact in an f64, the type of every Prometheus value.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

pub fn http_client(timeouts: &ProbeTimeouts) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    // No idle connections: probes come 15 s apart and pods are replaced under the same IP, so
    // a kept-alive connection is more often stale than useful.
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector)
}

pub async fn count(
    http: &HttpClient,
    timeouts: &ProbeTimeouts,
    pod_ip: IpAddr,
    probe: &SessionProbe,
) -> Result<SessionCount, ProbeError> {
    let port = probe
        .port
        .ok_or_else(|| ProbeError::Config("a metrics probe needs port: the port of the endpoint".into()))?;
    let path = probe.path.as_deref().unwrap_or(DEFAULT_METRICS_PATH);
    let metric = probe.metric.as_deref().unwrap_or(DEFAULT_SESSIONS_METRIC);
    let url = url(pod_ip, port, path);
    let uri: Uri = url.parse().map_err(|e| ProbeError::Config(format!("metrics URL {url}: {e}")))?;
    let fail = |reason: String| ProbeError::Metrics { url: url.clone(), reason };
    let body = match tokio::time::timeout(timeouts.total, fetch(http, uri)).await {
        Ok(body) => body.map_err(fail)?,
        Err(_) => return Err(fail(format!("no answer within {}s", timeouts.total.as_secs_f64()))),
    };
    read_sessions(&body, metric, &probe.excluded_users()).map_err(fail)
}

/// The summary omero-prometheus-tools updates at each refresh of its gauges (60 s by default):
/// its `_count` tells one sample from the next, since the gauges carry no timestamp.
pub const REFRESH_COUNTER: &str = "omero_sessions_processing_seconds_count";

/// The sessions of people in an exporter's exposition: every sample of `metric` except those
/// whose `username` label is in `excluded` (root: OMERO's own Processor and Tables sessions;
/// the exporter's own login), and which sample this is ([`REFRESH_COUNTER`], when the
/// exporter publishes it; inferred from omero-prometheus-tools' source, so without it every
/// read counts as a new sample).
pub fn read_sessions(text: &str, metric: &str, excluded: &[&str]) -> Result<SessionCount, String> {
    let sessions = sum_metric(text, metric, |labels| {
        !labels.iter().any(|(name, value)| *name == "username" && excluded.contains(&value.as_ref()))
    })?;
    let sample = sum_metric(text, REFRESH_COUNTER, |_| true).ok().map(|n| n.to_string());
    Ok(SessionCount { sessions, sample })
}

pub(super) fn url(pod_ip: IpAddr, port: u16, path: &str) -> String {
    let slash = if path.starts_with('/') { "" } else { "/" };
    match pod_ip {
        IpAddr::V4(ip) => format!("http://{ip}:{port}{slash}{path}"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}{slash}{path}"),
    }
}

async fn fetch(http: &HttpClient, uri: Uri) -> Result<String, String> {
    // The classic text format, not OpenMetrics or protobuf.
    let (status, body) = get(http, uri, "text/plain;version=0.0.4;q=1,*/*;q=0.1").await?;
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    Ok(body)
}

/// A GET of a small text document: its status and body, whatever the status.
pub(super) async fn get(
    http: &HttpClient,
    uri: Uri,
    accept: &str,
) -> Result<(hyper::StatusCode, String), String> {
    let request = Request::get(uri)
        .header(ACCEPT, accept)
        .header(USER_AGENT, concat!("omero-operator/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = http.request(request).await.map_err(|e| error::chain(&e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| {
        if e.is::<LengthLimitError>() {
            format!("body larger than {} MiB", MAX_BODY_BYTES >> 20)
        } else {
            format!("reading the body: {}", error::chain(&*e))
        }
    })?;
    let text =
        String::from_utf8(body.to_bytes().into()).map_err(|_| "the body is not UTF-8 text".to_owned())?;
    Ok((status, text))
}

/// The sum of the samples of `metric` whose labels `counted` accepts, in a Prometheus text
/// exposition. Each sample must be a whole number; the metric must be present.
pub fn sum_metric(
    text: &str,
    metric: &str,
    counted: impl Fn(&[(&str, std::borrow::Cow<'_, str>)]) -> bool,
) -> Result<u64, String> {
    let mut total: u64 = 0;
    let mut samples = 0usize;
    for line in prometheus_text::lines(text) {
        let line = line.map_err(|e| format!("not the Prometheus text format: {e}"))?;
        let Line::Sample(sample) = line else { continue };
        if sample.name != metric {
            continue;
        }
        samples += 1;
        if !counted(&sample.labels) {
            continue;
        }
        let value = sample.value;
        let problem = if value.is_nan() {
            Some("NaN")
        } else if value < 0.0 {
            Some("negative")
        } else if value.is_infinite() || value > MAX_EXACT {
            Some("too large")
        } else if value.fract() != 0.0 {
            Some("not a whole number")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("sample {sample} is {problem} ({value}), not a count of sessions"));
        }
        // Exact: a whole number in [0, 2^53].
        total = total.checked_add(value as u64).ok_or_else(|| format!("the sum of {metric} overflows"))?;
    }
    if samples == 0 {
        return Err(format!("no sample of {metric}"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(text: &str, metric: &str) -> Result<u64, String> {
        sum_metric(text, metric, |_| true)
    }

    #[test]
    fn people_are_counted_root_and_the_exporter_are_not_and_the_refresh_names_the_sample() {
        let text = "\
# TYPE omero_sessions_active gauge
omero_sessions_active{username=\"root\"} 2
omero_sessions_active{username=\"monitor\"} 1
omero_sessions_active{username=\"alice\"} 3
omero_sessions_active{username=\"bob\"} 1
# TYPE omero_sessions_processing_seconds summary
omero_sessions_processing_seconds_count 17
omero_sessions_processing_seconds_sum 3.2
";
        let count = read_sessions(text, "omero_sessions_active", &["root", "monitor"]).unwrap();
        assert_eq!(count, SessionCount { sessions: 4, sample: Some("17".into()) });
        // Only root and the exporter are left out; a gauge with no username still counts.
        let bare = read_sessions("omero_sessions_active 2\n", "omero_sessions_active", &["root"]).unwrap();
        assert_eq!(bare, SessionCount { sessions: 2, sample: None }, "no refresh counter: every read is new");
        // Only root and the exporter left: zero, not an error.
        let idle = "omero_sessions_active{username=\"root\"} 2\nomero_sessions_processing_seconds_count 18\n";
        assert_eq!(read_sessions(idle, "omero_sessions_active", &["root"]).unwrap().sessions, 0);
    }

    #[test]
    fn urls() {
        assert_eq!(url("10.0.0.5".parse().unwrap(), 9449, "/metrics"), "http://10.0.0.5:9449/metrics");
        assert_eq!(url("10.0.0.5".parse().unwrap(), 80, "sessions"), "http://10.0.0.5:80/sessions");
        assert_eq!(url("fd00::5".parse().unwrap(), 9449, "/m?x=1"), "http://[fd00::5]:9449/m?x=1");
    }

    #[test]
    fn sums_every_label_set_of_the_exact_name() {
        let text = "\
# HELP omero_sessions_active Open sessions.
# TYPE omero_sessions_active gauge
omero_sessions_active{agent=\"OMERO.web\"} 12
omero_sessions_active{agent=\"OMERO.insight\"} 3
omero_sessions_active_total 1000
omero_sessions_activeX 1000
xomero_sessions_active 1000
omero_sessions_active 0
";
        assert_eq!(sum(text, "omero_sessions_active"), Ok(15));
        assert_eq!(sum(text, "omero_sessions_active_total"), Ok(1000));
    }

    #[test]
    fn absent_metric_is_an_error_not_zero() {
        assert_eq!(sum("", "m"), Err("no sample of m".into()));
        assert_eq!(sum("# TYPE m gauge\nm_total 3\n", "m"), Err("no sample of m".into()));
    }

    #[test]
    fn values_that_are_not_counts_are_errors() {
        for (value, problem) in [
            ("NaN", "NaN"),
            ("-1", "negative"),
            ("+Inf", "too large"),
            ("1e300", "too large"),
            ("2.5", "not a whole"),
        ] {
            let error = sum(&format!("m{{node=\"a\"}} {value}\n"), "m").unwrap_err();
            assert!(error.starts_with("sample m{node=\"a\"} is "), "{error}");
            assert!(error.contains(problem), "{value}: {error}");
        }
        assert_eq!(sum("m 1e3\nm -0\n", "m"), Ok(1000));
    }

    #[test]
    fn a_malformed_body_is_an_error_even_when_the_metric_parses() {
        let error = sum("m 3\n<html>oops</html>\n", "m").unwrap_err();
        assert_eq!(error, "not the Prometheus text format: line 2, column 1: expected a metric name");
        assert!(sum("m 3", "m").unwrap_err().contains("truncated"));
    }
}
