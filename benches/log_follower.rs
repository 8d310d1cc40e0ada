//! The `omero-logs` container's memory and CPU while OMERO logs 1,000 records a second.
//!
//! The container's command is taken from a rendered Deployment (`render::render`), so this runs
//! exactly what ships: the supervising shell loop with the shipped follower (comment lines left
//! out) as its `$1`, and the container's own environment, with two changes only: this machine's
//! `python3` for the image's venv Python, and the two directories (`OMERO_LOGS_DIR`,
//! `OMERO_LOGS_STATE`) moved into a temporary directory. Any `OMERO_LOGS_*` of the caller's
//! environment is removed, so the follower runs with the defaults the container runs with.
//!
//! A writer plays OMERO: 1,000 records a second into an empty `var/log` (the pod's fresh
//! emptyDir), 7 in 10 to `Blitz-0.log` (logback's layout, about 150 bytes a line, 1 record in
//! 50 an ERROR with a 20-line Java stack trace), 1 in 10 each to `Tables-0.log` and
//! `Processor-0.log` (omero-py's layout) and `master.err` (Ice's). Each record is one `write`,
//! as logback (immediateFlush) and Python's FileHandler (a flush a record) write them. Halfway,
//! `Blitz-0.log` is rotated as logback does it: renamed to `Blitz-0.log.1`, a new file opened.
//!
//! Every record carries its sequence number, and 1 in 7 the instant it was written: a reader
//! thread on the container's stdout checks that every record came out exactly once, as one line,
//! under its own file's name, and measures the lag from write to line. The follower's process
//! is sampled every second from /proc (VmRSS, VmHWM, utime+stime). When the writer is done the
//! container gets SIGTERM, as the kubelet sends it when the pod stops, and the time it takes to
//! exit is measured (the follower reads on until the files have been quiet for 5 s).
//!
//!     cargo bench --bench log_follower                           # 60 s of writes
//!     OMERO_BENCH_LOG_SECONDS=20 cargo bench --bench log_follower
//!
//! Linux only (/proc). Prints figures; asserts nothing about time.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Container;
use omero_operator::{
    api::{OmeroCluster, SERVER_LOGS_CONTAINER},
    render::render,
};

/// Records written a second (the issue's "1,000 lines a second").
const RATE: u64 = 1_000;
/// About the length of a logback line of OMERO's (without its line break).
const LINE_BYTES: usize = 150;
/// 1 record in this many (all in Blitz-0.log) is an ERROR with a stack trace.
const ERROR_EVERY: u64 = 50;
/// The lines of that trace after the record's first line.
const TRACE_LINES: usize = 20;
/// 1 record in this many carries the instant it was written, for the lag. 7 is prime to the
/// 10-record cycle of files, so every file has timed records.
const TIMED_EVERY: u64 = 7;

/// The files written, and which one record `seq` goes to: 7 in 10 to Blitz-0.log.
const FILES: [&str; 4] = ["Blitz-0.log", "Tables-0.log", "Processor-0.log", "master.err"];
fn file_of(seq: u64) -> usize {
    match seq % 10 {
        0..=6 => 0,
        7 => 1,
        8 => 2,
        _ => 3,
    }
}
fn is_error(seq: u64) -> bool {
    // seq % 50 == 0 implies seq % 10 == 0: always a Blitz-0.log record.
    seq.is_multiple_of(ERROR_EVERY)
}

/// A one-node cluster, only to render its pod's `omero-logs` container.
fn logs_container() -> Container {
    let yaml = r#"apiVersion: omero.openmicroscopy.org/v1alpha1
kind: OmeroCluster
metadata: {name: bench, namespace: imaging, uid: 0a1b2c3d-0000-4000-8000-000000000001}
spec:
  image: openmicroscopy/omero-server:5.6.11
  database:
    host: db.example
    passwordSecret: {name: omero-db, key: password}
  repository: {claimName: omero-repo}
  nodes:
    - name: rw
"#;
    let cluster: OmeroCluster = serde_saphyr::from_str(yaml).expect("bench cluster parses");
    omero_operator::api::validate(&cluster).expect("bench cluster is valid");
    let mut desired = render(&cluster);
    let pod = desired.deployments.swap_remove(0).spec.unwrap().template.spec.unwrap();
    pod.containers.into_iter().find(|c| c.name == SERVER_LOGS_CONTAINER).expect("an omero-logs container")
}

// --- What OMERO writes -------------------------------------------------------------------------

/// A wall-clock-like time `ms` after 13:00:00 for the records' timestamps (their values do not
/// matter to the follower, only their shape).
fn clock(ms: u64) -> (u64, u64, u64, u64) {
    let s = 13 * 3600 + ms / 1000;
    (s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}
fn omero_stamp(ms: u64) -> String {
    // logback's %date and Python's asctime alike.
    let (h, m, s, ms) = clock(ms);
    format!("2024-01-02 {h:02}:{m:02}:{s:02},{ms:03}")
}
fn ice_stamp(ms: u64) -> String {
    let (h, m, s, ms) = clock(ms);
    format!("01/02/24 {h:02}:{m:02}:{s:02}.{ms:03}")
}

const FILLER: &str = "Meth:\tinterface ome.api.IQuery.findAllByQuery Args:\t[select i from Image i \
    join fetch i.details.owner join fetch i.details.group where i.id in (:ids), PARAMS:ids=[51, 52, 53] \
    ] Rslt:\t(ome.model.core.Image:Id_51, ome.model.core.Image:Id_52)";

/// `line` filled up to `LINE_BYTES` from `FILLER`.
fn padded(mut line: String) -> String {
    let need = LINE_BYTES.saturating_sub(line.len()).min(FILLER.len());
    line.push_str(&FILLER[..need]);
    line
}

/// Record `seq` as its file gets it, with its line break(s). `sent_us` (microseconds since the
/// bench's origin) is embedded when given. The reader finds both by their `seq=`/`sent_us=`.
fn record(seq: u64, ms: u64, sent_us: Option<u64>) -> String {
    let mark = match sent_us {
        Some(us) => format!("seq={seq} sent_us={us}"),
        None => format!("seq={seq}"),
    };
    let stamp = omero_stamp(ms);
    let mut text = match file_of(seq) {
        0 if is_error(seq) => {
            let mut text = format!(
                "{stamp} ERROR [ome.services.util.ServiceHandler] (l.Server-7) {mark} Internal exception"
            );
            text.push_str("\njava.lang.IllegalStateException: could not load the image");
            for k in 1..TRACE_LINES - 2 {
                text.push_str(&format!("\n\tat ome.services.Frame{k}.call(Frame{k}.java:{})", 10 * k));
            }
            text.push_str("\nCaused by: org.postgresql.util.PSQLException: An I/O error occurred");
            text.push_str(
                "\n\tat org.postgresql.core.v3.QueryExecutorImpl.execute(QueryExecutorImpl.java:1)",
            );
            text
        }
        0 => padded(format!("{stamp} INFO  [ome.services.util.ServiceHandler] (l.Server-7) {mark} ")),
        // omero-py's LOGFORMAT: "%(asctime)s %(levelname)-5.5s [%(name)40s] (%(threadName)-10s) %(message)s"
        1 => padded(format!("{stamp} INFO  [{:>40}] ({:<10}) {mark} ", "omero.tables.TablesI", "Thread-12")),
        2 => padded(format!(
            "{stamp} INFO  [{:>40}] ({:<10}) {mark} ",
            "omero.processor.ProcessorI", "Thread-3"
        )),
        _ => padded(format!("-! {} warning: {mark} ", ice_stamp(ms))),
    };
    text.push('\n');
    text
}

struct Written {
    records: u64,
    bytes: u64,
    /// When Blitz-0.log was rotated, after the writer's start.
    rotated_at: Duration,
    /// How long the writes took (the rate is kept by catching up, so close to the duration).
    took: Duration,
}

/// Writes `RATE` records a second for `seconds` into `log_dir`, rotating Blitz-0.log halfway.
/// `written` is how many so far, for the progress lines.
fn write_logs(log_dir: &Path, seconds: u64, origin: Instant, written: &AtomicU64) -> Written {
    let open = |name: &str| OpenOptions::new().create(true).append(true).open(log_dir.join(name)).unwrap();
    let mut files: Vec<File> = FILES.iter().map(|name| open(name)).collect();
    let total = RATE * seconds;
    let mut bytes = 0;
    let mut rotated_at = Duration::ZERO;
    let start = Instant::now();
    let mut seq = 0;
    while seq < total {
        // As many records as are due by now: a steady 1,000 a second however long a sleep took.
        let due = ((start.elapsed().as_secs_f64() * RATE as f64) as u64 + 1).min(total);
        while seq < due {
            if seq == total / 2 {
                // logback's rollover: close, rename to .1, open a new file under the name.
                drop(std::mem::replace(&mut files[0], File::open("/dev/null").unwrap()));
                fs::rename(log_dir.join(FILES[0]), log_dir.join("Blitz-0.log.1")).unwrap();
                files[0] = open(FILES[0]);
                rotated_at = start.elapsed();
            }
            let sent_us = seq.is_multiple_of(TIMED_EVERY).then(|| origin.elapsed().as_micros() as u64);
            let text = record(seq, start.elapsed().as_millis() as u64, sent_us);
            // One write a record, as OMERO's loggers flush each one.
            files[file_of(seq)].write_all(text.as_bytes()).unwrap();
            bytes += text.len() as u64;
            seq += 1;
            written.store(seq, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(1));
    }
    Written { records: total, bytes, rotated_at, took: start.elapsed() }
}

// --- What the container writes -----------------------------------------------------------------

#[derive(Default)]
struct Read {
    /// How many times each record's line came out, by sequence number.
    seen: Vec<u32>,
    /// Lines under another file's name than the record was written to.
    wrong_file: u64,
    /// ERROR records whose trace did not come out joined as one line, or other records with a
    /// line break in them.
    bad_joins: u64,
    /// The follower's own lines ("omero-logs: ..."), and the supervisor's.
    notes: Vec<String>,
    /// Lines that are neither a record nor a note (e.g. a trace line split off its record).
    unexpected: Vec<String>,
    /// Write-to-read lag of the timed records, in microseconds.
    lags_us: Vec<u64>,
    /// When the last record line was read, since the origin.
    last_at: Duration,
}

/// Reads the container's stdout to its end. Signals `ready` at its first line (the follower's
/// "following ..." note), and counts record lines in `count`.
fn read_lines(
    stdout: impl std::io::Read,
    origin: Instant,
    ready: mpsc::Sender<()>,
    count: &AtomicU64,
) -> Read {
    let mut read = Read::default();
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            return read;
        }
        let now = origin.elapsed();
        let _ = ready.send(());
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches('\n');
        let Some((file, text)) = line.split_once(": ") else {
            read.unexpected.push(line.to_owned());
            continue;
        };
        let number = |key: &str| -> Option<u64> {
            let at = text.find(key)? + key.len();
            let digits = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse().ok()
        };
        let Some(seq) = number(" seq=") else {
            if file == "omero-logs" {
                read.notes.push(line.to_owned());
            } else {
                read.unexpected.push(line.to_owned());
            }
            continue;
        };
        let seq_index = seq as usize;
        if seq_index >= read.seen.len() {
            read.seen.resize(seq_index + 1, 0);
        }
        read.seen[seq_index] += 1;
        count.fetch_add(1, Ordering::Relaxed);
        read.last_at = now;
        if file != FILES[file_of(seq)] {
            read.wrong_file += 1;
        }
        // A record's line breaks come out written as the two characters `\n`.
        let breaks = text.matches("\\n").count();
        let joined = if is_error(seq) {
            breaks == TRACE_LINES && text.ends_with("(QueryExecutorImpl.java:1)")
        } else {
            breaks == 0
        };
        if !joined {
            read.bad_joins += 1;
        }
        if let Some(sent) = number(" sent_us=") {
            read.lags_us.push((now.as_micros() as u64).saturating_sub(sent));
        }
    }
}

// --- The follower's process, from /proc -------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces): index 0 is
/// field 3 (state), so field N is at N - 3.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().map(str::to_owned).collect())
}

fn sample(pid: u32) -> Option<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    let stat = stat_fields(pid)?;
    let ticks = stat[14 - 3].parse::<u64>().ok()? + stat[15 - 3].parse::<u64>().ok()?;
    Some(Sample { rss_kib: kib("VmRSS:")?, hwm_kib: kib("VmHWM:")?, ticks })
}

/// The supervisor's Python child (the follower): its pid changes only if the loop restarted it.
fn follower_of(shell: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find(
        |&pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.starts_with("python")
                && stat_fields(pid).is_some_and(|f| f.get(4 - 3).is_some_and(|p| *p == shell.to_string()))
        },
    )
}

fn clock_ticks() -> (f64, &'static str) {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    match out.and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok()) {
        Some(hz) => (hz, "getconf CLK_TCK"),
        None => (100.0, "assumed, getconf failed"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let seconds: u64 = std::env::var("OMERO_BENCH_LOG_SECONDS").ok().map_or(60, |s| {
        s.parse().unwrap_or_else(|_| panic!("OMERO_BENCH_LOG_SECONDS={s}: whole seconds expected"))
    });
    let (hz, hz_source) = clock_ticks();

    // The container exactly as rendered; only the Python and the two directories change.
    let container = logs_container();
    let mut command = container.command.clone().expect("a command");
    let supervisor = &command[2];
    let python = supervisor
        .find(" -c \"$1\"")
        .and_then(|at| supervisor[..at].split_whitespace().next_back())
        .expect("the supervisor runs `<python> -c \"$1\"`")
        .to_owned();
    command[2] = supervisor.replace(&python, "python3");

    let root = std::env::temp_dir().join(format!("omero-bench-logs-{}", std::process::id()));
    let log_dir = root.join("var/log");
    let state_dir = root.join("state");
    fs::create_dir_all(&log_dir).unwrap();
    fs::create_dir_all(&state_dir).unwrap();

    let mut shell = Command::new(&command[0]);
    shell.args(&command[1..]).stdout(Stdio::piped());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OMERO_LOGS_")) {
        shell.env_remove(name);
    }
    let mut env_shown = Vec::new();
    for var in container.env.iter().flatten() {
        let value = var.value.clone().unwrap_or_default();
        let value = match var.name.as_str() {
            "OMERO_LOGS_DIR" => log_dir.display().to_string(),
            "OMERO_LOGS_STATE" => {
                let file = Path::new(&value).file_name().expect("a state file name");
                state_dir.join(file).display().to_string()
            }
            _ => value,
        };
        env_shown.push(format!("{}={value}", var.name));
        shell.env(&var.name, value);
    }
    let python_version = Command::new("python3")
        .arg("--version")
        .output()
        .map_or_else(|e| format!("python3: {e}"), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    println!(
        "log follower: {seconds} s at {RATE} records/s; the rendered omero-logs command ({} bytes of \
         shipped script) with {python_version} for {python}",
        command[4].len()
    );
    println!("  env: {}", env_shown.join(" "));

    let origin = Instant::now();
    let mut child = shell.spawn().expect("sh runs");
    let shell_pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let read_count = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = {
        let count = Arc::clone(&read_count);
        thread::spawn(move || read_lines(stdout, origin, ready_tx, &count))
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the follower's first line within 10 s");
    let follower = follower_of(shell_pid).expect("the follower's python process");
    let first = sample(follower).expect("/proc of the follower");

    let written_count = Arc::new(AtomicU64::new(0));
    let writer = {
        let (log_dir, written) = (log_dir.clone(), Arc::clone(&written_count));
        thread::spawn(move || write_logs(&log_dir, seconds, origin, &written))
    };
    let writes_began = Instant::now();

    // One sample a second while the writer writes.
    let mut samples = vec![first];
    let mut restarts = 0;
    let mut tick = 1;
    while !writer.is_finished() {
        let next = writes_began + Duration::from_secs(tick);
        thread::sleep(next.saturating_duration_since(Instant::now()));
        if follower_of(shell_pid) != Some(follower) {
            restarts += 1;
        }
        if let Some(s) = sample(follower) {
            samples.push(s);
        }
        if tick % 10 == 0 {
            let last = samples.last().unwrap();
            println!(
                "  {tick:>4} s: written {}, read {}, follower RSS {:.1} MiB, CPU {:.1} s",
                written_count.load(Ordering::Relaxed),
                read_count.load(Ordering::Relaxed),
                mib(last.rss_kib),
                (last.ticks - first.ticks) as f64 / hz
            );
        }
        tick += 1;
    }
    let written = writer.join().unwrap();
    let last = sample(follower).unwrap_or(*samples.last().unwrap());
    let shell_sample = sample(shell_pid).unwrap_or_default();

    // The pod stops (OMERO has stopped writing): SIGTERM to the container's PID 1, the shell.
    let unread_at_term = written.records.saturating_sub(read_count.load(Ordering::Relaxed));
    let term = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &shell_pid.to_string()]).status().unwrap();
    assert!(killed.success(), "kill -TERM {shell_pid}");
    let status = child.wait().unwrap();
    let exit_took = term.elapsed();
    let read = reader.join().unwrap();
    let state_bytes =
        fs::read_dir(&state_dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum::<u64>();
    fs::remove_dir_all(&root).unwrap();

    // Every record exactly once?
    let records_read: u64 = read.seen.iter().map(|&n| u64::from(n)).sum();
    let missing: Vec<u64> =
        (0..written.records).filter(|&s| read.seen.get(s as usize).is_none_or(|&n| n == 0)).collect();
    let duplicated = read.seen.iter().filter(|&&n| n > 1).count();
    let beyond = read.seen.len().saturating_sub(written.records as usize);

    let wall = written.took.as_secs_f64();
    let cpu = (last.ticks - first.ticks) as f64 / hz;
    let during = &samples[1..];
    let mean_rss = during.iter().map(|s| s.rss_kib).sum::<u64>() as f64 / during.len().max(1) as f64;
    let peak_sampled = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let mut lags = read.lags_us.clone();
    lags.sort_unstable();

    println!(
        "  written: {} records ({:.1} MB, {:.0} records/s over {wall:.1} s); Blitz-0.log rotated at {:.1} s",
        written.records,
        written.bytes as f64 / 1e6,
        written.records as f64 / wall,
        written.rotated_at.as_secs_f64()
    );
    println!(
        "  read: {records_read} records ({:.0} lines/s, last one {:.2} s after the writes began); {} missing{}, \
         {duplicated} duplicated, {beyond} unknown, {} under the wrong file, {} not one line as written, \
         {} other lines",
        records_read as f64 / (read.last_at.saturating_sub(writes_began - origin)).as_secs_f64(),
        (read.last_at.saturating_sub(writes_began - origin)).as_secs_f64(),
        missing.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (first {:?})", &missing[..missing.len().min(5)])
        },
        read.wrong_file,
        read.bad_joins,
        read.unexpected.len(),
    );
    for line in read.unexpected.iter().take(3) {
        println!("    other line: {}", line.chars().take(160).collect::<String>());
    }
    for note in &read.notes {
        println!("    note: {note}");
    }
    println!(
        "  follower (python) RSS: peak {:.1} MiB (VmHWM; {:.1} in the samples), mean {:.1} MiB over {} samples, \
         {:.1} MiB at start; the shell loop {:.1} MiB more",
        mib(last.hwm_kib),
        mib(peak_sampled),
        mean_rss / 1024.0,
        during.len(),
        mib(first.rss_kib),
        mib(shell_sample.rss_kib)
    );
    // Whether it levels off: a steady climb at a steady rate would reach the limit in time.
    // Compared from the 10th sample on, past the first files' opening and first buffers.
    if samples.len() > 20 {
        let (early, late) = (samples[10], samples[samples.len() - 1]);
        let minutes = (samples.len() - 1 - 10) as f64 / 60.0;
        let grew = mib(late.rss_kib) - mib(early.rss_kib);
        println!(
            "  follower RSS growth after the first 10 s: {grew:+.1} MiB ({:+.2} MiB/min)",
            grew / minutes
        );
    }
    println!(
        "  follower CPU: {cpu:.2} s over the {wall:.1} s of writes = {:.1}% of one core ({:.2} s at start-up; \
         {hz} ticks/s, {hz_source}); restarted {restarts} times",
        100.0 * cpu / wall,
        first.ticks as f64 / hz
    );
    println!(
        "  lag write -> line: median {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} timed records",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
        lags.len()
    );
    println!(
        "  SIGTERM: exited in {:.2} s ({status}), {unread_at_term} records not yet read at SIGTERM; state file {state_bytes} bytes",
        exit_took.as_secs_f64()
    );
    let resources = container.resources.unwrap_or_default();
    let show = |m: Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        m.unwrap_or_default().iter().map(|(k, v)| format!("{k} {}", v.0)).collect::<Vec<_>>().join(", ")
    };
    println!(
        "  the container's resources (rendered default): requests {}; limits {}",
        show(resources.requests),
        show(resources.limits)
    );
}
