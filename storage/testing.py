"""The crash-test hook (crash tests only, never set it otherwise); loaded only when ``RAGBATCH_TEST_KILL_AT`` is set.

``RAGBATCH_TEST_KILL_AT=POINT:N[,POINT:N...]`` makes the process SIGKILL itself the N-th time (counted per process,
from 1) it reaches POINT; ``POINT:N:stall`` makes it stop there instead, holding its lock, until it is killed from
outside (so a test can meet a live writer deterministically, without racing it); ``POINT:N:term`` sends the
process SIGTERM there and goes on. The points
(:func:`storage.hooks.crash_point`):

- ``mid-shard``          a shard's tensor file is in place, its chunk table is not yet written
- ``after-shard``        both files of a shard are in place, not yet committed
- ``after-manifest``     a commit's new manifest is in place, ``index.json`` not yet written
- ``before-index-json``  ``index.json``'s temporary file is written and fsynced, not yet renamed
- ``after-index-json``   ``index.json`` is renamed (committed), garbage not yet collected, BM25 not yet synced
- ``after-bm25``         the BM25 index (``bm25/``) is synced to the new generation
- ``after-result-part``  the answer flow kept a finished batch (storage/runs/results.py)
- ``after-revision``     a refresh kept the previous table as a revision and noted it (``RESULTS.refresh.json``)
- ``after-refreshed-table``  a refresh's new table is in place, its change table and page not yet written
"""

from __future__ import annotations

import os
import signal
import time

from storage.hooks import KILL_ENV

__all__ = ["KILL_ENV", "kill_point"]

_KILL_COUNTS: dict[str, int] = {}


def kill_point(point: str) -> None:
    """SIGKILL (or stall) this process at ``point`` when ``RAGBATCH_TEST_KILL_AT`` names it (see above)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    count = _KILL_COUNTS[point] = _KILL_COUNTS.get(point, 0) + 1
    for item in spec.split(","):
        name, _, rest = item.strip().partition(":")
        n, _, action = rest.partition(":")
        if name == point and count == int(n or 1):
            if action == "stall":
                while True:
                    time.sleep(3600)
            if action == "term":  # as `kill PID` from outside would, at a known point
                os.kill(os.getpid(), signal.SIGTERM)
                return
            os.kill(os.getpid(), signal.SIGKILL)
