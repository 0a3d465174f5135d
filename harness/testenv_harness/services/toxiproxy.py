"""A small client of Toxiproxy's HTTP API (v2): what a worker's fault API drives the fault proxy
that `faultProxy: true` puts in front of a service inside its worker namespace.

The operator names one proxy per Service port after the port (testenv_api.fault_proxies): the
`redis` proxy of a redis service, Kafka's `kafka` and `internal`. The API listens on pod port
testenv_api.FAULT_PROXY_ADMIN_PORT; the harness forwards it like any other pod port and hands
this client the local address.

    proxy = Toxiproxy("http://localhost:21000")
    proxy.add_toxic("redis", "latency", attributes={"latency": 300})
    proxy.remove_toxic("redis", "latency_downstream")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from testenv_harness.ground.errors import TestEnvError

#: Toxic types Toxiproxy 2.5 knows, with the attributes each takes (Toxiproxy's README).
TOXIC_TYPES: Mapping[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}
STREAMS = ("downstream", "upstream")


class ToxiproxyError(TestEnvError):
    """The fault proxy refused a request, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        #: The HTTP status Toxiproxy answered with; 0 when it did not answer.
        self.status = status


class Toxiproxy:
    """One Toxiproxy server's API at `base_url` (http://host:port)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            said = exc.read().decode(errors="replace").strip()
            with_reason = json.loads(said).get("error", said) if said.startswith("{") else said
            raise ToxiproxyError(
                f"the fault proxy refused {method} {path}: {exc.code} {with_reason}", exc.code
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ToxiproxyError(f"the fault proxy at {self.base_url} does not answer: {reason}") from exc
        return json.loads(payload) if payload.strip() else None

    @staticmethod
    def _name(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # -- reading ----------------------------------------------------------------------------

    def version(self) -> str:
        """The server's version ("2.5.0")."""
        request = urllib.request.Request(f"{self.base_url}/version")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode().strip()
        except (urllib.error.URLError, OSError) as exc:
            raise ToxiproxyError(f"the fault proxy at {self.base_url} does not answer: {exc}") from exc
        # 2.5.0 answers with plain text; later versions with {"version": "..."}.
        return str(json.loads(text)["version"]) if text.startswith("{") else text

    def proxies(self) -> dict[str, dict[str, Any]]:
        """Every proxy by name: its listen and upstream addresses, whether enabled, its toxics."""
        found: dict[str, dict[str, Any]] = self._call("GET", "/proxies") or {}
        return found

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", f"/proxies/{self._name(proxy)}/toxics") or []
        return found

    # -- changing ---------------------------------------------------------------------------

    def add_toxic(
        self,
        proxy: str,
        toxic_type: str,
        *,
        name: str = "",
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add a toxic to `proxy`; its name defaults to Toxiproxy's `<type>_<stream>`. Returns it
        as the server holds it. ToxiproxyError (409) if one of that name is there already."""
        if stream not in STREAMS:
            raise ValueError(f"stream {stream!r}: use one of {', '.join(STREAMS)}")
        if not 0.0 <= toxicity <= 1.0:
            raise ValueError(f"toxicity {toxicity}: use a probability from 0 to 1")
        body = {
            "name": name or f"{toxic_type}_{stream}",
            "type": toxic_type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        added: dict[str, Any] = self._call("POST", f"/proxies/{self._name(proxy)}/toxics", body)
        return added

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove the toxic `name` of `proxy`; ToxiproxyError (404) if there is none."""
        self._call("DELETE", f"/proxies/{self._name(proxy)}/toxics/{self._name(name)}")

    def set_enabled(self, proxy: str, enabled: bool) -> dict[str, Any]:
        """Disable (close its listener and every connection through it: the service is "down" for
        clients behind the proxy) or enable `proxy` again."""
        updated: dict[str, Any] = self._call("POST", f"/proxies/{self._name(proxy)}", {"enabled": enabled})
        return updated

    def disable(self, proxy: str) -> dict[str, Any]:
        return self.set_enabled(proxy, False)

    def enable(self, proxy: str) -> dict[str, Any]:
        return self.set_enabled(proxy, True)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic: the state the operator started it in."""
        self._call("POST", "/reset")
