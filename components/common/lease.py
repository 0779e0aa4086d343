"""A lease in the artifact store: at most one live process works on a named piece of a run.

Two tasks started with the same run_id would each ask the teacher for the same prompts and pay twice.
The first takes the lease, an object in the store holding its owner and an expiry, and renews it from a
background thread every `renew_s` seconds; a second process that finds a live lease stops at once with
an error naming the holder.

    lease = Lease(store, "leases/shard-00000-of-00001.json", "teacher shard 0/1 of run 'x'")
    with lease.held():
        ...                                    # the work; the lease is released when it ends

A holder that dies without releasing (kill -9, a lost node) stops renewing: once its lease expires
(`ttl_s`, 30 s) the next process takes it over, so a KFP retry (first back-off 60 s) resumes the run. On
the same host a dead holder is recognised at once (its pid is gone), so a restart by hand need not wait.

Taking and renewing are conditional writes (S3 If-None-Match / If-Match, a folder lock locally), so two
processes can never both win. A store that ignores those conditions (some older S3 servers) turns them
into plain writes; then the lease is read back after each write and before each renewal, and a process
that finds another owner there stops: two processes starting within the same few milliseconds could both
start, and the later renewal stops one of them within `renew_s`. Expiry compares wall clocks of different
pods: keep them in sync within a fraction of `ttl_s` (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from components.common.errors import InputError
from components.common.runs import process_owner
from components.common.store import ArtifactStore

log = logging.getLogger(__name__)


class LeaseHeld(InputError):
    """Another live process holds the lease: this one must not do the same work."""


def stop_this_process() -> None:
    """What losing the lease does by default: stop as a pod being stopped does (SIGTERM saves and exits)."""
    os.kill(os.getpid(), signal.SIGTERM)


class Lease:
    def __init__(
        self,
        store: ArtifactStore,
        key: str,
        what: str,
        ttl_s: float = 30.0,
        renew_s: float = 10.0,
        on_lost: Callable[[], None] = stop_this_process,
    ):
        if not 0 < renew_s < ttl_s:
            raise ValueError(f"renew_s ({renew_s}) must be positive and below ttl_s ({ttl_s})")
        self.store = store
        self.key = key
        self.what = what
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.on_lost = on_lost
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @contextmanager
    def held(self) -> Iterator[Lease]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    # --- taking ---------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease (a free one, an expired one or one whose holder is dead), or raise LeaseHeld."""
        for _ in range(3):
            if self.store.create(self.key, self._body()) is not None:
                return self._confirm()
            try:
                data, tag = self.store.read_tagged(self.key)
            except FileNotFoundError:
                continue  # released between our two calls: try again
            holder = _parse(data)
            if holder is not None and not self._is_dead(holder):
                raise LeaseHeld(self._held_message(holder))
            log.warning(
                "%s: taking over the lease of %s, which %s",
                self.what,
                _describe(holder),
                "is unreadable" if holder is None else "is dead or expired",
            )
            if self.store.replace(self.key, self._body(), tag) is not None:
                return self._confirm()
        raise LeaseHeld(f"{self.what}: another process took the lease {self._where()} at the same moment")

    def _confirm(self) -> None:
        holder = _parse(self.store.read_bytes(self.key))
        if holder is None or holder.get("token") != self.token:
            raise LeaseHeld(self._held_message(holder or {}))
        self._renewer = threading.Thread(target=self._keep_renewing, name="lease-renewer", daemon=True)
        self._renewer.start()
        log.info("%s: lease taken (%s), renewed every %.0f s", self.what, self._where(), self.renew_s)

    def _is_dead(self, holder: dict) -> bool:
        if holder.get("expires_at", 0) <= time.time():
            return True
        owner = _owner(holder)
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # --- keeping --------------------------------------------------------------------------------------
    def _keep_renewing(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                renewed = self._renew()
            except Exception as error:  # the store is unreachable for now: try again at the next tick
                log.warning("%s: could not renew the lease (%s); retrying", self.what, error)
                continue
            if not renewed:
                self.lost = True
                log.error(
                    "%s: the lease %s was taken over by another process (this one stalled past its "
                    "expiry); stopping so that the two do not do the same work",
                    self.what,
                    self._where(),
                )
                self.on_lost()
                return

    def _renew(self) -> bool:
        """Extend the expiry; False when the lease is no longer ours."""
        try:
            data, tag = self.store.read_tagged(self.key)
        except FileNotFoundError:
            return False
        holder = _parse(data)
        if holder is None or holder.get("token") != self.token:
            return False
        return self.store.replace(self.key, self._body(), tag) is not None

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (a lease left behind just expires)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost:
            return
        try:
            holder = _parse(self.store.read_bytes(self.key))
            if holder is not None and holder.get("token") == self.token:
                self.store.delete(self.key)
        except Exception as error:
            log.warning(
                "%s: could not release the lease (%s); it expires in %.0f s", self.what, error, self.ttl_s
            )

    # --- the object -----------------------------------------------------------------------------------
    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {"token": self.token, "owner": process_owner(), "renewed_at": now, "expires_at": now + self.ttl_s}
        ).encode("utf-8")

    def _where(self) -> str:
        return f"{self.store.uri}/{self.key}"

    def _held_message(self, holder: dict) -> str:
        until = datetime.fromtimestamp(holder.get("expires_at", 0), UTC).strftime("%H:%M:%S UTC")
        return (
            f"{self.what} is already running in {_describe(holder)} (lease {self._where()}, renewed until "
            f"{until}); two processes with the same run_id would pay for the same prompts twice. Wait for "
            f"it to finish, or give this run another run_id; if that process is dead, run again after {until}"
        )


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _owner(holder: dict | None) -> dict:
    owner = (holder or {}).get("owner")
    return owner if isinstance(owner, dict) else {}


def _describe(holder: dict | None) -> str:
    owner = _owner(holder)
    if not owner:
        return "an unknown process"
    where = owner.get("kfp_pod") or owner.get("host", "?")
    return f"{where} (pid {owner.get('pid', '?')})"
