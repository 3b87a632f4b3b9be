"""S3 objects under one prefix, with the conditional PUTs and DELETEs the object store's commits rely on.

s3fs gives us the client set-up users expect (the AWS environment variables and profiles, ``AWS_ENDPOINT_URL``,
fsspec's ``s3`` configuration) but its ``pipe``/``open`` expose neither ``If-None-Match`` nor ``If-Match`` nor
the ETag read, so the calls go to the aiobotocore client underneath it (botocore's ``put_object`` takes
``IfNoneMatch``/``IfMatch``; S3 and moto answer 412 when they fail).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.store.meta import StoreError


class PreconditionFailed(Exception):
    """A conditional request lost: the object exists (If-None-Match) or changed since it was read (If-Match)."""


@dataclass(frozen=True)
class ObjectInfo:
    rel: str  # the key relative to the store prefix
    size: int
    mtime: float  # the server's LastModified, epoch seconds
    etag: str = ""


_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Objects:
    """The objects of one store: ``s3://bucket/prefix/<rel>``."""

    def __init__(self, bucket: str, prefix: str):
        import fsspec

        self.bucket, self.prefix = bucket, prefix.strip("/")
        try:
            self.fs = fsspec.filesystem("s3")  # one cached client per process and configuration
        except ImportError as exc:
            raise StoreError(f"s3://{bucket}: an s3:// store needs s3fs: pip install -e '.[s3]'") from exc

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    def _run(self, op: str, rel: str, **kw: Any) -> Any:
        """One client call on s3fs's event loop; S3 errors become Python ones naming the object."""
        from botocore.exceptions import BotoCoreError, ClientError
        from fsspec.asyn import sync

        async def call() -> Any:
            client = await self.fs.set_session()
            if op == "list":
                out = []
                async for page in client.get_paginator("list_objects_v2").paginate(
                        Bucket=self.bucket, Prefix=self.key(rel)):
                    out += page.get("Contents", [])
                return out
            resp = await getattr(client, op)(Bucket=self.bucket, **kw)
            if op == "get_object":
                async with resp["Body"] as body:
                    resp["Data"] = await body.read()
            return resp

        try:
            return sync(self.fs.loop, call)
        except ClientError as exc:
            code = _code(exc)
            if code in _PRECONDITION:
                raise PreconditionFailed(f"{self.url(rel)}: {code}") from exc
            if code in _MISSING:
                raise FileNotFoundError(self.url(rel)) from None
            if code == "NoSuchBucket":
                raise StoreError(f"s3://{self.bucket}: no such bucket (create it first)") from None
            raise OSError(f"{self.url(rel)}: {code or exc}") from exc
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
            raise OSError(f"{self.url(rel)}: {exc}") from exc

    def get(self, rel: str) -> tuple[bytes, str]:
        """The object's bytes and the ETag they were read at (``FileNotFoundError`` when absent)."""
        resp = self._run("get_object", rel, Key=self.key(rel))
        return resp["Data"], resp["ETag"]

    def head(self, rel: str) -> ObjectInfo | None:
        try:
            r = self._run("head_object", rel, Key=self.key(rel))
        except FileNotFoundError:
            return None
        return ObjectInfo(rel, int(r["ContentLength"]), r["LastModified"].timestamp(), r["ETag"])

    def put(self, rel: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write the object, only if absent (``if_none_match``) or still at ETag ``if_match``; its new ETag."""
        kw: dict[str, Any] = {"Key": self.key(rel), "Body": data}
        if if_none_match:
            kw["IfNoneMatch"] = "*"
        if if_match is not None:
            kw["IfMatch"] = if_match
        return self._run("put_object", rel, **kw)["ETag"]

    def delete(self, rel: str, *, if_match: str | None = None) -> None:
        """Delete the object (absent is fine); with ``if_match`` only while it is still at that ETag."""
        kw: dict[str, Any] = {"Key": self.key(rel)}
        if if_match is not None:
            kw["IfMatch"] = if_match
        try:
            self._run("delete_object", rel, **kw)
        except FileNotFoundError:
            pass

    def list(self, sub: str = "") -> list[ObjectInfo]:
        """Every object under the store prefix (and ``sub``), keys relative to the prefix."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        rows = self._run("list", sub)
        return [ObjectInfo(o["Key"][cut:], int(o["Size"]), o["LastModified"].timestamp(), o.get("ETag", ""))
                for o in rows if o["Key"][cut:]]
