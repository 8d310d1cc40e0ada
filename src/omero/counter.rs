//! The `counter` probe: a node's open sessions read from the built-in session counter, the
//! operator's own script (`counter/omero_session_counter.py`) run beside the server in the
//! node's pod. It answers `GET /sessions` with JSON; its format is defined there and parsed
//! here. A failure it reports, an answer that is not its format and a sample too old are all
//! errors, never a count; the sample id lets the drain tell a new sample from one already seen.

use std::{net::IpAddr, time::Duration};

use hyper::{StatusCode, Uri};
use serde::Deserialize;

use super::{ProbeError, ProbeTimeouts, SessionCount, metrics};

/// The counter's port in the pod (a container port of the counter container; not on any
/// Service).
pub const COUNTER_PORT: u16 = 9450;
/// Where the counter answers.
pub const COUNTER_PATH: &str = "/sessions";
/// The format this operator reads; a counter answering another major version is an error. Still
/// `/1` since the counter samples on request rather than every 5 s: the fields and what a sample
/// id means are unchanged, and a new version would make this operator refuse every counter still
/// running the old script, during the very rollout that replaces them.
pub const COUNTER_FORMAT: &str = "omero-session-counter/1";
/// A sample older than this is refused. The counter samples when asked: it answers with a sample
/// begun less than 5 s ago, or one it took for this request, or a failure; an older one is not
/// its answer to this probe (a counter stuck behind a hung request to OMERO, or a script that
/// answers some other way), and the count may be long out of date.
pub const MAX_SAMPLE_AGE: Duration = Duration::from_secs(60);

/// The counter's answer (see the script's docstring). Unknown fields are ignored, so a newer
/// counter may add some.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    format: String,
    ok: bool,
    sessions: Option<u64>,
    sample: Option<String>,
    taken_at: Option<String>,
    age_seconds: Option<f64>,
    error: Option<String>,
}

/// The session count in a counter's answer (HTTP `status` and `body`), or why there is none.
pub fn read_answer(status: u16, body: &str, max_age: Duration) -> Result<SessionCount, String> {
    let answer: Answer = serde_json::from_str(body).map_err(|e| {
        let start: String = body.chars().take(80).collect();
        format!("HTTP status {status}: not the session counter's answer ({e}): {start:?}")
    })?;
    if answer.format != COUNTER_FORMAT {
        return Err(format!(
            "the counter answers in format {:?}, this operator reads {COUNTER_FORMAT:?}: the pod runs another \
             operator's script; it is replaced when the node restarts with this operator's",
            answer.format
        ));
    }
    let when = answer.taken_at.as_deref().map_or(String::new(), |t| format!(" (sample taken at {t})"));
    if !answer.ok {
        let error = answer.error.as_deref().unwrap_or("no reason given");
        return Err(format!("the counter could not count: {error}{when}"));
    }
    if !(200..300).contains(&status) {
        return Err(format!("HTTP status {status} with a count: not a well-formed answer"));
    }
    let sessions = answer.sessions.ok_or("the answer says ok but carries no sessions count")?;
    let sample = answer.sample.filter(|s| !s.is_empty()).ok_or("the answer carries no sample id")?;
    let age = answer.age_seconds.ok_or("the answer does not say how old its sample is")?;
    if !age.is_finite() || age < 0.0 {
        return Err(format!("the answer's ageSeconds is {age}, not an age"));
    }
    if age > max_age.as_secs_f64() {
        return Err(format!(
            "stale: its last sample is {age:.0}s old (more than {}s){when}: the counter cannot reach the server",
            max_age.as_secs()
        ));
    }
    Ok(SessionCount { sessions, sample: Some(sample) })
}

pub async fn count(
    http: &metrics::HttpClient,
    timeouts: &ProbeTimeouts,
    pod_ip: IpAddr,
) -> Result<SessionCount, ProbeError> {
    let url = metrics::url(pod_ip, COUNTER_PORT, COUNTER_PATH);
    let fail = |reason: String| ProbeError::Counter { url: url.clone(), reason };
    let uri: Uri = url.parse().map_err(|e| ProbeError::Config(format!("counter URL {url}: {e}")))?;
    let (status, body) =
        match tokio::time::timeout(timeouts.total, metrics::get(http, uri, "application/json")).await {
            Ok(answer) => answer.map_err(fail)?,
            Err(_) => return Err(fail(format!("no answer within {}s", timeouts.total.as_secs_f64()))),
        };
    read_answer(StatusCode::as_u16(&status), &body, MAX_SAMPLE_AGE).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = MAX_SAMPLE_AGE;

    #[test]
    fn an_ok_answer_is_the_count_and_its_sample() {
        let body = r#"{"ageSeconds": 1.2, "excluded": {"counter": 0, "expired": 0, "own": 1, "service": 2, "share": 0}, "format": "omero-session-counter/1", "ok": true, "restricted": 0, "sample": "1a2b3c4d-17", "sessions": 3, "takenAt": "2026-01-01T00:00:00.000Z"}"#;
        assert_eq!(
            read_answer(200, body, AGE),
            Ok(SessionCount { sessions: 3, sample: Some("1a2b3c4d-17".into()) })
        );
    }

    #[test]
    fn a_failure_is_an_error_with_the_counters_reason_never_zero() {
        let body = r#"{"ageSeconds": 0.4, "error": "RuntimeError: login to tcp://127.0.0.1:4063 as monitor refused or failed", "format": "omero-session-counter/1", "ok": false, "sample": "1a2b3c4d-18", "takenAt": "2026-01-01T00:00:05.000Z"}"#;
        let error = read_answer(503, body, AGE).unwrap_err();
        assert!(error.starts_with("the counter could not count: RuntimeError: login"), "{error}");
        assert!(error.ends_with("(sample taken at 2026-01-01T00:00:05.000Z)"), "{error}");
        let first = r#"{"error": "no sample taken yet", "format": "omero-session-counter/1", "ok": false, "sample": null}"#;
        assert!(read_answer(503, first, AGE).unwrap_err().contains("no sample taken yet"));
    }

    #[test]
    fn a_sample_older_than_the_limit_is_stale() {
        let body = r#"{"ageSeconds": 95.0, "format": "omero-session-counter/1", "ok": true, "sample": "a-3", "sessions": 0, "takenAt": "2026-01-01T00:00:00.000Z"}"#;
        let error = read_answer(200, body, AGE).unwrap_err();
        assert!(error.starts_with("stale: its last sample is 95s old"), "{error}");
        assert_eq!(read_answer(200, body, Duration::from_secs(120)).unwrap().sessions, 0);
    }

    #[test]
    fn anything_else_is_an_error() {
        let ok = |extra: &str| format!(r#"{{"format": "omero-session-counter/1", "ok": true{extra}}}"#);
        for (status, body, expected) in [
            (200, "<html>proxy error</html>".to_string(), "not the session counter's answer"),
            (200, r#"{"format": "omero-session-counter/2", "ok": true, "sessions": 1}"#.into(), "format"),
            (200, ok(r#", "sample": "a-1", "ageSeconds": 1"#), "no sessions count"),
            (200, ok(r#", "sessions": 1, "ageSeconds": 1"#), "no sample id"),
            (200, ok(r#", "sessions": 1, "sample": "a-1""#), "how old"),
            (
                200,
                ok(r#", "sessions": -1, "sample": "a-1", "ageSeconds": 1"#),
                "not the session counter's answer",
            ),
            (
                200,
                ok(r#", "sessions": 1.5, "sample": "a-1", "ageSeconds": 1"#),
                "not the session counter's answer",
            ),
            (500, ok(r#", "sessions": 1, "sample": "a-1", "ageSeconds": 1"#), "HTTP status 500"),
            (200, ok(r#", "sessions": 1, "sample": "a-1", "ageSeconds": -3"#), "not an age"),
        ] {
            let error = read_answer(status, &body, AGE).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }
}
