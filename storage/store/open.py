"""``open_store(location)``: the one place a location becomes a store of the right backend."""

from __future__ import annotations

from pathlib import Path

from storage.fs import is_object_url
from storage.store.base import Store


def open_store(location: str | Path | Store) -> Store:
    """A local folder (a path or ``file://`` URL) or ``s3://bucket/prefix``; a store is returned as it is."""
    if isinstance(location, Store):
        return location
    if is_object_url(str(location)):
        from storage.store.s3 import S3Store  # boto3 is imported only for an S3 store

        return S3Store(location)
    from storage.store.local import LocalStore

    return LocalStore(location)
