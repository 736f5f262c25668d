"""Mean-shift and likelihood with each face's own sigma and map size (maps zero-padded to the batch's)."""
import torch
import torch.nn.functional as F

from torch_clnf.fitting import log_likelihood
from torch_clnf.fitting.mean_shift import mean_shift_at


def test_padded_maps_and_own_sigmas_give_each_faces_own_shift():
    generator = torch.Generator().manual_seed(3)
    windows, sigmas = [3, 5, 9, 9], [1.0, 1.0, 1.75, 1.5]
    maps, positions = [], []
    for w in windows:
        own = torch.rand(1, 6, w, w, generator=generator, dtype=torch.float64)
        own[0, 2] = 0                                                              # a landmark without response
        maps.append(own)
        positions.append(torch.rand(1, 6, 2, generator=generator, dtype=torch.float64) * (w + 2) - 1)   # some outside
    padded = torch.cat([F.pad(m, (0, 9 - m.shape[-1], 0, 9 - m.shape[-1])) for m in maps])
    position = torch.cat(positions)
    visible = torch.ones(4, 6, dtype=torch.bool)
    per_face = torch.tensor(sigmas, dtype=torch.float64)                          # float64: as a Python number
    shift = mean_shift_at(padded, position, per_face, windows=torch.tensor(windows, dtype=torch.float64))
    likelihood = log_likelihood(padded, position[..., 0], position[..., 1], visible, per_face)
    for face, (own, at, sigma) in enumerate(zip(maps, positions, sigmas)):
        assert torch.equal(shift[face:face + 1], mean_shift_at(own, at, sigma))    # the padding adds exact zeros
        own_likelihood = log_likelihood(own, at[..., 0], at[..., 1], visible[:1], sigma)
        torch.testing.assert_close(likelihood[face:face + 1], own_likelihood, rtol=1e-14, atol=0)
    assert torch.equal(shift[:, 2], torch.zeros(4, 2))


def test_one_sigma_per_face_equals_a_number():
    generator = torch.Generator().manual_seed(4)
    maps = torch.rand(3, 68, 11, 11, generator=generator)
    position = torch.rand(3, 68, 2, generator=generator) * 10
    per_face = torch.full((3,), 1.5, dtype=torch.float64)
    assert torch.equal(mean_shift_at(maps, position, per_face), mean_shift_at(maps, position, 1.5))
