"""torch-clnf download-models against a local HTTP server serving ../shared/openface-models:
consent, checksums, interrupted transfers, resuming, and the error that points new users to it."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from torch_clnf import cli, download, weights
from torch_clnf.model_files import CECLM_FILES, CLNF_FILES
from torch_clnf.openface import ModelFileError


class ModelServer:
    """Serves a folder over HTTP on 127.0.0.1 with byte ranges, and faults on demand.

    Attributes:
        requests: (path, Range header or None) of every GET.
        cut: path → bytes after which the next response for it breaks off (once).
        corrupt: paths whose served bytes have one byte changed.
        ignore_ranges: answer every request with the whole file (status 200).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.ignore_ranges = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:                                  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if name in server.corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                start = 0
                if self.headers.get("Range") and not server.ignore_ranges:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stop = server.cut.pop(name, len(data))
                self.wfile.write(data[start:stop])
                if stop < len(data):
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def fetched(self) -> list[str]:
        return [name for name, _ in self.requests]


@pytest.fixture
def server(models_dir):
    serving = ModelServer(models_dir)
    yield serving
    serving.httpd.shutdown()


@pytest.fixture(autouse=True)
def no_user_environment(monkeypatch, tmp_path):
    """The per-user data folder inside tmp_path; no variables from the caller's shell."""
    for name in (weights.MODELS_ENV, download.ACCEPT_ENV, download.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def test_manifest_matches_the_openface_files(models_dir):
    for file in CLNF_FILES + CECLM_FILES:
        if file.sha256 is None:                      # the CEN files: not in ../shared
            assert file.path.startswith("patch_experts/cen_patches_") and len(file.urls) == 2
            continue
        data = (models_dir / file.path).read_bytes()
        assert len(data) == file.size and hashlib.sha256(data).hexdigest() == file.sha256, file.path


def test_download_puts_every_file_where_load_model_looks(server, models_dir, tmp_path):
    target = download.download_models(accept_license=True, mirror=server.url, progress=False)
    assert target == tmp_path / "data" / "torch_clnf" / "openface-2.2.0" == weights.models_dir()
    for file in CLNF_FILES:
        assert (target / file.path).read_bytes() == (models_dir / file.path).read_bytes()
    assert not list(target.rglob("*.part"))
    assert weights.resolve_spec("main_clnf_general.txt") == target / "main_clnf_general.txt"
    server.requests.clear()
    download.download_models(accept_license=True, mirror=server.url, progress=False)
    assert server.requests == []                     # all present and checked: nothing fetched again


def test_without_consent_nothing_is_downloaded(server, tmp_path, monkeypatch, capsys):
    with pytest.raises(download.LicenseNotAccepted, match="TORCH_CLNF_ACCEPT_LICENSE"):
        download.download_models(tmp_path / "m", mirror=server.url, progress=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")      # not the exact word YES
    assert cli.main(["download-models", "--dir", str(tmp_path / "m"), "--mirror", server.url]) == 1
    out, err = capsys.readouterr()
    assert "academic or non-profit" in out and "license not accepted, nothing downloaded" in err
    assert server.requests == [] and not (tmp_path / "m").exists()


def test_consent_by_typing_yes_or_by_environment(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("builtins.input", lambda prompt: "YES")
    assert cli.main(["download-models", "--dir", str(tmp_path / "a"), "--mirror", server.url, "--quiet"]) == 0
    assert "every file checked" in capsys.readouterr().out
    assert (tmp_path / "a" / "mtcnn_detector" / "ONet.dat").is_file()
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("asked although the variable accepts"))
    monkeypatch.setenv(download.ACCEPT_ENV, "YES")
    monkeypatch.setenv(download.MIRROR_ENV, server.url)
    assert download.download_models(tmp_path / "b", progress=False) == tmp_path / "b"
    assert (tmp_path / "b" / "main_clnf_general.txt").is_file()


def test_a_bad_checksum_names_the_file_and_keeps_the_others(server, tmp_path):
    bad = "patch_experts/ccnf_patches_0.35_general.txt"
    server.corrupt.add(bad)
    with pytest.raises(download.DownloadError, match=r"1 of \d+ files failed") as failure:
        download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False, retries=0)
    assert bad in str(failure.value) and "SHA-256" in str(failure.value)
    assert not (tmp_path / bad).exists() and not (tmp_path / (bad + ".part")).exists()
    assert all((tmp_path / f.path).is_file() for f in CLNF_FILES if f.path != bad)
    server.corrupt.clear()
    server.requests.clear()
    download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    assert server.fetched() == [bad]                 # the second run fetches only what was missing


def test_an_interrupted_transfer_resumes_where_it_stopped(server, tmp_path):
    name = "detection_validation/validator_cnn.txt"
    server.cut[name] = 1_000_000
    download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    ranges = [r for n, r in server.requests if n == name]
    assert ranges == [None, "bytes=1000000-"]
    assert download.is_complete(tmp_path / name, next(f for f in CLNF_FILES if f.path == name))


def test_a_part_left_by_an_earlier_run_is_resumed(server, models_dir, tmp_path):
    name = "mtcnn_detector/ONet.dat"
    (tmp_path / "mtcnn_detector").mkdir()
    (tmp_path / (name + ".part")).write_bytes((models_dir / name).read_bytes()[:4096])
    download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    assert [r for n, r in server.requests if n == name] == ["bytes=4096-"]
    assert (tmp_path / name).read_bytes() == (models_dir / name).read_bytes()


def test_a_server_that_ignores_ranges_gives_the_whole_file(server, models_dir, tmp_path):
    name = "mtcnn_detector/RNet.dat"
    (tmp_path / "mtcnn_detector").mkdir()
    (tmp_path / (name + ".part")).write_bytes(b"x" * 100)
    server.ignore_ranges = True
    download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    assert (tmp_path / name).read_bytes() == (models_dir / name).read_bytes()


def test_unreachable_or_missing_sources_are_errors_that_name_the_files(server, tmp_path):
    with pytest.raises(download.DownloadError, match="main_clnf_general.txt: http://127.0.0.1:1/.*URLError"):
        download.download_models(tmp_path, accept_license=True, mirror="http://127.0.0.1:1/", retries=0,
                                 progress=False, timeout=5)
    server.root = tmp_path / "empty"
    with pytest.raises(download.DownloadError, match="mtcnn_detector/PNet.dat: .*HTTP 404"):
        download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    assert len(server.requests) == len(CLNF_FILES)          # a 404 is not retried


def test_missing_models_tell_the_user_what_to_run(tmp_path, capsys):
    with pytest.raises(ModelFileError, match="run `torch-clnf download-models` to fetch them into "):
        weights.resolve_spec("main_clnf_general.txt")
    with pytest.raises(ModelFileError, match="download-models --ceclm"):
        weights.resolve_spec("main_ceclm_general.txt")
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((64, 64), 128, np.uint8))
    assert cli.main(["image", str(image), "--box", "1,1,10,10"]) == 2
    assert "torch-clnf download-models" in capsys.readouterr().err
