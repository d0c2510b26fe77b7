"""Published values beside a report's runs (``hcmarl report --published``): reading, validation, the table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from test_marl_eval import make_run

from hcmarl.errors import RunDataError
from hcmarl.modules.cli import main
from hcmarl.report import report
from hcmarl.report.published import read_published

HEADER = "task,algorithm,mean,std,seeds,frames,source\n"
TABLE_1 = HEADER + (
    "CoordSum/3x10-30-v0,MAGPO,107.97,0.04,10,20000000,MAGPO paper Table 1\n"
    "coordsum/3x10,mappo,107.44,0.34,10,20000000,MAGPO paper Table 1\n"
    "coordsum/3x30,mappo,113.31,4.80,10,20000000,MAGPO paper Table 1\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "published.csv"
    path.write_text(text)
    return path


def test_reads_hcmarl_and_mava_task_names(tmp_path: Path) -> None:
    values = read_published(write(tmp_path, TABLE_1))
    assert [(v.task, v.algorithm, v.mean, v.std, v.seeds, v.frames) for v in values] == [
        ("coordsum/3x10", "magpo", 107.97, 0.04, 10, 20_000_000.0),
        ("coordsum/3x10", "mappo", 107.44, 0.34, 10, 20_000_000.0),
        ("coordsum/3x30", "mappo", 113.31, 4.80, 10, 20_000_000.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task,algorithm,mean\ncoordsum/3x10,mappo,1\n", "missing column(s) source"),
        (HEADER + "coordsum/3x10,mappo,high,,,,paper\n", "line 2: column 'mean' holds 'high', which is not a number"),
        (HEADER + "coordsum/3x10,mappo,,,,,paper\n", "line 2: column 'mean' is empty"),
        (HEADER + "coordsum/3x10,mappo,1,,2.5,,paper\n", "line 2: column 'seeds' must be a whole number"),
        (HEADER + "coordsum/3x10,mappo,1,,,,paper\ncoordsum/3x10,MAPPO,2,,,,paper\n", "line 3: a second value for mappo on coordsum/3x10"),
        (HEADER + "coordsum/3x10,mappo,1,,,,\n", "line 2: 'task', 'algorithm' and 'source' must not be empty"),
        (HEADER + "coordsum/3x10,mappo,nan,,,,paper\n", "line 2: column 'mean' holds 'nan'; it must be finite"),
    ],
)
def test_a_broken_file_names_the_file_line_and_rule(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RunDataError) as error:
        read_published(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_the_report_sets_each_score_beside_its_published_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folders = [make_run(tmp_path / "runs", rng, "mappo", "coordsum/3x10", seed, wins=False) for seed in (0, 1, 2)]
    out = tmp_path / "report"
    report([tmp_path / "runs"], out, resamples=20, published=write(tmp_path, TABLE_1))
    page = (out / "report.md").read_text()
    # the runs' scores are their absolute metrics (magpo protocol): the mean of final_eval.json's episodes
    absolute = [statistics.fmean(json.loads((f / "final_eval.json").read_text())["episodes"]["eval"]["return"]) for f in folders]
    ours = f"{statistics.fmean(absolute):.2f} ({statistics.stdev(absolute):.2f}) | 3 | 300"
    assert f"| coordsum/3x10 | mappo | {ours} | 107.44 ± 0.34 | 10 | 20,000,000 | MAGPO paper Table 1 |" in page
    assert "| coordsum/3x10 | magpo | - | | | 107.97 ± 0.04 | 10 | 20,000,000 | MAGPO paper Table 1 |" in page
    assert "- coordsum/3x30: published values, but no run here" in page
    # every run scored by its absolute metric: the per-task table shows that score, not the median of the last ten
    assert "HCPO protocol" not in page
    assert f"| coordsum/3x10 | eval/return | **{statistics.fmean(absolute):.2f} ({statistics.stdev(absolute):.2f})** |" in page


def test_report_command_refuses_a_missing_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(tmp_path / "runs", np.random.default_rng(0), "mappo", "coordsum/3x10", 0, wins=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--published", str(tmp_path / "nope.csv")])
    assert exit_info.value.code == 2
    assert "--published" in capsys.readouterr().err
