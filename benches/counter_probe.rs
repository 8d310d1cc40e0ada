//! The operator's `counter` probe against a recorded answer: parsing alone, and the whole probe
//! (HTTP GET over loopback to a server replaying the answer, then parsing). Prints figures.
//!
//!   cargo bench --bench counter_probe

use std::time::{Duration, Instant};

use omero_operator::api::{SessionProbe, SessionProbeKind};
use omero_operator::omero::{
    COUNTER_PORT, Client, MAX_SAMPLE_AGE, ProbeTarget, ProbeTimeouts, read_counter_answer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OK: &str = include_str!("../tests/fixtures/counter/ok.json");

fn main() {
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(read_counter_answer(200, std::hint::black_box(OK), MAX_SAMPLE_AGE).unwrap());
    }
    let parse = start.elapsed() / n;
    println!("counter answer parse ({} bytes): {:.2} µs each over {n}", OK.len(), parse.as_secs_f64() * 1e6);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.96", COUNTER_PORT)).await.unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{OK}",
                        OK.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        let client = Client::new(ProbeTimeouts { total: Duration::from_secs(5), ..ProbeTimeouts::default() });
        let probe = SessionProbe { kind: SessionProbeKind::Counter, ..SessionProbe::default() };
        let target = ProbeTarget { pod_ip: "127.0.0.96", probe: &probe, database: None };
        let rounds = 2_000u32;
        let mut times = Vec::with_capacity(rounds as usize);
        for _ in 0..rounds {
            let t = Instant::now();
            client.count(&target).await.unwrap().unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "counter probe over loopback HTTP (new connection each, as in the operator): median {:.0} µs, p99 {:.0} µs over {rounds}",
            pct(50),
            pct(99)
        );
    });
}
