"""The official Kubernetes client, imported on first use: `k8s.client`, `k8s.config`,
`k8s.ApiException`, `k8s.websocket_proxycare`, and its transport's `k8s.HTTPError` (urllib3's).

Importing the client takes about 0.2 s of CPU (its models, requests, OAuth). Every pytest process
of a run imports the plugin, and an xdist worker of a rerun never calls the API server (the reuse
keeper holds its forwards), so its four workers starting at once on two cores would wait on that
import for nothing. Modules reach the client through here, and `except k8s.ApiException:` looks
the name up only when something was raised.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes import client as client
    from kubernetes import config as config
    from kubernetes.client.exceptions import ApiException as ApiException
    from kubernetes.stream.ws_client import websocket_proxycare as websocket_proxycare
    from urllib3.exceptions import HTTPError as HTTPError
else:
    _WHERE = {
        "client": ("kubernetes.client", None),
        "config": ("kubernetes.config", None),
        "ApiException": ("kubernetes.client.exceptions", "ApiException"),
        "websocket_proxycare": ("kubernetes.stream.ws_client", "websocket_proxycare"),
        "HTTPError": ("urllib3.exceptions", "HTTPError"),
    }

    def __getattr__(name: str) -> Any:
        if name not in _WHERE:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module, attribute = _WHERE[name]
        found = importlib.import_module(module)
        value = getattr(found, attribute) if attribute else found
        globals()[name] = value  # later lookups skip this function
        return value
