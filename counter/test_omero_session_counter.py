"""Tests of the session counter's rule and HTTP answer, without omero-py or a server.

Run: python3 -m unittest discover -s counter (scripts/test.sh does).
"""

import json
import threading
import unittest
import urllib.error
import urllib.request

import omero_session_counter as counter
from omero_session_counter import AGENT, Session, count_sessions

NOW = 1_800_000_000_000  # ms
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
        self.assertFalse(sampler.answer()["ok"], "no sample yet is a failure")
        self.assertIsNone(sampler.answer()["sample"])
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
        now[0] = 107.5
        self.assertEqual(sampler.answer()["ageSeconds"], 7.5)


class HttpAnswer(unittest.TestCase):
    """The real HTTP server on a loopback port, read with urllib."""

    def serve(self, source):
        sampler = counter.Sampler(source)
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
        answers = [([person("alice"), person("root", agent="Python service")], OWN, "monitor")]

        def source():
            if answers:
                return answers.pop()
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        sampler, base = self.serve(source)
        status, kind, body = self.get(base + "/sessions")
        self.assertEqual((status, body["ok"], body["sample"]), (503, False, None))
        sampler.sample()
        status, kind, body = self.get(base + "/sessions")
        self.assertEqual(kind, "application/json")
        self.assertEqual((status, body["ok"], body["sessions"]), (200, True, 1))
        self.assertEqual(body["format"], "omero-session-counter/1")
        self.assertEqual(body["excluded"]["service"], 1)
        self.assertGreaterEqual(body["ageSeconds"], 0)
        sampler.sample()
        status, _, body = self.get(base + "/sessions")
        self.assertEqual((status, body["ok"]), (503, False))
        self.assertEqual(body["error"], "ConnectionRefusedError: [Errno 111] Connection refused")
        self.assertTrue(body["sample"].endswith("-2"))

    def test_other_paths_are_404(self):
        _, base = self.serve(lambda: ([], OWN, "monitor"))
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/metrics", timeout=5)
        self.assertEqual(e.exception.code, 404)


if __name__ == "__main__":
    unittest.main()
