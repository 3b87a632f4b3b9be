"""The object store's writer lock: a lease object created with ``If-None-Match: *`` and renewed with ``If-Match``.

Object stores have neither ``O_EXCL`` files nor ``flock``; a conditional PUT is the one atomic step they offer.
The lease (``<store>/.lease``) holds who writes (holder, host, pid), until when (``expires``) and how often it
was renewed. A background thread renews it every third of its TTL, each renewal an ``If-Match`` on the ETag
of the last one, so a lease that someone else took is noticed rather than overwritten. Another writer takes it
over only after it has expired, again with ``If-Match`` on the ETag it read, so two writers finding the same
expired lease cannot both take it. Every commit renews the lease first and fails if it was lost.

A killed writer's lease blocks the store until it expires (``lease_ttl_s``, 60 s by default): re-run with
``--wait`` of at least that long. Expiry is compared with the local clock, so writers' clocks must agree to
well within the TTL (NTP does).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from storage.store.meta import StoreError
from storage.store.s3_objects import PreconditionFailed, S3Objects

LEASE_FILE = ".lease"

# The lease each store URL has in this process, so a commit through any Store object of it renews that lease.
HELD: dict[str, S3Lease] = {}


class S3Lease:
    """``with S3Lease(objects, url, wait_s, ttl_s):`` — the one writer of an object store (see the module)."""

    def __init__(self, objects: S3Objects, url: str, wait_s: float = 0.0, ttl_s: float = 60.0):
        self.objects, self.url, self.wait_s, self.ttl_s = objects, url, wait_s, ttl_s
        self.etag: str | None = None
        self.state: dict[str, Any] = {}
        self.lost: str | None = None  # why the lease is no longer ours (taken over after it expired)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, **extra: Any) -> bytes:
        self.state.update(extra, expires=time.time() + self.ttl_s)
        return json.dumps(self.state, sort_keys=True).encode()

    def __enter__(self) -> S3Lease:
        deadline = time.monotonic() + self.wait_s
        host, pid = socket.gethostname(), os.getpid()
        while True:
            now = time.time()
            self.state = {"holder": f"pid {pid} on {host}", "host": host, "pid": pid, "since": now, "renewals": 0,
                          "ttl_s": self.ttl_s, "token": uuid.uuid4().hex}
            try:
                self.etag = self.objects.put(LEASE_FILE, self._body(), if_none_match=True)
                break
            except PreconditionFailed:
                pass
            try:
                raw, etag = self.objects.get(LEASE_FILE)
            except FileNotFoundError:
                continue  # released in between: try to create it again
            current = _parse(raw)
            if current is None or float(current.get("expires", 0)) < now:  # expired (or not a lease at all)
                try:
                    old = current.get("holder") if current else "an unreadable lease"
                    self.etag = self.objects.put(LEASE_FILE, self._body(took_over_from=old), if_match=etag)
                    break
                except PreconditionFailed:
                    continue  # another writer took or renewed it first
            if time.monotonic() >= deadline:
                raise StoreError(self._locked_message(current))
            time.sleep(0.2)
        HELD[self.url] = self
        self._thread = threading.Thread(target=self._renew_loop, name="ragbatch-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if HELD.get(self.url) is self:
            del HELD[self.url]
        if self.lost is None and self.etag is not None:
            try:  # only while it is still ours: never delete a lease another writer took over
                self.objects.delete(LEASE_FILE, if_match=self.etag)
            except (PreconditionFailed, OSError):
                pass
        self.etag = None

    def renew(self) -> None:
        """Extend the lease by its TTL (``If-Match`` on our last ETag); ``StoreError`` when it is no longer ours."""
        with self._mutex:
            if self.lost is not None:
                raise StoreError(self.lost)
            try:
                self.etag = self.objects.put(LEASE_FILE, self._body(renewals=self.state.get("renewals", 0) + 1),
                                             if_match=self.etag)
            except (PreconditionFailed, FileNotFoundError):
                try:
                    now = _parse(self.objects.get(LEASE_FILE)[0])
                except FileNotFoundError:
                    now = None
                who = now.get("holder") if now else "nobody (it was deleted)"
                self.lost = (f"store {self.url}: this writer's lease ({LEASE_FILE}) expired and is now held by {who}; "
                             "nothing more is committed by this run (a pause longer than the lease TTL "
                             f"{self.ttl_s:.0f}s?)")
                raise StoreError(self.lost) from None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except StoreError:
                return  # lost: the next commit reports it
            except OSError:
                continue  # the endpoint did not answer: try again at the next tick (the commit checks again)

    def _locked_message(self, current: dict[str, Any] | None) -> str:
        if current is None:
            who = "an unreadable lease object"
        else:
            who = str(current.get("holder"))
            if current.get("since"):
                who += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(current['since'])))}"
            left = float(current.get("expires", 0)) - time.time()
            who += f" (lease renewed {current.get('renewals', 0)} times, expires in {max(left, 0):.0f}s)"
        return (f"store {self.url} is locked by {who} (another index run is writing it); wait for it to finish "
                "(--wait SECONDS); the lease of a writer that died is taken over once it expires")


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) and "expires" in obj else None
