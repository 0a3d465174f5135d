# Runs inside the fresh root file system (chroot) before it becomes an image.
set -eu
cat >/etc/apt/apt.conf.d/90-kube-testenv <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
CONF
# Services installed by apt inside an image must not try to start.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
