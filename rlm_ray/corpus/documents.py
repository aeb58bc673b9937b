"""From raw files to decoded documents: binary/empty detection, UTF-8 with
replacement, content hashes, and unique paths across several sources."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from rlm_ray.corpus.sources import RawFile, source_label
from rlm_ray.errors import UserError

BINARY_SNIFF_BYTES = 8192


@dataclass
class Document:
    path: str
    text: str
    sha256: str
    n_bytes: int

    @property
    def doc_id(self) -> str:
        return doc_id_for(self.path)


def doc_id_for(path: str) -> str:
    # Stable across re-ingests and machines: a short hash of the path.
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def unique_paths(listed: list[tuple[str, list[RawFile]]]) -> list[RawFile]:
    """One source keeps its paths. Several sources keep theirs too unless two
    of them share a path; then every path gets its source's label as prefix
    (`label/path`, labels made unique with -2, -3 ...), so a path never
    silently shadows another."""
    for source, files in listed:
        seen: set[str] = set()
        for f in files:
            if f.path in seen:
                raise UserError(f"{source}: duplicate document path {f.path!r}")
            seen.add(f.path)
    all_paths = [f.path for _, files in listed for f in files]
    if len(listed) < 2 or len(set(all_paths)) == len(all_paths):
        return [f for _, files in listed for f in files]
    labels: Counter = Counter()
    out = []
    for source, files in listed:
        label = source_label(source) or "source"
        labels[label] += 1
        if labels[label] > 1:
            label = f"{label}-{labels[label]}"
        out.extend(RawFile(f"{label}/{f.path}", f.size, f.load) for f in files)
    return out


def decode(raw: RawFile) -> tuple[Document | None, str | None, bool]:
    """(document, skip reason, replaced?) for one raw file."""
    data = raw.load()
    if not data.strip():
        return None, "empty", False
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None, "binary", False
    try:
        text, replaced = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8", errors="replace"), True
    return Document(raw.path, text, hashlib.sha256(data).hexdigest(), len(data)), None, replaced
