"""The session counter's load on a read-only node's database: queries per second, sampling
continuously (every 5 s, as the counter did) against sampling on demand (as it does now).

Run by hand from the repository's top directory; it prints a table (about a minute)::

    python3 counter/bench_counter_load.py

The stand-in OMERO (``ReadOnlyNode``) is a read-only-database node: its sessions live in
memory (omero-server ``SessionProviderInMemory``) and none is in the database, which holds OMERO's
``session`` and ``share`` tables filled with other nodes' rows. It answers a
``CurrentSessionsRequest`` as omero-blitz ``CurrentSessionsRequestI.step`` does through
omero-server ``SessionProviderWrapper`` (database provider first, then memory), for every
session it holds (people's, Processor-0's and Tables-0's root sessions, the counter's own):

1. ``findSessionIdByUuid``: ``SessionProviderInDb`` runs ``findByString(Session, "uuid", ...)``,
   which misses; the memory provider finds the id;
2. ``findSessionById``: ``SessionProviderInDb`` runs ``find(Share, id)`` (the share look-up),
3. then ``findByQuery("select s from Session s left outer join fetch s.sudoer left outer join
   fetch s.annotationLinks ... where s.id = :id")``, which misses; memory finds the session.

So three queries per session per sample, each run on an SQLite database in memory and counted
by SQLite's own statement trace (``set_trace_callback``), not by the stand-in. The paths are
read from OMERO's source, not observed on a server; SQLite in process is much cheaper per query
than PostgreSQL over the network, so the time per sample printed is a floor, not OMERO's.

The operator probes ``GET /sessions`` over real HTTP, against the counter's real ``Sampler``
and HTTP server, at its serving interval (60 s: ``sessionProbe.servingInterval``'s default,
``src/api/spec.rs`` ``DEFAULT_SERVING_PROBE_INTERVAL``) or its draining interval (15 s:
``DEFAULT_PROBE_INTERVAL``), and, to show what the 5 s floor caps, every second. Time is
simulated: the sampler's monotonic clock moves in 1 s steps over ``SECONDS`` (10 minutes, so a
60 s probe is averaged over ten of them). Continuous sampling is the counter as it was: its
``sample()`` every 5 s whatever the probes (a probe then read the last sample and cost nothing).
"""

import json
import os
import sqlite3
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import omero_session_counter as counter  # noqa: E402

SECONDS = 600
CONTINUOUS_INTERVAL = 5
SERVING_PROBE = 60
DRAINING_PROBE = 15
# Rows of other nodes' sessions in the database: the look-ups go through real indexes.
HISTORY_ROWS = 100_000

SCHEMA = """
create table experimenter (id integer primary key, omename text unique);
create table node (id integer primary key, uuid text unique);
create table session (id integer primary key, uuid text unique not null, node integer,
    owner integer not null, sudoer integer, started integer, closed integer,
    timetoidle integer, timetolive integer, useragent text);
create table share (session_id integer primary key references session (id), data blob not null);
create table annotation (id integer primary key, textvalue text);
create table sessionannotationlink (id integer primary key, parent integer, child integer);
create index sessionannotationlink_parent on sessionannotationlink (parent);
"""


class ReadOnlyNode:
    """The stand-in OMERO read-only node; calling it is one ``CurrentSessionsRequest`` answered
    to the counter (``(sessions, own_uuid, own_user)``, the counter's source)."""

    def __init__(self, people, history=HISTORY_ROWS):
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.db.executemany("insert into experimenter values (?, ?)",
                            [(0, "root"), (1, "guest"), (2, "monitor")]
                            + [(10 + i, "user%d" % i) for i in range(1000)])
        self.db.executemany(
            "insert into session (id, uuid, node, owner, started, closed, timetoidle, timetolive,"
            " useragent) values (?, ?, 1, ?, 0, ?, 600000, 0, 'OMERO.web')",
            [(i, "history-%d" % i, 10 + i % 1000, None if i % 50 else 1) for i in range(1, history)])
        self.db.executemany("insert into share values (?, x'00')",
                            [(i,) for i in range(1, history, 97)])
        self.db.commit()
        self.queries = 0
        self.db.set_trace_callback(self.traced)
        # In memory, as SessionProviderInMemory keeps them: negative ids (executeNextSessionId).
        self.memory = {}
        self.own_uuid = "counter-own"
        sessions = ([("user%d" % (i % 1000), "person-%d" % i, "OMERO.web") for i in range(people)]
                    + [("root", "processor-0", "Python service"),
                       ("root", "tables-0", "Python service"),
                       ("monitor", self.own_uuid, counter.AGENT)])
        now = int(time.time() * 1000)
        for n, (user, uuid, agent) in enumerate(sessions, start=1):
            self.memory[uuid] = counter.Session(user=user, uuid=uuid, agent=agent,
                                                started=now, last_access=now,
                                                time_to_idle=600_000)
            self.memory[uuid].id = -n
        self.by_id = {s.id: s for s in self.memory.values()}

    def traced(self, statement):
        self.queries += 1

    def current_sessions(self):
        found = []
        for uuid in list(self.memory):
            # findSessionIdByUuid: SessionProviderInDb.findByString, then memory.
            row = self.db.execute("select id from session where uuid = ?", (uuid,)).fetchone()
            session_id = row[0] if row else self.memory[uuid].id
            # findSessionById: SessionProviderInDb's share look-up and findByQuery, then memory.
            share = self.db.execute(
                "select s.id from share sh join session s on s.id = sh.session_id"
                " where sh.session_id = ?", (session_id,)).fetchone()
            row = self.db.execute(
                "select s.*, su.*, l.*, a.* from session s"
                " left outer join experimenter su on su.id = s.sudoer"
                " left outer join sessionannotationlink l on l.parent = s.id"
                " left outer join annotation a on a.id = l.child"
                " where s.id = ?", (session_id,)).fetchone()
            if share is None and row is None:
                found.append(self.by_id[session_id])
        return found

    def __call__(self):
        return self.current_sessions(), self.own_uuid, "monitor"


def simulate(people, mode, probe_every, seconds=SECONDS, history=HISTORY_ROWS):
    """Queries, samples and the probes' answers (parsed) over ``seconds`` simulated: ``mode`` is
    ``continuous`` or ``on-demand``; the operator probes every ``probe_every`` seconds (``None``:
    never)."""
    node = ReadOnlyNode(people, history=history)
    now = [0.0]
    sampler = counter.Sampler(node, min_interval=counter.DEFAULT_MIN_INTERVAL,
                              monotonic=lambda: now[0])
    server = counter.make_server(sampler, 0, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d/sessions" % server.server_address[1]
    before = node.queries
    answers = []
    try:
        for t in range(seconds):
            now[0] = float(t)
            if mode == "continuous" and t % CONTINUOUS_INTERVAL == 0:
                sampler.sample()
            if probe_every and t % probe_every == 0:
                with urllib.request.urlopen(url, timeout=30) as response:
                    answers.append(json.loads(response.read()))
    finally:
        server.shutdown()
        server.server_close()
    return node.queries - before, sampler.number, answers


def sample_time(people, repeat=5):
    """Wall time of one sample (the stand-in's three SQLite queries per session included)."""
    node = ReadOnlyNode(people)
    sampler = counter.Sampler(node)
    started = time.perf_counter()
    for _ in range(repeat):
        sampler.sample()
    return (time.perf_counter() - started) / repeat


def main():
    counter.log = lambda message: None
    print("Database queries per second on one read-only node, over %d simulated minutes"
          % (SECONDS // 60))
    print("(people's sessions, plus Processor-0's, Tables-0's and the counter's own login)\n")
    header = "%8s  %-26s  %13s  %13s  %s" % (
        "sessions", "operator probes", "continuous 5s", "on demand", "samples (continuous / on demand)")
    print(header)
    print("-" * len(header))
    for people in (50, 500):
        for label, every in (("every 60 s (serving)", SERVING_PROBE),
                             ("every 15 s (draining)", DRAINING_PROBE),
                             ("every 1 s (floor caps it)", 1),
                             ("never", None)):
            cq, cs, _ = simulate(people, "continuous", every)
            dq, ds, answers = simulate(people, "on-demand", every)
            wrong = [a for a in answers if not a["ok"] or a["sessions"] != people]
            if wrong:
                sys.exit("the counter answered %r, not %d sessions" % (wrong[0], people))
            print("%8d  %-26s  %9.1f q/s  %9.1f q/s  %d / %d" % (
                people, label, cq / SECONDS, dq / SECONDS, cs, ds))
    print()
    for people in (50, 500):
        print("one sample of %d sessions, stand-in on SQLite in process: %.1f ms"
              % (people, sample_time(people) * 1000))


if __name__ == "__main__":
    main()
