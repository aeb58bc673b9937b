"""A batch row's own plain-text context: inline text from the queries file, or
a `context_file` (local path or s3:// URI) that is read where the question
runs, on the RLM host, never by the batch driver. A 100k-row file of
`context_file` rows therefore costs the driver 100k paths, not 100k texts,
and a slow object store delays one question instead of the launch loop.

`load()` returns the text or raises a UserError naming what went wrong (too
big, missing, unreadable): the engine turns that into the row's `error`
status, so one bad row never kills a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm_ray.errors import UserError

MIB = 1024 * 1024
# The REPL receives the context in one sandbox frame (sandbox.protocol's
# MAX_FRAME_BYTES, 64 MiB of JSON). JSON escaping adds a few percent to ordinary
# text, so 32 MiB of UTF-8 fits with room to spare (measured: a 32 MiB report
# answered through `query --text`, host peak RSS ~550 MB); only text made mostly
# of newlines, quotes or control characters could outgrow the frame, and that
# row then ends as an error naming the limit. 32 MiB is ~8M tokens, far above
# any single text window a benchmark or a report gives one question (OOLONG's
# largest is 131K tokens, ~0.5 MiB); bigger inputs belong in a corpus.
DEFAULT_MAX_CONTEXT_BYTES = 32 * MIB


@dataclass(frozen=True)
class TextContext:
    text: str | None = None          # inline, from the queries file's `context` column
    uri: str | None = None           # `context_file`, resolved: absolute path or s3:// URI
    max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES

    def __post_init__(self) -> None:
        if (self.text is None) == (self.uri is None):
            raise ValueError("a TextContext is inline text or a file, exactly one")

    @property
    def source(self) -> str:
        return "context" if self.uri is None else f"context_file {self.uri}"

    def load(self) -> str:
        """The text, read and bounded here (a UserError if too big or unreadable)."""
        if self.text is not None:
            size = len(self.text) if self.text.isascii() else len(self.text.encode("utf-8"))
            self._check_size(size)
            return self.text
        return self._read_file()

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise UserError(f"{self.source} is {size:,} bytes, over the per-row limit of "
                            f"{self.max_bytes:,} bytes (--max-context-mib); put texts this "
                            "large in a corpus")

    def _read_file(self) -> str:
        import pyarrow as pa
        import pyarrow.fs as pafs

        from rlm_ray import storage

        try:
            fs, path = storage.filesystem(self.uri)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise UserError(f"{self.source} not found")
            if info.type != pafs.FileType.File:
                raise UserError(f"{self.source} is not a file")
            if info.size is not None:
                self._check_size(info.size)
            with fs.open_input_stream(path) as stream:
                data = stream.read(self.max_bytes + 1)   # bounded even if the file grew
        except (OSError, pa.ArrowException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
            raise UserError(f"cannot read {self.source}: {reason}") from None
        self._check_size(len(data))
        # As `rlm-ray query --text`: undecodable bytes become U+FFFD, not a failure.
        return data.decode("utf-8", errors="replace")


def load_text_context(context: Any) -> Any:
    """A TextContext becomes its text; anything else (a corpus, a str) is returned as is."""
    return context.load() if isinstance(context, TextContext) else context
