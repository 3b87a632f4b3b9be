"""Earlier versions of a result table, kept when ``refresh`` replaces it: ``RESULTS.revisions/``.

Each revision is the table and its config as they were, named by the store generation they were answered at and
the time they were replaced (``gen000004-20261206T031500.parquet`` and its ``.config.json``). The copy is made
before the new table is written, atomically, so a refresh killed at any point leaves the previous table either in
place or in place and in the revisions: never lost.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from storage.atomic import atomic_path, write_json_atomic
from storage.runs.results import config_path


def revisions_dir(results: Path) -> Path:
    return results.with_name(results.name + ".revisions")


def keep_revision(results: Path, generation: int | None) -> Path:
    """Copy ``results`` (and its config) into its revisions folder; return the copy's path."""
    folder = revisions_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"gen{generation:06d}-{stamp}" if generation is not None else f"gen-unknown-{stamp}"
    target = folder / f"{name}.parquet"
    for src, dst in ((results, target), (config_path(results), config_path(target))):
        if src.exists():
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    return target


def changes_table_path(results: Path) -> Path:
    """``RESULTS.changes.parquet``: what the last refresh of ``results`` changed."""
    return results.with_name(results.stem + ".changes.parquet")


def pending_path(results: Path) -> Path:
    return results.with_name(results.stem + ".refresh.json")


def start_revision(results: Path, generation: int | None) -> Path:
    """Keep ``results`` as a revision and note it as the base of the refresh under way (``RESULTS.refresh.json``),
    so a re-run after a kill compares against it, not against a table the killed run may already have replaced."""
    kept = keep_revision(results, generation)
    write_json_atomic(pending_path(results), {"revision": str(kept)})
    return kept


def pending_revision(results: Path) -> Path | None:
    """The revision a stopped refresh started from, when there is one and it is still there."""
    try:
        kept = Path(json.loads(pending_path(results).read_text())["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kept if kept.is_file() and kept.parent == revisions_dir(results) else None


def finish_revision(results: Path) -> None:
    """The refresh's change table and page are written: the next refresh starts from the table itself."""
    pending_path(results).unlink(missing_ok=True)


def write_changes(path: Path, records: list[dict]) -> None:
    """The refresh's change table (``RESULTS.changes.parquet``; tasks/reporting/changes.py makes its rows),
    written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(records), tmp)


def revisions(results: Path) -> list[Path]:
    """The kept revisions of ``results``, oldest first."""
    folder = revisions_dir(results)
    return sorted(folder.glob("gen*.parquet")) if folder.is_dir() else []
