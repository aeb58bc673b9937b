"""How dollars and billing details read in every batch output (the progress
line, the final summary, `show` in the terminal and its HTML page), so an
unknown price reads n/a in all of them, never $0."""
from __future__ import annotations

NO_PRICE = "n/a (no price known)"


def usd_total(total: float, priced: int, unpriced: int, places: int = 4) -> str:
    """A sum over `priced` rows with a dollar figure and `unpriced` rows whose
    price is unknown (cost None): all unknown reads n/a; some unknown says how
    many are left out of the sum; nothing at all is a true $0."""
    if unpriced and not priced:
        return NO_PRICE
    text = f"${total:.{places}f}"
    return f"{text} + {unpriced} unpriced" if unpriced else text


def dollars(values: list, places: int = 4) -> str:
    """A dollar total of per-row costs (None: price unknown)."""
    known = [v for v in values if v is not None]
    return usd_total(sum(known), len(known), len(values) - len(known), places)


def billing_note(row: dict) -> str:
    """Prompt-cache and tier detail of a call or answer row; "" when there is none."""
    parts = []
    if row.get("cached_tokens"):
        parts.append(f"cached {row['cached_tokens']:,}")
    if row.get("cache_write_tokens"):
        parts.append(f"cache write {row['cache_write_tokens']:,}")
    if row.get("reasoning_tokens"):
        parts.append(f"reasoning {row['reasoning_tokens']:,}")
    if row.get("service_tier"):
        parts.append(f"tier {row['service_tier']}")
    return " ".join(parts)
