"""terminal_safe: escape sequences from models/documents are shown, not obeyed;
`rlm-ray query` prints a document-steered answer safely and keeps it exact in
the trajectory."""
from __future__ import annotations

import json
import re

import pytest

from rlm_ray.cli import main
from rlm_ray.textsafe import terminal_safe

# Any of these reaching a terminal acts on it.
ACTIVE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]|\r(?!\n)")


@pytest.mark.parametrize("raw, shown", [
    ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07"),          # clipboard write
    ("\x1b]0;title\x1b\\", "\\x1b]0;title\\x1b\\"),           # window title, ST-terminated
    ("\x1b[2J\x1b[1;1H", "\\x1b[2J\\x1b[1;1H"),              # erase screen, cursor home
    ("\x9b31m\x9d0;t\x9c", "\\x9b31m\\x9d0;t\\x9c"),          # 8-bit CSI / OSC / ST
    ("done\rfake", "done\\x0dfake"),                          # bare CR overwrites the line
    ("bell\x07 bs\x08 del\x7f nul\x00", "bell\\x07 bs\\x08 del\\x7f nul\\x00"),
    ("abc\u202edcba", "abc\\u202edcba"),                      # bidi override
])
def test_control_and_escape_sequences_become_visible(raw, shown):
    assert terminal_safe(raw) == shown
    assert not ACTIVE.search(terminal_safe(raw))


def test_ordinary_text_is_unchanged():
    text = "line one\n\tindented — ünïcödé 日本語 ✓\r\nwindows line\n"
    assert terminal_safe(text) == text
    assert terminal_safe(42) == "42"


@pytest.mark.timeout(120)
def test_query_prints_a_document_steered_answer_safely(tmp_path, capsys):
    """A document whose needle value is an OSC 52 + title sequence: the old
    `rlm-ray query` printed the answer raw."""
    value = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;pwned\x07"
    text = tmp_path / "input.txt"
    text.write_text(f"filler\nThe secret code for alpha is {value}.\nmore filler\n")
    trajectory = tmp_path / "t.json"
    code = main(["query", "What is the secret code for alpha?", "--text", str(text),
                 "--model", "sim", "--local", "--trajectory", str(trajectory)])
    out, err = capsys.readouterr()
    saved = json.loads(trajectory.read_text())
    assert code == 0 and saved["answer"] == value          # the file keeps the exact answer
    assert not ACTIVE.search(out) and not ACTIVE.search(err), (out, err)
    assert out.strip() == terminal_safe(value)
