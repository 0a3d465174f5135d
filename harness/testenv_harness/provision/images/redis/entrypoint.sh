#!/bin/sh
# Entrypoint of our Redis image: the same contract as the upstream image's (see the Dockerfile).
set -eu

# Options only (`--port 7000`) or a config file first: they are redis-server's.
case "${1:-}" in
    -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
    if [ "$(id -u)" = 0 ]; then
        # Hand the data directory to the redis user, then come back here as that user.
        find . \! -user redis -exec chown redis: {} +
        exec setpriv --reuid=redis --regid=redis --init-groups -- "$0" "$@"
    fi
    # Debian's binary keeps Redis's compiled default (protected mode on), which refuses every
    # client from another host when no password is set. In a pod that means every client, so turn
    # it off unless the command line or the config file given as the first argument decides.
    decided=
    for arg in "$@"; do
        [ "$arg" = --protected-mode ] && decided=1
    done
    if [ $# -ge 2 ] && [ -f "$2" ] && grep -Eqi '^[[:space:]]*protected-mode[[:space:]]' "$2"; then
        decided=1
    fi
    [ -n "$decided" ] || set -- "$@" --protected-mode no
    # Files Redis writes (dump, AOF) readable by it alone, unless a umask was chosen already.
    [ "$(umask)" != 0022 ] || umask 0077
fi

exec "$@"
