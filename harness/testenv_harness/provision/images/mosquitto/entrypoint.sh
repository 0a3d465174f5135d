#!/bin/sh
# Entrypoint of our Mosquitto image: as root, give /mosquitto to the broker's user (it switches to
# that user itself), then run the command.
set -eu
if [ "$(id -u)" = 0 ] && [ -d /mosquitto ]; then
    chown -R mosquitto:mosquitto /mosquitto 2>/dev/null || true
fi
exec "$@"
