"""Fetching OpenFace's model files from its official sources (``torch-clnf download-models``).

Every file is checked against :mod:`torch_clnf.model_files` (size and SHA-256), written as
``<name>.part`` first and renamed only when complete and correct, so an interrupted run leaves
no half file in place and the next run resumes where the last one stopped (HTTP ``Range``).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .model_files import CECLM_FILES, CLNF_FILES, GIT_URL, OPENFACE_TAG, ModelFile
from .weights import models_dir

ACCEPT_ENV = "TORCH_CLNF_ACCEPT_LICENSE"
MIRROR_ENV = "TORCH_CLNF_MODELS_URL"
CHUNK = 1 << 20

LICENSE_SUMMARY = f"""\
OpenFace's model files ({OPENFACE_TAG}) are not part of torch_clnf. They come from OpenFace
(Carnegie Mellon University and the University of Cambridge, github.com/TadasBaltrusaitis/OpenFace)
under OpenFace's own license. In short:
  - academic or non-profit research use only; commercial use needs a license from CMU;
  - the files, and anything converted from them (torch_clnf's weight cache and exports),
    may not be redistributed;
  - publications using them should cite OpenFace (see torch_clnf's README).
Read the full text: https://github.com/TadasBaltrusaitis/OpenFace/blob/master/OpenFace-license.txt
"""


class LicenseNotAccepted(RuntimeError):
    """OpenFace's license was not accepted: nothing was downloaded."""


class DownloadError(RuntimeError):
    """Some files could not be fetched or did not match their checksum (the others are in place)."""


def model_files(ceclm: bool = False) -> tuple[ModelFile, ...]:
    """The files CLNF needs; with ``ceclm`` also CE-CLM's (430 MB more)."""
    return CLNF_FILES + (CECLM_FILES if ceclm else ())


def license_accepted_by_environment() -> bool:
    """Whether ``$TORCH_CLNF_ACCEPT_LICENSE`` says yes (for servers and CI: ``YES``, ``1`` or ``true``)."""
    return os.environ.get(ACCEPT_ENV, "").strip().lower() in ("yes", "1", "true")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(path: Path, file: ModelFile) -> bool:
    """Whether ``path`` holds ``file``: its size, and its SHA-256 where known."""
    return path.is_file() and path.stat().st_size == file.size and (
        file.sha256 is None or sha256_of(path) == file.sha256)


def download_models(target: str | Path | None = None, *, ceclm: bool = False, accept_license: bool = False,
                    mirror: str | None = None, retries: int = 3, timeout: float = 60.0,
                    progress: bool = True) -> Path:
    """Download OpenFace's model files into ``target`` and check them; files already there are kept.

    Args:
        target: the model folder (default :func:`~torch_clnf.weights.models_dir`, where
            :func:`~torch_clnf.load_model` looks).
        ceclm: also CE-CLM's files (the four CEN expert files are 430 MB).
        accept_license: the user accepted OpenFace's license (:data:`LICENSE_SUMMARY`); also
            accepted through ``$TORCH_CLNF_ACCEPT_LICENSE``.
        mirror: a base URL serving the model folder's tree (default ``$TORCH_CLNF_MODELS_URL``,
            else OpenFace's official sources).
        retries: further attempts per source after a failed or interrupted transfer, each resuming it.
    Returns:
        The model folder.
    Raises:
        LicenseNotAccepted: without consent (nothing is written).
        DownloadError: naming every file that failed, and why; the others are in place.
    """
    if not (accept_license or license_accepted_by_environment()):
        raise LicenseNotAccepted(f"OpenFace's license was not accepted: pass accept_license=True (the command "
                                 f"asks you to type YES) or set {ACCEPT_ENV}=YES")
    target = Path(target).expanduser() if target is not None else models_dir()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    missing = [f for f in model_files(ceclm) if not is_complete(target / f.path, f)]
    failures = []
    done = sum(_part(target / f.path).stat().st_size for f in missing if _part(target / f.path).is_file())
    with tqdm(total=sum(f.size for f in missing), initial=done, unit="B", unit_scale=True, unit_divisor=1024,
              desc="OpenFace models", disable=not progress or not missing) as bar:
        for file in missing:
            urls = [mirror.rstrip("/") + "/" + file.path] if mirror else list(file.urls or (GIT_URL + file.path,))
            problem = _fetch(file, target / file.path, urls, retries, timeout, bar)
            if problem:
                failures.append(f"{file.path}: {problem}")
    if failures:
        raise DownloadError(f"{len(failures)} of {len(missing)} files failed (run the command again to resume; "
                            "the others are in place):\n  " + "\n  ".join(failures))
    return target


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _fetch(file: ModelFile, path: Path, urls: list[str], retries: int, timeout: float, bar: tqdm) -> str | None:
    """Fetch one file through ``<path>.part``; None when it is in place, else what went wrong."""
    part = _part(path)
    part.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        if not _attempts(url, part, file.size, retries, timeout, bar, problems):
            continue
        if part.stat().st_size != file.size:
            problems.append(f"{url}: {part.stat().st_size} bytes, expected {file.size}")
        elif file.sha256 is not None and (found := sha256_of(part)) != file.sha256:
            problems.append(f"{url}: SHA-256 {found} does not match {OPENFACE_TAG}'s {file.sha256}")
        else:
            os.replace(part, path)
            return None
        bar.update(-part.stat().st_size)
        part.unlink()                                          # wrong content: do not resume from it
    return "; ".join(problems[-3:]) or "no source"


def _attempts(url: str, part: Path, size: int, retries: int, timeout: float, bar: tqdm, problems: list[str]) -> bool:
    """Transfer ``url`` into ``part``, resuming after failures; whether it completed (else ``problems`` say why)."""
    for _ in range(retries + 1):
        try:
            _transfer(url, part, size, timeout, bar)
            return True
        except urllib.error.HTTPError as err:
            problems.append(f"{url}: HTTP {err.code} {err.reason}")
            if err.code in (401, 403, 404, 410):               # not there: retrying will not help
                return False
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            problems.append(f"{url}: {type(err).__name__}: {getattr(err, 'reason', None) or err}")
    return False


def _transfer(url: str, part: Path, size: int, timeout: float, bar: tqdm) -> None:
    """Append the rest of ``url`` to ``part`` (from its current length, or afresh if the server
    ignores the range); raises when the transfer ends short."""
    have = part.stat().st_size if part.is_file() else 0
    if have > size:
        bar.update(-have)
        part.unlink()
        have = 0
    if have == size:
        return
    headers = {"User-Agent": "torch_clnf-download-models"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        if have and response.status != 206:                   # the whole file again
            bar.update(-have)
            have = 0
        with open(part, "ab" if have else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if received < size:
        raise http.client.IncompleteRead(b"", size - received)
