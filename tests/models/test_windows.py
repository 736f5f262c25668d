"""Window correlations: the depthwise form used for few areas on a CPU equals the grouped one."""
import pytest
import torch

from torch_clnf.models import windows
from torch_clnf.models.windows import correlation


@pytest.mark.parametrize("stride, offset", [(1, (0, 0)), (2, (0, 1)), (2, (1, 0))])
def test_depthwise_and_grouped_correlations_agree(monkeypatch, stride, offset):
    """Areas repeated once per filter (depthwise, few areas) and one grouped convolution (many)
    are the same sums in another order: equal to float32 rounding, and both equal the float64 sums."""
    generator = torch.Generator().manual_seed(0)
    centred = torch.randn(2, 68, 19, 19, generator=generator, dtype=torch.float64)
    weight = torch.randn(68, 7, 11, 11, generator=generator, dtype=torch.float64)
    exact = correlation(centred, weight, stride, offset)                          # float64: always grouped
    assert exact.shape == (2, 68, 7, (19 - 11 - offset[0]) // stride + 1, (19 - 11 - offset[1]) // stride + 1)
    depthwise = correlation(centred.float(), weight.float(), stride, offset, channels_last=True)
    monkeypatch.setattr(windows, "DEPTHWISE_MAX_VALUES", 0)
    grouped = correlation(centred.float(), weight.float(), stride, offset, channels_last=True)
    for z in (depthwise, grouped):
        torch.testing.assert_close(z.double(), exact, atol=2e-4, rtol=0)


def test_many_areas_stay_one_grouped_convolution(monkeypatch):
    """Beyond DEPTHWISE_MAX_VALUES repeated values the depthwise form is slower: not used."""
    shapes = []
    real = windows.F.conv2d
    monkeypatch.setattr(windows.F, "conv2d", lambda x, w, **kw: shapes.append((x.shape[1], kw["groups"])) or real(x, w, **kw))
    correlation(torch.randn(1, 68, 19, 19), torch.randn(68, 7, 11, 11))
    correlation(torch.randn(16, 68, 19, 19), torch.randn(68, 7, 11, 11))
    assert shapes == [(68 * 7, 68 * 7), (68, 68)]
