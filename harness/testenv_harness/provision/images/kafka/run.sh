#!/bin/bash
# Entrypoint of our Kafka image: the apache/kafka image's environment contract (see the Dockerfile)
# implemented directly: environment -> server.properties, format KRaft storage, exec the broker.
set -euo pipefail

KAFKA_HOME=/opt/kafka
CONFIG_DIR=$KAFKA_HOME/config
MOUNTED_DIR=/mnt/shared/config
CLASSPATH="$KAFKA_HOME/libs/*"
ARCHIVE=$KAFKA_HOME/cds/kafka.jsa

# `docker run IMAGE NAME=value ...` sets variables, as upstream's run script allows.
for assignment in "$@"; do
    export "${assignment?}"
done

# Upstream's defaults for whatever is unset: a one-node KRaft cluster, clients on 9092.
default() { [ -n "${!1:-}" ] || export "$1=$2"; }
default CLUSTER_ID 5L6g3nShT-eMCtK--X86sw
default KAFKA_NODE_ID 1
default KAFKA_PROCESS_ROLES broker,controller
default KAFKA_LISTENER_SECURITY_PROTOCOL_MAP CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PLAINTEXT_HOST:PLAINTEXT
default KAFKA_LISTENERS PLAINTEXT://localhost:29092,CONTROLLER://localhost:29093,PLAINTEXT_HOST://0.0.0.0:9092
default KAFKA_ADVERTISED_LISTENERS PLAINTEXT://localhost:29092,PLAINTEXT_HOST://localhost:9092
default KAFKA_CONTROLLER_QUORUM_VOTERS 1@localhost:29093
default KAFKA_CONTROLLER_LISTENER_NAMES CONTROLLER
default KAFKA_INTER_BROKER_LISTENER_NAME PLAINTEXT
default KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR 1
default KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR 1
default KAFKA_TRANSACTION_STATE_LOG_MIN_ISR 1
default KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS 0
default KAFKA_LOG_DIRS /var/lib/kafka/data

# A controller-only node has nothing to advertise.
if [ "$KAFKA_PROCESS_ROLES" = controller ]; then
    unset KAFKA_ADVERTISED_LISTENERS
fi

# KAFKA_* variables that configure the JVM or logging rather than the broker.
not_a_property() {
    case "$1" in
        KAFKA_VERSION|KAFKA_HEAP_OPTS|KAFKA_HEAP_OPT|KAFKA_OPTS|KAFKA_JMX_OPTS|KAFKA_JMX_PORT|\
        KAFKA_JMX_HOSTNAME|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_GC_LOG_OPTS|KAFKA_LOG4J_OPTS|\
        KAFKA_LOG4J_ROOT_LOGLEVEL|KAFKA_LOG4J_LOGGERS|KAFKA_TOOLS_LOG4J_LOGLEVEL) return 0 ;;
    esac
    return 1
}

# KAFKA_LOG_RETENTION_MS -> log.retention.ms; `___` stands for `-` and `__` for `_`.
property_name() {
    local name=${1#KAFKA_}
    name=${name,,}
    name=${name//___/$'\x01'}
    name=${name//__/$'\x02'}
    name=${name//_/.}
    name=${name//$'\x01'/-}
    printf '%s' "${name//$'\x02'/_}"
}

# Other files mounted for the broker (JAAS, log4j, ...) go next to server.properties.
if [ -d "$MOUNTED_DIR" ]; then
    cp -R "$MOUNTED_DIR"/. "$CONFIG_DIR"/ 2>/dev/null || true
fi
properties=$CONFIG_DIR/server.properties
if [ -f "$MOUNTED_DIR/server.properties" ]; then
    cp "$MOUNTED_DIR/server.properties" "$properties"
    printf '\n' >>"$properties"
else
    : >"$properties"
fi
while IFS= read -r variable; do
    case "$variable" in KAFKA_*) ;; *) continue ;; esac
    not_a_property "$variable" && continue
    printf '%s=%s\n' "$(property_name "$variable")" "${!variable}" >>"$properties"
done < <(compgen -e | sort)

# Broker logs go to stdout; KAFKA_LOG4J_ROOT_LOGLEVEL and KAFKA_LOG4J_LOGGERS
# ("kafka.controller=WARN,org.apache.kafka=DEBUG") adjust them as upstream's do.
log4j=$CONFIG_DIR/log4j2.properties
if [ ! -f "$MOUNTED_DIR/log4j2.properties" ]; then
    {
        echo "appender.stdout.type = Console"
        echo "appender.stdout.name = STDOUT"
        echo "appender.stdout.layout.type = PatternLayout"
        echo "appender.stdout.layout.pattern = [%d] %p %m (%c)%n"
        echo "rootLogger.level = ${KAFKA_LOG4J_ROOT_LOGLEVEL:-INFO}"
        echo "rootLogger.appenderRef.stdout.ref = STDOUT"
        echo "logger.request.name = kafka.request.logger"
        echo "logger.request.level = WARN"
        echo "logger.requestchannel.name = kafka.network.RequestChannel\$"
        echo "logger.requestchannel.level = WARN"
        index=0
        IFS=, read -ra loggers <<<"${KAFKA_LOG4J_LOGGERS:-}"
        for entry in "${loggers[@]}"; do
            [ -n "$entry" ] || continue
            index=$((index + 1))
            echo "logger.env$index.name = ${entry%%=*}"
            echo "logger.env$index.level = ${entry#*=}"
        done
    } >"$log4j"
fi

# The JVM settings kafka-server-start.sh and kafka-run-class.sh would use, each overridable.
read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xmx512M -Xms512M}"
# Not upstream's G1 options: a test broker lives for minutes on a fraction of a CPU, where C1 alone
# and the serial collector start it in two thirds of the time (bench/kafka_start.py).
read -ra performance <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}"
read -ra logging <<<"${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$log4j}"
read -ra extra <<<"${KAFKA_OPTS:-}"
jmx=()
if [ -n "${KAFKA_JMX_PORT:-}" ]; then
    jmx_host=${KAFKA_JMX_HOSTNAME:-$(hostname -i | cut -d' ' -f1)}
    read -ra jmx <<<"${KAFKA_JMX_OPTS:--Dcom.sun.management.jmxremote=true -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false} -Djava.rmi.server.hostname=$jmx_host -Dcom.sun.management.jmxremote.local.only=false -Dcom.sun.management.jmxremote.rmi.port=$KAFKA_JMX_PORT -Dcom.sun.management.jmxremote.port=$KAFKA_JMX_PORT"
fi

# The class-data archive made at image build (train.sh): both JVMs below map the classes it holds
# instead of loading them from the jars, a large share of their start-up. A JVM that cannot use
# it runs without it (-Xshare:auto), and -Xlog:cds*=off keeps its warning out of the log. JVM
# options of the user's that name an archive or turn sharing off are left to decide alone.
cds=()
if [ -f "$ARCHIVE" ]; then
    case " ${KAFKA_OPTS:-} ${KAFKA_JVM_PERFORMANCE_OPTS:-} " in
        *SharedArchiveFile* | *ArchiveClassesAtExit* | *-Xshare:off*) ;;
        *) cds=(-XX:SharedArchiveFile="$ARCHIVE" -Xshare:auto "-Xlog:cds*=off") ;;
    esac
fi

# What the formatter's output depends on: the cluster id and the config, less what differs
# between the operator's pods (advertised addresses) and the listeners' port numbers (train.sh
# runs on ports of its own). Its output is meta.properties and the bootstrap checkpoint.
storage_key() {
    {
        echo "cluster.id=$CLUSTER_ID"
        grep -v -E '^(advertised\.listeners|log\.dirs)=' "$properties" |
            sed -E '/^(listeners|controller\.quorum\.(voters|bootstrap\.servers))=/ s/:[0-9]+/:*/g'
    } | sort | sha256sum | cut -c1-16
}

format_storage() {
    echo "===> Formatting storage for cluster $CLUSTER_ID"
    java -Xmx256M -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${cds[@]}" "${logging[@]}" -cp "$CLASSPATH" \
        kafka.tools.StorageTool format --cluster-id "$CLUSTER_ID" -c "$properties" --ignore-formatted
}

# KRaft storage is formatted once; a restart with the same data directory keeps it. For the
# configuration the image was trained with (the operator's), a copy of storage formatted at build
# time stands in for the formatter, a JVM start of its own.
if [ -n "${KAFKA_PROCESS_ROLES:-}" ]; then
    log_dirs=$(grep -E '^log\.dirs=' "$properties" | tail -n 1 | cut -d= -f2-)
    template=$KAFKA_HOME/storage/$(storage_key)
    if [[ -z $log_dirs || $log_dirs == *,* ]] || grep -q '^metadata\.log\.dir=' "$properties"; then
        format_storage  # a layout the templates do not cover
    elif [ -f "$log_dirs/meta.properties" ]; then
        echo "===> Storage for cluster $CLUSTER_ID is formatted already"
    elif [ -d "$template" ]; then
        echo "===> Storage for cluster $CLUSTER_ID: a copy of the image's formatted template"
        mkdir -p "$log_dirs" && cp -R "$template/." "$log_dirs/"
    else
        format_storage
        if [ -n "${KUBE_TESTENV_SAVE_STORAGE_TEMPLATE:-}" ]; then  # set by train.sh only
            cp -R "$log_dirs" "$template"
        fi
    fi
fi

echo "===> Starting Kafka broker"
exec java "${heap[@]}" "${performance[@]}" "${cds[@]}" "${logging[@]}" "${jmx[@]}" "${extra[@]}" \
    -cp "$CLASSPATH" kafka.Kafka "$properties"
