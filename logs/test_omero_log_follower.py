"""Tests of the OMERO log follower: the real script, run as a process over a temporary var/log.

Run: python3 -m unittest discover -s logs -t logs (scripts/test.sh does). Standard library only.
Files are written, rotated, truncated, removed and created while the follower runs with a short
poll interval, and its standard output is read as a container runtime would.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import omero_log_follower as follower

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "omero_log_follower.py")
POLL = "0.05"
# How long a test waits for a line before it fails.
PATIENCE = 10.0

TRACE = (
    "2024-01-02 13:45:12,346 ERROR [        ome.services.util.ServiceHandler] (l.Server-7) Internal exception\n"
    "java.lang.IllegalStateException: no\n"
    "\tat ome.services.Foo.bar(Foo.java:12)\n"
    "\tat ome.services.Foo.baz(Foo.java:34)\n"
    "Caused by: java.io.IOException: disk\n"
    "\t... 2 more\n"
)


def stamp(n, message):
    return "2024-01-02 13:45:%02d,%03d INFO  [                     ome.services.Example] (main      ) %s\n" % (
        n % 60, n % 1000, message)


class Run(object):
    """The follower as a process, its output lines gathered as they come."""

    def __init__(self, directory, **env):
        full = dict(os.environ)
        full.update({"OMERO_LOGS_DIR": directory, "OMERO_LOGS_POLL_SECONDS": POLL,
                     "OMERO_LOGS_QUIET_SECONDS": "0.5"})
        full.update(env)
        self.process = subprocess.Popen([sys.executable, SCRIPT], stdout=subprocess.PIPE, env=full)
        self.lines = []
        self.incoming = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in iter(self.process.stdout.readline, b""):
            self.incoming.put(line.rstrip(b"\n").decode("utf-8"))
        self.incoming.put(None)

    def until(self, predicate, what):
        """Waits for the lines seen so far to satisfy predicate; returns them."""
        deadline = time.time() + PATIENCE
        while not predicate(self.lines):
            left = deadline - time.time()
            try:
                line = self.incoming.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = False
            if line is None or (line is False and time.time() >= deadline):
                raise AssertionError("waited for %s; lines: %s" % (what, json.dumps(self.lines, indent=1)))
            if line:
                self.lines.append(line)
        return self.lines

    def saw(self, *texts):
        return self.until(lambda lines: all(any(t in line for line in lines) for t in texts), repr(texts))

    def records(self, name):
        prefix = name + ": "
        return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()


class FollowerTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="omero-logs-")
        self.runs = []

    def tearDown(self):
        for run in self.runs:
            run.stop()
        shutil.rmtree(self.dir)

    def run_follower(self, **env):
        run = Run(self.dir, **env)
        self.runs.append(run)
        return run

    def path(self, name):
        return os.path.join(self.dir, name)

    def append(self, name, text):
        with open(self.path(name), "a") as f:
            f.write(text)


class Records(FollowerTestCase):
    def test_every_file_from_its_start_one_line_per_record_with_the_files_name(self):
        self.append("Blitz-0.log", stamp(1, "Blitz starting") + TRACE + stamp(3, "Blitz up"))
        self.append("Tables-0.log", stamp(4, "Tables starting"))
        self.append("ignored.txt", "not a log\n")
        run = self.run_follower()
        run.saw("Blitz up", "Tables starting")
        blitz = run.records("Blitz-0.log")
        self.assertEqual(len(blitz), 3, blitz)
        self.assertTrue(blitz[0].endswith("Blitz starting"))
        # The stack trace is one record: its lines joined with \n, tabs kept.
        self.assertEqual(blitz[1], TRACE.rstrip("\n").replace("\n", "\\n"))
        self.assertEqual(run.records("Tables-0.log"), [stamp(4, "Tables starting").rstrip("\n")])
        self.assertFalse(any("not a log" in line for line in run.lines))
        # Undoing the escapes gives the record back.
        self.assertEqual(blitz[1].replace("\\n", "\n").replace("\\\\", "\\"), TRACE.rstrip("\n"))

    def test_backslashes_are_doubled_so_the_escapes_can_be_undone(self):
        self.append("Blitz-0.log", stamp(1, "C:\\new path\\n"))
        run = self.run_follower()
        run.saw("path")
        self.assertEqual(run.records("Blitz-0.log"), [stamp(1, "C:\\\\new path\\\\n").rstrip("\n")])

    def test_master_err_without_timestamps_keeps_each_line_and_joins_only_traces(self):
        self.append("master.err", "-! 01/02/24 13:45:12.345 warning: something\n"
                                  "Picked up JAVA_TOOL_OPTIONS: -Xss2m\n"
                                  "Exception in thread \"main\" java.lang.Error: x\n"
                                  "\tat Main.main(Main.java:1)\n"
                                  "Caused by: java.lang.Error: y\n"
                                  "plain last line\n")
        run = self.run_follower()
        run.saw("plain last line")
        self.assertEqual(run.records("master.err"), [
            "-! 01/02/24 13:45:12.345 warning: something",
            "Picked up JAVA_TOOL_OPTIONS: -Xss2m",
            "Exception in thread \"main\" java.lang.Error: x\\n\tat Main.main(Main.java:1)\\n"
            "Caused by: java.lang.Error: y",
            "plain last line",
        ])

    def test_a_record_written_later_and_a_line_without_its_end_yet(self):
        run = self.run_follower()
        run.saw("following")
        self.append("Blitz-0.log", stamp(1, "first"))
        run.saw("first")
        with open(self.path("Blitz-0.log"), "a") as f:
            f.write(stamp(2, "second").rstrip("\n"))  # no line end yet: complete once nothing follows
        run.saw("second")
        self.assertEqual(len(run.records("Blitz-0.log")), 2)

    def test_crlf_line_ends_are_dropped(self):
        self.append("DropBox.log", stamp(1, "windows").replace("\n", "\r\n"))
        run = self.run_follower()
        run.saw("windows")
        self.assertEqual(run.records("DropBox.log"), [stamp(1, "windows").rstrip("\n")])


class Rotation(FollowerTestCase):
    def test_logback_renames_at_rollover_and_nothing_is_lost_or_repeated(self):
        run = self.run_follower()
        self.append("Blitz-0.log", stamp(1, "before"))
        run.saw("before")
        # As FixedWindowRollingPolicy does: the last record, the rename, a new file.
        with open(self.path("Blitz-0.log"), "a") as old:
            old.write(stamp(2, "last of the old file"))
            os.rename(self.path("Blitz-0.log"), self.path("Blitz-0.log.1"))
            self.append("Blitz-0.log", stamp(3, "first of the new file"))
            old.write(stamp(4, "written to the old file after the rename"))
        run.saw("first of the new file", "after the rename")
        self.append("Blitz-0.log", stamp(5, "second of the new file"))
        run.saw("second of the new file")
        messages = [r.split(") ", 1)[1] for r in run.records("Blitz-0.log")]
        self.assertEqual(sorted(messages), sorted([
            "before", "last of the old file", "written to the old file after the rename",
            "first of the new file", "second of the new file"]))
        self.assertEqual(len(set(messages)), len(messages), "each once")
        self.assertLess(messages.index("before"), messages.index("first of the new file"))
        self.assertEqual(run.records("Blitz-0.log.1"), [], "rotated files are not followed")

    def test_python_rotating_handler_renames_many_times(self):
        run = self.run_follower()
        for n in range(1, 6):
            self.append("Tables-0.log", stamp(n, "record %d" % n))
            run.saw("record %d" % n)
            # As logging.handlers.RotatingFileHandler does: .1 to .2 and so on, then .log to .1.
            for k in range(n - 1, 0, -1):
                os.rename(self.path("Tables-0.log.%d" % k), self.path("Tables-0.log.%d" % (k + 1)))
            os.rename(self.path("Tables-0.log"), self.path("Tables-0.log.1"))
        self.append("Tables-0.log", stamp(9, "after five rotations"))
        run.saw("after five rotations")
        self.assertEqual(len(run.records("Tables-0.log")), 6)

    def test_a_truncated_file_is_read_again_from_its_start(self):
        run = self.run_follower()
        self.append("Processor-0.log", stamp(1, "a long first record " + "x" * 200))
        run.saw("a long first record")
        with open(self.path("Processor-0.log"), "w") as f:
            f.write(stamp(2, "after truncation"))
        run.saw("after truncation", "Processor-0.log: truncated")
        self.assertEqual(len(run.records("Processor-0.log")), 2)

    def test_files_that_appear_later_are_read_from_their_start_and_removed_ones_let_go(self):
        run = self.run_follower()
        run.saw("following")
        self.append("master.err", "-! 01/02/24 13:45:12.345 warning: later\n")
        self.append("Indexer-0.log", stamp(1, "indexer one") + stamp(2, "indexer two"))
        run.saw("warning: later", "indexer two")
        os.remove(self.path("Indexer-0.log"))
        time.sleep(0.3)
        self.append("Indexer-0.log", stamp(3, "a new indexer log"))
        run.saw("a new indexer log")
        self.assertEqual(len(run.records("Indexer-0.log")), 3)

    def test_a_missing_log_directory_is_waited_for(self):
        os.rmdir(self.dir)
        run = self.run_follower()
        time.sleep(0.3)
        os.mkdir(self.dir)
        self.append("Blitz-0.log", stamp(1, "once it exists"))
        run.saw("once it exists")


class Bounds(FollowerTestCase):
    def test_an_over_long_record_keeps_its_start_and_its_end_with_a_marker(self):
        frames = "".join("\tat ome.Frame%05d.call(Frame.java:%d)\n" % (i, i) for i in range(4000))
        self.append("Blitz-0.log", stamp(1, "huge trace") + "java.lang.Error: top\n" + frames
                    + "Caused by: java.lang.Error: the root cause\n" + stamp(2, "next"))
        run = self.run_follower(OMERO_LOGS_MAX_RECORD_BYTES="8192")
        run.saw("next")
        huge, following = run.records("Blitz-0.log")
        self.assertIn("huge trace", huge)
        self.assertIn("java.lang.Error: top", huge)
        self.assertIn("the root cause", huge, "the end is kept")
        self.assertIn(" bytes left out ...] ", huge)
        self.assertLess(len(huge), 8192 * 2 + 100, "bounded (escapes at most double it)")
        self.assertTrue(following.endswith("next"))

    def test_an_over_long_line_without_line_breaks_is_bounded_too(self):
        self.append("Blitz-0.log", stamp(1, "y" * 500000) + stamp(2, "after the long line"))
        run = self.run_follower(OMERO_LOGS_MAX_RECORD_BYTES="4096")
        run.saw("after the long line")
        long_line = run.records("Blitz-0.log")[0]
        self.assertLess(len(long_line), 4096 + 100)
        left_out = int(long_line.split("[... ")[1].split(" bytes")[0])
        self.assertEqual(left_out + 4096, len(stamp(1, "y" * 500000)) - 1, "what was kept and left out is the record")

    def test_the_record_kept_in_memory_is_bounded(self):
        follower.HEAD, follower.TAIL = 6, 4
        try:
            record = follower.Record(b"0123456789", True)
            record.add(b"abcdefghij")
            self.assertEqual(record.text(), b"012345 [... 10 bytes left out ...] ghij")
            self.assertEqual((len(record.head), len(record.tail)), (6, 4))
        finally:
            follower.HEAD = follower.MAX_RECORD * 3 // 4
            follower.TAIL = follower.MAX_RECORD - follower.HEAD


class StartAndStop(FollowerTestCase):
    def test_a_restart_of_the_container_resumes_where_it_stopped(self):
        state = os.path.join(self.dir, "state", "positions.json")
        os.mkdir(os.path.dirname(state))
        logs = os.path.join(self.dir, "log")
        os.mkdir(logs)
        self.dir, root = logs, self.dir
        try:
            self.append("Blitz-0.log", stamp(1, "one") + stamp(2, "two"))
            run = self.run_follower(OMERO_LOGS_STATE=state)
            run.saw("two")
            time.sleep(0.3)  # the positions written after the last poll
            run.process.kill()  # as an OOM kill would
            run.stop()
            self.append("Blitz-0.log", stamp(3, "three"))
            again = self.run_follower(OMERO_LOGS_STATE=state)
            again.saw("three")
            time.sleep(0.3)
            self.assertEqual([r.split(") ")[1] for r in again.records("Blitz-0.log")], ["three"])
        finally:
            self.dir = root

    def test_from_the_end_the_earlier_pods_lines_are_left_out_but_new_files_read_whole(self):
        self.append("Blitz-0.log", stamp(1, "an earlier pod's line"))
        run = self.run_follower(OMERO_LOGS_FROM="end")
        run.saw("Blitz-0.log: following from its end")
        self.append("Blitz-0.log", stamp(2, "this pod's line"))
        self.append("Tables-0.log", stamp(3, "a file of this pod"))
        run.saw("this pod's line", "a file of this pod")
        self.assertFalse(any("an earlier pod's line" in line for line in run.lines))

    def test_on_sigterm_it_reads_on_until_the_files_are_quiet(self):
        run = self.run_follower()
        self.append("Blitz-0.log", stamp(1, "serving"))
        run.saw("serving")
        run.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.append("Blitz-0.log", stamp(2, "shutting down"))
        run.saw("shutting down")
        started = time.time()
        self.assertEqual(run.process.wait(timeout=PATIENCE), 0)
        self.assertLess(time.time() - started, 3.0, "it ends once nothing is written for the quiet time")


class Shipped(unittest.TestCase):
    def test_the_shipped_copy_without_comments_compiles_and_names_its_settings(self):
        # As src/render/server_logs.rs ships it: no comment or blank lines, a space a level.
        with open(SCRIPT) as script:
            source = script.read()
        shipped = "\n".join(" " * ((len(line) - len(line.lstrip(" "))) // 4) + line.lstrip(" ")
                            for line in source.splitlines()
                            if line.strip() and not line.strip().startswith("#"))
        compile(shipped, "<omero-logs>", "exec")
        for name in ["OMERO_LOGS_DIR", "OMERO_LOGS_STATE", "OMERO_LOGS_FROM", "OMERO_LOGS_POLL_SECONDS",
                     "OMERO_LOGS_QUIET_SECONDS", "OMERO_LOGS_MAX_RECORD_BYTES"]:
            self.assertIn('"%s"' % name, shipped)
        self.assertNotIn('"""', source, "no multi-line strings: comment lines are dropped by line")


if __name__ == "__main__":
    unittest.main()
