"""Images as users give them: files of any bit depth, arrays, tensors."""
import cv2
import numpy as np
import pytest
import torch

import torch_clnf
from torch_clnf.images import as_array, read_image


@pytest.fixture(scope="module")
def sample(media_dir):
    return cv2.imread(str(media_dir / "sample1.jpg"))


def test_16_bit_and_float_files_are_scaled_by_their_range(sample, tmp_path):
    cv2.imwrite(str(tmp_path / "deep.png"), sample.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "unit.tiff"), sample.astype(np.float32) / 255)
    deep, unit = read_image(tmp_path / "deep.png"), read_image(tmp_path / "unit.tiff")
    assert deep.dtype == np.uint8 and np.array_equal(deep, sample)
    assert unit.dtype == np.float32 and np.abs(unit - sample).max() < 1e-3
    grey16 = (cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    assert np.array_equal(as_array(grey16), cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY))


def test_float_files_outside_0_to_1_and_other_types_are_refused(sample, tmp_path):
    cv2.imwrite(str(tmp_path / "raw.tiff"), sample.astype(np.float32))
    with pytest.raises(ValueError, match=r"raw.tiff: float pixels from 0 to 255; expected 0–1"):
        read_image(tmp_path / "raw.tiff")
    with pytest.raises(ValueError, match="bool pixels are not supported"):
        as_array(np.ones((8, 8), bool))
    with pytest.warns(UserWarning, match="float pixels all within 0–1"):
        as_array(sample.astype(np.float32) / 255)


def test_deep_images_give_the_8_bit_fit(models_dir, sample, tmp_path):
    """A 16-bit PNG and a 0–1 float TIFF of sample1 are detected and fitted as the 8-bit image is
    (before, both were read as grey levels 0–255: "no face"): the 16-bit one exactly, the float
    one within half a pixel (its grey levels keep the fractions that 8-bit grey rounds off)."""
    cv2.imwrite(str(tmp_path / "deep.png"), sample.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "unit.tiff"), sample.astype(np.float32) / 255)
    model = torch_clnf.load_model(models=models_dir, cache=tmp_path / "cache")
    expected = model.fit([sample])
    deep, unit = model.fit([tmp_path / "deep.png"]), model.fit([tmp_path / "unit.tiff"])
    assert len(deep) == len(unit) == len(expected) == 1 and bool(deep.success[0]) and bool(unit.success[0])
    assert torch.equal(deep.landmarks, expected.landmarks)
    assert (unit.landmarks - expected.landmarks).norm(dim=-1).median() < 0.5


def test_photos_are_turned_upright_by_their_exif_orientation(sample, tmp_path):
    """As OpenCV's default reading and OpenFace: a camera's sideways JPEG with EXIF orientation 6."""
    image_module = pytest.importorskip("PIL.Image")
    sideways = cv2.rotate(sample, cv2.ROTATE_90_COUNTERCLOCKWISE)
    exif = image_module.Exif()
    exif[0x0112] = 6                                              # rotate 90° clockwise to display
    image_module.fromarray(sideways[..., ::-1]).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == sample.shape and np.abs(upright.astype(int) - sample).mean() < 3
