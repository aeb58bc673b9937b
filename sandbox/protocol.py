"""Length-prefixed JSON frames over pipes, used by both sides of the sandbox.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. JSON (never pickle) because the worker is untrusted: decoding what it
sends must not be able to run code in the host. Stdlib only, since the worker
imports this module before its isolation layers go up.
"""
from __future__ import annotations

import json
import os
import select
import struct
import time

TYPE_CHECKING = False  # the worker imports this module: `typing` would cost start-up time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

HEADER = struct.Struct(">I")
# A hostile worker could announce a 4 GB frame to exhaust the host's memory.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame."""


class ChannelClosed(Exception):
    """The other side closed its end (the worker exited or was killed)."""


class ChannelTimeout(Exception):
    """No complete frame arrived before the deadline."""


def encode(message: dict[str, Any], default: Callable[[Any], Any] | None = None,
           max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame; raises TypeError/ValueError if `message` is not JSON-safe or too large."""
    # backslashreplace: a lone surrogate (model code can print one) becomes the
    # JSON escape \udXXX inside its string instead of failing the whole frame.
    payload = json.dumps(message, default=default, ensure_ascii=False,
                         separators=(",", ":")).encode("utf-8", "backslashreplace")
    if len(payload) > max_bytes:
        raise ValueError(f"message too large: {len(payload)} bytes > {max_bytes}")
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes, max_items: int | None = None) -> dict[str, Any]:
    """`max_items` (the host's side) bounds what decoding may build: JSON like
    `[{},{},...]` turns 3 bytes into ~70 bytes of objects, so a frame is
    refused by a cheap count of its separators before `json.loads` runs."""
    try:
        check_items(payload, max_items)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd nesting
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def check_items(payload: bytes, max_items: int | None) -> None:
    """ValueError if `payload` may hold more than `max_items` JSON values
    (an upper bound: separators inside strings count too)."""
    if max_items is None:
        return
    items = payload.count(b",") + payload.count(b"[") + payload.count(b"{")
    if items > max_items:
        raise ValueError(f"too many values in one message (~{items} > {max_items})")


# -- blocking side (the worker: one reader, plain blocking pipes) -------------

def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    return decode(_read_exact(fd, size))


# -- deadline-aware side (the host: never blocks past a deadline) -------------

class HostChannel:
    """The host's ends of the two pipes, non-blocking, every wait bounded by a
    deadline so a stuck or hostile worker can never hang the host thread."""

    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int = MAX_FRAME_BYTES,
                 max_items: int | None = None):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.max_frame_bytes, self.max_items = max_frame_bytes, max_items
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._buffer = bytearray()

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.write_fd, select.POLLOUT, deadline)
            try:
                view = view[os.write(self.write_fd, view):]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelClosed("worker closed its command pipe") from None

    def receive(self, deadline: float) -> dict[str, Any]:
        while True:
            frame = self._take_frame()
            if frame is not None:
                return decode(frame, self.max_items)
            self._wait(self.read_fd, select.POLLIN, deadline)
            try:  # never more than the frame being read can still need
                chunk = os.read(self.read_fd, self._wanted())
            except BlockingIOError:
                continue
            if not chunk:
                raise ChannelClosed("worker closed its reply pipe")
            self._buffer += chunk

    def _take_frame(self) -> bytes | None:
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > self.max_frame_bytes:
            raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame_bytes}")
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        frame = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        return frame

    def _wanted(self) -> int:
        if len(self._buffer) < HEADER.size:
            return 1 << 16
        (size,) = HEADER.unpack_from(self._buffer)
        return max(min(HEADER.size + size - len(self._buffer), 1 << 20), 1 << 16)

    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChannelTimeout()
        poller = select.poll()
        poller.register(fd, event)
        if not poller.poll(remaining * 1000):
            raise ChannelTimeout()

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1  # idempotent: a closed fd number may be reused
