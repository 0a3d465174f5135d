#!/bin/bash
# Entrypoint of our LocalStack image, following the upstream image's start sequence.
set -eo pipefail

# LOCALSTACK_FOO=x also sets FOO=x (LOCALSTACK_HOST, LOCALSTACK_HOSTNAME and LOCALSTACK_<digit>...
# keep their meaning and are not copied).
while IFS= read -r name; do
    case "$name" in
        LOCALSTACK_HOST*|LOCALSTACK_[0-9]*) ;;
        LOCALSTACK_?*) export "${name#LOCALSTACK_}=${!name}" ;;
    esac
done < <(compgen -e)

if [ -n "${LOCALSTACK_AUTH_TOKEN:-}${LOCALSTACK_API_KEY:-}" ]; then
    echo "Note: this image runs LocalStack's community edition; the auth token is not used." >&2
fi

mkdir -p /var/lib/localstack/logs
# shellcheck disable=SC1091
source /opt/code/localstack/.venv/bin/activate

# Runtime hooks of the BOOT stage run before LocalStack itself.
if [ -d /etc/localstack/init/boot.d ]; then
    python3 -m localstack.runtime.init BOOT
fi

# The supervisor restarts LocalStack on request and passes SIGTERM on; exec keeps signals direct.
exec localstack-supervisor
