"""A token cursor over OpenFace's whitespace-separated text model files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelFileError, read_bytes

CV_TEXT_TYPES = {4: np.int64, 5: np.float64, 6: np.float64}


class TextReader:
    """Tokens of a text model file, with line numbers; lines starting with ``#`` are comments.

    Every read raises :class:`ModelFileError` naming the file, the line and what was expected.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        raw = read_bytes(path)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as err:
            raise ModelFileError(self.path, f"byte {err.start}", "expected a text file, found non-ASCII bytes") from None
        self.tokens: list[tuple[str, int]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.lstrip().startswith("#"):
                continue
            self.tokens.extend((token, number) for token in line.split())
        self.index = 0

    @property
    def line(self) -> int:
        if self.index < len(self.tokens):
            return self.tokens[self.index][1]
        return self.tokens[-1][1] if self.tokens else 1

    def error(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, f"line {self.line}", problem)

    def _next(self, what: str) -> str:
        if self.index >= len(self.tokens):
            raise ModelFileError(self.path, f"line {self.line}", f"file ends, expected {what}")
        token = self.tokens[self.index][0]
        self.index += 1
        return token

    def int(self, what: str, low: int = 0, high: int = 1 << 24) -> int:
        token = self._next(what)
        try:
            value = int(token)
        except ValueError:
            self.index -= 1
            raise self.error(f"expected an integer for {what}, found {token!r}") from None
        if not low <= value <= high:
            self.index -= 1
            raise self.error(f"expected {what} in [{low}, {high}], found {value}")
        return value

    def float(self, what: str) -> float:
        token = self._next(what)
        try:
            return float(token)
        except ValueError:
            self.index -= 1
            raise self.error(f"expected a number for {what}, found {token!r}") from None

    def matrix(self, what: str, shape: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
        """An OpenFace ``ReadMat`` matrix: rows, cols, OpenCV type, then the row-major elements."""
        rows = self.int(f"{what} rows")
        cols = self.int(f"{what} cols")
        code = self.int(f"{what} type code")
        if code not in CV_TEXT_TYPES:
            self.index -= 1
            raise self.error(f"{what}: expected OpenCV type code 4, 5 or 6, found {code}")
        for side, want, got in (("rows", shape[0], rows), ("cols", shape[1], cols)):
            if want is not None and got != want:
                raise self.error(f"{what}: expected {want} {side}, found {got}")
        if CV_TEXT_TYPES[code] is np.int64:
            values = [self.int(f"{what} element {i} of {rows * cols}", -(1 << 31), (1 << 31) - 1) for i in range(rows * cols)]
        else:
            values = [self.float(f"{what} element {i} of {rows * cols}") for i in range(rows * cols)]
        return np.asarray(values, dtype=CV_TEXT_TYPES[code]).reshape(rows, cols)

    def at_end(self) -> bool:
        return self.index >= len(self.tokens)
