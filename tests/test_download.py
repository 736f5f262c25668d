"""torch-clnf download-models against a local HTTP server serving ../shared/openface-models:
consent, checksums, interrupted transfers, resuming, and the error that points new users to it."""
from __future__ import annotations

import hashlib
import socket
import threading
import urllib.error
import urllib.request
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


def test_unreachable_sources_name_the_host_and_missing_ones_the_files(server, tmp_path):
    with pytest.raises(download.DownloadError, match=rf"could not reach 127\.0\.0\.1:1 \(.*refused.*\), so "
                                                     rf"{len(CLNF_FILES)} of {len(CLNF_FILES)} files"):
        download.download_models(tmp_path, accept_license=True, mirror="http://127.0.0.1:1/", retries=0,
                                 progress=False, timeout=5)
    server.root = tmp_path / "empty"
    with pytest.raises(download.DownloadError, match="mtcnn_detector/PNet.dat: .*HTTP 404"):
        download.download_models(tmp_path, accept_license=True, mirror=server.url, progress=False)
    assert len(server.requests) == len(CLNF_FILES)          # a 404 is not retried


URLOPEN = urllib.request.urlopen


def counting_urlopen(monkeypatch, fail):
    """Replaces urlopen: records each URL asked for; ``fail(calls)`` returns the exception to raise on
    that call, or None to open the URL for real."""
    calls: list[str] = []

    def opener(request, *args, **kwargs):
        calls.append(request.full_url)
        if (err := fail(len(calls))) is not None:
            raise err
        return URLOPEN(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", opener)
    return calls


def test_an_unreachable_mirror_is_one_short_error_with_the_remedies(tmp_path, monkeypatch):
    calls = counting_urlopen(monkeypatch, lambda n: None)          # a real connection, refused
    for target in (tmp_path / "new" / "models", tmp_path / "kept"):
        if target.name == "kept":
            target.mkdir()
        with pytest.raises(download.DownloadError) as failure:
            download.download_models(target, accept_license=True, mirror="http://127.0.0.1:1/", progress=False)
        message = str(failure.value)
        assert len(message) < 800 and message.count("\n") <= 4, message
        assert "127.0.0.1:1" in message and "refused" in message and f"{len(CLNF_FILES)} of" in message
        assert "--mirror" in message and download.MIRROR_ENV in message and weights.MODELS_ENV + " " in message
        assert "HTTPS_PROXY" in message and "lib/local/LandmarkDetector/model" in message
        assert len(calls) == 1                                     # not once per file, nor retried
        calls.clear()
    assert not (tmp_path / "new").exists()                         # every folder it created, removed
    assert list((tmp_path / "kept").iterdir()) == []               # kept, with nothing left in it


def test_without_dns_each_official_host_is_tried_once(tmp_path, monkeypatch):
    offline = urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    calls = counting_urlopen(monkeypatch, lambda n: offline)
    with pytest.raises(download.DownloadError) as failure:
        download.download_models(accept_license=True, ceclm=True, progress=False)
    # The CEN files still try OneDrive after Dropbox: another host.
    assert [url.split("/")[2] for url in calls] == ["raw.githubusercontent.com", "www.dropbox.com", "onedrive.live.com"]
    message = str(failure.value)
    assert message.startswith("could not reach raw.githubusercontent.com, www.dropbox.com, onedrive.live.com "
                              "(Temporary failure in name resolution), so "
                              f"{len(CLNF_FILES) + len(CECLM_FILES)} of {len(CLNF_FILES) + len(CECLM_FILES)} files")
    assert "a mirror of your own" in message and "resume" not in message and len(message) < 800
    assert not (tmp_path / "data").exists()                        # nor the per-user data folder


def test_a_timeout_is_retried_and_then_gives_the_host_up(server, tmp_path, monkeypatch):
    timeout = urllib.error.URLError(TimeoutError("timed out"))
    calls = counting_urlopen(monkeypatch, lambda n: timeout)
    with pytest.raises(download.DownloadError, match=r"could not reach 127\.0\.0\.1:\d+ \(timed out\)"):
        download.download_models(tmp_path, accept_license=True, mirror=server.url, retries=2, progress=False)
    assert len(calls) == 3 and server.requests == []               # retries=2 for the host, not per file
    calls = counting_urlopen(monkeypatch, lambda n: timeout if n == 1 else None)
    download.download_models(tmp_path, accept_license=True, mirror=server.url, retries=2, progress=False)
    assert len(calls) == len(CLNF_FILES) + 1                       # one timeout passed: all fetched


def test_files_that_failed_and_an_unreachable_host_are_both_told(server, tmp_path, monkeypatch):
    server.corrupt.add("main_clnf_general.txt")                    # the first file
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    calls = counting_urlopen(monkeypatch, lambda n: refused if n > 3 else None)
    with pytest.raises(download.DownloadError) as failure:
        download.download_models(tmp_path, accept_license=True, mirror=server.url, retries=0, progress=False)
    first, rest = str(failure.value).split("\n  ", 1)
    assert first == f"1 of {len(CLNF_FILES)} files failed (run the command again to resume):"
    assert rest.startswith("main_clnf_general.txt: ") and "SHA-256" in rest
    assert f"(Connection refused), so {len(CLNF_FILES) - 3} more files were not downloaded" in rest
    assert len(calls) == 4 and str(failure.value).count("\n") <= 5


def test_nothing_is_left_behind_but_parts_to_resume(server, models_dir, tmp_path):
    target = tmp_path / "m"
    server.corrupt.add("detection_validation/validator_cnn.txt")   # alone in its folder
    server.cut["pdms/In-the-wild_aligned_PDM_68.txt"] = 0          # alone in its folder: a 0-byte .part
    resumable = "model_inner/pdms/pdm_51_inner.txt"
    server.cut[resumable] = 1000
    with pytest.raises(download.DownloadError, match=rf"3 of {len(CLNF_FILES)} files failed"):
        download.download_models(target, accept_license=True, mirror=server.url, retries=0, progress=False)
    assert not (target / "detection_validation").exists() and not (target / "pdms").exists()
    assert [p.relative_to(target).as_posix() for p in target.rglob("*.part")] == [resumable + ".part"]
    assert (target / (resumable + ".part")).stat().st_size == 1000
    server.corrupt.clear()
    server.requests.clear()
    download.download_models(target, accept_license=True, mirror=server.url, progress=False)
    assert [r for n, r in server.requests if n == resumable] == ["bytes=1000-"]
    assert (target / resumable).read_bytes() == (models_dir / resumable).read_bytes()


def test_a_file_mirror_is_not_a_host_that_can_be_unreachable(models_dir, tmp_path):
    with pytest.raises(download.DownloadError, match=rf"{len(CLNF_FILES)} of {len(CLNF_FILES)} files failed") \
            as failure:
        download.download_models(tmp_path / "a", accept_license=True, mirror=(tmp_path / "none").as_uri(),
                                 retries=0, progress=False)
    assert "could not reach" not in str(failure.value)            # a missing file each, not an offline host
    download.download_models(tmp_path / "b", accept_license=True, mirror=models_dir.as_uri(), progress=False)
    assert (tmp_path / "b" / "mtcnn_detector" / "ONet.dat").is_file()


def test_the_command_offline_prints_one_short_error(tmp_path, capsys):
    target = tmp_path / "models"
    assert cli.main(["download-models", "--dir", str(target), "--mirror", "http://127.0.0.1:1/",
                     "--accept-license", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torch-clnf: error: could not reach 127.0.0.1:1 (") and err.count("error") == 1
    assert len(err) < 800 and err.count("\n") <= 5 and "TORCH_CLNF_MODELS_URL" in err
    assert not target.exists()


def test_missing_models_tell_the_user_what_to_run(tmp_path, capsys):
    with pytest.raises(ModelFileError, match="run `torch-clnf download-models` to fetch them into "):
        weights.resolve_spec("main_clnf_general.txt")
    with pytest.raises(ModelFileError, match="download-models --ceclm"):
        weights.resolve_spec("main_ceclm_general.txt")
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((64, 64), 128, np.uint8))
    assert cli.main(["image", str(image), "--box", "1,1,10,10"]) == 2
    assert "torch-clnf download-models" in capsys.readouterr().err
