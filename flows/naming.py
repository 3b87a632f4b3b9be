"""Meaningful flow-run names (``index-<store>-<timestamp>``), visible in the Prefect UI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path


def run_name(prefix: str, param: str, stem: bool = False) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<prefix>-<name (or stem) of the path parameter>-<timestamp>``."""

    def name() -> str:
        from prefect.runtime import flow_run

        path = Path(flow_run.parameters[param])
        return f"{prefix}-{path.stem if stem else path.name}-{datetime.now():%Y%m%d-%H%M%S}"

    return name
