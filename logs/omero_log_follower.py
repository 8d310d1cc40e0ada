# omero-logs: OMERO.server's own log files (var/log) in the container log stream.
#
# Shipped by omero-operator inline in each node's pod template (python -c; full-line comments
# and blank lines are left out of the shipped copy) and run in the node's own image, next to
# the server, reading the var volume read-only. Every record of every var/log/*.log, *.out and
# *.err file becomes one line on standard output, the file's name first:
#
#   Blitz-0.log: 2024-01-02 13:45:12,345 ERROR [...] (...) failed\n\tat ome.X.y(X.java:1)
#
# A record's own line breaks are written as \n and backslashes as \\ (undo both to read it).
# Standard library only, Python 3.6 or later (the image's venv).
#
# What a record is: OMERO's Java servers log through logback with `%date %-5level [...]`
# (etc/logback.xml) and its Python servers (Processor, Tables, ...) with
# `%(asctime)s %(levelname)-5.5s [...]` (omero-py omero/util LOGFORMAT): both begin
# "2024-01-02 13:45:12,345". Ice's own messages in master.err begin "-- 01/02/24 ...",
# "-! ..." or "!! ...". Any other line belongs to the record before it (a stack trace) when
# that record began with OMERO's timestamp; elsewhere (master.err also holds what servers write
# to stderr) only an indented line, "Caused by: " or "Suppressed: " does. Read from OMERO's source and templates, not observed on a running server:
# were a record to begin otherwise, it would be joined to the one before it, never lost.
#
# Rotation: logback renames Blitz-0.log to Blitz-0.log.1 at 500 MB and Python's handler
# renames Tables-0.log at 5 MB, then each opens a new file under the old name. Files are
# followed by name: a name that now holds another file is read to its end in the old one,
# then from the start of the new one; a file that shrank was truncated and is read again from
# its start; a file that appears later is read from its start.
#
# Memory is bounded: a record keeps at most OMERO_LOGS_MAX_RECORD_BYTES (its first three
# quarters and its last quarter, where a Java trace's root cause is, with how much was left out
# between), and a line is read in pieces.
#
# Where to start: var is a fresh emptyDir at each pod start, so every file is read from its
# start (OMERO_LOGS_FROM=beginning); on a claim that outlives pods (OMERO_LOGS_FROM=end) the
# files there at the first start are the earlier pods' and are followed from their end. How far
# each file was written out is kept in OMERO_LOGS_STATE (the container's own emptyDir), so a
# restart of this container resumes there instead of writing everything again.
#
# On SIGTERM (the pod stops) it goes on reading until no file has grown for
# OMERO_LOGS_QUIET_SECONDS, so the server's last words during its shutdown are not lost.
import json
import os
import re
import signal
import stat
import sys
import time

LOG_DIR = os.environ.get("OMERO_LOGS_DIR", "/opt/omero/server/OMERO.server/var/log")
STATE = os.environ.get("OMERO_LOGS_STATE", "")
FROM_END = os.environ.get("OMERO_LOGS_FROM", "beginning") == "end"
POLL = float(os.environ.get("OMERO_LOGS_POLL_SECONDS", "0.5"))
QUIET = float(os.environ.get("OMERO_LOGS_QUIET_SECONDS", "5"))
MAX_RECORD = max(64, int(os.environ.get("OMERO_LOGS_MAX_RECORD_BYTES", "65536")))
HEAD = MAX_RECORD * 3 // 4
TAIL = MAX_RECORD - HEAD
SUFFIXES = (".log", ".out", ".err")
# The most read of one file in one poll, so one busy file never holds the others back.
CHUNK = 65536
CHUNKS_PER_POLL = 16
SELF = b"omero-logs"
OMERO_STAMP = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d{3} ")
ICE_STAMP = re.compile(rb"(--|-!|!!) \d\d/\d\d/\d\d \d\d:\d\d:\d\d")
CONTINUATION = re.compile(rb"\s|Caused by: |Suppressed: ")


class Record(object):
    # One record being gathered: its first HEAD bytes, its last TAIL bytes, and how many were
    # left out between.

    def __init__(self, first, stamped):
        self.stamped = stamped
        self.head = bytearray()
        self.tail = bytearray()
        self.left_out = 0
        self.add(first)

    def add(self, data):
        room = HEAD - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > TAIL:
                cut = len(self.tail) - TAIL
                self.left_out += cut
                del self.tail[:cut]

    def text(self):
        if self.left_out:
            marker = b" [... %d bytes left out ...] " % self.left_out
            return bytes(self.head) + marker + bytes(self.tail)
        return bytes(self.head + self.tail)


def line_of(name, text):
    text = text.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return name + b": " + text + b"\n"


class Followed(object):
    # One file, followed from an open descriptor.

    def __init__(self, name, fd, ident, offset):
        self.name = name.encode("utf-8", "surrogateescape")
        self.fd = fd
        self.ident = ident
        self.offset = offset
        # The last line read, not ended yet, and where it begins in the file.
        self.carry = b""
        # Whether the start of the line being read is in the record already (a long line).
        self.mid_line = False
        self.record = None
        self.record_offset = offset

    def resume_offset(self):
        # Where reading again would write nothing twice and leave nothing out.
        if self.record is not None:
            return self.record_offset
        return self.offset - len(self.carry)

    def read(self, out):
        grew = False
        for _ in range(CHUNKS_PER_POLL):
            data = os.read(self.fd, CHUNK)
            if not data:
                break
            grew = True
            self.offset += len(data)
            self.consume(data, out)
        return grew

    def consume(self, data, out):
        buf = self.carry + data
        start = self.offset - len(buf)
        at = 0
        while True:
            end = buf.find(b"\n", at)
            if end < 0:
                break
            self.line(buf[at:end], start + at, True, out)
            at = end + 1
        self.carry = buf[at:]
        if len(self.carry) >= CHUNK:
            self.line(self.carry, start + at, False, out)
            self.carry = b""

    def line(self, piece, at, complete, out):
        if complete and piece.endswith(b"\r"):
            piece = piece[:-1]
        if self.mid_line:
            self.record.add(piece)
        else:
            stamped = OMERO_STAMP.match(piece) is not None
            starts = stamped or ICE_STAMP.match(piece) is not None
            record = self.record
            if record is not None and not starts and (record.stamped or CONTINUATION.match(piece)):
                record.add(b"\n" + piece)
            else:
                self.emit(out)
                self.record = Record(piece, stamped)
                self.record_offset = at
        self.mid_line = not complete

    def emit(self, out):
        if self.record is not None:
            out.append(line_of(self.name, self.record.text()))
            self.record = None

    def settle(self, out):
        # Nothing new for a poll: the line and the record read last are complete.
        if self.carry:
            carry, self.carry = self.carry, b""
            self.line(carry, self.offset - len(carry), True, out)
        self.mid_line = False
        self.emit(out)


def note(out, text):
    out.append(line_of(SELF, text.encode("utf-8", "surrogateescape")))


class Follower(object):
    def __init__(self, directory, state_path, from_end):
        self.directory = directory
        self.state_path = state_path
        self.files = {}
        self.saved = self.load_state()
        # Files there at the first look are the earlier pods' when following from the end,
        # unless this container ran before (it left its positions).
        self.first_look = from_end and self.saved is None
        self.last_saved = None

    def load_state(self):
        if not self.state_path:
            return None
        try:
            with open(self.state_path) as f:
                return dict((name, tuple(entry)) for name, entry in json.load(f).items())
        except (OSError, ValueError, TypeError):
            return None

    def save_state(self):
        if not self.state_path:
            return
        state = dict((f.name.decode("utf-8", "surrogateescape"), [f.ident[0], f.ident[1], f.resume_offset()])
                     for f in self.files.values())
        if state == self.last_saved:
            return
        tmp = self.state_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.state_path)
        except OSError:
            # Only a restart of this container needs it: it then writes some lines again.
            return
        self.last_saved = state

    def names(self):
        try:
            return sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIXES))
        except OSError:
            return []

    def open(self, name, out):
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return
        ident = (st.st_dev, st.st_ino)
        saved = (self.saved or {}).get(name)
        offset = 0
        if saved is not None and tuple(saved[:2]) == ident and saved[2] <= st.st_size:
            offset = saved[2]
        elif self.first_look:
            offset = st.st_size
            note(out, "%s: following from its end (the earlier pods' lines are left out)" % name)
        os.lseek(fd, offset, os.SEEK_SET)
        self.files[name] = Followed(name, fd, ident, offset)

    def close(self, name):
        os.close(self.files.pop(name).fd)

    def poll(self, out):
        # One look at every file; returns whether any grew.
        for name in self.names():
            if name not in self.files:
                self.open(name, out)
        self.first_look = False
        grew = False
        for name in sorted(self.files):
            f = self.files[name]
            read = f.read(out)
            try:
                st = os.stat(os.path.join(self.directory, name))
            except OSError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != f.ident:
                # Rotated or removed: the old file's last lines, then the new one from its start.
                read = f.read(out) or read
                f.settle(out)
                self.close(name)
                if st is not None:
                    self.open(name, out)
                    if name in self.files:
                        read = self.files[name].read(out) or read
            elif st.st_size < f.offset:
                f.settle(out)
                note(out, "%s: truncated; reading it again from its start" % name)
                os.lseek(f.fd, 0, os.SEEK_SET)
                f.offset = 0
                f.record_offset = 0
                read = f.read(out) or read
            elif not read:
                f.settle(out)
            grew = grew or read
        return grew

    def settle(self, out):
        for f in self.files.values():
            f.settle(out)


def write(out):
    if out:
        sys.stdout.buffer.write(b"".join(out))
        sys.stdout.buffer.flush()
        del out[:]


def main():
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(time.time()))
    signal.signal(signal.SIGINT, lambda *_: stop.append(time.time()))
    follower = Follower(LOG_DIR, STATE, FROM_END)
    out = []
    note(out, "following %s/*%s" % (LOG_DIR, ", *".join(SUFFIXES)))
    last_growth = time.time()
    while True:
        if follower.poll(out):
            last_growth = time.time()
        write(out)
        follower.save_state()
        if stop and time.time() - max(last_growth, stop[0]) >= QUIET:
            break
        time.sleep(POLL)
    follower.settle(out)
    write(out)
    follower.save_state()


if __name__ == "__main__":
    main()
