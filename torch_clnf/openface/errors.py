"""The one error type raised for a missing, truncated or malformed OpenFace model file."""
from __future__ import annotations

from pathlib import Path


class ModelFileError(ValueError):
    """An OpenFace model file is missing, truncated or malformed.

    Attributes:
        path: the file.
        position: where the problem is, e.g. ``"byte 1024"`` or ``"line 7"`` (None if the file
            could not be opened at all).
        problem: what was expected and what was found.
    """

    def __init__(self, path: str | Path, position: str | None, problem: str) -> None:
        self.path = Path(path)
        self.position = position
        self.problem = problem
        where = f"{self.path}" if position is None else f"{self.path}, {position}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # pickles with its three fields (a worker process's error reaches the parent)
        return type(self), (self.path, self.position, self.problem)


def read_bytes(path: str | Path) -> bytes:
    """The whole file, or a ModelFileError naming it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(path, None, "file not found") from None
    except IsADirectoryError:
        raise ModelFileError(path, None, "is a directory, expected a model file") from None
    except OSError as err:
        raise ModelFileError(path, None, f"cannot be read ({err.strerror})") from None
