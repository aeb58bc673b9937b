"""Split a document on line boundaries into chunks of about `chunk_tokens`.

Lines are split on "\\n" only (as grep does), and each chunk keeps its line
endings, so concatenating a document's chunks gives back its exact text and
`start_line + i` is the file line of the chunk's i-th line.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlm_ray.tokens import count_lines


@dataclass(frozen=True)
class Chunk:
    start_line: int   # 1-based, inclusive
    end_line: int     # 1-based, inclusive
    text: str


def split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    tail = lines.pop()
    out = [line + "\n" for line in lines]
    if tail:
        out.append(tail)
    return out


def count_file_lines(text: str) -> int:
    return text.count("\n") + (0 if not text or text.endswith("\n") else 1)


def chunk_text(text: str, chunk_tokens: int) -> list[Chunk]:
    if not text:
        return []
    # A token covers at least one character: short texts never need splitting.
    if len(text) <= chunk_tokens:
        return [Chunk(1, max(1, count_file_lines(text)), text)]
    lines = split_lines(text)
    return list(_pack(lines, count_lines(lines), chunk_tokens))


def _pack(lines: list[str], counts: list[int], chunk_tokens: int):
    buf: list[str] = []
    buf_tokens = 0
    start = 1
    for index, (line, n_tokens) in enumerate(zip(lines, counts)):
        line_no = index + 1
        if buf and buf_tokens + n_tokens > chunk_tokens:
            yield Chunk(start, line_no - 1, "".join(buf))
            buf, buf_tokens = [], 0
        if n_tokens > chunk_tokens:
            # Last resort for minified files and data blobs: cut the line by characters.
            yield from _split_long_line(line, line_no, n_tokens, chunk_tokens)
            continue
        if not buf:
            start = line_no
        buf.append(line)
        buf_tokens += n_tokens
    if buf:
        yield Chunk(start, len(lines), "".join(buf))


def _split_long_line(line: str, line_no: int, n_tokens: int, chunk_tokens: int):
    step = max(1, len(line) * chunk_tokens // n_tokens)
    for offset in range(0, len(line), step):
        yield Chunk(line_no, line_no, line[offset:offset + step])
