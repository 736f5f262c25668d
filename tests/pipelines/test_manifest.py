"""The options a run's manifest records: what changes the rows, and nothing that does not."""
import torch

from torch_clnf import FitConfig
from torch_clnf.pipelines.manifest import run_options
from torch_clnf.pipelines.tracker import TrackingConfig


def options(fit: FitConfig) -> dict:
    return run_options("main_clnf_general.txt", fit, torch.float32, TrackingConfig(), False)


def test_speed_only_settings_are_left_out():
    assert options(FitConfig(compile=True, capture=True)) == options(FitConfig())
    assert "compile" not in options(FitConfig())["fit"]


def test_a_setting_added_later_is_left_out_at_its_default_so_earlier_runs_still_match():
    assert "cen_bfloat16" not in options(FitConfig())["fit"]
    assert options(FitConfig(cen_bfloat16=True))["fit"]["cen_bfloat16"] is True
    assert options(FitConfig(cen_bfloat16=True)) != options(FitConfig())
