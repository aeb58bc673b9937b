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
folder; on the holder's own host (same kernel and pid namespace) a holder
whose process is gone is taken over at once. A holder checks it is still
within its own last renewal's ttl (minus a margin) before every write, so it
stops before a taker can start.

The generation is also a fencing token (fence.py): every table part carries
it and readers ignore a lower generation's part that landed after a takeover;
`run.json` is written only while no higher generation has written it
(`write_fenced`: If-Match on S3, a flock around read-compare-replace locally).

Clocks: expiry compares the holder's wall clock (`expires_at`) with the
taker's. Holders stop writing 2/3 of a ttl after their last renewal by their
own monotonic clock, so wall clocks may disagree by up to ttl/3 (20 s at the
default) before a taker can start while the old holder still writes. Beyond
that bound nothing is corrupted (fencing keeps the tables and `run.json`
right); the questions then in flight may be paid twice.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields

from rlm_ray import storage
from rlm_ray.batch import conditional
from rlm_ray.batch import fence as fencing
from rlm_ray.errors import UserError

log = logging.getLogger(__name__)

LEASE_DIR = fencing.LEASE_DIR
DEFAULT_TTL_S = 60.0
_GEN_WIDTH = 10
RACE_BACKOFF_S = conditional.RACE_BACKOFF_S   # after losing a generation to another driver


class LeaseHeld(UserError):
    """Another live driver holds the folder."""


class LeaseLost(UserError):
    """This driver's lease expired or was taken over: it must stop writing."""


def _host_id() -> str:
    """Who can judge a pid: the same kernel boot and pid namespace. Empty when
    unknown (then only expiry frees a lease)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        return f"{socket.gethostname()}/{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _started_at(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


@dataclass
class LeaseRecord:
    generation: int
    holder: str          # host:pid of the driver
    run_id: str
    acquired_at: float   # epoch seconds (drivers may be on different machines)
    expires_at: float
    released: bool = False
    host_id: str = ""            # _host_id() of the holder
    pid: int = 0
    pid_started_at: float = 0.0  # tells the holder from a later process given the same pid

    @classmethod
    def parse(cls, data: bytes) -> "LeaseRecord":
        """Fields a newer version added are ignored; a record missing ours raises."""
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("a lease record is a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in known})

    def live(self, now: float) -> bool:
        return not self.released and now < self.expires_at and not self.holder_gone()

    def holder_gone(self) -> bool:
        """The holder ran on this host and its process has exited."""
        if not self.pid or not self.host_id or self.host_id != _host_id():
            return False
        started = _started_at(self.pid)
        return started is None or abs(started - self.pid_started_at) > 0.01

    def describe(self, now: float) -> str:
        return (f"holder {self.holder}, run {self.run_id}, lease expires in "
                f"{max(0.0, self.expires_at - now):.0f} s")


def _gen_name(generation: int) -> str:
    return f"gen-{generation:0{_GEN_WIDTH}d}.json"


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
    def _generations(self) -> list[int]:
        found = []
        for entry in storage.list_prefix(self.dir):
            name = entry.relpath
            if name.startswith("gen-") and name.endswith(".json"):
                try:
                    found.append(int(name[4:-5]))
                except ValueError:
                    continue
        return sorted(found, reverse=True)

    def _read(self, generation: int) -> LeaseRecord | None:
        try:
            return LeaseRecord.parse(storage.read_bytes(storage.join(self.dir,
                                                                     _gen_name(generation))))
        except FileNotFoundError:
            return None

    def current(self) -> LeaseRecord | None:
        """The highest generation (the holder, live or not), or None. A record
        that cannot be read still holds its generation number: it counts as an
        expired holder, so the next driver takes the number after it."""
        for generation in self._generations():
            try:
                record = self._read(generation)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable lease record %s in %s (%s): treated as expired",
                            _gen_name(generation), self.dir, exc)
                return LeaseRecord(generation, "unknown (unreadable record)", "?", 0.0, 0.0)
            if record is not None:
                return record
        return None

    # -- taking and keeping ---------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> "Lease":
        """Take the folder, waiting up to `wait_s` for a live holder; every
        path through here ends by that deadline (plus one storage round trip)."""
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            now = time.time()
            holder = self.current()
            if holder is None or not holder.live(now):
                if self._claim(holder, now):
                    return self
                holder = self.current() or holder   # whoever beat us to it
                pause = RACE_BACKOFF_S * (0.5 + random.random())
            else:
                pause = min(1.0, self.ttl_s / 4)
                if holder.acquired_at > now + self.ttl_s / 3:
                    log.warning("lease holder %s's clock is ahead of ours by more than ttl/3",
                                holder.holder)
            if time.monotonic() >= deadline:
                assert holder is not None
                raise LeaseHeld(f"results folder {self.folder} is in use by another run "
                                f"({holder.describe(time.time())}); wait for it to finish or "
                                f"pass --lease-wait SECONDS")
            time.sleep(min(pause, max(0.05, deadline - time.monotonic())))

    def _claim(self, holder: LeaseRecord | None, now: float) -> bool:
        """Create the next generation. Its fence (the parts it admits from lower
        generations) is written first, so the claim and its fence are one step."""
        import psutil

        generation = (holder.generation if holder else 0) + 1
        pid = os.getpid()
        record = LeaseRecord(generation, f"{socket.gethostname()}:{pid}", uuid.uuid4().hex[:12],
                             now, now + self.ttl_s, host_id=_host_id(), pid=pid,
                             pid_started_at=psutil.Process(pid).create_time())
        previous = current_fence(self.folder, holder)
        admitted = frozenset(n for n in fencing.committed_part_names(self.folder)
                             if previous is None or previous.admits(n))
        fence_uri = fencing.write_fence(self.folder, fencing.Fence(generation, admitted),
                                        record.run_id)
        started = time.monotonic()
        if (conditional.create_exclusive(storage.join(self.dir, _gen_name(generation)),
                             json.dumps(asdict(record)).encode())
                and self._read_back(record)):
            self.record, self._renewed_mono, self._lost = record, started, None
            self._prune(generation)
            self._start_heartbeat()
            return True
        storage.delete(fence_uri)
        return False

    def _read_back(self, record: LeaseRecord) -> bool:
        """Ours is the record stored under our generation, and nothing is above
        it (a store that did not honour create-if-absent would show it here)."""
        try:
            stored = self._read(record.generation)
        except (OSError, ValueError, TypeError):
            return False
        return (stored is not None and stored.run_id == record.run_id
                and self._generations()[:1] == [record.generation])

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
            if self._taken_over():
                return
            started = time.monotonic()
            self.record.expires_at = time.time() + self.ttl_s
            # Only our own generation's object: a late renewal cannot touch a taker's.
            storage.write_bytes_atomic(self._own_uri(), json.dumps(asdict(self.record)).encode())
            self._renewed_mono = started

    def _taken_over(self) -> bool:
        assert self.record is not None
        holder = self.current()
        if holder is not None and holder.generation > self.record.generation:
            self._lost = f"taken over by {holder.holder} (run {holder.run_id})"
            return True
        return False

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

    @property
    def generation(self) -> int | None:
        return self.record.generation if self.record else None

    def write_fenced(self, uri: str, body: dict) -> None:
        """Write JSON `body` to `uri` (stamped with our generation) unless a
        higher generation wrote it: a stalled holder waking up after a takeover
        cannot overwrite the taker's file. Raises LeaseLost then."""
        self.ensure_held()
        assert self.record is not None
        mine = self.record.generation
        data = json.dumps(dict(body, lease_generation=mine), indent=2, sort_keys=True,
                          default=str).encode()
        if not conditional.write_unless_newer(uri, data, mine,
                                              storage.join(self.dir, "write.lock")):
            self._lost = f"{uri} was written by a newer lease generation"
            self.ensure_held()

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
        """Old generations only tell history: keep the previous one (and our
        fence, which readers need), drop the rest."""
        for entry in storage.list_prefix(self.dir):
            name = entry.relpath
            number = name[4:14] if name.startswith("gen-") else name[6:16]
            if name.endswith(".json") and name.startswith(("gen-", "fence-")):
                try:
                    if int(number) < generation - 1:
                        storage.delete(entry.uri)
                except (ValueError, OSError):
                    continue

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def current_fence(folder: str, holder: LeaseRecord | None = None) -> fencing.Fence | None:
    """The fence readers apply to `folder` now: the current holder's (None when
    the folder has no lease, or its holder wrote no fence: every part counts)."""
    holder = holder or Lease(folder).current()
    if holder is None:
        return None
    return fencing.read_fence(folder, holder.generation, holder.run_id)
