"""A hard dollar / token / call budget that a whole tree of calls draws from.

Reserve before a call (the estimate), settle after (the real usage), so that
concurrent callers can never jointly overshoot. Without Ray the ledger lives
in this process behind a lock; with Ray every Budget is an entry in one
detached "bank" actor, so the Budget object itself is a tiny picklable
(limits, id) that any actor or task can draw from. A dollar limit only counts
calls whose price is known (unknown prices are None, never 0): such calls
still draw tokens and calls."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from rlm_ray.llm.types import BudgetExceeded

NAMESPACE = "rlm_ray"
BANK_NAME = "rlm-ray-budgets"
KINDS = ("usd", "tokens", "calls")


@dataclass
class Ledger:
    limits: dict[str, float | None]
    used: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    reserved: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    touched: float = field(default_factory=time.time)
    refusals: int = 0

    def reserve(self, amounts: dict[str, float]) -> tuple | None:
        """Take `amounts` or nothing; returns the refusal (kind, limit, used, asked) or None."""
        self.touched = time.time()
        for kind, amount in amounts.items():
            limit = self.limits.get(kind)
            taken = self.used[kind] + self.reserved[kind]
            if limit is not None and taken + amount > limit + 1e-12:
                self.refusals += 1
                return (kind, limit, taken, amount)
        for kind, amount in amounts.items():
            self.reserved[kind] += amount
        return None

    def settle(self, reserved: dict[str, float], actual: dict[str, float]) -> None:
        self.touched = time.time()
        for kind, amount in reserved.items():
            self.reserved[kind] = max(0.0, self.reserved[kind] - amount)
        for kind, amount in actual.items():
            self.used[kind] += amount

    def remaining(self) -> dict[str, float | None]:
        return {kind: None if self.limits.get(kind) is None
                else self.limits[kind] - self.used[kind] - self.reserved[kind] for kind in KINDS}

    def snapshot(self) -> dict:
        return {"limits": dict(self.limits), "used": dict(self.used), "reserved": dict(self.reserved),
                "remaining": self.remaining(), "refusals": self.refusals}


class BudgetBank:
    """Ray actor body: all budgets of a cluster, keyed by id (one actor, not one per budget)."""

    IDLE_EXPIRY_S = 24 * 3600

    def __init__(self) -> None:
        self._ledgers: dict[str, Ledger] = {}

    def open(self, budget_id: str, limits: dict) -> None:
        self._ledgers.setdefault(budget_id, Ledger(dict(limits)))
        cutoff = time.time() - self.IDLE_EXPIRY_S
        for stale in [k for k, v in self._ledgers.items() if v.touched < cutoff]:
            del self._ledgers[stale]

    def _ledger(self, budget_id: str, limits: dict) -> Ledger:
        # A bank restarted after a crash re-learns a budget from its first caller.
        return self._ledgers.setdefault(budget_id, Ledger(dict(limits)))

    def reserve(self, budget_id: str, limits: dict, amounts: dict) -> tuple | None:
        return self._ledger(budget_id, limits).reserve(amounts)

    def settle(self, budget_id: str, limits: dict, reserved: dict, actual: dict) -> None:
        self._ledger(budget_id, limits).settle(reserved, actual)

    def snapshot(self, budget_id: str, limits: dict) -> dict:
        return self._ledger(budget_id, limits).snapshot()

    def close(self, budget_id: str) -> None:
        self._ledgers.pop(budget_id, None)


_bank_lock = threading.Lock()
_bank_handle = None


def _bank():
    global _bank_handle
    with _bank_lock:
        if _bank_handle is None:
            import ray

            from rlm_ray._ray import on_head_node

            actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(BudgetBank)
            _bank_handle = actor_cls.options(
                name=BANK_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                **on_head_node()).remote()
        return _bank_handle


def _ray_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


class Budget:
    """Budget(usd=None, tokens=None, calls=None): None means unlimited."""

    def __init__(self, usd: float | None = None, tokens: int | None = None,
                 calls: int | None = None) -> None:
        self.limits = {"usd": usd, "tokens": tokens, "calls": calls}
        self.id = uuid.uuid4().hex
        self._shared = _ray_up()
        self._init_local()
        if self._shared:
            import ray

            ray.get(_bank().open.remote(self.id, self.limits))

    def _init_local(self) -> None:
        self._lock = threading.Lock()
        self._ledger = Ledger(dict(self.limits)) if not self._shared else None

    def __getstate__(self) -> dict:
        return {"limits": self.limits, "id": self.id, "shared": self._shared,
                "ledger": self._ledger}

    def __setstate__(self, state: dict) -> None:
        self.limits, self.id, self._shared = state["limits"], state["id"], state["shared"]
        self._init_local()
        if not self._shared:   # a process-local budget copied elsewhere is a separate budget
            self._ledger = state["ledger"]

    @property
    def shared(self) -> bool:
        """True when backed by the cluster's bank actor (usable from any Ray worker)."""
        return self._shared

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.items() if v is not None)
        return f"Budget({limits or 'unlimited'})"

    # ---- synchronous API -------------------------------------------------
    def reserve(self, usd: float | None = 0.0, tokens: int = 0, calls: int = 1) -> dict:
        """Raises BudgetExceeded or returns the reservation to hand back to settle()."""
        amounts = _amounts(usd, tokens, calls)
        if self._shared:
            import ray

            refusal = ray.get(_bank().reserve.remote(self.id, self.limits, amounts))
        else:
            with self._lock:
                refusal = self._ledger.reserve(amounts)
        if refusal:
            raise BudgetExceeded(*refusal)
        return amounts

    def settle(self, reservation: dict, usd: float | None = 0.0, tokens: int = 0, calls: int = 1) -> None:
        actual = _amounts(usd, tokens, calls)
        if self._shared:
            import ray

            ray.get(_bank().settle.remote(self.id, self.limits, reservation, actual))
        else:
            with self._lock:
                self._ledger.settle(reservation, actual)

    def snapshot(self) -> dict:
        if self._shared:
            import ray

            return ray.get(_bank().snapshot.remote(self.id, self.limits))
        with self._lock:
            return self._ledger.snapshot()

    def remaining(self) -> dict[str, float | None]:
        return self.snapshot()["remaining"]

    def used(self) -> dict[str, float]:
        return self.snapshot()["used"]

    def close(self) -> None:
        """Drop the shared ledger (optional: idle ledgers expire after a day)."""
        if self._shared:
            _bank().close.remote(self.id)

    # ---- asyncio API (the gateway's hot path) ----------------------------
    async def areserve(self, usd: float | None = 0.0, tokens: int = 0, calls: int = 1) -> dict:
        if not self._shared:
            return self.reserve(usd, tokens, calls)
        amounts = _amounts(usd, tokens, calls)
        refusal = await _bank().reserve.remote(self.id, self.limits, amounts)
        if refusal:
            raise BudgetExceeded(*refusal)
        return amounts

    async def asettle(self, reservation: dict, usd: float | None = 0.0, tokens: int = 0,
                      calls: int = 1) -> None:
        if not self._shared:
            return self.settle(reservation, usd, tokens, calls)
        await _bank().settle.remote(self.id, self.limits, reservation, _amounts(usd, tokens, calls))


def _amounts(usd: float | None, tokens: int, calls: int) -> dict[str, float]:
    amounts = {"tokens": float(tokens), "calls": float(calls)}
    if usd is not None:   # unknown price: the dollar limit cannot see this call
        amounts["usd"] = float(usd)
    return amounts
