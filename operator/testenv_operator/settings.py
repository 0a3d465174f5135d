"""The operator's settings, read once per process from TESTENV_* environment variables.

As kopf's OperatorSettings, they come in groups by concern: `settings.limits.max_workers`,
`settings.fences.worker_memory`, `settings.timing.resync_seconds`, ... Each setting is written
once, as a field of its group: its default, and in the field's metadata (a `Variable`) its
TESTENV_* variable, what it accepts and what it means. `Settings.from_env` reads every field from
that, the table below is made from it, and unit tests hold docs/operator.md, the chart's defaults
and its schema to it. `python -m testenv_operator.settings` prints the table as the docs show it.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from testenv_api import DEFAULT_MAX_WORKERS, FAULT_PROXY_IMAGE_KEY, MAX_WORKERS, SERVICE_TYPES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: Where a field's metadata keeps its Variable.
_VARIABLE = "testenv.variable"
#: What a parser returns for a value that stands for the default (a blank number, say).
_BLANK: Any = object()
#: In a Variable's name: one variable per key of `each` (TESTENV_IMAGE_REDIS, ...).
_EACH = "<TYPE>"


class SettingsError(ValueError):
    """A TESTENV_* variable has a value the operator cannot use."""


# -- what a variable accepts ----------------------------------------------------------------------

#: (variable name, its text) -> the value, or _BLANK for the default; SettingsError if unusable.
Parse = Callable[[str, str], Any]


@dataclasses.dataclass(frozen=True)
class Whole:
    """A whole number from `low` to `high`; blank means the default."""

    low: int
    high: int

    def __call__(self, name: str, raw: str) -> Any:
        text = raw.strip()
        if not text:
            return _BLANK
        try:
            value = int(text)
        except ValueError:
            raise SettingsError(f"{name}={text!r} is not a whole number") from None
        if not self.low <= value <= self.high:
            raise SettingsError(f"{name}={value} is out of range: use {self}")
        return value

    def __str__(self) -> str:
        return f"{self.low}..{self.high}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of `choices`, compared after `fold`; blank means the default where `blank` says so."""

    choices: tuple[str, ...]
    fold: Callable[[str], str]
    blank: bool = True

    def __call__(self, name: str, raw: str) -> Any:
        value = self.fold(raw)
        if not value and self.blank:
            return _BLANK
        if value not in self.choices:
            raise SettingsError(f"{name}={value!r}: use one of {', '.join(self.choices)}")
        return value

    def __str__(self) -> str:
        return ", ".join(self.choices)


def _text(_: str, raw: str) -> str:
    """Taken as it is: an empty value is a value (TESTENV_LIVENESS= turns the endpoint off)."""
    return raw


def _endpoint(name: str, raw: str) -> str:
    """`http://HOST:PORT/PATH` as it is; blank turns it off (''). Checked here, as the operator
    binds it itself: a typo stops the start with the variable's name, not a traceback later."""
    text = raw.strip()
    if not text:
        return ""
    where = urllib.parse.urlsplit(text)
    try:
        port = where.port
    except ValueError:  # not a number, or past 65535
        port = None
    if where.scheme != "http" or not where.hostname or port is None or where.query or where.fragment:
        raise SettingsError(
            f"{name}={raw!r}: write http://HOST:PORT/PATH, for example http://0.0.0.0:8081/metrics, "
            "or nothing to turn it off"
        )
    return text


def _names(_: str, raw: str) -> tuple[str, ...]:
    """`team-a, team-b` -> ('team-a', 'team-b')."""
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _registries(name: str, raw: str) -> tuple[str, ...]:
    """`docker.io, ghcr.io/acme/` -> ('docker.io', 'ghcr.io/acme')."""
    entries = tuple(e.strip().strip("/").lower() for e in raw.split(",") if e.strip().strip("/"))
    for entry in entries:
        tagged = "/" in entry and ":" in entry.rsplit("/", 1)[-1]  # a host:port alone is fine
        if "@" in entry or tagged:
            raise SettingsError(
                f"{name} entry {entry!r} names an image, not a registry: "
                "write a registry host (docker.io, registry.example.com:5000) or host/path prefix"
            )
    return entries


def _lease(name: str, raw: str) -> tuple[str, str] | None:
    """`testenv-system/testenv-operator` -> ('testenv-system', 'testenv-operator'); '' -> None."""
    if not raw.strip():
        return None
    namespace, _, lease = raw.strip().partition("/")
    if not namespace or not lease or "/" in lease:
        raise SettingsError(
            f"{name}={raw!r}: write the Lease as namespace/name, for example testenv-system/testenv-operator"
        )
    return namespace, lease


def _lower(raw: str) -> str:
    return raw.strip().lower()


# -- one setting: its field and its variable ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variable:
    """How one setting is read from the environment and shown in the docs."""

    name: str
    help: str
    default: Any
    parse: Parse = _text
    #: The default as the docs say it, where its value would not read well (an empty tuple).
    shown: str = ""
    #: For a name holding <TYPE>: the keys, one variable each; the setting maps key -> value.
    each: tuple[str, ...] = ()

    @property
    def accepts(self) -> str:
        """The values it takes, for the docs: a range or the choices (free text says nothing)."""
        return str(self.parse) if isinstance(self.parse, Whole | OneOf) else ""

    def value(self, env: Mapping[str, str]) -> Any:
        """The value `env` gives, or the default; SettingsError if it gives one that will not do."""
        value = self._read(env)
        return self.default if value is _BLANK else value

    def _read(self, env: Mapping[str, str]) -> Any:
        if self.each:
            names = {key: self.name.replace(_EACH, key.upper()) for key in self.each}
            return {key: self.parse(name, env[name]) for key, name in names.items() if env.get(name)}
        raw = env.get(self.name)
        return _BLANK if raw is None else self.parse(self.name, raw)

    def row(self, markdown: bool) -> str:
        name = f"`{self.name}`" if markdown else self.name
        return f"| {name} | {self.shown or self.default} | {self.accepts} | {self.help} |"


def setting(
    default: Any, name: str, help: str, parse: Parse = _text, shown: str = "", each: tuple[str, ...] = ()
) -> Any:
    """A settings field: its default, and how its TESTENV_* variable `name` is read."""
    variable = Variable(name, help, default, parse, shown, each)
    metadata = {_VARIABLE: variable}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def variables(group: DataclassInstance | type[DataclassInstance]) -> dict[str, Variable]:
    """A group's Variables by field name."""
    return {field.name: field.metadata[_VARIABLE] for field in dataclasses.fields(group)}


def variable_name(group: DataclassInstance | type[DataclassInstance], field: str) -> str:
    """The TESTENV_* variable of one setting, for messages that tell the admin what to change."""
    return variables(group)[field].name


# -- the groups -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tenants:
    """Whose TestEnvironments are served, and what the identities they name get in their workers."""

    namespaces: tuple[str, ...] = setting(
        (),
        "TESTENV_NAMESPACES",
        "comma-separated namespaces whose TestEnvironments are served",
        _names,
        "(all)",
    )
    access_cluster_role: str = setting(
        "testenv-worker-access", "TESTENV_ACCESS_CLUSTERROLE", "ClusterRole bound to `spec.access.subjects`"
    )


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one environment, and one namespace, may ask for."""

    max_workers: int = setting(
        DEFAULT_MAX_WORKERS,
        "TESTENV_MAX_WORKERS",
        "most workers one environment may ask for",
        Whole(1, MAX_WORKERS),
    )
    max_environments_per_namespace: int = setting(
        20,
        "TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE",
        "most environments one namespace may hold",
        Whole(1, 1000),
    )
    max_workers_per_namespace: int = setting(
        128,
        "TESTENV_MAX_WORKERS_PER_NAMESPACE",
        "most workers the environments of one namespace may ask for in total (oldest first)",
        Whole(1, 100_000),
    )


@dataclasses.dataclass(frozen=True)
class Fences:
    """What every worker namespace is held in: its quota, and whether egress is fenced too."""

    worker_cpu: str = setting(
        "8", "TESTENV_WORKER_CPU", "CPU quota (requests and limits) of each worker namespace"
    )
    worker_memory: str = setting(
        "16Gi", "TESTENV_WORKER_MEMORY", "memory quota (requests and limits) of each worker namespace"
    )
    worker_ephemeral_storage: str = setting(
        "16Gi",
        "TESTENV_WORKER_EPHEMERAL_STORAGE",
        "ephemeral-storage quota of each worker namespace (1Gi per container)",
    )
    worker_egress: str = setting(
        "restricted",
        "TESTENV_WORKER_EGRESS",
        "`restricted`: worker pods reach their own namespace and cluster DNS only; `open`: no egress rule",
        OneOf(("restricted", "open"), _lower),
    )

    @property
    def open_egress(self) -> bool:
        return self.worker_egress == "open"


@dataclasses.dataclass(frozen=True)
class Registries:
    """Which images services run: the default of each type, and where `image:` may pull from."""

    allowed_registries: tuple[str, ...] = setting(
        (),
        "TESTENV_ALLOWED_REGISTRIES",
        "comma-separated registries or `host/path` prefixes that `image:` and `custom.image` may name",
        _registries,
        "(any)",
    )
    images: Mapping[str, str] = setting(
        {},
        f"TESTENV_IMAGE_{_EACH}",
        "default image of a built-in type, e.g. `TESTENV_IMAGE_REDIS`; `TESTENV_IMAGE_TOXIPROXY`: the "
        "fault proxy's",
        shown="the catalog's",
        each=(*SERVICE_TYPES, FAULT_PROXY_IMAGE_KEY),
    )


@dataclasses.dataclass(frozen=True)
class Timing:
    """How often the operator looks again, and how long it takes to finish."""

    resync_seconds: int = setting(
        10,
        "TESTENV_RESYNC_SECONDS",
        "how often drift, expiry and readiness are re-checked once ready",
        Whole(1, 3600),
    )
    resyncs_per_second: int = setting(
        5,
        "TESTENV_RESYNCS_PER_SECOND",
        "most full resyncs (a listing of every kind an environment owns) a second, across every "
        "environment; the others read readiness from the watches until their turn",
        Whole(1, 1000),
    )
    sweep_seconds: int = setting(
        60, "TESTENV_SWEEP_SECONDS", "how often orphaned namespaces are looked for", Whole(1, 86400)
    )
    finish_seconds: int = setting(
        120,
        "TESTENV_FINISH_SECONDS",
        "after SIGUSR1 (its run ended), the longest the process finishes deletions before it exits",
        Whole(1, 3600),
    )


@dataclasses.dataclass(frozen=True)
class Leadership:
    """Which of several operator processes acts: the one holding a Lease."""

    leader_election: tuple[str, str] | None = setting(
        None,
        "TESTENV_LEADER_ELECTION",
        "`namespace/name` of a Lease: only the process holding it runs (the chart sets it)",
        _lease,
        "(off)",
    )
    lease_seconds: int = setting(
        15,
        "TESTENV_LEASE_SECONDS",
        "how long a Lease must go unrenewed, on a standby's own clock, before it may take it; "
        "every API call's timeouts follow from it",
        Whole(3, 300),
    )


@dataclasses.dataclass(frozen=True)
class Reporting:
    """What the process tells: its logs, its liveness endpoint and its metrics."""

    liveness: str = setting(
        "http://0.0.0.0:8080/healthz", "TESTENV_LIVENESS", "liveness endpoint (empty turns it off)"
    )
    metrics: str = setting(
        "http://0.0.0.0:8081/metrics",
        "TESTENV_METRICS",
        "Prometheus metrics endpoint, `http://HOST:PORT/PATH` (empty turns it off)",
        _endpoint,
    )
    log_level: str = setting(
        "INFO",
        "TESTENV_LOG_LEVEL",
        "logs are JSON lines",
        OneOf(("DEBUG", "INFO", "WARNING", "ERROR"), str.upper, False),
    )


# -- all of them ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, init=False)
class Settings:
    """Every setting, by group. Made by `from_env`; tests and tools may make one by hand."""

    tenants: Tenants = dataclasses.field(default_factory=Tenants)
    limits: Limits = dataclasses.field(default_factory=Limits)
    fences: Fences = dataclasses.field(default_factory=Fences)
    registries: Registries = dataclasses.field(default_factory=Registries)
    timing: Timing = dataclasses.field(default_factory=Timing)
    leadership: Leadership = dataclasses.field(default_factory=Leadership)
    reporting: Reporting = dataclasses.field(default_factory=Reporting)

    def __init__(self, **given: Any) -> None:
        """Groups by their name (`limits=Limits(...)`), single settings by theirs (`max_workers=8`);
        what is not given keeps its default."""
        for name, default in _groups():
            group = given.pop(name, default)
            mine = {field: given.pop(field) for field in variables(group) if field in given}
            object.__setattr__(self, name, dataclasses.replace(group, **mine))
        if given:
            raise TypeError(f"Settings() has no setting {', '.join(sorted(given))}")

    def __getattr__(self, name: str) -> Any:
        """A single setting by its own name (`settings.max_workers`), whatever its group."""
        group = _GROUP_OF.get(name)
        if group is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, group), name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every setting from TESTENV_* variables (os.environ unless `env`); SettingsError names the
        first variable whose value cannot be used."""
        env = os.environ if env is None else env
        return cls(
            **{
                name: type(default)(**{field: v.value(env) for field, v in variables(default).items()})
                for name, default in _groups()
            }
        )


def _groups() -> Iterator[tuple[str, Any]]:
    """(name, a new default) of each group of Settings."""
    for field in dataclasses.fields(Settings):
        if callable(make := field.default_factory):
            yield field.name, make()


#: A single setting's name -> the name of its group (names are unique across groups).
_GROUP_OF = {field: group for group, default in _groups() for field in variables(default)}


def all_variables() -> list[Variable]:
    """Every setting's Variable, group by group in the order of Settings."""
    return [v for _, default in _groups() for v in variables(default).values()]


def table(markdown: bool = False) -> str:
    """The settings as a table: in docs/operator.md (`markdown`: names as code) and below."""
    head = "| variable | default | accepts | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(v.row(markdown) for v in all_variables()) + "\n"


__doc__ = f"{__doc__}\n{table()}"

if __name__ == "__main__":
    print(table(markdown=True), end="")
