"""mosquitto: Debian's broker on the local cluster; restarted to be wiped (it keeps nothing)."""

from __future__ import annotations

import os
from pathlib import Path

from testenv_harness.services.base import Launch, Ping, PodSpec, ServiceType, need

#: MQTT 3.1.1 CONNECT (clean session, client id "ping"), answered by a CONNACK.
_CONNECT = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04ping"


def _local(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    return Launch([need("mosquitto", "mosquitto"), "-c", str(conf)], dict(os.environ), (port,))


MOSQUITTO = ServiceType(
    "mosquitto",
    variables=("MQTT_URL",),
    ping=Ping.answered_by(_CONNECT, b"\x20\x02"),
    local=_local,
    image_suite="trixie",
)
TYPES = (MOSQUITTO,)
