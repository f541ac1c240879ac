#!/usr/bin/env bash
# A private highly available PostgreSQL for kagi's tests and soak runs, on pg_auto_failover
# (Debian packages postgresql-15-auto-failover, pg-auto-failover-cli: scripts/setup.sh):
# a monitor and two nodes (primary and secondary, synchronous replication), each with its own
# data directory under DIR, listening on 127.0.0.1 at PORT (monitor), PORT+1 and PORT+2,
# trust authentication, a database `kagi`. Never touches a PostgreSQL already running.
#
#   scripts/private-ha-postgres.sh start DIR PORT   # prints the multi-host URL that follows
#                                                   # the primary (target_session_attrs=read-write)
#   scripts/private-ha-postgres.sh primary DIR      # prints the primary's postmaster PID
#   scripts/private-ha-postgres.sh state DIR        # the formation's state table
#   scripts/private-ha-postgres.sh stop DIR         # stops exactly the formation in DIR
#
# The pg_autoctl supervisors' PIDs are kept in DIR/*.pid; stop signals only their process
# groups (a fast shutdown, all at once). As root,
# everything runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail
cmd=${1:?start DIR PORT | primary DIR | state DIR | stop DIR}
dir=${2:?directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed: run scripts/setup.sh" >&2; exit 1; }
command -v pg_autoctl >/dev/null 2>&1 || {
    echo "pg_auto_failover is not installed: run scripts/setup.sh" >&2
    exit 1
}
# pg_autoctl keeps each node's configuration and state under the XDG directories, by the
# node's data directory: kept in DIR too, so that nothing outlives the formation (left in the
# postgres user's home, a later formation in a directory of the same name read them and
# failed to start).
xdg() {
    echo XDG_CONFIG_HOME="$dir/xdg/config" XDG_DATA_HOME="$dir/xdg/data" XDG_RUNTIME_DIR="$dir/xdg/run"
}
as_pg() {
    # shellcheck disable=SC2046
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env PATH="$bin:$PATH" $(xdg) "$@"; else env PATH="$bin:$PATH" $(xdg) "$@"; fi
}
# Starts `pg_autoctl run` for DIR/$1 in the background, its PID in DIR/$1.pid.
run_node() {
    # shellcheck disable=SC2046
    if [ "$(id -u)" -eq 0 ]; then
        setsid runuser -u postgres -- env PATH="$bin:$PATH" $(xdg) \
            pg_autoctl run --pgdata "$dir/$1" >"$dir/$1.log" 2>&1 &
    else
        setsid env PATH="$bin:$PATH" $(xdg) pg_autoctl run --pgdata "$dir/$1" >"$dir/$1.log" 2>&1 &
    fi
    echo $! >"$dir/$1.pid"
}
state() {
    as_pg pg_autoctl show state --pgdata "$dir/monitor" 2>/dev/null || true
}
case "$cmd" in
start)
    port=${3:?port}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/xdg/config" "$dir/xdg/data" "$dir/xdg/run"
    chmod 700 "$dir/xdg/run"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_pg pg_autoctl create monitor --pgdata "$dir/monitor" --pgport "$port" \
        --hostname 127.0.0.1 --auth trust --no-ssl >"$dir/monitor-create.log" 2>&1
    run_node monitor
    monitor="postgres://autoctl_node@127.0.0.1:$port/pg_auto_failover?sslmode=disable"
    for i in 1 2; do
        # The monitor must answer before a node registers.
        for _ in $(seq 1 100); do
            as_pg psql "$monitor" -Atc "select 1" >/dev/null 2>&1 && break
            sleep 0.2
        done
        as_pg pg_autoctl create postgres --pgdata "$dir/node$i" --pgport $((port + i)) \
            --hostname 127.0.0.1 --auth trust --no-ssl --monitor "$monitor" \
            --dbname kagi --name "node$i" >"$dir/node$i-create.log" 2>&1
        run_node "node$i"
    done
    # Ready when one node is primary and the other secondary.
    for _ in $(seq 1 300); do
        s=$(state)
        if echo "$s" | grep -q "| *primary *| *primary *$" && echo "$s" | grep -q "| *secondary *| *secondary *$"; then
            echo "postgres://postgres@127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))/kagi?target_session_attrs=read-write"
            exit 0
        fi
        sleep 0.2
    done
    echo "the formation did not become ready:" >&2
    state >&2
    exit 1
    ;;
primary)
    dir=$(cd "$dir" && pwd)
    for i in 1 2; do
        port=$(sed -n 4p "$dir/node$i/postmaster.pid" 2>/dev/null || true)
        [ -n "$port" ] || continue
        if as_pg psql "postgres://postgres@127.0.0.1:$port/kagi" -Atc "select not pg_is_in_recovery()" 2>/dev/null | grep -q t; then
            head -n 1 "$dir/node$i/postmaster.pid"
            exit 0
        fi
    done
    echo "no primary now" >&2
    exit 1
    ;;
state)
    dir=$(cd "$dir" && pwd)
    state
    ;;
stop)
    dir=$(cd "$dir" && pwd)
    # Each supervisor's process group (pg_autoctl and the PostgreSQL it runs) is told to stop
    # with a fast shutdown (SIGINT: clients disconnected, no wait for them), all three at once
    # (one after the other took about 12 s, together about 2 s); a group still there after
    # 10 s is killed.
    pids=()
    for n in node2 node1 monitor; do
        [ -e "$dir/$n.pid" ] || continue
        pid=$(cat "$dir/$n.pid")
        kill -INT -- "-$pid" 2>/dev/null || true
        pids+=("$pid")
        rm -f "$dir/$n.pid"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start DIR PORT | primary DIR | state DIR | stop DIR" >&2
    exit 2
    ;;
esac
