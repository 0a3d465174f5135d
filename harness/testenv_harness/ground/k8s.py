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
import json
from collections.abc import Sequence
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


def call(
    api: client.ApiClient, method: str, path: str, query: Sequence[tuple[str, Any]] = (), body: Any = None
) -> Any:
    """One call to the API server, as the generated API methods make it (the client's
    serialisation, auth and timeouts), answered with the parsed JSON body. A refusal raises
    `ApiException` (its `status` and `body`), as theirs do."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = api.param_serialize(
        method,
        path,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    answer = api.call_api(*request)
    answer.read()
    if not 200 <= answer.status <= 299:
        from kubernetes.client import exceptions  # the names above load on use, from outside only

        raise exceptions.ApiException.from_response(http_resp=answer, body=None, data=None)
    return json.loads(answer.data) if answer.data else None
