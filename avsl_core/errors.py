"""One error type for bad input, so every message names the file and the problem."""
from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data: the message always starts with the offending file (and row/field when known).

    >>> raise DataError("clips/a.wav", "silent (all samples are 0)")
    Traceback (most recent call last):
    ...
    avsl_core.errors.DataError: clips/a.wav: silent (all samples are 0)
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, *, row: int | None = None,
                 field: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.row = row
        self.field = field
        where = self.path or "<input>"
        if row is not None:
            where += f" row {row}"
        if field is not None:
            where += f" field '{field}'"
        super().__init__(f"{where}: {problem}")
