"""Named points in the store's write path where a crash test may stop the process.

Production code calls :func:`crash_point` and nothing else: it does nothing unless ``RAGBATCH_TEST_KILL_AT`` is
set, and only then is the test behaviour (storage/testing.py, which production code never imports) loaded.
"""

from __future__ import annotations

import os

KILL_ENV = "RAGBATCH_TEST_KILL_AT"


def crash_point(point: str) -> None:
    """A point a crash test can name (see storage/testing.py); a no-op in every real run."""
    if os.environ.get(KILL_ENV):
        from storage.testing import kill_point

        kill_point(point)
