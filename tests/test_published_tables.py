"""The published values hcmarl ships (``docs/results/magpo_table1_*.csv``, ``hcpo_table2_smax.csv``) equal their source.

The jumanji suites' rows are read back from the MAGPO paper's Table 1 in ``../shared/seeds/magpo_paper.txt``: a
suite's block is its name, its task names, then each algorithm's ``mean ± std`` for every task, algorithm after
algorithm (MAGPO, CTDS, IPPO, MAPPO, MAT, Sable). The CoordSum rows' means are read from ALGORITHMS.md section 5.
The MAGPO paper's SMAX rows (``magpo_table1_smax.csv``, win rates) are its Table 1's SMAX block, read the same way.
The HCPO SMAX rows are read back from the HCPO paper's Table 2 in ``../shared/seeds/hcpo_paper.txt``: after the maps and
their difficulty, each algorithm's ``win%(std)`` for every map, algorithm after algorithm.
"""

from __future__ import annotations

import csv
import re

import pytest

from hcmarl.recipes import RECIPES_DIR

SHARED = RECIPES_DIR.parent.parent / "shared"
PAPER = SHARED / "seeds" / "magpo_paper.txt"
HCPO_PAPER = SHARED / "seeds" / "hcpo_paper.txt"
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
    return table_1_block(f"{suite} {names}", family, names.split())


def table_1_block(head: str, family: str, tasks: list[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """(``family``/task, algorithm) -> (mean, std) of the Table 1 cells after ``head`` in the paper's text: each
    algorithm's ``mean ± std`` for every task of ``tasks``, algorithm after algorithm."""
    text = " ".join(PAPER.read_text().split())
    start = text.index(head) + len(head)
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


MAGPO_SMAX_MAPS = "2s3z 3s5z 3s5z_vs_3s6z 3s_vs_5z 6h_vs_8z 10m_vs_11m 5m_vs_6m smacv2_5_units smacv2_10_units 27m_vs_30m"


def test_the_smax_rows_are_table_1s() -> None:
    """Table 1's SMAX block: its column header ends ``... MAPPO`` before the maps (the caption sits between the suite's
    name and its maps), then each algorithm's ``mean ± std`` for every map, as in the other suites."""
    published = table_1_block(f"MAPPO {MAGPO_SMAX_MAPS}", "smax", MAGPO_SMAX_MAPS.split())
    assert published[("smax/10m_vs_11m", "magpo")] == (0.98, 0.02) and published[("smax/10m_vs_11m", "rec_mappo")] == (0.39, 0.07)  # by eye
    rows = read_csv("magpo_table1_smax.csv")
    assert {(row["task"], row["algorithm"]) for row in rows} == set(published) and len(rows) == len(published)
    for row in rows:
        assert (float(row["mean"]), float(row["std"])) == published[(row["task"], row["algorithm"])], row
        assert (row["seeds"], row["frames"]) == ("10", "20000000") and row["source"].startswith("MAGPO paper Table 1")


HCPO_TABLE_2_ALGORITHMS = ("hcpo", "happo", "hatrpo", "haa2c", "a2po", "maven")
HCPO_TABLE_2_MAPS = ("3s5z", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "corridor")


def hcpo_table_2() -> dict[tuple[str, str], tuple[float, float]]:
    """(smax/<map>, algorithm) -> (mean, std) of the HCPO paper's Table 2, as fractions (the paper gives percent)."""
    text = " ".join(HCPO_PAPER.read_text().split())
    start = text.index("corridor hard hard hard hard super")
    cells = re.findall(r"(\d+(?:\.\d+)?)\((\d+\.\d+)\)", text[start:])[: len(HCPO_TABLE_2_ALGORITHMS) * len(HCPO_TABLE_2_MAPS)]
    n = len(HCPO_TABLE_2_MAPS)
    return {
        (f"smax/{task}", alg): (float(cells[i * n + j][0]) / 100, float(cells[i * n + j][1]) / 100)
        for i, alg in enumerate(HCPO_TABLE_2_ALGORITHMS)
        for j, task in enumerate(HCPO_TABLE_2_MAPS)
    }


def test_the_smax_rows_are_the_hcpo_papers_table_2() -> None:
    published = hcpo_table_2()
    assert published[("smax/5m_vs_6m", "hatrpo")] == pytest.approx((0.703, 0.087))  # the parse, against one cell read by eye
    assert published[("smax/corridor", "maven")] == pytest.approx((0.406, 0.041))  # the block's last cell
    rows = read_csv("hcpo_table2_smax.csv")
    assert {row["task"] for row in rows} == {"smax/3s5z", "smax/5m_vs_6m", "smax/10m_vs_11m"}  # the maps JaxMARL's SMAX has
    assert len(rows) == 3 * 5  # every algorithm hcmarl implements (MAVEN is not one)
    for row in rows:
        assert (float(row["mean"]), float(row["std"])) == pytest.approx(published[(row["task"], row["algorithm"])], abs=5e-4), row
        assert (row["seeds"], row["frames"]) == ("5", "10000000") and row["source"].startswith("HCPO paper Table 2")
