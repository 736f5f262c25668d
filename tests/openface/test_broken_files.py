"""Missing, truncated and corrupted model files raise ModelFileError naming file and position."""
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openface_files import write_ccnf_file, write_cen_file
from torch_clnf.openface import ModelFileError, read_ccnf, read_cen, read_pdm

READERS = {"cen": read_cen, "ccnf": read_ccnf}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    return {"cen": write_cen_file(folder / "cen.dat", points=4, hidden=(3, 2)).path.read_bytes(),
            "ccnf": write_ccnf_file(folder / "ccnf.txt").path.read_bytes()}


@pytest.mark.parametrize("reader", [read_cen, read_ccnf, read_pdm])
def test_missing_file(tmp_path, reader):
    with pytest.raises(ModelFileError, match="file not found") as err:
        reader(tmp_path / "absent.dat")
    assert err.value.path == tmp_path / "absent.dat"


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.3, 0.77, 0.999])
def test_truncated_real_ccnf(models_dir, tmp_path, fraction):
    data = (models_dir / "patch_experts/ccnf_patches_0.25_general.txt").read_bytes()
    cut = int(len(data) * fraction)
    (tmp_path / "cut.txt").write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match=r"cut.txt, byte \d+: file ends after %d bytes, expected \d+ more bytes for " % cut):
        read_ccnf(tmp_path / "cut.txt")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_real_pdm(models_dir, tmp_path, fraction):
    text = (models_dir / "pdms/In-the-wild_aligned_PDM_68.txt").read_text()
    (tmp_path / "cut.txt").write_text(text[: int(len(text) * fraction)])
    with pytest.raises(ModelFileError, match=r"cut.txt, line \d+: "):
        read_pdm(tmp_path / "cut.txt")


def test_corrupted_header(small_files, tmp_path):
    data = bytearray(small_files["cen"])
    struct.pack_into("<i", data, 8, -5)  # the number of views
    (tmp_path / "bad.dat").write_bytes(data)
    with pytest.raises(ModelFileError, match=r"bad.dat, byte 8: expected number of views in \[1, 64\], found -5"):
        read_cen(tmp_path / "bad.dat")
    data = bytearray(small_files["cen"])
    struct.pack_into("<d", data, 0, float("nan"))  # the patch scale
    (tmp_path / "bad.dat").write_bytes(data)
    with pytest.raises(ModelFileError, match="byte 0: expected a positive patch scale, found nan"):
        read_cen(tmp_path / "bad.dat")


def test_wrong_type_code(small_files, tmp_path):
    data = bytearray(small_files["cen"])
    struct.pack_into("<i", data, 12 + 8, 7)  # view 0 centre: CV_64F (6) -> 7
    (tmp_path / "bad.dat").write_bytes(data)
    with pytest.raises(ModelFileError, match="byte 20: view 0 centre: expected OpenCV type CV_64F, found type code 7"):
        read_cen(tmp_path / "bad.dat")


def test_wrong_expert_type(models_dir, tmp_path):
    source = models_dir / "patch_experts/ccnf_patches_0.25_general.txt"
    shutil.copy(source, tmp_path / "bad.txt")
    data = bytearray((tmp_path / "bad.txt").read_bytes())
    offset = 8 + 4 + 7 * (12 + 24) + 7 * (12 + 68 * 4) + 4 + sum(8 + 3 * (12 + w ** 4 * 4) for w in (7, 9, 11, 15))
    struct.pack_into("<i", data, offset, 6)
    (tmp_path / "bad.txt").write_bytes(data)
    with pytest.raises(ModelFileError, match=f"byte {offset}: expected expert \\(view 0, landmark 0\\) type = 5, found 6"):
        read_ccnf(tmp_path / "bad.txt")


def test_trailing_bytes(small_files, tmp_path):
    (tmp_path / "long.dat").write_bytes(small_files["cen"] + b"\0\0")
    with pytest.raises(ModelFileError, match="expected end of file, found 2 more bytes"):
        read_cen(tmp_path / "long.dat")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["cen", "ccnf"]), data=st.data())
def test_fuzz_truncations(small_files, tmp_path, kind, data):
    original = small_files[kind]
    cut = data.draw(st.integers(0, len(original) - 1))
    (tmp_path / "fuzz").write_bytes(original[:cut])
    with pytest.raises(ModelFileError, match=r"fuzz, byte \d+: "):
        READERS[kind](tmp_path / "fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["cen", "ccnf"]), data=st.data())
def test_fuzz_bit_flips(small_files, tmp_path, kind, data):
    """A flipped bit either still reads, or raises ModelFileError — never another exception."""
    corrupted = bytearray(small_files[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, 8 * len(corrupted) - 1))
        corrupted[bit // 8] ^= 1 << (bit % 8)
    (tmp_path / "fuzz").write_bytes(bytes(corrupted))
    try:
        READERS[kind](tmp_path / "fuzz")
    except ModelFileError as err:
        assert str(err).startswith(str(tmp_path / "fuzz"))


def test_model_file_error_pickles():
    """Worker processes send it back to the parent process."""
    import pickle

    err = pickle.loads(pickle.dumps(ModelFileError("x/pdm.txt", "line 7", "expected a number")))
    assert (err.path.name, err.position, err.problem, str(err)) == ("pdm.txt", "line 7", "expected a number",
                                                                    "x/pdm.txt, line 7: expected a number")
