"""Tests of the session counter's rule and HTTP answer, without omero-py or a server.

Run: python3 -m unittest discover -s counter (scripts/test.sh does).
"""

import json
import threading
import time
import unittest
import urllib.error
import urllib.request

import omero_session_counter as counter
from omero_session_counter import AGENT, Session, count_sessions

NOW = 1_800_000_000_000  # ms


def setUpModule():
    # The script logs failed samples and renewed logins to stderr; the tests cause many.
    counter.log = lambda message: None
OWN = "own-uuid"


def person(user="alice", **kw):
    kw.setdefault("uuid", "u-%s-%d" % (user, id(kw)))
    kw.setdefault("agent", "OMERO.web")
    kw.setdefault("started", NOW - 60_000)
    kw.setdefault("last_access", NOW - 1_000)
    kw.setdefault("time_to_idle", 600_000)
    return Session(user=user, **kw)


class CountingRule(unittest.TestCase):
    """Session records shaped like OMERO's: what a drain waits for, and what it does not."""

    def count(self, sessions):
        return count_sessions(sessions, OWN, "monitor", NOW)

    def test_people_count_and_everything_else_is_left_out_for_its_reason(self):
        sessions = [
            person("alice"),
            person("alice", agent="OMERO.insight"),
            person("bob", agent=None),  # a client that set no agent is still a person
            Session(user="monitor", uuid=OWN, agent=AGENT),  # its own login
            person("monitor", agent=AGENT),  # an earlier login of the counter, not yet timed out
            person("root", agent="Python service"),  # Processor-0
            person("root", agent="Python service"),  # Tables-0
            person("carol", share=True, time_to_idle=0),  # a share
            person("dave", last_access=NOW - 700_000),  # idle past its 10 min
            person("erin", started=NOW - 7_200_000, time_to_live=3_600_000),  # past its lifetime
        ]
        count, excluded, restricted = self.count(sessions)
        self.assertEqual(count, 3)
        self.assertEqual(excluded, {"own": 1, "counter": 1, "service": 2, "share": 1, "expired": 2})
        self.assertEqual(restricted, 0)

    def test_only_the_service_sessions_and_its_own_left_is_zero(self):
        sessions = [Session(user="monitor", uuid=OWN, agent=AGENT),
                    person("root", agent="Python service"), person("root", agent="Python service")]
        self.assertEqual(self.count(sessions)[0], 0)
        self.assertEqual(self.count([])[0], 0)

    def test_the_counter_user_in_another_client_is_a_person(self):
        # Someone logged in with the counter's account from OMERO.insight: a real session.
        self.assertEqual(self.count([person("monitor", agent="OMERO.insight")])[0], 1)

    def test_sessions_the_caller_may_not_read_count_unless_root_or_its_own(self):
        # Without ReadSession the server returns only the user name for other users' sessions.
        sessions = [Session(user="alice", detailed=False), Session(user="root", detailed=False),
                    Session(user="bob", detailed=False)]
        count, excluded, restricted = self.count(sessions)
        self.assertEqual((count, restricted, excluded["service"]), (2, 2, 1))

    def test_no_limits_never_expire(self):
        s = person("alice", time_to_idle=0, time_to_live=0, last_access=0, started=0)
        self.assertEqual(self.count([s])[0], 1)
        # A session with no lastAccessTime in its data is not judged idle.
        self.assertEqual(self.count([person("alice", last_access=None)])[0], 1)


class Listing(unittest.TestCase):
    """/sessions/list: the sessions the count counts, each with public fields only."""

    KEYS = {"user", "agent", "started", "lastAccess", "idleSeconds", "timeToIdleSeconds",
            "timeToLiveSeconds", "restricted"}

    def sessions(self):
        return [
            person("bob", agent="OMERO.insight", started=NOW - 30_000, uuid="secret-bob"),
            person("alice", started=NOW - 90_000, last_access=NOW - 12_000, uuid="secret-alice"),
            Session(user="monitor", uuid=OWN, agent=AGENT),
            person("monitor", agent=AGENT),
            person("root", agent="Python service"),
            person("carol", share=True, time_to_idle=0),
            person("dave", last_access=NOW - 700_000),
            Session(user="erin", uuid="secret-erin", detailed=False),
        ]

    def test_the_counted_sessions_oldest_first_with_what_a_person_needs_and_no_credential(self):
        entries, truncated = counter.listed_sessions(self.sessions(), OWN, "monitor", NOW)
        count = count_sessions(self.sessions(), OWN, "monitor", NOW)[0]
        self.assertEqual(len(entries), count)
        self.assertFalse(truncated)
        self.assertEqual([e["user"] for e in entries], ["alice", "bob", "erin"],
                         "oldest first; a restricted session (no start known) last")
        alice = entries[0]
        self.assertEqual(alice, {
            "user": "alice", "agent": "OMERO.web",
            "started": counter.iso((NOW - 90_000) / 1000), "lastAccess": counter.iso((NOW - 12_000) / 1000),
            "idleSeconds": 12.0, "timeToIdleSeconds": 600.0, "timeToLiveSeconds": 0.0,
            "restricted": False})
        for entry in entries:
            self.assertEqual(set(entry), self.KEYS)
        text = json.dumps(entries)
        self.assertNotIn("secret", text, "a session's UUID is its login's credential")
        self.assertNotIn("uuid", text.lower())

    def test_a_session_the_caller_may_not_read_shows_its_user_and_nothing_it_does_not_know(self):
        entries, _ = counter.listed_sessions([Session(user="erin", detailed=False)], OWN, "monitor", NOW)
        self.assertEqual(entries, [{
            "user": "erin", "agent": None, "started": None, "lastAccess": None, "idleSeconds": None,
            "timeToIdleSeconds": None, "timeToLiveSeconds": None, "restricted": True}])

    def test_times_that_are_not_numbers_are_unknown_not_a_failure(self):
        odd = person("alice", started="yesterday", last_access=object(), time_to_idle=0)
        entries, _ = counter.listed_sessions([odd], OWN, "monitor", NOW)
        self.assertEqual((entries[0]["started"], entries[0]["lastAccess"], entries[0]["idleSeconds"]),
                         (None, None, None))

    def test_the_list_is_bounded_and_says_so(self):
        many = [person("u%04d" % i, started=NOW - 100_000 + i) for i in range(counter.MAX_LISTED + 5)]
        entries, truncated = counter.listed_sessions(many, OWN, "monitor", NOW)
        self.assertEqual((len(entries), truncated), (counter.MAX_LISTED, True))
        self.assertEqual(entries[0]["user"], "u0000")
        sampler = counter.Sampler(CountingSource(results=[(many, OWN, "monitor")]))
        listed = sampler.answer(listing=True)
        self.assertEqual((listed["count"], len(listed["sessions"]), listed["truncated"]),
                         (counter.MAX_LISTED + 5, counter.MAX_LISTED, True))

    def test_a_list_reads_the_samples_of_the_count_and_adds_none_inside_the_floor(self):
        source = CountingSource(results=[(self.sessions(), OWN, "monitor"),
                                         ([person("zoe")], OWN, "monitor")])
        now = [0.0]
        sampler = counter.Sampler(source, min_interval=5.0, clock=lambda: NOW / 1000,
                                  monotonic=lambda: now[0])
        count = sampler.answer()
        now[0] = 2.0
        listed = sampler.answer(listing=True)
        self.assertEqual(source.calls, 1, "a list inside the floor takes no sample")
        self.assertEqual(listed["format"], "omero-session-counter-list/1")
        self.assertEqual((listed["sample"], listed["ageSeconds"], listed["takenAt"]),
                         (count["sample"], 2.0, count["takenAt"]))
        self.assertEqual((listed["count"], listed["excluded"], listed["restricted"]),
                         (count["sessions"], count["excluded"], count["restricted"]))
        self.assertEqual(len(listed["sessions"]), 3)
        now[0] = 4.0
        self.assertEqual(sampler.answer()["sample"], count["sample"], "nor does a count after it")
        now[0] = 5.0
        fresh = sampler.answer(listing=True)
        self.assertEqual(source.calls, 2)
        self.assertNotEqual(fresh["sample"], count["sample"])
        self.assertEqual([e["user"] for e in fresh["sessions"]], ["zoe"],
                         "the list of the new sample, never the old one's")
        self.assertEqual(sampler.answer()["sessions"], 1, "the count of that same sample")

    def test_a_failed_sample_is_a_failed_list(self):
        sampler = counter.Sampler(CountingSource(results=[RuntimeError("login refused")]))
        listed = sampler.answer(listing=True)
        self.assertEqual((listed["format"], listed["ok"]), ("omero-session-counter-list/1", False))
        self.assertIn("login refused", listed["error"])
        self.assertNotIn("sessions", listed)

    def test_a_list_that_cannot_be_made_fails_alone_and_the_count_stands(self):
        original = counter.listed_sessions

        def broken(*args, **kwargs):
            raise TypeError("a field of an unexpected type")
        counter.listed_sessions = broken
        self.addCleanup(setattr, counter, "listed_sessions", original)
        sampler = counter.Sampler(CountingSource())
        self.assertEqual((sampler.answer()["ok"], sampler.answer()["sessions"]), (True, 1))
        listed = sampler.answer(listing=True)
        self.assertFalse(listed["ok"])
        self.assertIn("listing the sessions failed: TypeError", listed["error"])


class Sampling(unittest.TestCase):
    def test_each_sample_has_a_new_id_and_a_time_and_failures_are_failures(self):
        results = [
            ([person("alice")], OWN, "monitor"),
            RuntimeError("login to tcp://127.0.0.1:4063 as monitor refused or failed: boom"),
            ([], OWN, "monitor"),
        ]

        def source():
            r = results.pop(0)
            if isinstance(r, Exception):
                raise r
            return r
        clock = iter([1000.0, 1005.0, 1010.0]).__next__
        sampler = counter.Sampler(source, clock=clock, monotonic=lambda: 50.0)
        first = sampler.sample()
        self.assertEqual((first["ok"], first["sessions"]), (True, 1))
        self.assertEqual(first["takenAt"], "1970-01-01T00:16:40.000Z")
        failed = sampler.sample()
        self.assertFalse(failed["ok"])
        self.assertNotIn("sessions", failed, "a failure carries no count")
        self.assertIn("refused", failed["error"])
        third = sampler.sample()
        self.assertEqual((third["ok"], third["sessions"]), (True, 0))
        ids = [first["sample"], failed["sample"], third["sample"]]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual([int(i.rsplit("-", 1)[1]) for i in ids], [1, 2, 3])
        self.assertTrue(all(i.startswith(sampler.run + "-") for i in ids))
        # A new run of the script never repeats an earlier run's ids.
        self.assertNotEqual(counter.Sampler(source).run, sampler.run)

    def test_the_answer_says_how_old_the_sample_is(self):
        now = [100.0]
        sampler = counter.Sampler(lambda: ([], OWN, "monitor"), monotonic=lambda: now[0])
        sampler.sample()
        now[0] = 103.5  # inside the 5 s floor: the same sample, 3.5 s old
        answer = sampler.answer()
        self.assertEqual((answer["ageSeconds"], answer["sample"]), (3.5, sampler.run + "-1"))


class CountingSource:
    """A stand-in for OMERO: counts its calls and how many ran at once; ``gate``, when set,
    holds every call until it is opened; ``during`` runs inside each call."""

    def __init__(self, results=None, gate=None, during=None):
        self.results = results
        self.gate = gate
        self.during = during
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if self.during is not None:
                self.during()
            r = self.results.pop(0) if self.results else ([person("alice")], OWN, "monitor")
            if isinstance(r, Exception):
                raise r
            return r
        finally:
            with self.lock:
                self.running -= 1


def at_once(n, fn):
    """Runs ``fn`` in ``n`` threads started together; their results."""
    results = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        results[i] = fn()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


class OnDemand(unittest.TestCase):
    """Samples are taken when asked: at most one at a time, at most one per floor interval."""

    def test_no_request_no_sample(self):
        source = CountingSource()
        now = [0.0]
        sampler = counter.Sampler(source, monotonic=lambda: now[0])
        server = counter.make_server(sampler, 0, host="127.0.0.1")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        now[0] = 3600.0  # an hour with nobody asking
        time.sleep(0.3)
        self.assertEqual((source.calls, sampler.number), (0, 0))

    def test_a_burst_of_requests_is_one_sample_at_once_and_one_per_floor_interval(self):
        gate = threading.Event()
        source = CountingSource(gate=gate)
        now = [0.0]
        sampler = counter.Sampler(source, min_interval=5.0, monotonic=lambda: now[0])
        # 20 requests at once while the sample is held: one sample, which all of them read.
        threading.Timer(0.3, gate.set).start()
        answers = at_once(20, sampler.answer)
        self.assertEqual((source.calls, source.most_at_once), (1, 1))
        self.assertEqual({a["sample"] for a in answers}, {sampler.run + "-1"})
        self.assertTrue(all(a["ok"] and a["sessions"] == 1 for a in answers))
        # A probe every half second for 20 s: one new sample each 5 s, at 0, 5, 10 and 15.
        first_seen = {}
        for tick in range(40):
            now[0] = tick * 0.5
            for a in at_once(3, sampler.answer):
                first_seen.setdefault(a["sample"], now[0])
        self.assertEqual(sorted(first_seen.values()), [0.0, 5.0, 10.0, 15.0])
        self.assertEqual((source.calls, source.most_at_once), (4, 1))

    def test_after_the_floor_a_zero_is_never_read_again_as_new(self):
        source = CountingSource(results=[([], OWN, "monitor"), ([person("alice")], OWN, "monitor")])
        now = [0.0]
        sampler = counter.Sampler(source, min_interval=5.0, monotonic=lambda: now[0])
        zero = sampler.answer()
        self.assertEqual((zero["sessions"], zero["ageSeconds"]), (0, 0.0))
        now[0] = 4.9
        again = sampler.answer()
        self.assertEqual((again["sample"], again["ageSeconds"]), (zero["sample"], 4.9),
                         "inside the floor: the same sample, with its id and age")
        now[0] = 5.0
        fresh = sampler.answer()
        self.assertNotEqual(fresh["sample"], zero["sample"])
        self.assertEqual((fresh["sessions"], fresh["ageSeconds"]), (1, 0.0))

    def test_a_sample_slower_than_the_wait_is_a_failure_never_the_last_sample(self):
        gate = threading.Event()
        source = CountingSource(results=[([], OWN, "monitor")])
        now = [0.0]
        sampler = counter.Sampler(source, min_interval=5.0, wait=0.2, monotonic=lambda: now[0])
        self.assertEqual(sampler.answer()["sessions"], 0)
        source.gate = gate  # the server stops answering
        now[0] = 10.0
        late = sampler.answer()
        self.assertEqual((late["ok"], late["sample"]), (False, None))
        self.assertNotIn("sessions", late)
        self.assertIn("no sample within 0.2s", late["error"])
        # Still held: a second request joins the same sample and starts no other.
        self.assertFalse(sampler.answer()["ok"])
        self.assertEqual(source.calls, 2)
        gate.set()
        for _ in range(100):
            if sampler.number == 2:
                break
            time.sleep(0.02)
        now[0] = 11.0
        answer = sampler.answer()
        self.assertEqual((answer["sample"], answer["ageSeconds"]), (sampler.run + "-2", 1.0))
        self.assertEqual(source.calls, 2)

    def test_a_sample_that_outlasts_the_floor_still_answers_the_request_that_waited(self):
        now = [0.0]

        def slow():
            now[0] += 7.0  # the server took 7 s, longer than the floor
        sampler = counter.Sampler(CountingSource(during=slow), min_interval=5.0,
                                  monotonic=lambda: now[0])
        answer = sampler.answer()
        self.assertEqual((answer["ok"], answer["ageSeconds"]), (True, 7.0))
        self.assertEqual(sampler.number, 1, "no second sample for the same request")

    def test_a_failure_is_kept_for_the_floor_then_tried_again(self):
        source = CountingSource(results=[RuntimeError("login refused"), ([], OWN, "monitor")])
        now = [0.0]
        sampler = counter.Sampler(source, min_interval=5.0, monotonic=lambda: now[0])
        failed = sampler.answer()
        self.assertFalse(failed["ok"])
        now[0] = 1.0
        self.assertEqual(sampler.answer()["sample"], failed["sample"])
        now[0] = 6.0
        self.assertEqual(sampler.answer()["sessions"], 0)
        self.assertEqual(source.calls, 2)


class KeptLogin(unittest.TestCase):
    """OmeroSource's login handling, with omero-py's calls replaced (no omero-py here)."""

    class Source(counter.OmeroSource):
        def __init__(self):
            super().__init__("tcp://127.0.0.1:4063", "monitor", "secret")
            self.logins = 0
            self.failing = set()  # logins whose requests fail (e.g. past their idle timeout)

        def connect(self):
            self.logins += 1
            self.client = self.logins

        def close(self):
            self.client = None

        def current(self):
            if self.client in self.failing or "all" in self.failing:
                raise RuntimeError("Ice.ObjectNotExistException: session %s is gone" % self.client)
            return [], "own-%d" % self.client, self.user

    def test_one_login_is_kept_and_a_dead_one_is_replaced_within_the_same_sample(self):
        source = self.Source()
        self.assertEqual(source()[1], "own-1")
        self.assertEqual(source()[1], "own-1", "the login is kept between samples")
        source.failing.add(1)  # idle past its timeout while nobody asked
        self.assertEqual(source()[1], "own-2", "logged in again in the same sample, no failure")
        self.assertEqual(source.logins, 2)
        source.failing.add("all")
        with self.assertRaises(RuntimeError):
            source()
        self.assertIsNone(source.client, "the next sample logs in again")


class LoadBench(unittest.TestCase):
    """bench_counter_load.py counts what it claims: three queries per session held per sample,
    and no sample (no query) without a probe when sampling on demand."""

    def test_queries_follow_the_samples(self):
        import bench_counter_load as bench
        held = 4 + 3  # four people, Processor-0's and Tables-0's root sessions, its own login
        queries, samples, answers = bench.simulate(4, "on-demand", 15, seconds=60, history=200)
        self.assertEqual((samples, queries), (4, 3 * held * 4))
        self.assertTrue(all(a["ok"] and a["sessions"] == 4 for a in answers), answers)
        self.assertEqual(bench.simulate(4, "on-demand", None, seconds=60, history=200)[:2], (0, 0))
        queries, samples, _ = bench.simulate(4, "continuous", 15, seconds=60, history=200)
        self.assertEqual((samples, queries), (12, 3 * held * 12))


class HttpAnswer(unittest.TestCase):
    """The real HTTP server on a loopback port, read with urllib."""

    def serve(self, source, monotonic=time.monotonic):
        sampler = counter.Sampler(source, monotonic=monotonic)
        server = counter.make_server(sampler, 0, host="127.0.0.1")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return sampler, "http://127.0.0.1:%d" % server.server_address[1]

    def get(self, url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.headers["Content-Type"], json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], json.loads(e.read() or b"null")

    def test_ok_is_200_with_the_count_and_a_failure_is_503_without_one(self):
        answers = [ConnectionRefusedError("[Errno 111] Connection refused"),
                   ([person("alice"), person("root", agent="Python service")], OWN, "monitor"),
                   ConnectionRefusedError("[Errno 111] Connection refused")]
        now = [0.0]
        sampler, base = self.serve(CountingSource(results=answers), monotonic=lambda: now[0])
        status, kind, body = self.get(base + "/sessions")
        self.assertEqual((status, body["ok"]), (503, False))
        self.assertEqual(body["error"], "ConnectionRefusedError: [Errno 111] Connection refused")
        self.assertTrue(body["sample"].endswith("-1"))
        now[0] = 10.0
        status, kind, body = self.get(base + "/sessions")
        self.assertEqual(kind, "application/json")
        self.assertEqual((status, body["ok"], body["sessions"]), (200, True, 1))
        self.assertEqual(body["format"], "omero-session-counter/1")
        self.assertEqual(body["excluded"]["service"], 1)
        self.assertEqual(body["ageSeconds"], 0)
        self.assertTrue(body["sample"].endswith("-2"))
        now[0] = 20.0
        status, _, body = self.get(base + "/sessions")
        self.assertEqual((status, body["ok"]), (503, False))
        self.assertTrue(body["sample"].endswith("-3"))

    def test_the_list_is_200_in_its_format_and_a_failure_503(self):
        answers = [([person("alice", uuid="secret-1"), person("root", agent="Python service")], OWN,
                    "monitor"),
                   ConnectionRefusedError("[Errno 111] Connection refused")]
        now = [0.0]
        sampler, base = self.serve(CountingSource(results=answers), monotonic=lambda: now[0])
        status, kind, body = self.get(base + "/sessions/list")
        self.assertEqual((status, kind), (200, "application/json"))
        self.assertEqual((body["format"], body["ok"], body["count"]), ("omero-session-counter-list/1", True, 1))
        self.assertEqual([e["user"] for e in body["sessions"]], ["alice"])
        self.assertEqual(self.get(base + "/sessions")[2]["sample"], body["sample"], "the same sample")
        now[0] = 10.0
        status, _, body = self.get(base + "/sessions/list?x=1")
        self.assertEqual((status, body["ok"], body["format"]), (503, False, "omero-session-counter-list/1"))

    def test_other_paths_are_404_and_take_no_sample(self):
        source = CountingSource()
        sampler, base = self.serve(source)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/metrics", timeout=5)
        self.assertEqual(e.exception.code, 404)
        self.assertEqual(source.calls, 0)


if __name__ == "__main__":
    unittest.main()
