"""`--harness LABEL=PATH`: a benchmark that compares commits runs each checkout's harness and
operator in turn, PATH's first on PYTHONPATH (`current` is this checkout, as installed)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

#: (label, path); path "" for the checkout this runs from.
Checkout = tuple[str, str]


def add_option(parser: argparse.ArgumentParser, when: str = "") -> None:
    parser.add_argument(
        "--harness",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help=f"{when}a checkout whose harness and operator to run (repeatable; 'current' is this one)",
    )


def parse(parser: argparse.ArgumentParser, entries: Sequence[str]) -> list[Checkout]:
    """The checkouts `--harness` named (this one alone if none); a usage error names a bad one."""
    checkouts: list[Checkout] = []
    for entry in entries or ["current"]:
        label, _, path = entry.partition("=")
        if label != "current" and not Path(path, "harness", "testenv_harness").is_dir():
            parser.error(
                f"--harness {entry!r}: no harness/testenv_harness under {path!r} (LABEL=PATH of a checkout)"
            )
        checkouts.append((label, "" if label == "current" else str(Path(path).resolve())))
    return checkouts


def environment(env: Mapping[str, str], path: str) -> dict[str, str]:
    """`env` with the checkout at `path` first on PYTHONPATH (unchanged for "")."""
    if not path:
        return dict(env)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([f"{path}/harness", f"{path}/operator", env.get("PYTHONPATH", "")]),
    }
