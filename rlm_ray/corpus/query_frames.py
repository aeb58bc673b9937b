"""Frames between the host and a query worker (`query_worker.py`) over its
stdin/stdout pipes.

A frame is a 8-byte header (two big-endian uint32: JSON length, payload
length), a UTF-8 JSON object, then an optional binary payload (an Arrow IPC
stream for tables). Never pickle: a worker's replies carry corpus text and
values built by model SQL, and decoding them must not be able to run code
in the host. The host reads with a deadline and refuses a frame larger than
it agreed to take before allocating it.
"""
from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

HEADER = struct.Struct(">II")


class FrameError(Exception):
    """The other side sent something that is not a valid frame, or too much."""


class WorkerGone(Exception):
    """The other side closed its pipe (it exited or was killed)."""


class FrameTimeout(Exception):
    """No whole frame arrived before the deadline."""


def encode(message: dict[str, Any], payload: bytes = b"") -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return HEADER.pack(len(body), len(payload)) + body + payload


def write_frame(fd: int, message: dict[str, Any], payload: bytes = b"") -> None:
    """Blocking write of one frame (the worker's side, and the host's small requests)."""
    view = memoryview(encode(message, payload))
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerGone("the other side closed its pipe") from None


def read_frame_blocking(fd: int) -> tuple[dict[str, Any], bytes]:
    """The worker's side: wait as long as it takes (the host is trusted)."""
    json_len, payload_len = HEADER.unpack(_read_exact(fd, HEADER.size))
    message = json.loads(_read_exact(fd, json_len))
    return message, _read_exact(fd, payload_len)


def _read_exact(fd: int, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WorkerGone("the other side closed its pipe")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class FrameReader:
    """The host's end of a worker's reply pipe: non-blocking, every wait bounded
    by a deadline; bytes of a frame cut by a timeout stay buffered."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd, self.max_bytes = fd, max_bytes
        os.set_blocking(fd, False)
        self._buffer = bytearray()

    def read(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout()
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if not poller.poll(remaining * 1000):
                raise FrameTimeout()
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise WorkerGone("the worker closed its reply pipe")
            self._buffer += chunk

    def _take(self) -> tuple[dict[str, Any], bytes] | None:
        if len(self._buffer) < HEADER.size:
            return None
        json_len, payload_len = HEADER.unpack_from(self._buffer)
        if json_len + payload_len > self.max_bytes:
            raise FrameError(f"a reply of {json_len + payload_len} bytes is over the "
                             f"{self.max_bytes} this host accepts")
        end = HEADER.size + json_len + payload_len
        if len(self._buffer) < end:
            return None
        try:
            message = json.loads(bytes(self._buffer[HEADER.size:HEADER.size + json_len]))
        except (ValueError, RecursionError) as exc:
            raise FrameError(f"undecodable reply: {type(exc).__name__}") from None
        if not isinstance(message, dict):
            raise FrameError("a reply is not a JSON object")
        payload = bytes(self._buffer[HEADER.size + json_len:end])
        del self._buffer[:end]
        return message, payload
