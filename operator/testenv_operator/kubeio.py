"""Every API call the operator makes: server-side apply, delete, reads, label-selected lists,
its own status and deletion.

Lists come back as plain dicts (camelCase, as the API server sends them): the reconciler reads
a handful of fields and model deserialisation would only cost time. Calls name their REST paths
(`KINDS`) and go through the ApiClient's own request path (`_send`), not the generated API
classes: those cost about 1 s of CPU to import (CoreV1Api alone 0.7 s) on every operator start.
A refusal comes back as a typed `ApiError` (`NotFoundError`, `ConflictError`, `ForbiddenError`,
`GoneError`, `InvalidError`), so callers say which answers they expect instead of comparing
status codes.

Every call has a connect and a read timeout (`Timeouts`, chosen from the Lease's duration: see
election.Terms), so none can hang on a dead but open connection, and none is retried inside the
client (a retry would multiply the bound). A client made with a `Mandate` sends no write once the
mandate is revoked (leadership lost): the write raises `NotActingError` before it leaves. A client
made with `errors` tells it the reason of every call that failed (the metrics count them).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, NamedTuple

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testenv_api import GROUP, PLURAL, POOL_PLURAL, VERSION

FIELD_MANAGER = "testenv-operator"
_APPLY = (("fieldManager", FIELD_MANAGER), ("force", True))
_APPLY_TYPE = "application/apply-patch+yaml"
_MERGE_TYPE = "application/merge-patch+json"

Obj = dict[str, Any]


class Resource(NamedTuple):
    """Where a kind's objects live in the API: its group-version path and plural, and whether
    they belong to a namespace."""

    prefix: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The collection (no `name`) or one object; with no `namespace`, across every namespace."""
        where = f"/namespaces/{namespace}" if namespace and self.namespaced else ""
        return f"{self.prefix}{where}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[str, Resource] = {
    "Namespace": Resource("/api/v1", "namespaces", False),
    "ResourceQuota": Resource("/api/v1", "resourcequotas", True),
    "LimitRange": Resource("/api/v1", "limitranges", True),
    "Secret": Resource("/api/v1", "secrets", True),
    "Service": Resource("/api/v1", "services", True),
    "Deployment": Resource("/apis/apps/v1", "deployments", True),
    "NetworkPolicy": Resource("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "RoleBinding": Resource("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}
_PODS = Resource("/api/v1", "pods", True)
_LEASES = Resource("/apis/coordination.k8s.io/v1", "leases", True)
_CUSTOM = f"/apis/{GROUP}/{VERSION}"


class Timeouts(NamedTuple):
    """Seconds a call may take to connect (TCP and TLS), and then to wait for each read of its answer."""

    connect: float
    read: float


class NotActingError(Exception):
    """A write refused before it was sent: this process no longer holds the Lease."""


#: Methods that change nothing: the only ones a client whose mandate was revoked still sends.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Mandate:
    """Whether this process may still write to the cluster. Held from the start; `revoke`d once,
    when leadership is lost, and never held again (a process that lost the Lease exits).

    A write passes the check and is counted in one step (`writing`), under the lock `revoke` takes:
    so after `revoke` no write starts, and `settle` waits for those that started before it.
    """

    def __init__(self) -> None:
        self.lost: str | None = None
        self._changed = threading.Condition()
        self._writing = 0

    @property
    def held(self) -> bool:
        return self.lost is None

    def revoke(self, why: str) -> None:
        with self._changed:
            self.lost = self.lost or why

    def check(self) -> None:
        """NotActingError once revoked."""
        if self.lost is not None:
            raise NotActingError(f"not writing: this operator stepped down ({self.lost})")

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around one write: NotActingError once revoked, else the write counts as under way until
        it returns."""
        with self._changed:
            self.check()
            self._writing += 1
        try:
            yield
        finally:
            with self._changed:
                self._writing -= 1
                self._changed.notify_all()

    def request(self, method: str) -> AbstractContextManager[None]:
        """Around one request of HTTP `method`: `writing` for a write, nothing for a read (a client
        whose mandate was revoked still reads)."""
        return nullcontext() if method.upper() in _READS else self.writing()

    def settle(self, timeout: float) -> int:
        """Wait (at most `timeout` seconds) for the writes under way to return; how many still are.
        Once revoked, none is added, so a 0 means none of this process's writes is still being sent."""
        with self._changed:
            self._changed.wait_for(lambda: self._writing == 0, timeout=max(0.0, timeout))
            return self._writing


#: Told the reason of each failed call: the API server's, `ClientTimeout` or `ConnectionFailed`.
Errors = Callable[[str], None]


def refusal_reason(status: int, phrase: str, body: bytes | str | None) -> str:
    """Why the API server refused a call, in one word: its Status's `reason` (NotFound,
    AlreadyExists, Conflict, Invalid, ...), else the HTTP reason phrase (Bad Gateway: BadGateway),
    else the status code. A word from a fixed set, fit for a metric's label."""
    try:
        reason = json.loads(body or "{}").get("reason")
    except (ValueError, AttributeError):  # not JSON (a proxy's page), or not an object
        reason = None
    if isinstance(reason, str) and reason.isalnum() and len(reason) <= 40:
        return reason
    return "".join(phrase.title().split()) if phrase.replace(" ", "").isalpha() else str(status)


def _failure(exc: urllib3.exceptions.HTTPError) -> str:
    """Why a call got no answer: `ClientTimeout` (connecting or reading took longer than its
    timeout) or `ConnectionFailed` (refused, reset, no such host, ...)."""
    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    # urllib3 makes a refused connection a ConnectTimeoutError too, for its own history's sake.
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return "ConnectionFailed"
    return "ClientTimeout" if isinstance(cause, urllib3.exceptions.TimeoutError) else "ConnectionFailed"


def _ignore(_: str) -> None:
    pass


class _BoundedClient(client.ApiClient):  # type: ignore[misc]  # the client is untyped
    """An ApiClient whose every call carries `timeouts` unless it names its own, and whose every
    write first asks `mandate`: the check sits right before the request leaves, after whatever a
    pass computed, so no write starts once leadership is lost. Every call that fails is told to
    `errors`, by reason."""

    def __init__(
        self, configuration: client.Configuration, timeouts: Timeouts, mandate: Mandate, errors: Errors
    ) -> None:
        super().__init__(configuration)
        self.timeouts = timeouts
        self.mandate = mandate
        self.errors = errors

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        try:
            with self.mandate.request(method):
                response = super().call_api(
                    method, url, header_params, body, post_params, _request_timeout or tuple(self.timeouts)
                )
        except urllib3.exceptions.HTTPError as exc:
            self.errors(_failure(exc))
            raise
        except ApiException:  # what the client raises for a failed TLS handshake
            self.errors("ConnectionFailed")
            raise
        if not 200 <= response.status <= 299:
            # The client reads the refusal's body next anyway (into the ApiException); read() keeps it.
            self.errors(refusal_reason(response.status, str(response.reason or ""), response.read()))
        return response


def connect(
    timeouts: Timeouts,
    connections: int = 32,
    mandate: Mandate | None = None,
    errors: Errors | None = None,
) -> client.ApiClient:
    """The in-cluster ServiceAccount inside a pod, else the kubeconfig ($KUBECONFIG).

    `timeouts`: every call's connect and read timeouts. The client sets none, and a call to a
    dead but open connection (a partition, a dropped NAT entry) waited forever: a Lease renewal
    hung so, and the holder kept acting. urllib3's own retries are off: a GET that timed out would
    be sent up to three more times, each waiting its full read timeout; callers retry instead.
    `connections`: kept-alive connections to the API server, one per thread that may call at once.
    The client's default (5 per CPU: 10 on 2 cores) made a burst of applies open connections past
    it and drop them after each call, so the next burst paid a new TLS handshake on both sides.
    `mandate`: writes are sent only while it is held (always, without one).
    `errors`: told the reason of every call that failed (`refusal_reason`, `ClientTimeout`,
    `ConnectionFailed`).
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    configuration.retries = False
    return _BoundedClient(configuration, timeouts, mandate or Mandate(), errors or _ignore)


class ApiError(Exception):
    """The API server refused a call: its HTTP status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """404: the object (or its namespace) does not exist."""


class ForbiddenError(ApiError):
    """403: RBAC refused it, or its namespace is being deleted."""


class ConflictError(ApiError):
    """409: it exists already, or another writer changed it first."""


class GoneError(ApiError):
    """410: a watch or list continuation that expired."""


class InvalidError(ApiError):
    """422: the API server's validation (the CRD's schema and rules) refused it."""


_TYPED: dict[int, type[ApiError]] = {
    404: NotFoundError,
    403: ForbiddenError,
    409: ConflictError,
    410: GoneError,
    422: InvalidError,
}


def typed(exc: ApiException) -> ApiError:
    """The typed error for a client exception, with the server's own message when it sent one."""
    message = ""
    try:
        message = str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = str(exc.body or "")[:500]
    return _TYPED.get(exc.status or 0, ApiError)(exc.status or 0, str(exc.reason or ""), message)


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise typed(exc) from exc


def _done(response: Any) -> None:
    """Read the rest of an unread response and hand its connection back to the pool: an
    abandoned one is closed, and the next call pays a new TCP and TLS handshake."""
    response.drain_conn()
    response.release_conn()


Query = Sequence[tuple[str, Any]]


def _send(
    api: client.ApiClient,
    method: str,
    path: str,
    query: Query = (),
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    timeout: Any = None,
) -> Any:
    """One call, as the generated API methods make it (the client's serialisation, auth, and
    `call_api`, so a `_BoundedClient`'s timeouts and mandate apply), answered by the unread
    urllib3 response; a refusal raises its typed `ApiError`."""
    header_params = {"Accept": "application/json", **(headers or {})}
    if body is not None:
        header_params["Content-Type"] = content_type
    request = api.param_serialize(
        method,
        path,
        query_params=[(key, value) for key, value in query if value is not None],
        header_params=header_params,
        body=body,
        auth_settings=["BearerToken"],
    )
    with _refusals():
        answer = api.call_api(*request, _request_timeout=timeout)
        if not 200 <= answer.status <= 299:
            answer.read()
            raise ApiException.from_response(http_resp=answer, body=None, data=None)
    return answer.response


def _json(response: Any) -> Obj:
    found: Obj = json.loads(response.data)
    response.release_conn()  # read to the end: the connection can serve the next call
    return found


def apply(api: client.ApiClient, obj: Obj) -> None:
    """Create or update `obj` with server-side apply, taking over fields we own."""
    meta = obj["metadata"]
    path = KINDS[obj["kind"]].path(meta.get("namespace"), meta["name"])
    _done(_send(api, "PATCH", path, _APPLY, obj, _APPLY_TYPE))


def create_namespace(api: client.ApiClient, obj: Obj) -> bool:
    """Create a namespace; False if one of that name exists already (it is then not ours to touch)."""
    try:
        _done(_send(api, "POST", KINDS["Namespace"].path(), body=obj))
    except ConflictError:
        return False
    return True


def delete(api: client.ApiClient, kind: str, name: str, namespace: str | None = None) -> None:
    """Delete one object in the background; already gone is fine."""
    path = KINDS[kind].path(namespace, name)
    with suppress(NotFoundError):
        _done(_send(api, "DELETE", path, [("propagationPolicy", "Background")]))


def delete_namespace_if_unchanged(api: client.ApiClient, name: str, resource_version: str) -> bool:
    """Delete a namespace only if it is still at `resource_version` (a claim relabels it first);
    False when it changed or is gone."""
    options = {"propagationPolicy": "Background", "preconditions": {"resourceVersion": resource_version}}
    try:
        _done(_send(api, "DELETE", KINDS["Namespace"].path(name=name), body=options))
    except (ConflictError, NotFoundError):
        return False
    return True


def delete_pods_now(api: client.ApiClient, namespace: str) -> None:
    """Delete every pod of a namespace without a grace period."""
    with suppress(NotFoundError):
        _done(_send(api, "DELETE", _PODS.path(namespace), [("gracePeriodSeconds", 0)]))


def list_labelled(api: client.ApiClient, kind: str, selector: str) -> list[Obj]:
    """Every object of `kind` in any namespace that matches a label selector."""
    response = _send(api, "GET", KINDS[kind].path(), [("labelSelector", selector)])
    items: list[Obj] = _json(response)["items"]
    return items


class Page(NamedTuple):
    """One page of a list: its items, the list's resourceVersion, and the token of the next page
    ("" on the last)."""

    items: list[Obj]
    resource_version: str
    next: str


def list_page(api: client.ApiClient, kind: str, selector: str, limit: int, token: str = "") -> Page:
    """One page of `limit` objects of `kind` in any namespace that match a label selector, from
    `token` (a previous page's `next`; "" for the first). GoneError once the token expired."""
    query = [("labelSelector", selector), ("limit", limit), ("continue", token or None)]
    found = _json(_send(api, "GET", KINDS[kind].path(), query))
    meta = found.get("metadata") or {}
    version, token = str(meta.get("resourceVersion", "")), str(meta.get("continue") or "")
    return Page(found.get("items") or [], version, token)


def watch_events(
    api: client.ApiClient, kind: str, selector: str, resource_version: str, seconds: int
) -> Iterator[Obj]:
    """The events ({"type", "object"}) of `kind` in any namespace matching a label selector, from
    `resource_version`, bookmarks included, until the API server ends the watch after `seconds`.
    An expired version comes as an ERROR event (a Status of code 410), as the server sends it,
    or as a GoneError when the server refuses the watch outright with that status.
    A read waits at most 30 s past `seconds` (a connection that died says nothing)."""
    connect = getattr(api, "timeouts", Timeouts(10.0, 10.0)).connect
    query = [
        ("labelSelector", selector),
        ("watch", True),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", True),
        ("timeoutSeconds", seconds),
    ]
    response = _send(api, "GET", KINDS[kind].path(), query, timeout=(connect, seconds + 30))
    ended = False
    try:
        pending = b""
        for chunk in response.stream(None, decode_content=False):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)
        ended = True
    finally:
        # A watch left half-read cannot serve another call: its connection is closed instead.
        if ended:
            response.release_conn()
        else:
            response.close()


def _read(api: client.ApiClient, path: str) -> Obj | None:
    """One object as a dict, or None when it does not exist."""
    try:
        return _json(_send(api, "GET", path))
    except NotFoundError:
        return None


def read_namespace(api: client.ApiClient, name: str) -> Obj | None:
    return _read(api, KINDS["Namespace"].path(name=name))


def read_secret(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    return _read(api, KINDS["Secret"].path(namespace, name))


# -- TestEnvironments -----------------------------------------------------------------------------


def _environments_metadata(api: client.ApiClient, namespace: str, plural: str = PLURAL) -> list[Obj]:
    """A namespace's TestEnvironments ("": every namespace's), metadata only (no specs or statuses);
    with `plural` POOL_PLURAL, its TestEnvironmentPools."""
    path = Resource(_CUSTOM, plural, True).path(namespace or None)
    partial = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
    items: list[Obj] = _json(_send(api, "GET", path, headers=partial)).get("items") or []
    return items


def environment_uids(api: client.ApiClient, namespace: str) -> set[str]:
    """The UIDs of a namespace's TestEnvironments."""
    return {item["metadata"]["uid"] for item in _environments_metadata(api, namespace)}


def pool_uids(api: client.ApiClient, namespace: str) -> set[str]:
    """The UIDs of a namespace's TestEnvironmentPools; none where the pool CRD is not installed."""
    try:
        return {item["metadata"]["uid"] for item in _environments_metadata(api, namespace, POOL_PLURAL)}
    except NotFoundError:
        return set()


def environments_deleting(api: client.ApiClient, namespace: str) -> int:
    """How many of a namespace's TestEnvironments have a deletionTimestamp."""
    return sum(
        1 for item in _environments_metadata(api, namespace) if item["metadata"].get("deletionTimestamp")
    )


def _patch_status(api: client.ApiClient, plural: str, namespace: str, name: str, status: Obj) -> None:
    """Merge `status` into a custom object's status; an object deleted meanwhile is fine."""
    path = Resource(_CUSTOM, plural, True).path(namespace, name) + "/status"
    with suppress(NotFoundError):
        _done(_send(api, "PATCH", path, body={"status": status}, content_type=_MERGE_TYPE))


def patch_environment_status(api: client.ApiClient, namespace: str, name: str, status: Obj) -> None:
    """Merge `status` into an environment's status; an environment deleted meanwhile is fine."""
    _patch_status(api, PLURAL, namespace, name, status)


def delete_environment(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete a TestEnvironment (its finalizer then tears it down); already gone is fine."""
    with suppress(NotFoundError):
        _done(_send(api, "DELETE", Resource(_CUSTOM, PLURAL, True).path(namespace, name)))


# -- TestEnvironmentPools and the namespaces they lend ---------------------------------------------


def list_pools(api: client.ApiClient, namespace: str) -> list[Obj]:
    """A namespace's TestEnvironmentPools, whole; none where the pool CRD is not installed."""
    try:
        response = _send(api, "GET", Resource(_CUSTOM, POOL_PLURAL, True).path(namespace))
    except NotFoundError:
        return []
    items: list[Obj] = _json(response).get("items") or []
    return items


def patch_pool_status(api: client.ApiClient, namespace: str, name: str, status: Obj) -> None:
    """Merge `status` into a pool's status; a pool deleted meanwhile is fine."""
    _patch_status(api, POOL_PLURAL, namespace, name, status)


def relabel_namespace(
    api: client.ApiClient, name: str, labels: dict[str, str], resource_version: str
) -> bool:
    """Merge `labels` into a namespace only if it is still at `resource_version`: False when
    someone changed (or deleted) it since, so two claimers can never both take it."""
    patch = {"metadata": {"labels": labels, "resourceVersion": resource_version}}
    try:
        _done(_send(api, "PATCH", KINDS["Namespace"].path(name=name), body=patch, content_type=_MERGE_TYPE))
    except (ConflictError, NotFoundError):
        return False
    return True


# -- the leader-election Lease --------------------------------------------------------------------


def read_lease(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    return _read(api, _LEASES.path(namespace, name))


def write_lease(api: client.ApiClient, lease: Obj) -> None:
    """Create a Lease, or replace the one whose resourceVersion it carries (ConflictError when
    someone else wrote it since)."""
    meta = lease["metadata"]
    if meta.get("resourceVersion"):
        _done(_send(api, "PUT", _LEASES.path(meta["namespace"], meta["name"]), body=lease))
    else:
        _done(_send(api, "POST", _LEASES.path(meta["namespace"]), body=lease))
