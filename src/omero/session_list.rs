//! Who is on a node: the sessions a node's probe counts, listed one by one (`kubectl omero
//! sessions`). Each source gives what it can, in one shape ([`SessionList`]):
//!
//! - the session counter (`counter/omero_session_counter.py`) answers `GET /sessions/list`
//!   from the very samples it counts from; the plugin reads it through the API server's pod
//!   proxy ([`read_counter_list`]);
//! - the database probe's rule, as a listing ([`LISTED_SESSIONS_SQL`]), run by the operator for
//!   the plugin (`crate::http::sessions`): the plugin cannot reach PostgreSQL, the operator can;
//! - an exporter's gauge gives counts per user name only ([`read_exporter_users`]).
//!
//! What leaves the cluster is OMERO's user name, the client's user agent and times: never a
//! session's UUID (the login's credential: whoever holds it joins the session), never the
//! client's address, nor any other column of OMERO's `experimenter` table.

use std::net::IpAddr;
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use serde::{Deserialize, Serialize};

use super::database::{self, OPEN_SESSIONS_SQL, open_sessions_where};
use super::metrics::sum_metric;
use super::prometheus_text::{self, Line};
use super::{DatabaseCredentials, ProbeError};

/// Where the session counter lists its sessions (beside `COUNTER_PATH`).
pub const COUNTER_LIST_PATH: &str = "/sessions/list";
/// The format of the counter's list; another is refused, naming both.
pub const COUNTER_LIST_FORMAT: &str = "omero-session-counter-list/1";
/// The format of the operator's answer on `/sessions/{namespace}/{cluster}/{node}`.
pub const OPERATOR_SESSIONS_FORMAT: &str = "omero-operator-sessions/1";
/// The most sessions a database listing returns (as the counter lists at most 1000): a person
/// reads the list; the count says how many there are in all.
pub const MAX_DATABASE_LISTED: i64 = 1000;

/// The sessions the database probe counts ([`OPEN_SESSIONS_SQL`]'s rule, the very same text),
/// oldest first, at most `$2`: the owner's OMERO user name (`experimenter.omename`, and no other
/// column of that table), the user agent, when the session started (seconds since the epoch) and
/// its idle and live limits (ms). A LEFT JOIN: a session whose owner has no row still shows.
///
/// OMERO's `session` table has no last access: the server keeps that in memory only (its
/// session cache; the table's columns are those of OMERO's `Session` model, as in
/// `tests/fixtures/omero-sessions-schema.sql`), so a database listing says it is unknown.
/// `started` is a `timestamp` without time zone, read as UTC: the official image's servers run
/// in UTC (inferred, not observed); in another zone the times shift by its offset, nothing else.
pub const LISTED_SESSIONS_SQL: &str = concat!(
    "SELECT e.omename, s.useragent, extract(epoch FROM s.started)::float8, s.timetoidle, s.timetolive \
     FROM session s LEFT JOIN experimenter e ON e.id = s.owner WHERE ",
    open_sessions_where!(),
    " ORDER BY s.started, s.id LIMIT $2"
);

/// One session, as far as its source knows it; what is unknown is `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSession {
    /// OMERO's user name.
    #[serde(default)]
    pub user: Option<String>,
    /// The client's user agent (`OMERO.web`, `OMERO.insight`, ...).
    #[serde(default)]
    pub agent: Option<String>,
    /// When the session started (ISO 8601, UTC).
    #[serde(default)]
    pub started: Option<String>,
    /// When it was last used (ISO 8601, UTC); the database does not keep it.
    #[serde(default)]
    pub last_access: Option<String>,
    /// Seconds since the last access, as of the sample.
    #[serde(default)]
    pub idle_seconds: Option<f64>,
    /// The session's own idle limit in seconds (0: none).
    #[serde(default)]
    pub time_to_idle_seconds: Option<f64>,
    /// The session's own lifetime in seconds (0: none).
    #[serde(default)]
    pub time_to_live_seconds: Option<f64>,
    /// The server did not show this session to the counter's user (no `ReadSession`): only
    /// the user name is known.
    #[serde(default)]
    pub restricted: bool,
}

/// The sessions of one node, and which sample of its source they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionList {
    /// Every session the probe counts: more than `sessions` holds when `truncated`.
    pub count: u64,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub sessions: Vec<ListedSession>,
    /// The counter's sample id; none for the database, read live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// When the sample was taken (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    /// How old the sample was when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
}

/// The counter's `/sessions/list` answer (see the script's docstring). Unknown fields are
/// ignored, so a newer counter may add some.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CounterListAnswer {
    ok: bool,
    error: Option<String>,
    count: Option<u64>,
    #[serde(default)]
    truncated: bool,
    sessions: Option<Vec<ListedSession>>,
    sample: Option<String>,
    taken_at: Option<String>,
    age_seconds: Option<f64>,
}

/// Whether `body` is an answer of the session counter's (its `format` names it), rather than,
/// say, the API server's own error about the proxy.
pub fn is_counter_answer(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("format").and_then(|f| f.as_str()).map(|f| f.starts_with("omero-session-counter"))
        })
        .unwrap_or(false)
}

/// The sessions in a counter's `/sessions/list` answer (HTTP `status` and `body`), or why there
/// are none. A counter from before this list (it answers 404 to the path) is told apart.
pub fn read_counter_list(status: u16, body: &str) -> Result<SessionList, String> {
    let not_a_list = |e: serde_json::Error| {
        let start: String = body.chars().take(80).collect();
        format!("HTTP status {status}: not the session counter's list ({e}): {start:?}")
    };
    // The format first: another format's fields may not fit this one's.
    let value: serde_json::Value = serde_json::from_str(body).map_err(not_a_list)?;
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or_default();
    if format != COUNTER_LIST_FORMAT {
        return Err(format!(
            "the counter answers in format {format:?}, this plugin reads {COUNTER_LIST_FORMAT:?}: the pod runs \
             another operator's script"
        ));
    }
    let answer: CounterListAnswer = serde_json::from_value(value).map_err(not_a_list)?;
    let when = answer.taken_at.as_deref().map_or(String::new(), |t| format!(" (sample taken at {t})"));
    if !answer.ok {
        let error = answer.error.as_deref().unwrap_or("no reason given");
        return Err(format!("the counter could not list its sessions: {error}{when}"));
    }
    if !(200..300).contains(&status) {
        return Err(format!("HTTP status {status} with a list: not a well-formed answer"));
    }
    let sessions = answer.sessions.ok_or("the answer says ok but carries no sessions")?;
    let count = answer.count.ok_or("the answer says ok but carries no count")?;
    Ok(SessionList {
        count,
        truncated: answer.truncated,
        sessions,
        sample: answer.sample,
        taken_at: answer.taken_at,
        age_seconds: answer.age_seconds,
    })
}

/// The operator's answer about one node's sessions: the list, or why there is none (`reason`,
/// one word a program can test, and `error`, in words).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorSessionsAnswer {
    pub format: String,
    pub ok: bool,
    /// The pod whose live OMERO node was listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<SessionList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the operator gives no list, as [`OperatorSessionsAnswer::reason`].
pub mod reasons {
    /// This operator does not watch the cluster's namespace: ask another.
    pub const NOT_WATCHED: &str = "NotWatched";
    /// No such cluster, or no such node in it.
    pub const NOT_FOUND: &str = "NotFound";
    /// The node is not counted by the database probe: the database holds none of its sessions.
    pub const NOT_DATABASE_PROBED: &str = "NotDatabaseProbed";
    /// The node has no running pod with an IP: no live OMERO node to match.
    pub const POD_NOT_RUNNING: &str = "PodNotRunning";
    /// The database (or its password) could not be read.
    pub const DATABASE_FAILED: &str = "DatabaseFailed";
    /// The API server refused or failed a read.
    pub const API_FAILED: &str = "ApiFailed";
    /// Too many listings at once.
    pub const BUSY: &str = "Busy";
}

/// Sessions per OMERO user on an exporter's gauge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSessions {
    /// The `username` label; none on a sample without one.
    pub user: Option<String>,
    pub sessions: u64,
}

/// The sessions per user on an exporter's `metric`, as the metrics probe counts them: every
/// sample but those whose `username` is in `excluded` (root, the exporter's own login), summed
/// per user name, users with none left out; by user name. An absent metric or a sample that is
/// not a count is an error, as for the probe.
pub fn read_exporter_users(text: &str, metric: &str, excluded: &[&str]) -> Result<Vec<UserSessions>, String> {
    let mut users: Vec<Option<String>> = Vec::new();
    for line in prometheus_text::lines(text) {
        let line = line.map_err(|e| format!("not the Prometheus text format: {e}"))?;
        let Line::Sample(sample) = line else { continue };
        if sample.name != metric {
            continue;
        }
        let user = username(&sample.labels).map(str::to_owned);
        if !users.contains(&user) {
            users.push(user);
        }
    }
    if users.is_empty() {
        return Err(format!("no sample of {metric}"));
    }
    users.retain(|u| !u.as_deref().is_some_and(|u| excluded.contains(&u)));
    users.sort();
    let mut counts = Vec::new();
    for user in users {
        let sessions = sum_metric(text, metric, |labels| username(labels) == user.as_deref())?;
        if sessions > 0 {
            counts.push(UserSessions { user, sessions });
        }
    }
    Ok(counts)
}

fn username<'a>(labels: &'a [(&str, std::borrow::Cow<'_, str>)]) -> Option<&'a str> {
    labels.iter().find(|(name, _)| *name == "username").map(|(_, value)| value.as_ref())
}

impl super::Client {
    /// The sessions the database probe counts on the live OMERO node(s) of the pod at `pod_ip`
    /// (at most [`MAX_DATABASE_LISTED`], with the whole count), in one read-only snapshot.
    pub async fn list_database_sessions(
        &self,
        credentials: &DatabaseCredentials<'_>,
        pod_ip: &str,
    ) -> Result<SessionList, ProbeError> {
        let pod_ip = super::parse_pod_ip(pod_ip)?;
        let inner = &*self.inner;
        let statement = inner.timeouts.statement;
        let listed = database::with_connection(&inner.pools, &inner.timeouts, credentials, |client| {
            Box::pin(list(client, pod_ip, statement, MAX_DATABASE_LISTED))
        })
        .await?;
        listed.map_err(|other_hosts| database::not_registered(credentials, pod_ip, &other_hosts))
    }
}

/// The listing and the count of the pod's live node(s), or the hosts the other live nodes
/// publish.
async fn list(
    client: &mut ClientWrapper,
    pod_ip: IpAddr,
    statement_timeout: Duration,
    limit: i64,
) -> Result<Result<SessionList, Vec<String>>, tokio_postgres::Error> {
    // One snapshot for the nodes, the list and the count, so they agree.
    let transaction = database::snapshot(client, statement_timeout).await?;
    let outcome = match database::live_nodes_at(&transaction, pod_ip).await? {
        Ok(nodes) => {
            let ids: Vec<i64> = nodes.iter().map(|n| n.id).collect();
            let rows = transaction.query(LISTED_SESSIONS_SQL, &[&ids, &limit]).await?;
            let count: i64 = transaction.query_one(OPEN_SESSIONS_SQL, &[&ids]).await?.try_get(0)?;
            let mut sessions = Vec::with_capacity(rows.len());
            for row in rows {
                let started: Option<f64> = row.try_get(2)?;
                let to_idle: Option<i64> = row.try_get(3)?;
                let to_live: Option<i64> = row.try_get(4)?;
                sessions.push(ListedSession {
                    user: row.try_get(0)?,
                    agent: row.try_get(1)?,
                    started: started.and_then(iso_time),
                    last_access: None,
                    idle_seconds: None,
                    time_to_idle_seconds: to_idle.map(|ms| ms as f64 / 1000.0),
                    time_to_live_seconds: to_live.map(|ms| ms as f64 / 1000.0),
                    restricted: false,
                });
            }
            // count(*) is never negative.
            let count = u64::try_from(count).unwrap_or_default();
            let truncated = count > sessions.len() as u64;
            Ok(SessionList { count, truncated, sessions, ..SessionList::default() })
        }
        Err(other_hosts) => Err(other_hosts),
    };
    transaction.commit().await?;
    Ok(outcome)
}

/// Seconds since the epoch as ISO 8601 UTC, to the second (what OMERO's clients show).
pub fn iso_time(epoch_seconds: f64) -> Option<String> {
    if !epoch_seconds.is_finite() {
        return None;
    }
    let time = k8s_openapi::jiff::Timestamp::from_second(epoch_seconds.floor() as i64).ok()?;
    Some(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_is_the_counts_rule_and_selects_no_credential_nor_address() {
        // The same rule, from the same text, as the count the drains wait for.
        let (_, rule) = OPEN_SESSIONS_SQL.split_once(" WHERE ").unwrap();
        assert!(LISTED_SESSIONS_SQL.contains(&format!(" WHERE {rule} ORDER BY ")), "{LISTED_SESSIONS_SQL}");
        let selected = LISTED_SESSIONS_SQL.split(" FROM session ").next().unwrap();
        for column in ["uuid", "userip", "email", "firstname", "lastname", "password"] {
            assert!(!selected.contains(column), "{column} is selected: {selected}");
        }
        assert!(LISTED_SESSIONS_SQL.ends_with("LIMIT $2"));
    }

    #[test]
    fn a_counter_list_is_read_and_its_failures_are_errors() {
        let body = r#"{"ageSeconds": 1.2, "count": 3, "excluded": {"own": 1}, "format": "omero-session-counter-list/1",
            "ok": true, "restricted": 1, "sample": "1a2b-7", "takenAt": "2026-01-01T00:00:00.000Z", "truncated": true,
            "sessions": [{"agent": "OMERO.web", "idleSeconds": 2.0, "lastAccess": "2026-01-01T00:00:00.000Z",
                          "restricted": false, "started": "2025-12-31T23:00:00.000Z", "timeToIdleSeconds": 600.0,
                          "timeToLiveSeconds": 0.0, "user": "alice", "somethingNew": 1},
                         {"user": "erin", "restricted": true}]}"#;
        let list = read_counter_list(200, body).unwrap();
        assert_eq!((list.count, list.truncated, list.sessions.len()), (3, true, 2));
        assert_eq!(list.sample.as_deref(), Some("1a2b-7"));
        assert_eq!(list.sessions[0].user.as_deref(), Some("alice"));
        assert_eq!(list.sessions[0].idle_seconds, Some(2.0));
        assert_eq!(
            list.sessions[1],
            ListedSession { user: Some("erin".into()), restricted: true, ..Default::default() }
        );

        let failed = r#"{"error": "RuntimeError: login refused", "format": "omero-session-counter-list/1", "ok": false, "sample": "a-2", "takenAt": "T"}"#;
        assert_eq!(
            read_counter_list(503, failed),
            Err("the counter could not list its sessions: RuntimeError: login refused (sample taken at T)"
                .into())
        );
        let count_only = r#"{"format": "omero-session-counter/1", "ok": true, "sessions": 3}"#;
        assert!(
            read_counter_list(200, count_only).unwrap_err().contains("format \"omero-session-counter/1\"")
        );
        assert!(
            read_counter_list(404, "<html>404</html>").unwrap_err().starts_with("HTTP status 404: not the")
        );
        assert!(is_counter_answer(failed) && is_counter_answer(count_only));
        assert!(!is_counter_answer(r#"{"kind": "Status", "code": 503}"#) && !is_counter_answer("oops"));
    }

    #[test]
    fn exporter_users_are_counted_as_the_probe_counts_them() {
        let text = "\
omero_sessions_active{username=\"root\"} 2
omero_sessions_active{username=\"monitor\"} 1
omero_sessions_active{username=\"bob\",agent=\"OMERO.web\"} 1
omero_sessions_active{username=\"bob\",agent=\"OMERO.insight\"} 2
omero_sessions_active{username=\"alice\"} 3
omero_sessions_active{username=\"carol\"} 0
";
        let users = read_exporter_users(text, "omero_sessions_active", &["root", "monitor"]).unwrap();
        let expected = [("alice", 3), ("bob", 3)]
            .map(|(user, sessions)| UserSessions { user: Some(user.into()), sessions })
            .to_vec();
        assert_eq!(users, expected);
        let total: u64 = users.iter().map(|u| u.sessions).sum();
        assert_eq!(
            total,
            super::super::read_sessions(text, "omero_sessions_active", &["root", "monitor"])
                .unwrap()
                .sessions,
            "the same total as the probe's"
        );
        assert_eq!(
            read_exporter_users("omero_sessions_active 2\n", "omero_sessions_active", &["root"]).unwrap(),
            [UserSessions { user: None, sessions: 2 }]
        );
        assert_eq!(
            read_exporter_users("other 1\n", "omero_sessions_active", &["root"]),
            Err("no sample of omero_sessions_active".into())
        );
        assert!(
            read_exporter_users("omero_sessions_active{username=\"a\"} 1.5\n", "omero_sessions_active", &[])
                .is_err()
        );
    }

    #[test]
    fn times_read_as_iso_utc() {
        assert_eq!(iso_time(1_767_225_600.7).as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(iso_time(f64::NAN), None);
    }
}
