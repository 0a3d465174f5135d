"""The packaged copy of the TestEnvironment CRD, for installers that have no checkout."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def crd_manifest() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("crd.yaml").read_text()
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest
