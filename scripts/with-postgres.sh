#!/usr/bin/env bash
# Runs CMD... against a throwaway PostgreSQL server: initdb in a temporary directory, password
# (SCRAM) authentication over TCP on 127.0.0.1 and a free port, a test role that may create
# databases and roles, and OMERO_OPERATOR_TEST_DATABASE_URL exported for CMD. The server is stopped and
# the directory removed however CMD ends. Installs nothing: on Debian/Ubuntu the `postgresql`
# package provides the binaries (set PG_BINDIR to use others).
#
#   scripts/with-postgres.sh cargo test --test database_probe
#
# As root (CI), the server runs as the `postgres` OS user, since initdb refuses root; CMD still
# runs as root. As any other user, everything runs as that user.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 CMD [ARG...]" >&2
    exit 2
fi

die() {
    echo "with-postgres: $*" >&2
    exit 1
}

find_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    # Debian layout, newest major version first.
    local initdb
    initdb=$(ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$initdb" ]; then
        dirname "$initdb"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

BINDIR=$(find_bindir)
for tool in initdb pg_ctl psql; do
    [ -x "$BINDIR/$tool" ] || die "no PostgreSQL server binaries found (looked for /usr/lib/postgresql/*/bin/initdb). Install them first, e.g. 'apt-get install -y postgresql', or set PG_BINDIR."
done

if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' OS user to run the server as"
    command -v runuser >/dev/null 2>&1 || die "running as root, but runuser (util-linux) is missing"
    # From the work directory: the postgres user may not be allowed into the caller's.
    as_server() { (cd "$WORK" && runuser -u postgres -- "$@"); }
else
    as_server() { "$@"; }
fi

ROLE=omero_test
PASSWORD=omero-test-password
# Under /tmp whatever TMPDIR says: the postgres user must reach it, and a Unix socket path
# must stay short.
WORK=$(mktemp -d /tmp/omero-operator-pg.XXXXXX)
DATA="$WORK/data"
STARTED=no

cleanup() {
    local status=$?
    if [ "$STARTED" = yes ]; then
        as_server "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 20 stop >/dev/null 2>&1 \
            || as_server "$BINDIR/pg_ctl" -D "$DATA" -m immediate -w -t 10 stop >/dev/null 2>&1 \
            || echo "with-postgres: could not stop the server in $DATA" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$WORK"
fi
chmod 700 "$WORK"

# Local (socket) connections are trusted: the socket sits in the private directory and only
# this script uses it. TCP connections, which the tests use, need the password.
as_server "$BINDIR/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A random port nobody listens on; should another process take it first, start fails and the
# next attempt picks another.
for attempt in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 40000))
    if port_in_use "$PORT"; then
        continue
    fi
    cat >"$DATA/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
max_connections = 200
# A throwaway server: durability buys nothing here.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if as_server "$BINDIR/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w -t 30 start >/dev/null 2>&1; then
        STARTED=yes
        break
    fi
    echo "with-postgres: start on port $PORT failed (attempt $attempt)" >&2
done
if [ "$STARTED" != yes ]; then
    cat "$WORK/server.log" >&2 || true
    die "the server did not start"
fi

as_server "$BINDIR/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE $ROLE LOGIN CREATEDB CREATEROLE PASSWORD '$PASSWORD'" \
    -c "CREATE DATABASE $ROLE OWNER $ROLE" >/dev/null

export OMERO_OPERATOR_TEST_DATABASE_URL="postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$ROLE"
echo "with-postgres: PostgreSQL $("$BINDIR/pg_ctl" --version | sed -E 's/.*\(PostgreSQL\) ([0-9.]+).*/\1/') on 127.0.0.1:$PORT" >&2

# Not exec: the EXIT trap must still run to stop the server.
set +e
"$@"
