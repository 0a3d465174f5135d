"""`python -m testenv_operator`: run the operator (standalone, one replica) with JSON logs."""

from __future__ import annotations

import asyncio
import sys

import kopf

from testenv_operator import handlers  # noqa: F401  (registers the handlers)
from testenv_operator.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"testenv-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=settings.log_level == "DEBUG", log_format=kopf.LogFormat.JSON)
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness or None,
            standalone=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
