#!/usr/bin/env bash
# Makes a Docker engine answer, for the kind cluster and its images.
#
# - An engine that already answers (`docker info`) is left exactly as it is.
# - Otherwise Debian's docker.io is installed if dockerd is missing, and dockerd is started in
#   the background (we are root on our machines; there is no systemd to do it).
# - A dockerd that runs but does not answer was not started by us: we say so and stop, rather
#   than restart someone else's engine.
# - Hosts whose capability bounding set lacks capabilities that `docker run --privileged`
#   asks for (ours lack CAP_SYS_RESOURCE, and kind's nodes are always privileged) get an OCI
#   runtime wrapper that drops exactly the missing ones before runc sees them.
#
# Safe to run again. State: /run/kube-testenv-dockerd.pid, /var/log/kube-testenv-dockerd.log.
set -euo pipefail

log=/var/log/kube-testenv-dockerd.log
pidfile=/run/kube-testenv-dockerd.pid
wrapper=/usr/local/lib/kube-testenv/runc-drop-missing-caps
runtime_name=testenv-runc

say() { echo "docker-engine: $*" >&2; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && answers; then
  say "an engine answers already; leaving it as it is"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if pgrep -x dockerd >/dev/null; then
  say "a dockerd process runs (pid $(pgrep -x dockerd | head -1)) but does not answer; it is not ours to"
  say "restart: fix or stop it, then run this again"
  exit 1
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v jq >/dev/null || need+=(jq)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # The package's own service start fails without systemd; dockerd is started below instead.
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Which capabilities does this host's bounding set lack? Bit N of CapBnd is capability N.
caps=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
  NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
  SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
  AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
  PERFMON BPF CHECKPOINT_RESTORE)
bound=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
missing=()
for i in "${!caps[@]}"; do
  (( (bound >> i) & 1 )) || missing+=("CAP_${caps[$i]}")
done

args=(--host=unix:///var/run/docker.sock --log-level=warn)
if [ ${#missing[@]} -gt 0 ]; then
  say "this host's capability bounding set lacks ${missing[*]}: privileged containers get a runtime"
  say "that drops them ($wrapper)"
  runc_bin=$(command -v runc)
  $sudo mkdir -p "$(dirname "$wrapper")"
  drop=$(printf '"%s",' "${missing[@]}")
  $sudo tee "$wrapper" >/dev/null <<EOF
#!/usr/bin/env bash
# Written by kube-testenv's hack/install-docker.sh: removes the capabilities this host cannot
# grant (${missing[*]}) from a container's spec, then hands over to runc.
set -euo pipefail
drop='[${drop%,}]'
strip() {
  local file=\$1 tmp
  [ -f "\$file" ] || return 0
  tmp=\$(mktemp "\$file.XXXXXX")
  jq --argjson drop "\$drop" '
    def clean: if type == "array" then map(select(. as \$c | \$drop | index(\$c) | not)) else . end;
    (if has("process") then .process else . end) as \$p
    | if (\$p | has("capabilities")) | not then .
      elif has("process") then .process.capabilities |= map_values(clean)
      else .capabilities |= map_values(clean) end' "\$file" >"\$tmp" && mv "\$tmp" "\$file"
}
bundle=. process="" command=""
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
  case "\${args[\$i]}" in
    create | run | exec) [ -z "\$command" ] && command=\${args[\$i]} ;;
    --bundle | -b) bundle=\${args[\$((i + 1))]} ;;
    --bundle=*) bundle=\${args[\$i]#--bundle=} ;;
    --process | -p) process=\${args[\$((i + 1))]} ;;
    --process=*) process=\${args[\$i]#--process=} ;;
  esac
done
case "\$command" in
  create | run) strip "\$bundle/config.json" ;;
  exec) [ -n "\$process" ] && strip "\$process" ;;
esac
exec $runc_bin "\$@"
EOF
  $sudo chmod 0755 "$wrapper"
  args+=(--add-runtime "$runtime_name=$wrapper" --default-runtime "$runtime_name")
fi

say "starting dockerd (log: $log)"
$sudo mkdir -p "$(dirname "$log")"
# setsid: the engine must not die with the shell (or CI step) that started it.
# dockerd writes its own pid: $! is sudo's when we are not root.
$sudo setsid dockerd --pidfile "$pidfile" "${args[@]}" </dev/null >>"$log" 2>&1 &
started=$!
for _ in $(seq 1 60); do
  if answers; then
    say "engine ready: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"
    exit 0
  fi
  # /proc/<pid> shows whether it runs, whoever owns it (kill -0 on root's process fails for a user)
  if [ ! -d "/proc/$started" ]; then
    break
  fi
  sleep 1
done
say "dockerd did not answer within 60s; the end of $log:"
tail -n 20 "$log" >&2
exit 1
