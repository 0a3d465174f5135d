#!/bin/bash
# Entrypoint of our RabbitMQ image: run rabbitmq-* commands as the rabbitmq user, in the foreground.
set -euo pipefail

if [[ "${1:-}" == rabbitmq* ]] && [ "$(id -u)" = 0 ]; then
    if [ "$1" = rabbitmq-server ]; then
        find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq: {} +
    fi
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups -- "$BASH_SOURCE" "$@"
fi

if [ "${1:-}" = rabbitmq-server ]; then
    # The server and every CLI tool (probes run as root too) must agree on the Erlang cookie.
    # Write one before anything can race to create it with the wrong owner.
    cookie=/var/lib/rabbitmq/.erlang.cookie
    if [ ! -s "$cookie" ] && [ -w /var/lib/rabbitmq ]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr a-z A-Z >"$cookie")
        chmod 0400 "$cookie"
    fi
    # Long node names when the host name is a FQDN, as upstream does.
    if [ -z "${RABBITMQ_USE_LONGNAME:-}" ] && [ "$(hostname)" != "$(hostname -s)" ]; then
        export RABBITMQ_USE_LONGNAME=true
    fi
    # Makes rabbitmq-server exec the Erlang VM instead of waiting on it.
    export RUNNING_UNDER_SYSTEMD=true
fi

exec "$@"
