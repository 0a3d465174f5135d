"""The API server's own request counter, for "how many requests did this cost" columns."""

from __future__ import annotations

import re

from kubernetes import client


def api_requests(api: client.ApiClient) -> dict[str, float]:
    """apiserver_request_total summed by verb and resource, from the API server's /metrics."""
    method, url, headers, _, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    text = api.call_api(method, url, header_params=headers).read()
    totals: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels, value = line.rsplit(" ", 1)
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = f"{found.get('verb', '?')} {found.get('resource') or found.get('subresource') or '-'}"
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def total(counts: dict[str, float]) -> float:
    """Every request but the long-running WATCHes (each counts once, when it ends)."""
    return sum(value for key, value in counts.items() if not key.startswith("WATCH"))
