"""Size caps of the corpus layer that both its engine modules and the CLI
need. Plain constants, stdlib only: `rlm-ray --help` imports this module
without DuckDB or pyarrow, and nothing here imports back up the package."""
from __future__ import annotations

# Per-archive caps on ingest (zip bombs, runaway archives).
MAX_ARCHIVE_BYTES = 512 << 20      # uncompressed bytes of all members together
MAX_ARCHIVE_MEMBERS = 200_000
