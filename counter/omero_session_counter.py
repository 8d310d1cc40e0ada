"""OMERO session counter: the sessions of people on the OMERO.server beside it, over HTTP.

Shipped by omero-operator (in a ConfigMap it owns) and run in a node's pod, next to the server,
with the node's own image's Python (``/opt/omero/server/venv3``, which has omero-py and Ice). It
logs in to the node's own server through its local Glacier2 and answers ``GET /sessions`` with
the server's current sessions (``omero.cmd.CurrentSessionsRequest``, what ``omero sessions who``
uses) counted as JSON (format below), which the operator's ``counter`` session probe reads.

It counts **when asked**, not on a clock: on a read-only-database node every session in a
``CurrentSessionsRequest`` costs the server about three database look-ups that miss before the
session is found in memory (omero-blitz ``CurrentSessionsRequestI.step``: ``findSessionIdByUuid``
then ``findSessionById``; omero-server ``SessionProviderWrapper`` tries ``SessionProviderInDb``
first, whose ``findByString`` on the uuid, ``find(Share, id)`` and ``findByQuery`` each query the
database; read from the source, not observed). Sampling 500 sessions every 5 s would be ~300
queries/s for a number the operator reads once a minute. So a request takes a new sample when
the last one began ``OMERO_COUNTER_MIN_INTERVAL`` (5 s) ago or more, and otherwise gets the last
one again, with the same sample id and its age: the cost follows the operator's probes (every
60 s while a node serves, every 15 s while it drains), and a burst of requests costs one sample.
Requests that arrive while a sample is under way wait for that one (never a second at once); a
request waits at most ``WAIT_SECONDS`` (8 s, under the operator's 10 s probe timeout) and then
gets a failure, never an older sample passed off as new. No request, no sample, no login.

What counts: the sessions a drain waits for, sessions of people. Not counted:

- its own login, and earlier logins of the counter (same user and user agent) that have not
  timed out yet;
- OMERO's own service sessions: owner ``root`` (Processor-0 and Tables-0 log in as root with
  user agent ``Python service`` and keep that session for their whole life; a person's root
  session is left out too, the same rule as the operator's database and metrics probes);
- shares: a share is a standing grant to view data, stored as a session that no one is
  connected through; it ends only when it expires (often never), so counting it would hold
  every drain open until its deadline. The database probe leaves them out for the same reason;
- expired sessions: the server already leaves out timed-out sessions (SessionManagerImpl
  ``getSessionData`` skips them; read from omero-server's source, not observed), and the rule
  below drops any that the data shows past its idle time or lifetime anyway.

A sample that could not be taken (server not up, login refused, request failed) is reported as
a failure, never as zero; every sample, good or failed, carries a sample id (``<run>-<n>``,
``n`` rising with each sample, ``run`` new at each start of the script), when it was taken and
how old it is (``ageSeconds``, from when it began), so the operator never takes one sample for
two: two requests inside the floor read the same id, and the drain counts a zero only from an
id it has not seen.

Answer (``Content-Type: application/json``; HTTP 200 when ``ok``, 503 otherwise)::

    {"format": "omero-session-counter/1", "ok": true, "sessions": 3,
     "sample": "1a2b3c4d-17", "takenAt": "2026-01-01T00:00:00.000Z", "ageSeconds": 1.2,
     "excluded": {"own": 1, "counter": 0, "service": 2, "share": 0, "expired": 0},
     "restricted": 0}
    {"format": "omero-session-counter/1", "ok": false, "error": "login refused: ...",
     "sample": "1a2b3c4d-18", "takenAt": "...", "ageSeconds": 0.4}

``GET /sessions/list`` answers who those sessions are, from the same samples (a list request
inside the floor reads the last sample again, with its id and age: it adds no load on OMERO) in
format ``omero-session-counter-list/1``: the counted sessions, oldest first, at most
``MAX_LISTED`` of them (``truncated`` says when there were more; ``count`` is the whole count),
each with what an admin needs before a drain and nothing that identifies a person beyond OMERO's
user name: never the session's UUID (it is the login's credential: whoever holds it joins the
session) nor the client's address. Times are ISO 8601 UTC; ``idleSeconds`` is as of ``takenAt``;
``timeToIdleSeconds`` and ``timeToLiveSeconds`` are the session's own limits (0: none); fields
the server did not return (``restricted`` sessions, see below) are null::

    {"format": "omero-session-counter-list/1", "ok": true, "count": 2, "truncated": false,
     "sample": "1a2b3c4d-17", "takenAt": "2026-01-01T00:00:00.000Z", "ageSeconds": 1.2,
     "excluded": {"own": 1, "counter": 0, "service": 2, "share": 0, "expired": 0},
     "restricted": 0,
     "sessions": [{"user": "alice", "agent": "OMERO.web", "started": "2025-12-31T23:00:00.000Z",
                   "lastAccess": "2025-12-31T23:59:58.000Z", "idleSeconds": 2.0,
                   "timeToIdleSeconds": 600.0, "timeToLiveSeconds": 0.0, "restricted": false},
                  ...]}

A failure is the same failure as ``/sessions``'s (HTTP 503, ``ok: false``, ``error``), in this
format.

``restricted``: sessions whose session object the server did not return (on a read-write node,
when the counter's user lacks the ``ReadSession`` privilege): they are counted unless their user
is root or the counter's user, since their user agent and share status cannot be seen. On a
read-only-database node the server returns every session's object to any caller (sessions
served from memory, ``SessionProviderInMemory``, pass no permission check; read from
omero-server's source, not observed), so a plain user sees them all there.

The counting rule is the pure function ``count_sessions``; only ``OmeroSource`` imports omero,
so the rule and the HTTP answer are tested without omero-py (``test_omero_session_counter.py``).

Settings (environment): OMERO_COUNTER_USER, OMERO_COUNTER_PASSWORD (from a Secret),
OMERO_COUNTER_SERVER (e.g. ``tcp://127.0.0.1:4063``), OMERO_COUNTER_PORT (default 9450),
OMERO_COUNTER_MIN_INTERVAL (the least time between two samples, seconds, default 5).
"""

import datetime
import http.server
import json
import os
import socket
import sys
import threading
import time
import uuid as uuidlib

FORMAT = "omero-session-counter/1"
# The answer of /sessions/list: who the counted sessions are.
LIST_FORMAT = "omero-session-counter-list/1"
# The most sessions /sessions/list shows, and so the most a sample keeps in memory for it (a few
# hundred bytes each): a drain decision needs the count, a person reads a list of this size.
MAX_LISTED = 1000
# The user agent of the counter's own logins, so that they can be told apart.
AGENT = "omero-operator session counter"
# OMERO's administrator: Processor-0 and Tables-0 log in as root ("Python service").
ROOT = "root"
DEFAULT_PORT = 9450
# The least time between two samples (seconds): a request inside it reads the last sample again.
DEFAULT_MIN_INTERVAL = 5.0
# The longest a request waits for a sample (seconds): under the operator's probe timeout (10 s,
# src/omero/mod.rs ProbeTimeouts), so that it gets the counter's own answer, not a timeout.
WAIT_SECONDS = 8.0


class Session:
    """One entry of a CurrentSessionsResponse, reduced to what the rule needs.

    ``detailed`` is False when the server returned no session object for it (the caller may not
    read that session): then only ``user`` is known. Times are milliseconds since the epoch,
    durations milliseconds (0: no limit), as OMERO stores them.
    """

    def __init__(self, user, uuid=None, agent=None, share=False, detailed=True,
                 started=None, last_access=None, time_to_idle=0, time_to_live=0):
        self.user = user
        self.uuid = uuid
        self.agent = agent
        self.share = share
        self.detailed = detailed
        self.started = started
        self.last_access = last_access
        self.time_to_idle = time_to_idle or 0
        self.time_to_live = time_to_live or 0

    def __repr__(self):
        return "Session(%r)" % self.__dict__


def expired(session, now_ms):
    """Past its idle time or its lifetime at ``now_ms``, by the data the server returned."""
    if session.time_to_idle > 0 and session.last_access is not None:
        if now_ms - session.last_access > session.time_to_idle:
            return True
    if session.time_to_live > 0 and session.started is not None:
        if now_ms - session.started > session.time_to_live:
            return True
    return False


def left_out(session, own_uuid, own_user, now_ms):
    """Why ``session`` is not a session of a person, or None when it is one: the first reason
    that applies, in this order: own (the counter's current login), counter (an earlier login of
    the counter: its user and agent), service (owner root), share, expired."""
    s = session
    if s.uuid is not None and s.uuid == own_uuid:
        return "own"
    if s.user == own_user and s.agent == AGENT:
        return "counter"
    if s.user == ROOT:
        return "service"
    if s.share:
        return "share"
    if expired(s, now_ms):
        return "expired"
    return None


def count_sessions(sessions, own_uuid, own_user, now_ms):
    """The sessions of people among ``sessions``: (count, excluded by reason, restricted).
    Each session is left out for the reason ``left_out`` gives."""
    excluded = {"own": 0, "counter": 0, "service": 0, "share": 0, "expired": 0}
    counted = 0
    restricted = 0
    for s in sessions:
        reason = left_out(s, own_uuid, own_user, now_ms)
        if reason is not None:
            excluded[reason] += 1
            continue
        counted += 1
        if not s.detailed:
            restricted += 1
    return counted, excluded, restricted


def listed_sessions(sessions, own_uuid, own_user, now_ms, limit=MAX_LISTED):
    """The sessions ``count_sessions`` counts, oldest first, as ``/sessions/list`` shows them:
    (at most ``limit`` entries, whether there were more). Each entry is built field by field
    from what a person needs before a drain, so nothing else reaches it: never the session's
    UUID (the login's credential) nor where the client connects from."""
    people = [s for s in sessions if left_out(s, own_uuid, own_user, now_ms) is None]
    people.sort(key=lambda s: (s.started is None, s.started or 0, s.user or ""))
    return [public_entry(s, now_ms) for s in people[:limit]], len(people) > limit


def public_entry(session, now_ms):
    """What ``/sessions/list`` shows of one session (see the module's docstring)."""
    s = session
    idle = None
    if iso_ms(s.last_access) is not None:
        idle = round(max(0, now_ms - s.last_access) / 1000.0, 1)
    return {
        "user": s.user,
        "agent": s.agent if s.detailed else None,
        "started": iso_ms(s.started),
        "lastAccess": iso_ms(s.last_access),
        "idleSeconds": idle,
        # The server returned no limits for a session it would not show: unknown, not "none".
        "timeToIdleSeconds": s.time_to_idle / 1000.0 if s.detailed else None,
        "timeToLiveSeconds": s.time_to_live / 1000.0 if s.detailed else None,
        "restricted": not s.detailed,
    }


def iso(epoch_seconds):
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


def iso_ms(epoch_ms):
    """``iso`` of milliseconds since the epoch, as OMERO keeps times; None (and anything that is
    not a number: the response's shape is read from OMERO's source, not observed) stays None."""
    if isinstance(epoch_ms, bool) or not isinstance(epoch_ms, (int, float)):
        return None
    return iso(epoch_ms / 1000.0)


class Sampler:
    """Takes samples from a source when asked, one at a time, and keeps the last one.
    ``source()`` returns ``(sessions, own_uuid, own_user)`` or raises; its failure is the
    sample's failure.

    ``answer()`` is one request: the last sample if it began less than ``min_interval`` ago,
    else a new one (taken in a thread of its own, which later requests join) waited for at most
    ``wait`` seconds. ``clock`` dates samples (``takenAt``), ``monotonic`` ages them; the wait
    itself is always measured on the real monotonic clock."""

    def __init__(self, source, min_interval=DEFAULT_MIN_INTERVAL, wait=WAIT_SECONDS,
                 clock=time.time, monotonic=time.monotonic):
        self.source = source
        self.min_interval = min_interval
        self.wait = wait
        self.clock = clock
        self.monotonic = monotonic
        self.run = uuidlib.uuid4().hex[:8]
        self.number = 0  # samples finished, good or failed
        self.cond = threading.Condition()
        self.taking_since = None  # monotonic time the sample under way began; None: none is
        self.last = None  # (answer without age, monotonic time it began)
        # What /sessions/list shows of the last sample: (entries, truncated), or the error that
        # kept it from being listed. Replaced with ``last``, under the same lock, so a list
        # always belongs to the sample whose id it carries; at most MAX_LISTED entries.
        self.listing = None

    def sample(self):
        """Takes one sample now, in the calling thread, and keeps it."""
        began = self.monotonic()
        taken = self.clock()
        answer = {"format": FORMAT}
        listing = None
        try:
            sessions, own_uuid, own_user = self.source()
            now_ms = int(taken * 1000)
            count, excluded, restricted = count_sessions(sessions, own_uuid, own_user, now_ms)
            answer.update(ok=True, sessions=count, excluded=excluded, restricted=restricted)
            try:
                listing = listed_sessions(sessions, own_uuid, own_user, now_ms)
            except Exception as e:  # the count stands whatever the list's fields hold
                listing = RuntimeError("listing the sessions failed: %s" % describe(e))
        except Exception as e:  # every failure is reported, never turned into a count
            answer.update(ok=False, error=describe(e))
        with self.cond:
            self.number += 1
            answer.update(sample="%s-%d" % (self.run, self.number), takenAt=iso(taken))
            self.last = (answer, began)
            self.listing = listing
            self.cond.notify_all()
        return answer

    def take(self):
        """The body of the sampling thread ``answer`` starts."""
        try:
            answer = self.sample()
            if not answer["ok"]:
                log("sample %s failed: %s" % (answer["sample"], answer["error"]))
        finally:
            with self.cond:
                self.taking_since = None
                self.cond.notify_all()

    def answer(self, listing=False):
        """The answer to one request (see the class): never a sample that began ``min_interval``
        or more before the request, unless it finished after the request arrived. With
        ``listing``, the ``/sessions/list`` answer of that same sample."""
        give_up = time.monotonic() + self.wait
        with self.cond:
            seen = self.number
            while True:
                if self.last is not None:
                    answer, began = self.last
                    age = max(0.0, self.monotonic() - began)
                    if self.number > seen or age < self.min_interval:
                        answer = dict(answer, ageSeconds=round(age, 3))
                        return self.listed(answer) if listing else answer
                if self.taking_since is None:
                    self.taking_since = self.monotonic()
                    threading.Thread(target=self.take, daemon=True).start()
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    under_way = max(0.0, self.monotonic() - self.taking_since)
                    return {"format": LIST_FORMAT if listing else FORMAT, "ok": False, "sample": None,
                            "error": "no sample within %gs: the one under way for %.1fs is still "
                                     "waiting for the server" % (self.wait, under_way)}
                self.cond.wait(remaining)

    def listed(self, answer):
        """The ``/sessions/list`` answer of the sample ``answer`` reports (called with the lock
        held, so ``self.listing`` is that sample's)."""
        listed = {"format": LIST_FORMAT, "ok": answer["ok"]}
        for key in ("sample", "takenAt", "ageSeconds", "error", "excluded", "restricted"):
            if key in answer:
                listed[key] = answer[key]
        if not answer["ok"]:
            return listed
        if isinstance(self.listing, Exception):
            listed.update(ok=False, error=describe(self.listing))
            listed.pop("excluded", None)
            listed.pop("restricted", None)
            return listed
        entries, truncated = self.listing
        listed.update(count=answer["sessions"], sessions=entries, truncated=truncated)
        return listed


def describe(error):
    text = str(error) or error.__class__.__name__
    name = error.__class__.__name__
    return text if text.startswith(name) else "%s: %s" % (name, text)


def log(message):
    sys.stderr.write("%s %s\n" % (iso(time.time()), message))
    sys.stderr.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    sampler = None  # set by make_server
    server_version = "omero-session-counter/1"

    def do_GET(self):
        path = self.path.split("?")[0]
        if path not in ("/sessions", "/sessions/list"):
            self.send_error(404, "only /sessions and /sessions/list are served")
            return
        answer = self.sampler.answer(listing=path == "/sessions/list")
        body = json.dumps(answer, sort_keys=True).encode("utf-8")
        self.send_response(200 if answer["ok"] else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # one line per probe would flood the container log


class DualStackServer(http.server.ThreadingHTTPServer):
    """Listens on IPv6 and IPv4 where the kernel allows it (a pod IP may be either)."""

    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except (AttributeError, OSError):
            pass
        super().server_bind()


def make_server(sampler, port, host=None):
    handler = type("BoundHandler", (Handler,), {"sampler": sampler})
    if host is None:
        try:
            return DualStackServer(("::", port), handler)
        except OSError:  # no IPv6 in this pod
            pass
        host = "0.0.0.0"
    return http.server.ThreadingHTTPServer((host, port), handler)


class OmeroSource:
    """Counts through omero-py: one login kept alive between samples (every login is a session
    that lives until its idle timeout, so logging in at every sample would pile them up), and a
    new one when a request fails. Inferred from OMERO's source, not run against a server here:
    the response shape (``omero.cmd.CurrentSessionsResponse``: ``sessions``, ``contexts``,
    ``data`` as parallel lists; a ``None`` session where the caller may not read it) and the
    client calls. Anything missing is treated as not known, never as not a session."""

    def __init__(self, server, user, password, timeout_ms=10000):
        self.server = server
        self.user = user
        self.password = password
        self.timeout_ms = timeout_ms
        self.client = None

    def connect(self):
        import omero.clients  # noqa: F401  (imported here: the tests run without omero-py)
        import omero
        client = omero.client(host=self.server, pmap={
            # A stuck server must not stall the sampler for ever.
            "Ice.Override.Timeout": str(self.timeout_ms),
        })
        client.setAgent(AGENT)
        try:
            client.createSession(self.user, self.password)
        except Exception as e:
            client.__del__()
            raise RuntimeError("login to %s as %s refused or failed: %s" % (
                self.server, self.user, describe(e)))
        self.client = client

    def close(self):
        client, self.client = self.client, None
        if client is not None:
            try:
                client.closeSession()
            except Exception:
                pass
            try:
                client.__del__()
            except Exception:
                pass

    def __call__(self):
        if self.client is not None:
            try:
                return self.current()
            except Exception as e:
                # Samples are taken only when asked, so the kept login may have passed its idle
                # timeout while nobody asked (between drains): log in again, in this same sample.
                log("the kept login failed (%s); logging in again" % describe(e))
                self.close()
        self.connect()
        try:
            return self.current()
        except Exception:
            self.close()  # the next sample logs in again
            raise

    def current(self):
        import omero
        import omero.cmd
        from omero.rtypes import unwrap
        client = self.client
        own_uuid = client.getSessionId()
        callback = client.submit(omero.cmd.CurrentSessionsRequest(), loops=20, ms=500)
        try:
            response = callback.getResponse() if hasattr(callback, "getResponse") else callback
        finally:
            if hasattr(callback, "close"):
                callback.close(True)
        if isinstance(response, omero.cmd.ERR):
            raise RuntimeError("CurrentSessionsRequest failed: %s %s" % (
                response.category, response.name))
        sessions = []
        data = list(response.data or [])
        for i, context in enumerate(response.contexts):
            session = response.sessions[i] if i < len(response.sessions) else None
            values = unwrap(data[i]) if i < len(data) and data[i] is not None else {}
            user = getattr(context, "userName", None)
            if session is None:
                sessions.append(Session(user=user, uuid=getattr(context, "sessionUuid", None),
                                        detailed=False))
                continue
            sessions.append(Session(
                user=user,
                uuid=unwrap(getattr(session, "uuid", None)) or getattr(context, "sessionUuid", None),
                agent=unwrap(getattr(session, "userAgent", None)),
                share=isinstance(session, omero.model.Share),
                started=unwrap(getattr(session, "started", None)),
                last_access=values.get("lastAccessTime"),
                time_to_idle=unwrap(getattr(session, "timeToIdle", None)),
                time_to_live=unwrap(getattr(session, "timeToLive", None)),
            ))
        return sessions, own_uuid, self.user


def main():
    user = os.environ.get("OMERO_COUNTER_USER", "")
    password = os.environ.get("OMERO_COUNTER_PASSWORD", "")
    server = os.environ.get("OMERO_COUNTER_SERVER", "tcp://127.0.0.1:4063")
    port = int(os.environ.get("OMERO_COUNTER_PORT", DEFAULT_PORT))
    min_interval = float(os.environ.get("OMERO_COUNTER_MIN_INTERVAL", DEFAULT_MIN_INTERVAL))
    if not user or not password:
        source_error = RuntimeError(
            "OMERO_COUNTER_USER and OMERO_COUNTER_PASSWORD must be set (from the Secret named in "
            "spec.sessionCounter.credentialsSecret)")

        def source():
            raise source_error
        omero_source = None
    else:
        omero_source = source = OmeroSource(server, user, password)
    sampler = Sampler(source, min_interval=min_interval)
    httpd = make_server(sampler, port)
    log("serving /sessions and /sessions/list on port %d; counting %s as %s when asked, at most "
        "once every %gs"
        % (port, server, user, min_interval))
    try:
        httpd.serve_forever()
    finally:
        if omero_source is not None:
            omero_source.close()


if __name__ == "__main__":
    import signal

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    try:
        main()
    except KeyboardInterrupt:
        pass
