"""The store's location seam: ``--store`` is a local path, a ``file://`` URL, or an ``s3://bucket/prefix`` URL.

Local locations keep the POSIX store exactly as it was (rename, fsync, flock). ``s3://`` (any S3-compatible
endpoint) opens :class:`storage.store.s3.S3Store`, whose commits rely on S3's conditional PUTs
(``If-None-Match`` / ``If-Match``). Other fsspec protocols have no such primitive and are refused rather than
made unsafe. Credentials never appear in a location: they come from the AWS environment variables,
``AWS_ENDPOINT_URL`` and fsspec's configuration, so a location can be saved in run configs as it is.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

OBJECT_SCHEMES = ("s3", "s3a")


def scheme_of(location: str | Path) -> str | None:
    """The URL scheme of a location (``None`` for a plain path)."""
    if isinstance(location, Path):
        return None
    head, sep, _ = str(location).partition("://")
    return head.lower() if sep and head.isalnum() else None


def is_object_url(location: str | Path) -> bool:
    return scheme_of(location) in OBJECT_SCHEMES


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at either end) of ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(f"store URL {url.split('@')[-1]!r}: credentials do not go into a store URL; set "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) instead")
    if not parts.netloc:
        raise ValueError(f"store URL {url!r} names no bucket (s3://BUCKET/PREFIX)")
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {url!r}: no query or fragment allowed (s3://BUCKET/PREFIX)")
    prefix = parts.path.strip("/")
    if prefix and any(seg in (".", "..", "") for seg in prefix.split("/")):
        # S3 keys are literal: s3://b/./st and s3://b/a/../st would be other stores than s3://b/st
        raise ValueError(f"store URL {url!r}: a prefix with '.', '..' or empty segments names another store than it "
                         "looks like; write it out (s3://BUCKET/a/b)")
    return parts.netloc, prefix


def store_location(location: str | Path) -> str:
    """The canonical form saved in run configs: an absolute local path, or ``s3://bucket/prefix``."""
    scheme = scheme_of(location)
    if scheme is None or scheme == "file":
        return str(local_path(location))
    if scheme in OBJECT_SCHEMES:
        bucket, prefix = split_s3(str(location))
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    raise ValueError(
        f"--store {location}: the {scheme}:// protocol is not supported; a store is a local folder, a file:// URL "
        "or s3://BUCKET/PREFIX (object stores need conditional PUTs for safe commits)"
    )


def local_path(location: str | Path) -> Path:
    """A plain path or ``file://`` URL as an absolute path."""
    text = str(location)
    if scheme_of(text) == "file":
        text = urlsplit(text).path
    return Path(text).expanduser().resolve()
