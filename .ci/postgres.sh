#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the real-database tests (db-tests/tests/postgres.rs).
#
# Sourced (what .ci/run does):
#     . .ci/postgres.sh
#     trap cylinder_pg_down EXIT
#     cylinder_pg_up
# Executed:
#     eval "$(.ci/postgres.sh up)"          # prints the export lines
#     .ci/postgres.sh down "$CYLINDER_POSTGRES_DIR"
#
# `cylinder_pg_up` installs PostgreSQL from Debian's packages if it is missing, creates a
# cluster in a fresh temporary directory as an unprivileged user (initdb refuses root),
# listening on 127.0.0.1 only, on a free port, with trust authentication, creates the
# database `cylinder` owned by the superuser `cylinder`, and exports:
#     CYLINDER_POSTGRES_URL   postgres://cylinder@127.0.0.1:PORT/cylinder
#     CYLINDER_POSTGRES_CTL   an executable: `ctl stop` (fast shutdown, waits) / `ctl start`
#                             (waits until it accepts connections) / `ctl status`
#     CYLINDER_POSTGRES_DIR   the temporary directory (data, log, socket, ctl)
# `cylinder_pg_down` stops that cluster and removes the directory. Clusters left behind by
# runs that were killed (their owner process is gone) are removed by the next `up`.
#
# Several servers (db-tests/tests/postgres_cluster.rs): `cylinder_pg_up_cluster 3` makes three
# such clusters, each on its own free port, and exports, space-separated and in one order:
#     CYLINDER_POSTGRES_URLS  the servers' URLs
#     CYLINDER_POSTGRES_CTLS  their control scripts (as CYLINDER_POSTGRES_CTL above)
#     CYLINDER_POSTGRES_DIRS  their directories
# leaving CYLINDER_POSTGRES_URL/_CTL/_DIR as they were. `cylinder_pg_down_cluster` removes
# them. Executed: `eval "$(.ci/postgres.sh up-cluster 3)"`, `.ci/postgres.sh down-cluster`.

cylinder_pg_log() { printf 'postgres.sh: %s\n' "$*" >&2; }

# The newest PostgreSQL's bin directory (Debian keeps initdb and pg_ctl out of PATH).
cylinder_pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && printf '%s\n' "$d"
}

cylinder_pg_install() {
    if cylinder_pg_bindir >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        cylinder_pg_log "PostgreSQL is not installed and we are not root: apt-get install postgresql"
        return 1
    fi
    cylinder_pg_log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    # No default cluster: we make our own, and the package's would take port 5432 and time.
    if ! dpkg -s postgresql-common >/dev/null 2>&1; then
        mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/cylinder-ci.conf
    fi
    apt-cache policy postgresql >&2 || true
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql </dev/null >&2
    cylinder_pg_bindir >/dev/null || {
        cylinder_pg_log "no initdb under /usr/lib/postgresql/*/bin after installing postgresql"
        return 1
    }
}

# The unprivileged user that owns the cluster (when we are root).
cylinder_pg_user() {
    if [ "$(id -u)" != 0 ]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        id cylinder-pg >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin cylinder-pg >&2
        echo cylinder-pg
    fi
}

# Runs a command as the cluster's user, inside the cluster's directory (so that the user can
# read its working directory).
cylinder_pg_as() {
    local user=$1 dir=$2
    shift 2
    if [ "$(id -u)" = 0 ] && [ "$user" != root ]; then
        (cd "$dir" && runuser -u "$user" -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

# true when something accepts TCP connections on 127.0.0.1:$1
cylinder_pg_port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Stops the cluster in $1 (if it runs) and removes the directory.
cylinder_pg_remove() {
    local dir=$1 bin user
    case "$dir" in
    */cylinder-pg.*) ;;
    *)
        cylinder_pg_log "refusing to remove $dir"
        return 1
        ;;
    esac
    [ -d "$dir" ] || return 0
    bin=$(cylinder_pg_bindir) || bin=
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        user=$(stat -c %U "$dir/data")
        cylinder_pg_as "$user" "$dir" "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 20 stop >/dev/null 2>&1 ||
            cylinder_pg_as "$user" "$dir" "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 20 stop >/dev/null 2>&1 ||
            true
    fi
    rm -rf "$dir"
}

# Removes clusters whose owner process is gone (a run that was killed before its trap ran).
cylinder_pg_sweep() {
    local d owner
    for d in "${TMPDIR:-/tmp}"/cylinder-pg.*; do
        [ -d "$d" ] || continue
        owner=$(cat "$d/owner" 2>/dev/null || true)
        if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then
            continue
        fi
        cylinder_pg_log "removing the stale cluster $d"
        cylinder_pg_remove "$d" || true
    done
}

# Creates and starts the cluster; exports the variables above. $1: the owner pid (default $$).
cylinder_pg_up() {
    local owner=${1:-$$} started bin user dir port tries ok ctl q
    started=$(date +%s%N)
    cylinder_pg_install || return 1
    bin=$(cylinder_pg_bindir)
    user=$(cylinder_pg_user) || return 1
    cylinder_pg_sweep

    dir=$(mktemp -d "${TMPDIR:-/tmp}/cylinder-pg.XXXXXX") || return 1
    export CYLINDER_POSTGRES_DIR=$dir
    echo "$owner" >"$dir/owner"
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir"

    if ! cylinder_pg_as "$user" "$dir" "$bin/initdb" -D "$dir/data" -U cylinder \
        --auth=trust --no-locale -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
        cylinder_pg_log "initdb failed:"
        cat "$dir/initdb.log" >&2
        return 1
    fi
    echo "include_if_exists = 'cylinder.conf'" >>"$dir/data/postgresql.conf"

    ok=
    for tries in 1 2 3 4 5 6 7 8 9 10; do
        # The first try takes $CYLINDER_POSTGRES_PORT if set; then random ports.
        if [ "$tries" = 1 ] && [ -n "${CYLINDER_POSTGRES_PORT:-}" ]; then
            port=$CYLINDER_POSTGRES_PORT
        else
            port=$((20000 + RANDOM % 30000))
        fi
        cylinder_pg_port_busy "$port" && continue
        cat >"$dir/data/cylinder.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        [ "$(id -u)" = 0 ] && chown "$user" "$dir/data/cylinder.conf"
        rm -f "$dir/log"
        if cylinder_pg_as "$user" "$dir" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null; then
            ok=1
            break
        fi
        if grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets' "$dir/log" 2>/dev/null; then
            cylinder_pg_log "port $port is taken, trying another"
            continue
        fi
        cylinder_pg_log "the server did not start:"
        tail -n 20 "$dir/log" >&2
        return 1
    done
    if [ -z "$ok" ]; then
        cylinder_pg_log "no free port after $tries tries"
        return 1
    fi

    if ! "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U cylinder -d postgres \
        -c 'CREATE DATABASE cylinder' >&2; then
        cylinder_pg_log "could not create the database"
        return 1
    fi

    # The control script the tests use to stop and restart this very cluster.
    ctl=$dir/ctl
    {
        echo '#!/usr/bin/env bash'
        echo '# Stops, starts or reports the throw-away cluster made by .ci/postgres.sh.'
        echo 'set -euo pipefail'
        printf 'dir=%q bin=%q user=%q\n' "$dir" "$bin" "$user"
        cat <<'EOF'
as() {
    if [ "$(id -u)" = 0 ] && [ "$user" != root ]; then
        (cd "$dir" && runuser -u "$user" -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}
case "${1:-}" in
stop) as "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop ;;
start) as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start ;;
status) as "$bin/pg_ctl" -D "$dir/data" status ;;
*)
    echo "usage: $0 stop|start|status" >&2
    exit 2
    ;;
esac
EOF
    } >"$ctl"
    chmod 755 "$ctl"

    export CYLINDER_POSTGRES_URL="postgres://cylinder@127.0.0.1:$port/cylinder"
    export CYLINDER_POSTGRES_CTL=$ctl
    q=$((($(date +%s%N) - started) / 1000000))
    cylinder_pg_log "PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') at $CYLINDER_POSTGRES_URL (ready in ${q} ms)"
}

# Stops the cluster and removes its directory. $1: the directory (default $CYLINDER_POSTGRES_DIR).
cylinder_pg_down() {
    local dir=${1:-${CYLINDER_POSTGRES_DIR:-}}
    [ -n "$dir" ] || return 0
    cylinder_pg_remove "$dir"
}

# Creates and starts $1 clusters (default 3); exports CYLINDER_POSTGRES_URLS, _CTLS and
# _DIRS. $2: the owner pid (default $$).
cylinder_pg_up_cluster() {
    local n=${1:-3} owner=${2:-$$} i urls= ctls= dirs= rc=0
    local url=${CYLINDER_POSTGRES_URL-} ctl=${CYLINDER_POSTGRES_CTL-} dir=${CYLINDER_POSTGRES_DIR-}
    local had_url=${CYLINDER_POSTGRES_URL+1} had_ctl=${CYLINDER_POSTGRES_CTL+1} had_dir=${CYLINDER_POSTGRES_DIR+1}
    for ((i = 0; i < n; i++)); do
        # A fixed port would be taken by the first only.
        if ! CYLINDER_POSTGRES_PORT= cylinder_pg_up "$owner"; then
            rc=1
            [ -n "${CYLINDER_POSTGRES_DIR:-}" ] && [ "$CYLINDER_POSTGRES_DIR" != "$dir" ] &&
                dirs="$dirs $CYLINDER_POSTGRES_DIR"
            break
        fi
        urls="$urls $CYLINDER_POSTGRES_URL"
        ctls="$ctls $CYLINDER_POSTGRES_CTL"
        dirs="$dirs $CYLINDER_POSTGRES_DIR"
    done
    export CYLINDER_POSTGRES_URLS=${urls# } CYLINDER_POSTGRES_CTLS=${ctls# } CYLINDER_POSTGRES_DIRS=${dirs# }
    # The single server's variables, as they were.
    if [ -n "$had_url" ]; then export CYLINDER_POSTGRES_URL=$url; else unset CYLINDER_POSTGRES_URL; fi
    if [ -n "$had_ctl" ]; then export CYLINDER_POSTGRES_CTL=$ctl; else unset CYLINDER_POSTGRES_CTL; fi
    if [ -n "$had_dir" ]; then export CYLINDER_POSTGRES_DIR=$dir; else unset CYLINDER_POSTGRES_DIR; fi
    [ "$rc" = 0 ] && cylinder_pg_log "$n servers: $CYLINDER_POSTGRES_URLS"
    return "$rc"
}

# Stops the clusters of cylinder_pg_up_cluster and removes their directories. $@: the
# directories (default $CYLINDER_POSTGRES_DIRS).
cylinder_pg_down_cluster() {
    local d dirs
    if [ "$#" -gt 0 ]; then dirs="$*"; else dirs=${CYLINDER_POSTGRES_DIRS:-}; fi
    for d in $dirs; do
        cylinder_pg_remove "$d" || true
    done
}

# Executed rather than sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    up)
        # The cluster belongs to the calling shell: it is swept once that shell is gone. In
        # `eval "$(.ci/postgres.sh up)"` our parent is the command substitution's subshell,
        # gone at once, so the owner is our grandparent (if bash ran us without a subshell,
        # that is a longer-lived process: the sweep only comes later).
        owner=$PPID
        if stat=$(cat "/proc/$PPID/stat" 2>/dev/null); then
            stat=${stat##*) }
            read -r _ grandparent _ <<<"$stat"
            [ "${grandparent:-0}" -gt 1 ] && owner=$grandparent
        fi
        if ! cylinder_pg_up "$owner" >&2; then
            cylinder_pg_down
            exit 1
        fi
        printf 'export CYLINDER_POSTGRES_URL=%q\n' "$CYLINDER_POSTGRES_URL"
        printf 'export CYLINDER_POSTGRES_CTL=%q\n' "$CYLINDER_POSTGRES_CTL"
        printf 'export CYLINDER_POSTGRES_DIR=%q\n' "$CYLINDER_POSTGRES_DIR"
        ;;
    up-cluster)
        owner=$PPID
        if stat=$(cat "/proc/$PPID/stat" 2>/dev/null); then
            stat=${stat##*) }
            read -r _ grandparent _ <<<"$stat"
            [ "${grandparent:-0}" -gt 1 ] && owner=$grandparent
        fi
        if ! cylinder_pg_up_cluster "${2:-3}" "$owner" >&2; then
            cylinder_pg_down_cluster
            exit 1
        fi
        printf 'export CYLINDER_POSTGRES_URLS=%q\n' "$CYLINDER_POSTGRES_URLS"
        printf 'export CYLINDER_POSTGRES_CTLS=%q\n' "$CYLINDER_POSTGRES_CTLS"
        printf 'export CYLINDER_POSTGRES_DIRS=%q\n' "$CYLINDER_POSTGRES_DIRS"
        ;;
    down) cylinder_pg_down "${2:-}" ;;
    down-cluster)
        shift
        cylinder_pg_down_cluster "$@"
        ;;
    *)
        echo "usage: $0 up | down [DIR] | up-cluster [N] | down-cluster [DIR...]" >&2
        echo "  (or source it and call cylinder_pg_up / _down / _up_cluster N / _down_cluster)" >&2
        exit 2
        ;;
    esac
fi
