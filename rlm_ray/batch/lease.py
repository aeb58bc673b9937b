"""A lease on a results folder: one driver at a time writes a run's tables.

A scheduler that fires twice, or two people running the same command, would
otherwise answer every question twice. The lease is a numbered object per
holder under `<out>/_lease/`: `gen-<N>.json` is created only if it does not
exist yet (local: link(2) of a complete temp file; S3: PutObject with
`If-None-Match: *`, which moto_server honours too), so of two drivers racing
for generation N exactly one wins. The holder is the highest generation; it
renews its own object (a heartbeat every ttl/3 moves `expires_at` forward) and
releases it at the end. A holder that was SIGKILLed stops renewing: once its
`expires_at` has passed, the next driver creates generation N+1 and owns the
folder. A holder checks it is still within its own last renewal's ttl (minus
a margin) before every write, so it stops before a taker can start.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from rlm_ray import storage
from rlm_ray.errors import UserError

log = logging.getLogger(__name__)

LEASE_DIR = "_lease"
DEFAULT_TTL_S = 60.0
_GEN_WIDTH = 10


class LeaseHeld(UserError):
    """Another live driver holds the folder."""


class LeaseLost(UserError):
    """This driver's lease expired or was taken over: it must stop writing."""


@dataclass
class LeaseRecord:
    generation: int
    holder: str          # host:pid of the driver
    run_id: str
    acquired_at: float   # epoch seconds (drivers may be on different machines)
    expires_at: float
    released: bool = False

    def live(self, now: float) -> bool:
        return not self.released and now < self.expires_at

    def describe(self, now: float) -> str:
        return (f"holder {self.holder}, run {self.run_id}, lease expires in "
                f"{max(0.0, self.expires_at - now):.0f} s")


def _gen_name(generation: int) -> str:
    return f"gen-{generation:0{_GEN_WIDTH}d}.json"


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `uri` only if it does not exist; False when someone else's is there."""
    if storage.is_s3(uri):
        return _s3_create_exclusive(uri, data)
    folder = os.path.dirname(uri)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".lease-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(temp, uri)     # atomic, and fails if the name exists
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)


def _s3_client():
    import boto3

    settings = storage.S3Settings.from_env()
    endpoint = f"{settings.scheme}://{settings.endpoint}" if settings.endpoint else None
    return boto3.client("s3", region_name=settings.region, endpoint_url=endpoint,
                        aws_access_key_id=settings.access_key,
                        aws_secret_access_key=settings.secret_key,
                        aws_session_token=settings.session_token)


def _s3_create_exclusive(uri: str, data: bytes) -> bool:
    from botocore.exceptions import ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        raise


class Lease:
    def __init__(self, folder: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise UserError(f"lease ttl must be positive, got {ttl_s!r}")
        self.folder = folder
        self.dir = storage.join(folder, LEASE_DIR)
        self.ttl_s = float(ttl_s)
        self.record: LeaseRecord | None = None
        self._renewed_mono = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------
    def current(self) -> LeaseRecord | None:
        """The highest generation (the holder, live or not), or None."""
        names = [e.relpath for e in storage.list_prefix(self.dir)
                 if e.relpath.startswith("gen-") and e.relpath.endswith(".json")]
        for name in sorted(names, reverse=True):
            try:
                return LeaseRecord(**json.loads(storage.read_bytes(storage.join(self.dir, name))))
            except (OSError, ValueError, TypeError):
                continue   # a damaged record is skipped, the next one decides
        return None

    # -- taking and keeping ---------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> "Lease":
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            now = time.time()
            holder = self.current()
            if holder is None or not holder.live(now):
                generation = (holder.generation if holder else 0) + 1
                record = LeaseRecord(generation, f"{socket.gethostname()}:{os.getpid()}",
                                     uuid.uuid4().hex[:12], now, now + self.ttl_s)
                started = time.monotonic()
                if create_exclusive(storage.join(self.dir, _gen_name(generation)),
                                    json.dumps(asdict(record)).encode()):
                    self.record, self._renewed_mono = record, started
                    self._prune(generation)
                    self._start_heartbeat()
                    return self
                continue   # another driver took this generation first: look again
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"results folder {self.folder} is in use by another run "
                                f"({holder.describe(now)}); wait for it to finish or pass "
                                f"--lease-wait SECONDS")
            time.sleep(min(1.0, self.ttl_s / 4, max(0.05, deadline - time.monotonic())))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="rlm-lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal only ages the lease
                log.warning("lease renewal on %s failed: %s", self.folder, exc)

    def renew(self) -> None:
        with self._lock:
            if self.record is None or self._lost:
                return
            holder = self.current()
            if holder is not None and holder.generation > self.record.generation:
                self._lost = f"taken over by {holder.holder} (run {holder.run_id})"
                return
            started = time.monotonic()
            self.record.expires_at = time.time() + self.ttl_s
            storage.write_bytes_atomic(self._own_uri(), json.dumps(asdict(self.record)).encode())
            self._renewed_mono = started

    def lost_reason(self) -> str | None:
        if self._lost:
            return self._lost
        if self.record is not None:
            # Stop writing a third of a ttl before a taker could see the lease expire.
            if time.monotonic() - self._renewed_mono > self.ttl_s * 2 / 3:
                return "not renewed in time (the driver was stalled)"
        return None

    def ensure_held(self) -> None:
        reason = self.lost_reason()
        if reason:
            raise LeaseLost(f"lost the lease on {self.folder}: {reason}; stopped writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self.record is None or self.lost_reason():
                return
            holder = self.current()
            if holder is not None and holder.generation == self.record.generation:
                self.record.released = True
                storage.write_bytes_atomic(self._own_uri(),
                                           json.dumps(asdict(self.record)).encode())
            self.record = None

    def _own_uri(self) -> str:
        assert self.record is not None
        return storage.join(self.dir, _gen_name(self.record.generation))

    def _prune(self, generation: int) -> None:
        """Old generations only tell history: keep the previous one, drop the rest."""
        for entry in storage.list_prefix(self.dir):
            name = entry.relpath
            if name.startswith("gen-") and name.endswith(".json"):
                try:
                    if int(name[4:-5]) < generation - 1:
                        storage.delete(entry.uri)
                except (ValueError, OSError):
                    continue

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
