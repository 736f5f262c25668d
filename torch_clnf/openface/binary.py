"""A bounds-checked cursor over OpenFace's little-endian binary model files."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import ModelFileError, read_bytes

# OpenCV matrix type codes that OpenFace's binary files use (single channel).
CV_TYPES = {4: np.dtype("<i4"), 5: np.dtype("<f4"), 6: np.dtype("<f8")}
CV_TYPE_NAMES = {4: "CV_32S", 5: "CV_32F", 6: "CV_64F"}

# Largest matrix side we accept; OpenFace's biggest is 500 (CEN layers) or 225 (CCNF sigmas).
MAX_MAT_SIDE = 1 << 16


class BinaryReader:
    """Reads int32 / float64 / OpenCV matrices (``ReadMatBin``) with their byte offsets.

    Every read checks that the bytes exist and the values make sense, and raises
    :class:`ModelFileError` naming the file, the byte offset and what was expected.
    """

    def __init__(self, path: str | Path, data: bytes | None = None) -> None:
        self.path = Path(path)
        self.data = read_bytes(path) if data is None else data
        self.offset = 0

    def error(self, problem: str, offset: int | None = None) -> ModelFileError:
        return ModelFileError(self.path, f"byte {self.offset if offset is None else offset}", problem)

    def _take(self, n: int, what: str) -> int:
        start = self.offset
        if n < 0 or start + n > len(self.data):
            raise self.error(f"file ends after {len(self.data)} bytes, expected {n} more bytes for {what}")
        self.offset = start + n
        return start

    def int32(self, what: str) -> int:
        start = self._take(4, what)
        return struct.unpack_from("<i", self.data, start)[0]

    def float64(self, what: str) -> float:
        start = self._take(8, what)
        return struct.unpack_from("<d", self.data, start)[0]

    def expect_int32(self, expected: int, what: str) -> None:
        at = self.offset
        value = self.int32(what)
        if value != expected:
            raise self.error(f"expected {what} = {expected}, found {value}", at)

    def count(self, what: str, low: int = 0, high: int = MAX_MAT_SIDE) -> int:
        """An int32 that must lie in [low, high]."""
        at = self.offset
        value = self.int32(what)
        if not low <= value <= high:
            raise self.error(f"expected {what} in [{low}, {high}], found {value}", at)
        return value

    def matrix(self, what: str, cv_type: int | None = None, shape: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
        """An OpenCV ``ReadMatBin`` matrix: int32 rows, cols, type, then the row-major elements.

        Args:
            cv_type: the OpenCV type code that must be found (None: any of CV_32S/32F/64F).
            shape: required (rows, cols); None leaves that side free.
        """
        at = self.offset
        rows = self.count(f"{what} rows")
        cols = self.count(f"{what} cols")
        type_at = self.offset
        code = self.int32(f"{what} type code")
        if code not in CV_TYPES or (cv_type is not None and code != cv_type):
            wanted = CV_TYPE_NAMES[cv_type] if cv_type is not None else "one of " + "/".join(CV_TYPE_NAMES.values())
            raise self.error(f"{what}: expected OpenCV type {wanted}, found type code {code}", type_at)
        for side, want, got in (("rows", shape[0], rows), ("cols", shape[1], cols)):
            if want is not None and got != want:
                raise self.error(f"{what}: expected {want} {side}, found {got}", at)
        dtype = CV_TYPES[code]
        start = self._take(rows * cols * dtype.itemsize, f"{what} ({rows}x{cols} {CV_TYPE_NAMES[code]})")
        return np.frombuffer(self.data, dtype, rows * cols, start).reshape(rows, cols).copy()

    def matrices(self, count: int, rows: int, cols: int, cv_type: int) -> np.ndarray | None:
        """``count`` consecutive matrices all ``rows`` x ``cols`` of ``cv_type``, read as one block:
        (count, rows, cols), or None (nothing read) where the bytes are not exactly that (a reader
        then reads them one by one, which names the first that differs)."""
        record = np.dtype([("header", "<i4", 3), ("values", CV_TYPES[cv_type], (rows, cols))])
        if count < 0 or self.offset + count * record.itemsize > len(self.data):
            return None
        block = np.frombuffer(self.data, record, count, self.offset)
        if not bool((block["header"] == np.array([rows, cols, cv_type], "<i4")).all()):
            return None
        self.offset += count * record.itemsize
        return block["values"].copy()

    def at_end(self) -> bool:
        return self.offset == len(self.data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise self.error(f"expected end of file, found {len(self.data) - self.offset} more bytes")
