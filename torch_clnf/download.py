"""Fetching OpenFace's model files from its official sources (``torch-clnf download-models``).

Every file is checked against :mod:`torch_clnf.model_files` (size and SHA-256), written as
``<name>.part`` first and renamed only when complete and correct, so an interrupted run leaves
no half file in place and the next run resumes where the last one stopped (HTTP ``Range``).
A host that cannot be connected to (offline, DNS, refused, timeout) is given up for the rest of the
run, and the error says so once, with the remedies, instead of once per file.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .model_files import CECLM_FILES, CLNF_FILES, GIT_URL, MODELS_ENV, OPENFACE_TAG, ModelFile
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


class _Unreachable(Exception):
    """Connecting to ``host`` failed (DNS, refused, unreachable network, timeout): its fault, not one file's."""

    def __init__(self, host: str, cause: OSError) -> None:
        self.why = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"could not connect to {host} ({self.why})")
        # Only a timeout or a dropped connection may be passing; DNS and refusals do not change in seconds.
        self.retry = not (isinstance(cause, (socket.gaierror, ConnectionRefusedError))
                          or cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH))


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
        DownloadError: naming every file that failed, and why, and the hosts that could not be
            reached (with what to do instead); the others are in place. Folders this run created and
            left empty are removed, as are empty ``.part`` files; a partial one stays to be resumed.
    """
    if not (accept_license or license_accepted_by_environment()):
        raise LicenseNotAccepted(f"OpenFace's license was not accepted: pass accept_license=True (the command "
                                 f"asks you to type YES) or set {ACCEPT_ENV}=YES")
    target = Path(target).expanduser() if target is not None else models_dir()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    missing = [f for f in model_files(ceclm) if not is_complete(target / f.path, f)]
    new_folders = _new_folders(target, missing)
    failures, offline, unreachable = [], [], {}
    done = sum(_part(target / f.path).stat().st_size for f in missing if _part(target / f.path).is_file())
    try:
        with tqdm(total=sum(f.size for f in missing), initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                  desc="OpenFace models", disable=not progress or not missing) as bar:
            for file in missing:
                urls = [mirror.rstrip("/") + "/" + file.path] if mirror else list(file.urls or (GIT_URL + file.path,))
                problem = _fetch(file, target / file.path, urls, retries, timeout, bar, unreachable)
                if problem is None:
                    continue
                if all(_host(url) in unreachable for url in urls):
                    offline.append(file.path)
                else:
                    failures.append(f"{file.path}: {problem}")
    finally:
        _tidy(target, missing, new_folders)
    if failures or offline:
        raise DownloadError(_report(failures, len(offline), len(missing), unreachable, mirror is not None))
    return target


def _report(failures: list[str], offline: int, total: int, unreachable: dict[str, str], mirrored: bool) -> str:
    """The error: each file that failed on its own, then, once, the hosts that could not be reached and
    what to do about it (a retry alone will not help there)."""
    lines = []
    if failures:
        lines.append(f"{len(failures)} of {total} files failed (run the command again to resume"
                     f"{'' if offline else '; the others are in place'}):\n  " + "\n  ".join(failures))
    if offline:
        hosts: dict[str, list[str]] = {}
        for host, why in unreachable.items():
            hosts.setdefault(why, []).append(host)
        where = "; ".join(f"{', '.join(names)} ({why})" for why, names in hosts.items())
        count = f"{offline} more files were" if failures else f"{offline} of {total} files were"
        lines.append(
            f"could not reach {where}, so {count} not downloaded. To get them:\n"
            f"  - check the network connection or proxy (HTTPS_PROXY) and run the command again;\n"
            f"  - or download them from {'another mirror' if mirrored else 'a mirror of your own'}: "
            f"--mirror URL, or set {MIRROR_ENV};\n"
            f"  - or use an OpenFace model folder you already have (OpenFace's lib/local/LandmarkDetector/model): "
            f"set {MODELS_ENV} to it (no download needed).")
    return "\n".join(lines)


def _host(url: str) -> str:
    """``url``'s host and port as typed (no credentials): what is reachable or not."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def _new_folders(target: Path, files: list[ModelFile]) -> list[Path]:
    """The folders that fetching ``files`` into ``target`` may create and that do not exist yet, deepest first."""
    folders = {target, *target.parents}
    for file in files:
        folders.update(target / folder for folder in Path(file.path).parents)
    return sorted((f for f in folders if not f.exists()), key=lambda f: len(f.parts), reverse=True)


def _tidy(target: Path, files: list[ModelFile], new_folders: list[Path]) -> None:
    """Remove what a failed or interrupted run would leave for nothing: ``.part`` files of zero bytes (one
    with bytes stays, to be resumed), then the folders this run created that are empty."""
    for file in files:
        part = _part(target / file.path)
        if part.is_file() and part.stat().st_size == 0:
            part.unlink()
    for folder in new_folders:
        try:
            folder.rmdir()                                     # only if empty
        except OSError:
            pass


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _fetch(file: ModelFile, path: Path, urls: list[str], retries: int, timeout: float, bar: tqdm,
           unreachable: dict[str, str]) -> str | None:
    """Fetch one file through ``<path>.part``; None when it is in place, else what went wrong. Hosts in
    ``unreachable`` (host → why) are skipped; a host found unreachable here is added to it."""
    part = _part(path)
    problems = []
    for url in urls:
        host = _host(url)
        if host in unreachable:
            problems.append(f"{url}: could not connect to {host} ({unreachable[host]})")
            continue
        try:
            if not _attempts(url, part, file.size, retries, timeout, bar, problems):
                continue
        except _Unreachable as err:
            unreachable[host] = err.why
            problems.append(f"{url}: {err}")
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
    """Transfer ``url`` into ``part``, resuming after failures; whether it completed (else ``problems`` say why).
    Raises _Unreachable when its host cannot be connected to: at once for a DNS failure, a refused connection
    or an unreachable network, after ``retries`` more tries for a timeout."""
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout, bar)
            return True
        except _Unreachable as err:
            if not err.retry or attempt == retries:
                raise
            problems.append(f"{url}: {err}")
        except urllib.error.HTTPError as err:
            problems.append(f"{url}: HTTP {err.code} {err.reason}")
            if err.code in (401, 403, 404, 410):               # not there: retrying will not help
                return False
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            problems.append(f"{url}: {type(err).__name__}: {getattr(err, 'reason', None) or err}")
    return False


def _transfer(url: str, part: Path, size: int, timeout: float, bar: tqdm) -> None:
    """Append the rest of ``url`` to ``part`` (from its current length, or afresh if the server
    ignores the range); raises when the transfer ends short, _Unreachable when no connection is made."""
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
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except OSError as err:                                     # URLError too: its reason says what failed
        cause = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(cause, OSError) and urllib.parse.urlsplit(url).scheme in ("http", "https"):
            raise _Unreachable(_host(url), cause) from err     # (a file:// mirror's OSError is one file's)
        raise
    with response:
        if have and response.status != 206:                   # the whole file again
            bar.update(-have)
            have = 0
        part.parent.mkdir(parents=True, exist_ok=True)         # only once there is something to write
        with open(part, "ab" if have else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if received < size:
        raise http.client.IncompleteRead(b"", size - received)
