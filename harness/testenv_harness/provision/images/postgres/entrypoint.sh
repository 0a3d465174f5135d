#!/bin/bash
# Entrypoint of our PostgreSQL image: the upstream image's contract (see the Dockerfile), written
# for Debian's packages.
set -Eeo pipefail

# VAR or VAR_FILE (a path whose content is the value), never both; DEFAULT otherwise.
from_env_or_file() {
    local var=$1 default=${2:-} file_var="${1}_FILE" value
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo >&2 "error: $var and $file_var are both set; set one of them"
        exit 1
    fi
    value=$default
    if [ -n "${!var:-}" ]; then
        value=${!var}
    elif [ -n "${!file_var:-}" ]; then
        value=$(<"${!file_var}")
    fi
    export "$var=$value"
    unset "$file_var"
}

# Options that make postgres print something and exit need no set-up.
wants_info_only() {
    local arg
    for arg in "$@"; do
        case "$arg" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
    done
    return 1
}

prepare_directories() {
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || :
    mkdir -p /var/run/postgresql 2>/dev/null || :
    chmod 3775 /var/run/postgresql 2>/dev/null || :
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        chmod 0700 "$POSTGRES_INITDB_WALDIR"
    fi
    if [ "$(id -u)" = 0 ]; then
        find "$PGDATA" /var/run/postgresql ${POSTGRES_INITDB_WALDIR:+"$POSTGRES_INITDB_WALDIR"} \
            \! -user postgres -exec chown postgres: {} +
    fi
}

# Run SQL as the superuser over the set-up server's socket, against POSTGRES_DB unless told
# otherwise.
run_sql() {
    PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
        --no-psqlrc --dbname "${SQL_DB:-$POSTGRES_DB}" "$@"
}

initialize() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'MSG'
error: the database is not initialized and no superuser password is set.
Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust to let
anyone connect without a password.
MSG
        exit 1
    fi
    [ "$POSTGRES_HOST_AUTH_METHOD" != trust ] ||
        echo >&2 "warning: POSTGRES_HOST_AUTH_METHOD=trust: any client can connect without a password"

    local initdb_args=()
    [ -z "${POSTGRES_INITDB_WALDIR:-}" ] || initdb_args+=(--waldir "$POSTGRES_INITDB_WALDIR")
    # POSTGRES_INITDB_ARGS is a shell-quoted string, as upstream documents it.
    eval "initdb_args+=($POSTGRES_INITDB_ARGS)"
    # initdb rejects an empty password file; a lone newline means "no password".
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        "${initdb_args[@]}"

    # Every host may connect with the server's password method (scram-sha-256 unless configured).
    local method=${POSTGRES_HOST_AUTH_METHOD:-}
    if [ -z "$method" ]; then
        method=$(postgres -C password_encryption "${server_args[@]}")
    fi
    printf '\nhost all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"

    # A server for creating the database and running the init files: no TCP, and its socket in a
    # private directory, so pg_isready (the readiness probe) does not see a server that is about to
    # stop again. Init scripts reach it through the exported PGHOST.
    local setup_socket
    setup_socket=$(mktemp -d /tmp/postgres-setup.XXXXXX)
    export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}" PGHOST=$setup_socket
    NOTIFY_SOCKET= PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -w start \
        -o "$(printf '%q ' "${server_args[@]}" -c listen_addresses= \
            -c unix_socket_directories="$setup_socket" -p "${PGPORT:-5432}")"

    if [ "$POSTGRES_DB" != postgres ]; then
        local exists
        exists=$(SQL_DB=postgres run_sql --tuples-only --set db="$POSTGRES_DB" \
            <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
        if [ -z "$exists" ]; then
            SQL_DB=postgres run_sql --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        fi
    fi

    local f
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    echo "$0: running $f"; "$f"
                else
                    echo "$0: sourcing $f"; . "$f"
                fi ;;
            *.sql) echo "$0: running $f"; run_sql -f "$f" ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | run_sql ;;
            *.sql.xz) echo "$0: running $f"; xzcat "$f" | run_sql ;;
            *.sql.zst) echo "$0: running $f"; zstd -dc "$f" | run_sql ;;
            *) echo "$0: ignoring $f" ;;
        esac
    done

    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD PGHOST
    rmdir "$setup_socket" 2>/dev/null || :
    echo "PostgreSQL initialized; starting the server."
}

main() {
    # Options alone are the server's.
    if [ "${1:0:1}" = - ]; then
        set -- postgres "$@"
    fi
    if [ "$1" = postgres ] && ! wants_info_only "$@"; then
        from_env_or_file POSTGRES_PASSWORD
        from_env_or_file POSTGRES_USER postgres
        from_env_or_file POSTGRES_DB "$POSTGRES_USER"
        from_env_or_file POSTGRES_INITDB_ARGS
        : "${POSTGRES_HOST_AUTH_METHOD:=}"
        prepare_directories
        if [ "$(id -u)" = 0 ]; then
            exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$BASH_SOURCE" "$@"
        fi
        server_args=("${@:2}")
        if [ ! -s "$PGDATA/PG_VERSION" ]; then
            ls /docker-entrypoint-initdb.d/ >/dev/null
            initialize
        fi
    fi
    exec "$@"
}

main "$@"
