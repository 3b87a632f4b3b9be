"""Where a run may write: never into a store, never over one of its own inputs.

A results path is the user's to choose, and a careless one destroyed data with exit 0: ``--out STORE/index.json``
replaced the store's metadata, an ``out`` equal to the store's manifest wiped it, an ``out`` equal to the
questions file overwrote the input, and a table written under ``STORE/shards/`` was deleted by the next index
run's garbage collection. So every flow checks all it will write (the table, its config, its report, its parts
folder, a report folder) before any work, with symlinks resolved on both sides.

A folder is a store when it holds the store's ``index.json`` beside its ``shards/`` folder or a
``manifest-*.parquet`` (an ``index.json`` alone is too common a name to claim); an output is refused when it is
such a folder, or anywhere inside one, whichever run's store it is, and when it is or lies inside the run's own
store even before that store's first commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from storage.fs import is_object_url, local_path
from storage.store.meta import INDEX_FILE


class OutputPathError(ValueError):
    """An output path that would overwrite a store or an input of the run."""


def store_root(path: Path) -> Path | None:
    """The store folder ``path`` is, or lies inside (symlinks resolved); None when there is none."""
    path = path.expanduser().resolve()
    for folder in (path, *path.parents):
        if (folder / INDEX_FILE).is_file() and ((folder / "shards").is_dir()
                                                or next(folder.glob("manifest-*.parquet"), None) is not None):
            return folder
    return None


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = (),
                  stores: Iterable[str | Path] = ()) -> None:
    """Refuse, naming both paths, any output that is inside a store (``stores`` and any other found on disk) or
    that is, holds or lies inside one of ``inputs``. Object-store locations in ``stores`` are not local paths
    and cannot collide with a local output."""
    outs = [Path(o).expanduser().resolve() for o in outputs]
    for folder in sorted({_existing_folder(out) for out in outs}):
        _check_writable(folder)
    ins = [Path(i).expanduser().resolve() for i in inputs]
    roots = [local_path(s).resolve() for s in stores if not is_object_url(str(s))]
    for out in outs:
        found = next((r for r in roots if out == r or r in out.parents), None) or store_root(out)
        if found is not None:
            raise OutputPathError(f"output {out} is inside the store {found}: writing there would damage the "
                                  "store; choose a path outside it")
        for inp in ins:
            if out == inp or out in inp.parents:
                raise OutputPathError(f"output {out} would overwrite the run's input {inp}; choose another path")
            if inp in out.parents:
                raise OutputPathError(f"output {out} is inside the run's input folder {inp}; choose a path "
                                      "outside it")


def _existing_folder(out: Path) -> Path:
    """The folder an output will be written in, or its nearest existing ancestor (the run creates the rest)."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable(folder: Path) -> None:
    """Refuse a folder the run could not write in, by writing in it: permissions, a read-only mount or a quota
    all answer the same way, and a read-only ``--out`` folder was found only after a batch of answers was
    generated and thrown away."""
    import os
    import tempfile

    if not folder.is_dir():
        raise OutputPathError(f"cannot write under {folder}: it is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ragbatch-write-check-", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"cannot write in {folder} ({exc.strerror or exc}); choose another output "
                              "path") from None
    os.close(fd)
    os.unlink(probe)
