"""The published values hcmarl ships (``docs/results/magpo_table1_*.csv``) equal their source.

The jumanji suites' rows are read back from the MAGPO paper's Table 1 in ``../shared/seeds/magpo_paper.txt``: a
suite's block is its name, its task names, then each algorithm's ``mean ± std`` for every task, algorithm after
algorithm (MAGPO, CTDS, IPPO, MAPPO, MAT, Sable). The CoordSum rows' means are read from ALGORITHMS.md section 5.
"""

from __future__ import annotations

import csv
import re

import pytest

from hcmarl.recipes import RECIPES_DIR

SHARED = RECIPES_DIR.parent.parent / "shared"
PAPER = SHARED / "seeds" / "magpo_paper.txt"
RESULTS = RECIPES_DIR.parent / "docs" / "results"
TABLE_ALGORITHMS = ("magpo", "ctds", "rec_ippo", "rec_mappo", "mat", "sable")
"""Table 1's columns, by the names the CSVs give them (the paper's MAPPO and IPPO are recurrent: rec_mappo, rec_ippo)."""
SUITES = {
    "rware": (
        "RobotWarehouse",
        "large-4ag large-4ag-hard large-8ag large-8ag-hard medium-4ag medium-4ag-hard medium-6ag small-4ag "
        "small-4ag-hard tiny-2ag tiny-2ag-hard tiny-4ag tiny-4ag-hard xlarge-4ag xlarge-4ag-hard",
    ),
    "lbf": ("LevelBasedForaging", "15x15-3p-5f 15x15-4p-3f 15x15-4p-5f 2s-8x8-2p-2f-coop 2s-10x10-3p-3f 8x8-2p-2f-coop 10x10-3p-3f"),
    "connector": ("MaConnector", "con-5x5x3a con-7x7x5a con-10x10x10a con-15x15x23a"),
}

pytestmark = pytest.mark.skipif(not PAPER.exists(), reason=f"{PAPER} is absent (the shared folder is not beside this checkout)")


def table_1(family: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(hcmarl task, algorithm) -> (mean, std) of one suite's block of the paper's Table 1."""
    suite, names = SUITES[family]
    text = " ".join(PAPER.read_text().split())
    start = text.index(f"{suite} {names}") + len(suite) + len(names) + 1
    tasks = names.split()
    cells = re.findall(r"(-?\d+\.\d+) ± (\d+\.\d+)", text[start:])[: len(TABLE_ALGORITHMS) * len(tasks)]
    return {
        (f"{family}/{task}", alg): (float(cells[i * len(tasks) + j][0]), float(cells[i * len(tasks) + j][1]))
        for i, alg in enumerate(TABLE_ALGORITHMS)
        for j, task in enumerate(tasks)
    }


def read_csv(name: str) -> list[dict[str, str]]:
    with open(RESULTS / name) as f:
        return list(csv.DictReader(f))


def test_the_jumanji_rows_are_table_1s() -> None:
    rows = read_csv("magpo_table1_jumanji.csv")
    published = {key: value for family in SUITES for key, value in table_1(family).items()}
    assert published[("rware/tiny-2ag", "magpo")] == (19.70, 1.16)  # the parse itself, against one cell read by eye
    assert {row["task"] for row in rows} == {"rware/tiny-2ag", "lbf/2s-8x8-2p-2f-coop", "connector/con-5x5x3a"}
    assert len(rows) == 3 * len(TABLE_ALGORITHMS)
    for row in rows:
        assert (float(row["mean"]), float(row["std"])) == published[(row["task"], row["algorithm"])], row
        assert (row["seeds"], row["frames"]) == ("10", "20000000") and row["source"].startswith("MAGPO paper Table 1")


def test_the_coordsum_rows_are_algorithms_md_section_5s() -> None:
    text = (SHARED / "ALGORITHMS.md").read_text()
    order = ("magpo", "ctds", "ippo", "mappo", "mat", "sable")  # "MAGPO / CTDS / IPPO / MAPPO / MAT / Sable"
    rows = {(row["task"], row["algorithm"]): float(row["mean"]) for row in read_csv("magpo_table1_coordsum.csv")}
    for task in ("3x10", "3x30"):
        means = [float(v) for v in re.search(rf"^{task}: ([\d. /]+);?$", text, re.M).group(1).rstrip(".").split(" / ")]
        assert {alg: rows[(f"coordsum/{task}", alg)] for alg in order} == dict(zip(order, means, strict=True))
