"""Bit-identical behaviour: two iterations of every shipped recipe family give the stored parameters exactly.

The fixtures in ``tests/fixtures/two_iterations`` were made by ``make.py`` there from commit 4eb2b99 (before the
refactor of the training iteration): seed 0, the tiny settings of ``conftest.py``, two iterations, one torch
thread. A change that keeps the learning behaviour must reproduce every parameter and buffer of the module.

Why exact equality (``torch.equal``) and not a tolerance: with one thread the result is bit-identical from run to
run, and whatever the order of the cases within one process (checked: all cases twice, and once in reverse order).
With two threads it is not (float sums are split differently): most cases then differ by at most about 1e-6, but
a different float can flip a sampled action, after which the runs part ways (by up to 2e-5 for ``magpo_sable``,
1.6e-4 for ``magpo_trust_region``, 3e-4 for ``hatrpo-vmas_balance``, 6e-3 for ``magpo_conductor``). So the test
pins one thread, and no single tolerance would tell a reordered reduction from a real change in every case: where
a refactor must reorder a reduction, measure it with ``make.py --check --atol ...`` and say so in its review.

For the same reason a kind of CPU other than the one a set was recorded on needs its own set (``make.py``'s
docstring; on AMD EPYCs with AVX512 or AVX2 the default set differs by up to 4e-4): a CPU kind with a folder under
``machines/`` is compared with its own set, any other with the default one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_MAKE = Path(__file__).parent / "fixtures" / "two_iterations" / "make.py"
_spec = importlib.util.spec_from_file_location("two_iterations_make", _MAKE)
assert _spec is not None and _spec.loader is not None
make = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = make  # dataclasses look their module up by name
_spec.loader.exec_module(make)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(make.CASES))
def test_two_iterations_reproduce_the_fixture(name: str) -> None:
    """Same keys, shapes, dtypes and values, exactly, as the parameters saved before the refactor (a case added later:
    as its recorded reference; one without a fixture for this CPU kind is skipped, saying so)."""
    case = make.CASES[name]
    if not case.path.exists():
        pytest.skip(f"{name} has no fixture for this CPU kind ({make.machine_kind()}); kinds with one: {make.kinds_holding(case)}")
    problem = make.first_difference(make.run_case(case), make.load_fixture(case))
    where = f"fixture {case.path.relative_to(make.FIXTURES_DIR)}, this CPU kind {make.machine_kind()}"
    assert problem is None, f"{name} ({' '.join([case.recipe, *case.overrides])}; {where}): {problem}"


def test_the_comparison_reports_a_perturbed_parameter() -> None:
    """A fresh run equals its fixture; nudging one of its parameters by 1e-4 is reported, with key and size."""
    case = make.CASES["ippo-coordsum_3x10"]
    state, fixture = make.run_case(case), make.load_fixture(case)
    assert make.first_difference(state, fixture) is None
    key = next(k for k in fixture if k.endswith("weight"))
    state[key].view(-1)[0] += 1e-4
    problem = make.first_difference(state, fixture)
    assert problem is not None and f"first differing key {key}:" in problem
    assert abs(float(problem.split("max abs difference ")[1].split(" ")[0]) - 1e-4) < 1e-6
    assert make.first_difference(state, fixture, atol=2e-4) is None


def test_the_comparison_reports_keys_and_shapes() -> None:
    """A missing or extra key, or a reshaped tensor, is reported before any values are compared."""
    fixture = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    assert make.first_difference(dict(fixture), fixture) is None
    assert "missing ['b']" in make.first_difference({"a": fixture["a"]}, fixture)
    assert "unexpected ['c']" in make.first_difference({**fixture, "c": torch.zeros(1)}, fixture)
    assert "b: shape/dtype (2, 2)" in make.first_difference({"a": fixture["a"], "b": torch.ones(2, 2)}, fixture)
    nan = {"a": torch.full((2, 3), float("nan")), "b": fixture["b"]}
    assert make.first_difference(nan, nan) is None and "max abs difference inf" in make.first_difference(nan, fixture)
