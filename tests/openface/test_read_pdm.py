import pytest
import torch

from torch_clnf.openface import ModelFileError, read_pdm

PDMS = [("pdms/In-the-wild_aligned_PDM_68.txt", 68, 34), ("pdms/Multi-PIE_aligned_PDM_68.txt", 68, None),
        ("pdms/pdm_68_aligned_menpo.txt", 68, None), ("model_inner/pdms/pdm_51_inner.txt", 51, None),
        ("model_eye/pdms/pdm_28_eye_3D_closed.txt", 28, None), ("model_eye/pdms/pdm_28_l_eye_3D_closed.txt", 28, None)]


@pytest.mark.parametrize("name,points,modes", PDMS, ids=[p[0].split("/")[-1] for p in PDMS])
def test_every_pdm(models_dir, name, points, modes):
    pdm = read_pdm(models_dir / name)
    m = pdm.num_modes
    assert pdm.num_points == points
    assert pdm.mean_shape.shape == (points, 3) and pdm.mean_shape.dtype == torch.float64
    assert pdm.principal_components.shape == (points, 3, m)
    assert pdm.eigenvalues.shape == (m,) and bool((pdm.eigenvalues > 0).all())
    if modes is not None:
        assert m == modes
    # the file stores all x, then all y, then all z: the first line after the header is point 0's x
    header_skipped = [line for line in (models_dir / name).read_text().splitlines() if not line.startswith("#")]
    assert pdm.mean_shape[0, 0].item() == pytest.approx(float(header_skipped[3]))
    assert pdm.mean_shape[0, 1].item() == pytest.approx(float(header_skipped[3 + points]))
    # the modes of a PCA basis are orthonormal
    basis = pdm.principal_components.reshape(-1, m)
    torch.testing.assert_close(basis.T @ basis, torch.eye(m, dtype=torch.float64), atol=1e-4, rtol=0)


def test_non_numeric_value(models_dir, tmp_path):
    lines = (models_dir / "pdms/In-the-wild_aligned_PDM_68.txt").read_text().splitlines()
    lines[10] = "abc"
    broken = tmp_path / "pdm.txt"
    broken.write_text("\n".join(lines))
    with pytest.raises(ModelFileError, match=r"pdm.txt, line 11: expected a number for mean shape element 6 of 204, found 'abc'"):
        read_pdm(broken)


def test_negative_eigenvalue(models_dir, tmp_path):
    text = (models_dir / "model_eye/pdms/pdm_28_eye_3D_closed.txt").read_text().rstrip().rsplit(maxsplit=1)[0] + " -1\n"
    (tmp_path / "pdm.txt").write_text(text)
    with pytest.raises(ModelFileError, match="eigenvalues > 0"):
        read_pdm(tmp_path / "pdm.txt")
