#!/bin/bash
# Image build step: start the broker once through this image's own entrypoint, with the JVM
# writing every class it loads to a class-data archive when it exits; run.sh then has every later
# broker (and the storage formatter) map the archive instead of loading classes from the jars.
# The run is taken as far as a test's first request: a topic created on demand. Its freshly
# formatted storage is kept as the template run.sh copies for the same configuration.
set -euo pipefail

archive=/opt/kafka/cds/kafka.jsa
staging=$archive.new
topic=kube-testenv-training
log=/tmp/training.log
# The operator's Kafka environment (imagebuild writes it), on ports of this build's own: image
# builds share the host's network. run.sh keys its storage template without port numbers.
set -a
# shellcheck source=/dev/null
. /etc/kafka/docker/training.env
set +a
offset=$((10000 + RANDOM % 20000))
shift_ports() {
    local rest=$1 out=""
    while [[ $rest =~ :([0-9]+) ]]; do
        out+=${rest%%"${BASH_REMATCH[0]}"*}:$((BASH_REMATCH[1] + offset))
        rest=${rest#*"${BASH_REMATCH[0]}"}
    done
    printf '%s' "$out$rest"
}
KAFKA_LISTENERS=$(shift_ports "$KAFKA_LISTENERS")
KAFKA_ADVERTISED_LISTENERS=$(shift_ports "$KAFKA_ADVERTISED_LISTENERS")
KAFKA_CONTROLLER_QUORUM_VOTERS=$(shift_ports "$KAFKA_CONTROLLER_QUORUM_VOTERS")
[[ $KAFKA_LISTENERS =~ EXTERNAL://[^,]*:([0-9]+) ]] && port=${BASH_REMATCH[1]}

# Kafka's framing: big-endian integers; strings prefixed by their int16 length.
i16() { printf "$(printf '\\x%02x\\x%02x' $((($1 >> 8) & 255)) $(($1 & 255)))"; }
i32() { i16 $((($1 >> 16) & 65535)); i16 $(($1 & 65535)); }
str() { i16 ${#1}; printf %s "$1"; }

# A Metadata v4 request for one topic with auto-creation on (fields: api key, version,
# correlation id, client id; topics; allow_auto_topic_creation).
ask_for_topic() {
    local client=kube-testenv
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    { i32 $((10 + ${#client} + 7 + ${#topic})); i16 3; i16 4; i32 1; str "$client"; i32 1; str "$topic"; printf '\x01'; } >&3
    timeout 5 head -c 4 <&3 >/dev/null || true
    exec 3>&-
}

# Waits for a line in the broker's log, for at most 180 s, and fails if the broker ended.
await() {
    for _ in $(seq 1 900); do
        grep -q "$1" "$log" && return 0
        kill -0 "$broker" 2>/dev/null || { echo "training broker exited" >&2; cat "$log" >&2; exit 1; }
        if [ -n "${2:-}" ]; then "$2" 2>/dev/null || true; fi
        sleep 0.2
    done
    echo "training: no '$1' in 180 s" >&2
    tail -n 50 "$log" >&2
    exit 1
}

KAFKA_OPTS="-XX:ArchiveClassesAtExit=$staging" KAFKA_LOG4J_ROOT_LOGLEVEL=INFO KUBE_TESTENV_SAVE_STORAGE_TEMPLATE=1 \
    /etc/kafka/docker/run >"$log" 2>&1 &
broker=$!
await "Kafka Server started"
await "Created log for partition $topic-0" ask_for_topic
kill -TERM "$broker"
wait "$broker" || true  # 143 after SIGTERM: the JVM wrote the archive on its way out

# -Xshare:on fails rather than run without the archive: a broken one never ships.
java -XX:SharedArchiveFile="$staging" -Xshare:on -cp "/opt/kafka/libs/*" kafka.Kafka --version
mv "$staging" "$archive"
# The image keeps nothing else of the run: empty storage and config, as before training.
rm -rf /var/lib/kafka/data/* /opt/kafka/config/* "$log" "/tmp/hsperfdata_$(id -un)"
ls -l "$archive" /opt/kafka/storage
