//! The `counter` session probe over real HTTP: against a small server in the test that replays
//! answers recorded from the script (`tests/fixtures/counter/`: ok, failure, stale), and against
//! the real script's own HTTP server run by `python3` with a stand-in session source (there is no
//! OMERO server here). Each binds the counter's fixed port on its own loopback address.

use std::time::Duration;

use omero_operator::api::{SessionProbe, SessionProbeKind};
use omero_operator::omero::{COUNTER_PORT, Client as OmeroClient, ProbeTarget, ProbeTimeouts, SessionCount};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OK: &str = include_str!("fixtures/counter/ok.json");
const FAILURE: &str = include_str!("fixtures/counter/failure.json");
const STALE: &str = include_str!("fixtures/counter/stale.json");

/// Serves `body` with `status` on `ip`:9450 to every request.
async fn serve(ip: &'static str, status: &'static str, body: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind((ip, COUNTER_PORT)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(
                    head.starts_with(b"GET /sessions HTTP/1.1\r\n"),
                    "{}",
                    String::from_utf8_lossy(&head)
                );
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    })
}

fn probe() -> SessionProbe {
    SessionProbe { kind: SessionProbeKind::Counter, ..SessionProbe::default() }
}

async fn count(ip: &str) -> Result<Option<SessionCount>, String> {
    let client =
        OmeroClient::new(ProbeTimeouts { total: Duration::from_secs(5), ..ProbeTimeouts::default() });
    let probe = probe();
    client.count(&ProbeTarget { pod_ip: ip, probe: &probe, database: None }).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn recorded_answers_ok_failure_and_stale() {
    let servers = [
        serve("127.0.0.91", "200 OK", OK).await,
        serve("127.0.0.92", "503 Service Unavailable", FAILURE).await,
        serve("127.0.0.93", "200 OK", STALE).await,
    ];
    assert_eq!(
        count("127.0.0.91").await,
        Ok(Some(SessionCount { sessions: 2, sample: Some("5e1f2a9c-1".into()) }))
    );
    let failure = count("127.0.0.92").await.unwrap_err();
    assert!(failure.starts_with("session counter http://127.0.0.92:9450/sessions: the counter could not count: RuntimeError: login"), "{failure}");
    assert!(failure.contains("Password check failed"), "{failure}");
    let stale = count("127.0.0.93").await.unwrap_err();
    assert!(stale.contains("stale: its last sample is 85s old"), "{stale}");
    // Nothing listening (the counter restarting): an error, never zero.
    let refused = count("127.0.0.94").await.unwrap_err();
    assert!(refused.starts_with("session counter http://127.0.0.94:9450/sessions:"), "{refused}");
    for server in servers {
        server.abort();
    }
}

/// The real script's HTTP server, its real sampler and counting rule, fed session records
/// shaped like OMERO's by a stand-in source; read by the operator's real probe. The counter
/// samples only when asked: nothing before the first probe; two probes inside its 5 s floor read
/// one sample (one id); a probe after the floor gets a new sample. The script's monotonic clock
/// is the test's: each line on its stdin moves it 10 s on.
#[tokio::test]
async fn the_real_script_samples_when_the_operators_probe_asks() {
    let program = r#"
import sys, threading, time
sys.path.insert(0, "counter")
import omero_session_counter as c
S = c.Session
sessions = [S("alice", uuid="a", agent="OMERO.web"), S("bob", uuid="b", agent="OMERO.insight"),
            S("root", uuid="p", agent="Python service"), S("monitor", uuid="own", agent=c.AGENT),
            S("carol", uuid="s", share=True)]
calls = []
def source():
    calls.append(1)
    return sessions, "own", "monitor"
now = [0.0]
sampler = c.Sampler(source, min_interval=5.0, monotonic=lambda: now[0])
server = c.make_server(sampler, 9450, host="127.0.0.95")
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(0.2)
print("ready %d" % len(calls), flush=True)
while sys.stdin.readline():
    now[0] += 10.0
    print("samples %d" % len(calls), flush=True)
"#;
    let mut child = match tokio::process::Command::new("python3")
        .args(["-c", program])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("python3 is needed for this test (scripts/test.sh runs on a machine with it): {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "ready 0", "no probe, no sample");
    let first = count("127.0.0.95").await.unwrap().unwrap();
    assert_eq!(first.sessions, 2, "alice and bob; not root, its own login or the share");
    assert_eq!(count("127.0.0.95").await.unwrap().unwrap().sample, first.sample, "the same sample");
    // 10 s later: past the floor, the next probe is a new sample.
    stdin.write_all(b"\n").await.unwrap();
    line.clear();
    out.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "samples 1", "one sample for the two probes");
    let second = count("127.0.0.95").await.unwrap().unwrap();
    assert_ne!(second.sample, first.sample, "a new sample has a new id");
    assert!(
        first.sample.as_deref().unwrap().ends_with("-1") && second.sample.as_deref().unwrap().ends_with("-2")
    );
    stdin.write_all(b"\n").await.unwrap();
    line.clear();
    out.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "samples 2");
    drop(stdin);
    child.wait().await.unwrap();
}
