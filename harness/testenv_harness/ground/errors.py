"""Named failures the harness raises; each message says what was seen and what to do."""

from __future__ import annotations


class TestEnvError(Exception):
    """Base class for every kube-testenv harness failure."""

    __test__ = False  # not a pytest test class, despite the name


class ToolchainError(TestEnvError):
    """A pinned binary is missing or failed to build."""


class ClusterError(TestEnvError):
    """A cluster could not be created, reached or deleted."""


class ManifestError(TestEnvError, ValueError):
    """What the user wrote (manifest, options) cannot be used: reported as a usage error."""


class NotReadyError(TestEnvError):
    """This worker's services did not become ready (or come back) in time."""


class PortBusyError(TestEnvError):
    """A planned local port is taken by another process."""


class AccessError(ClusterError):
    """The cluster refused a call for lack of a right: the message names it and what grants it."""


#: What a missing tool's error says to do.
BUILD_HINT = "run `make tools` (or `testenv tools`) to build it from the Go module proxy"
