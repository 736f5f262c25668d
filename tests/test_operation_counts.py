"""Tensor operations per fit stay under their budgets (``bench/ops.py`` counts them).

A one-face fit is bound by the overhead of its thousands of small operations, not by their
arithmetic, so the count is the speed of one face and one video; unlike a timing it is
deterministic. The budgets are today's counts plus 2 %: a convergence test that flips on another
CPU's rounding (an iteration more or less of a phase or of CalcParams, some 90 operations) stays
inside, an operation added to every iteration (50 a fit) does not.
"""
import importlib.util
from pathlib import Path

import pytest

BENCH_OPS = Path(__file__).resolve().parents[1] / "bench" / "ops.py"

BUDGETS = {                 # bench/ops.py's counts (float32, one thread) + 2 %
    "one face, fit from a box (CLNF, parts, validator)": 10_360,
    "one tracked frame": 8_960,
    "8 faces, fit from boxes": 10_360,
    "one face, fit from a box (CE-CLM)": 11_130,
}


@pytest.fixture(scope="module")
def ops():
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH_OPS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operation_counts_stay_under_budget(ops, models_dir):
    counted = {title: ops.count(call) for title, call in ops.workloads(models_dir).items()}
    assert set(counted) == set(BUDGETS)
    over = {title: (c.total, BUDGETS[title]) for title, c in counted.items() if c.total > BUDGETS[title]}
    assert not over, f"operations (counted, budget): {over}"
    # the NU-RLMS iteration is where most go: 50 of them a fit, under 100 operations each
    one_face = counted["one face, fit from a box (CLNF, parts, validator)"]
    assert one_face.by_stage["NU-RLMS rigid"] + one_face.by_stage["NU-RLMS non-rigid"] < 5_900
