"""fit_hypotheses: OpenFace's multi-view searches, basic (CLNF) and with early termination (CE-CLM)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from torch_clnf.fitting import FitConfig, FitState, fit_hypotheses, start_from_points
from torch_clnf.openface import EarlyTermination


class ScriptedFitter:
    """A fitter whose fits are scripted: a fit moves params_global[:, 0] by 1 per scale fitted,
    its likelihood is params_global[:, 1] (the hypothesis' 'pitch') plus 10 per completed scale,
    its view is 0 for even and 1 for odd pitch, and a pitch of 99 fails."""

    def __init__(self) -> None:
        self.config = FitConfig(refine_hierarchical=False)
        self.parts = []
        self.pdm = SimpleNamespace(num_modes=2)
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def fit(self, padded, image_index, params_global, params_local, window_sizes, active=None, parts=True) -> FitState:
        active = torch.ones(len(params_global), dtype=torch.bool) if active is None else active
        self.calls.append((tuple(window_sizes), params_global[active, 1].clone()))
        scales = sum(1 for w in window_sizes if w)
        g = params_global.clone()
        g[:, 0] = torch.where(active, g[:, 0] + scales, g[:, 0])
        pitch = g[:, 1]
        likelihood = pitch + 10 * (window_sizes[-1] > 0)
        success = active & (pitch != 99)
        return FitState(g, params_local, g[:, None, :2], likelihood, success, (pitch % 2).long())


def hypotheses(*pitches: float) -> torch.Tensor:
    """(1, H, 6) starting params, hypothesis k with pitch ``pitches[k]``."""
    g = torch.zeros(1, len(pitches), 6, dtype=torch.float64)
    g[0, :, 1] = torch.tensor(pitches, dtype=torch.float64)
    return g


def search(g: torch.Tensor, cutoffs: list[float] | None, completed: int = 1,
           window_sizes: tuple[int, ...] = (11, 9, 7), accept=None, detector_start: bool = False) -> tuple[FitState, ScriptedFitter]:
    fitter = ScriptedFitter()
    fitter.config = FitConfig(refine_hierarchical=False, hypotheses_completed=completed)
    early = None if cutoffs is None else EarlyTermination(torch.ones(2), torch.zeros(2), torch.tensor(cutoffs))
    state = fit_hypotheses(fitter, torch.zeros(1, 8, 8), torch.zeros(len(g), dtype=torch.long), g, window_sizes, early,
                           accept, detector_start)
    return state, fitter


def test_the_frontal_hypothesis_is_completed_where_nearly_as_likely_as_the_best():
    _, fitter = search(hypotheses(4.6, 5, 3), None)
    assert fitter.calls[1][1].tolist() == [4.6]                              # within FRONTAL_MARGIN (0.5) of 5
    _, fitter = search(hypotheses(4.4, 5, 3), None)
    assert fitter.calls[1][1].tolist() == [5]


def test_the_detectors_start_must_beat_the_frontal_one_by_more():
    """The last hypothesis, the detector's start: the frontal one is completed where within
    DETECTOR_MARGIN (1.0) of it (and FRONTAL_MARGIN of the box's best), the detector's where more."""
    _, fitter = search(hypotheses(4.4, 4.8, 5.2), None, detector_start=True)
    assert fitter.calls[1][1].tolist() == [4.4]
    _, fitter = search(hypotheses(4.4, 4.8, 5.6), None, detector_start=True)
    assert fitter.calls[1][1].tolist() == [5.6]
    _, fitter = search(hypotheses(4.4, 4.8, 5.2), None)                         # without: the margin is 0.5
    assert fitter.calls[1][1].tolist() == [5.2]
    _, fitter = search(hypotheses(4.4, 5, 4), None, detector_start=True)        # a box hypothesis 0.6 better
    assert fitter.calls[1][1].tolist() == [5]


def test_a_fit_the_validator_rejects_is_followed_by_the_next_most_likely():
    """The next: the frontal hypothesis (OpenFace's single start), then the most likely of the others."""
    state, fitter = search(hypotheses(1, 5, 3, 2), None, accept=lambda fits, index: fits.params_global[:, 1] == 3)
    assert [c[1].tolist() for c in fitter.calls[1:]] == [[5], [1], [3]]
    assert state.params_global[0, 1] == 3 and bool(state.success[0])
    state, fitter = search(hypotheses(4.6, 5, 3, 2), None, accept=lambda fits, index: fits.params_global[:, 1] != 4.6)
    assert [c[1].tolist() for c in fitter.calls[1:]] == [[4.6], [5]]
    assert state.params_global[0, 1] == 5


def test_where_the_validator_rejects_every_try_the_first_is_kept():
    def never(fits, index):
        return torch.zeros(len(fits.success), dtype=torch.bool)

    state, fitter = search(hypotheses(1, 5, 3, 2), None, accept=never)
    assert [c[1].tolist() for c in fitter.calls[1:]] == [[5], [1], [3]]     # COMPLETED (3) tries in all
    assert state.params_global[0, 1] == 5


def test_only_the_rejected_faces_are_tried_again():
    g = torch.cat([hypotheses(1, 5, 3), hypotheses(7, 2, 6)])
    state, fitter = search(g, None, accept=lambda fits, index: fits.params_global[:, 1] != 5)
    assert [c[1].tolist() for c in fitter.calls[1:]] == [[5, 7], [1]]
    assert state.params_global[:, 1].tolist() == [1, 7]


def test_the_most_likely_hypothesis_after_the_first_scale_is_completed_alone():
    state, fitter = search(hypotheses(1, 5, 99, 3), None)
    (first_windows, first_pitches), (rest_windows, completed) = fitter.calls
    assert first_windows == (11, 0, 0) and first_pitches.tolist() == [1, 5, 99, 3]
    assert rest_windows == (0, 9, 7) and completed.tolist() == [5]           # 99 is more likely, but failed
    assert state.params_global[0].tolist()[:2] == [3, 5] and bool(state.success[0])   # 1 + 2 scales fitted


def test_basic_search_completes_every_hypothesis_and_keeps_the_most_likely():
    """hypotheses_completed = H: OpenFace's basic search (every hypothesis over all scales)."""
    state, fitter = search(hypotheses(1, 5, 99, 3), None, completed=4)
    _, (rest_windows, completed) = fitter.calls
    assert rest_windows == (0, 9, 7) and completed.tolist() == [5, 1, 3]      # the best, the frontal; 99 failed
    assert state.params_global[0, 1] == 5 and bool(state.success[0])


def test_equally_likely_hypotheses_complete_the_first_in_order():
    g = hypotheses(4, 4, 4)
    g[0, :, 5] = torch.tensor([10.0, 20.0, 30.0])                             # told apart by their ty
    state, fitter = search(g, None)
    assert state.params_global[0, 5] == 10


def test_a_face_whose_hypotheses_all_fail_fails():
    state, fitter = search(torch.cat([hypotheses(99, 99), hypotheses(2, 99)]), None)
    assert state.success.tolist() == [False, True] and state.params_global[1, 1] == 2
    assert fitter.calls[1][1].tolist() == [2]                                   # the failed face is not completed


def test_the_first_scale_is_the_first_window_that_is_fitted():
    _, fitter = search(hypotheses(1, 2), None, window_sizes=(0, 9, 7))
    assert [c[0] for c in fitter.calls] == [(0, 9, 0), (0, 0, 7)]


def test_early_termination_completes_the_first_hypothesis_that_passes_only():
    # views: pitch 2 → view 0 (cutoff 10: fails), pitch 3 → view 1 (cutoff 2.5: passes), pitch 8 → view 0 (fails)
    state, fitter = search(hypotheses(2, 3, 8, 5), [10.0, 2.5])
    (first_windows, first_pitches), (rest_windows, completed) = fitter.calls
    assert first_windows == (11, 0, 0) and first_pitches.tolist() == [2, 3, 8, 5]
    assert rest_windows == (0, 9, 7) and completed.tolist() == [3]      # 5 passes too, but comes later
    assert state.params_global[0].tolist()[:2] == [3, 3] and bool(state.success[0])   # 1 + 2 scales fitted


def test_without_a_pass_the_three_most_likely_are_completed_and_the_best_kept():
    state, fitter = search(hypotheses(4, 99, 7, 1, 6, 2), [100.0, 100.0])
    _, (rest_windows, completed) = fitter.calls
    assert rest_windows == (0, 9, 7) and sorted(completed.tolist()) == [4, 6, 7]   # the failed 99 never
    assert state.params_global[0, 1] == 7 and bool(state.success[0])


def test_faces_are_searched_independently():
    g = torch.cat([hypotheses(2, 3, 8), hypotheses(4, 6, 1)])
    state, _ = search(g, [100.0, 2.5])          # face 0: 3 passes; face 1: none does, 6 is the most likely
    assert state.params_global[:, 1].tolist() == [3, 6]
    assert state.success.tolist() == [True, True]


def test_the_detector_start_puts_the_mean_shapes_points_on_the_detectors(models_dir):
    """start_from_points inverts a projection: a face of the mean shape, scaled, rolled 40° and
    moved, gives back its scale, roll and position from its own five points (float64), and the
    projection from the start puts the points where they were."""
    from torch_clnf.fitting.hypotheses import DETECTOR_POINTS
    from torch_clnf.models import PointDistributionModel
    from torch_clnf.openface import read_pdm

    pdm = PointDistributionModel(read_pdm(models_dir / "pdms/In-the-wild_aligned_PDM_68.txt"), torch.float64)
    truth = torch.tensor([[2.5, 0.0, 0.0, 0.698, 320.0, 240.0], [0.8, 0.0, 0.0, -1.2, 90.0, 400.0]], dtype=torch.float64)
    shape = pdm.project(truth)                                                     # (2, 68, 2)
    points = torch.stack([shape[:, list(rows)].mean(1) for rows in DETECTOR_POINTS], 1)
    start = start_from_points(pdm, points)
    torch.testing.assert_close(start, truth, atol=1e-9, rtol=0)
    noisy = points + torch.tensor([3.0, -2.0])                                     # the points moved together
    torch.testing.assert_close(start_from_points(pdm, noisy)[:, 4:], truth[:, 4:] + torch.tensor([3.0, -2.0]))
