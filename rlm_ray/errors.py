"""Errors that mean "the user asked for something wrong": the CLI prints them
as one line and exits non-zero instead of showing a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, a malformed table, an unknown option value."""
