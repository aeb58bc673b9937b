"""On-disk layout of a corpus: names, the schema version and the Arrow schemas
shared by the writer (ingest) and the reader (Corpus)."""
from __future__ import annotations

import json

import pyarrow as pa

from rlm_ray import storage
from rlm_ray.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

CHUNK_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("path", pa.string()),
    ("chunk_id", pa.int32()),      # 0-based position of the chunk inside its document
    ("start_line", pa.int32()),    # 1-based file line of the chunk's first line
    ("end_line", pa.int32()),      # 1-based, inclusive
    ("text", pa.string()),
    ("n_tokens", pa.int32()),
    ("sha256", pa.string()),       # of the whole document's bytes
])

DOC_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("path", pa.string()),
    ("n_lines", pa.int32()),
    ("n_chunks", pa.int32()),
    ("n_tokens", pa.int64()),
    ("sha256", pa.string()),
    ("bytes", pa.int64()),
    ("shard", pa.string()),        # relative file name of the shard holding its chunks
])


def read_manifest(uri: str) -> dict:
    location = storage.join(uri, MANIFEST)
    try:
        data = storage.read_bytes(location)
    except (FileNotFoundError, OSError):
        raise UserError(f"no corpus at {uri} (missing {MANIFEST}); create one with `rlm-ray ingest`") from None
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError:
        raise UserError(f"{location} is not valid JSON") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{location} has schema version {manifest.get('schema_version')}, "
            f"this rlm-ray reads {SCHEMA_VERSION}; re-ingest the sources"
        )
    return manifest
