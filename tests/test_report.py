"""``hcmarl report`` from run folders: versions and seeds read, the tables, the page and its files, the command.

The statistics are tested in test_report_stats.py."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hcmarl.errors import ConfigError, RunDataError
from hcmarl.modules.cli import main
from hcmarl.report import report
from hcmarl.report.discovery import discover, resolve_metric
from hcmarl.report.runs import parse_run_name
from hcmarl.report.tables import aggregate, final_scores, hcpo_scores, magpo_scores, score_rules, scores_table

FRAMES_PER_EPOCH = 100


# ---------------------------------------------------------------- run folders


def write_run(
    root: Path,
    name: str,
    env: str,
    seed: int,
    evals: list[float],
    first_epoch: int = 0,
    version: int = 0,
    metric: str = "eval/return",
    final: bool = True,
) -> Path:
    """A run folder as ``hcmarl fit`` writes it: a train row with frames per epoch, separate evaluation rows.

    Training runs ``2 * len(evals)`` epochs from ``first_epoch`` and evaluates after every second
    one, so evaluation ``i`` lands at ``(first_epoch + 2 i + 2) * FRAMES_PER_EPOCH`` frames. With
    ``final``, the last evaluation is the one after fit: logged at the epoch after the last train
    row, without frames. Without it, the run is cut short after its last evaluation's epoch.
    """
    folder = root / name / f"version_{version}"
    folder.mkdir(parents=True)
    fields = ["epoch", "step", "frames", "train/return", "eval/episodes", metric]
    rows = []
    for epoch in range(first_epoch, first_epoch + 2 * len(evals)):
        rows.append({"epoch": epoch, "step": epoch, "frames": (epoch + 1) * FRAMES_PER_EPOCH, "train/return": 0.0})
        i, odd = divmod(epoch - first_epoch, 2)
        if odd and (i < len(evals) - 1 or not final):
            rows.append({"epoch": epoch, "step": epoch, "eval/episodes": 4, metric: evals[i]})
    if final:
        rows.append({"epoch": first_epoch + 2 * len(evals), "step": 0, "eval/episodes": 4, metric: evals[-1]})
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    config = {"seed_everything": seed, "trainer": {"logger": {"init_args": {"name": name}}}, "data": {"env": env}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def fixture_runs(tmp_path: Path) -> Path:
    """Two algorithms on two tasks; alg_a's seed 1 on coordsum/3x10 is resumed into a second version."""
    root = tmp_path / "runs"
    write_run(root, "alg_a/coordsum_3x10/seed0", "coordsum/3x10", 0, [float(i) for i in range(12)])
    values = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 13.0, 14.0, 15.0, 16.0, 22.0]
    # cut short after logging a 7th evaluation (99) past its last checkpoint, then resumed from epoch 12
    write_run(root, "alg_a/coordsum_3x10/seed1", "coordsum/3x10", 1, values[:6] + [99.0], final=False)
    write_run(root, "alg_a/coordsum_3x10/seed1", "coordsum/3x10", 1, values[6:], first_epoch=12, version=1)
    for seed in (0, 1):
        write_run(root, f"alg_b/coordsum_3x10/seed{seed}", "coordsum/3x10", seed, [20.0] * 12)
        write_run(root, f"alg_a/coordsum_3x30/seed{seed}", "coordsum/3x30", seed, [1.0 + seed] * 12)
        write_run(root, f"alg_b/coordsum_3x30/seed{seed}", "coordsum/3x30", seed, [3.0 + seed] * 12)
    return root


def test_versions_of_a_resumed_seed_are_one_curve(fixture_runs: Path) -> None:
    runs, notes = discover([fixture_runs])
    assert notes == [] and len(runs) == 8
    (resumed,) = [r for r in runs if (r.algorithm, r.task, r.seed) == ("alg_a", "coordsum/3x10", 1)]
    frames, values = resumed.curve("eval/return")
    # version 0's last point (99 at 1,400 frames) is replaced by version 1's point at the same frames;
    # the final evaluation (logged without frames) takes the last train row's 2,400
    np.testing.assert_allclose(values, [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 16, 22])
    np.testing.assert_allclose(frames, [200 * (i + 1) for i in range(12)])
    assert len(resumed.sources) == 2


def test_hcpo_table_medians_by_hand(fixture_runs: Path) -> None:
    runs, _ = discover([fixture_runs])
    metrics = {"coordsum/3x10": "eval/return", "coordsum/3x30": "eval/return"}
    scores = hcpo_scores(runs, metrics)
    # seed 0: last ten of 0..11 are 2..11 -> median 6.5; seed 1: 4, 6, 8, 10, 12, 13, 14, 15, 16, 22 -> (12 + 13) / 2
    np.testing.assert_allclose(scores["coordsum/3x10"]["alg_a"], [6.5, 12.5])
    np.testing.assert_allclose(scores["coordsum/3x10"]["alg_b"], [20.0, 20.0])
    table = scores_table(scores, metrics)
    assert f"9.50 ({math.sqrt(((6.5 - 9.5) ** 2 + (12.5 - 9.5) ** 2) / 1):.2f})" in table  # mean 9.5, sample std 4.24
    assert "**20.00 (0.00)**" in table and "**3.50 (0.71)**" in table
    np.testing.assert_allclose(hcpo_scores(runs, metrics, last=3)["coordsum/3x10"]["alg_a"], [10.0, 16.0])


def test_aggregate_normalises_final_scores(fixture_runs: Path) -> None:
    runs, _ = discover([fixture_runs])
    metrics = {"coordsum/3x10": "eval/return", "coordsum/3x30": "eval/return"}
    agg = aggregate(final_scores(runs, metrics), resamples=100)
    # 3x10 finals: alg_a 11, 22; alg_b 20, 20 -> bounds (11, 22). 3x30: alg_a 1, 2; alg_b 3, 4 -> (1, 4)
    assert agg.bounds == {"coordsum/3x10": (11.0, 22.0), "coordsum/3x30": (1.0, 4.0)}
    # alg_b normalised: 9/11, 9/11, 2/3, 1 -> IQM drops one at each end: mean(9/11, 9/11)
    assert agg.iqm["alg_b"].value == pytest.approx(9 / 11)
    # alg_a: 0, 1, 0, 1/3 -> mean(0, 1/3)
    assert agg.iqm["alg_a"].value == pytest.approx(1 / 6)
    assert list(agg.iqm) == ["alg_b", "alg_a"]
    ((x, y, poi),) = agg.improvement
    # 3x10: b (9/11, 9/11) vs a (0, 1): 2 of 4 pairs -> 1/2; 3x30: every b beats every a -> 1
    assert (x, y) == ("alg_b", "alg_a") and poi.value == pytest.approx(0.75)


def test_median_score_is_the_hcpo_median_in_the_aggregate_and_beside_published(fixture_runs: Path, tmp_path: Path) -> None:
    """``--score median``: each seed's median of its last ``--last`` evaluations, in the aggregate and the published table."""
    runs, _ = discover([fixture_runs])
    metrics = {"coordsum/3x10": "eval/return", "coordsum/3x30": "eval/return"}
    rules = score_rules(runs, metrics, "median")
    assert rules == {"coordsum/3x10": "median", "coordsum/3x30": "median"}
    scores = magpo_scores(runs, metrics, rules, last=3)
    np.testing.assert_allclose(scores["coordsum/3x10"]["alg_a"], [10.0, 16.0])  # medians of 9, 10, 11 and 15, 16, 22
    published = tmp_path / "published.csv"
    published.write_text("task,algorithm,mean,std,seeds,frames,source\ncoordsum/3x10,alg_a,30.0,1.0,5,1000,a paper\n")
    report([fixture_runs], tmp_path / "out", score="median", last=3, published=published, resamples=50)
    page = (tmp_path / "out" / "report.md").read_text()
    assert "Each seed's median of the last 3 evaluations (HCPO's score), not normalised" in page
    assert "| coordsum/3x10 | alg_a | 13.00 (4.24) | 2 | 2,400 | 30.00 ± 1.00 |" in page  # mean of 10 and 16


def test_auto_metric_prefers_win_rate(tmp_path: Path) -> None:
    write_run(tmp_path, "alg/smax_3m/seed0", "smax/3m", 0, [0.0, 0.5, 1.0], metric="eval/win_rate")
    runs, _ = discover([tmp_path])
    assert resolve_metric(runs, "auto") == "eval/win_rate"
    with pytest.raises(RunDataError, match="eval/return"):
        resolve_metric(runs, "return")


def test_run_names_give_algorithm_task_and_seed() -> None:
    assert parse_run_name("mappo/coordsum_3x10/seed0") == ("mappo", "coordsum_3x10", 0)
    assert parse_run_name("mappo/coordsum/3x10") == ("mappo", "coordsum/3x10", None)
    assert parse_run_name("mappo/coordsum_3x10/lr=0.001,env=coordsum-3x30/seed4") == ("mappo (lr=0.001)", "coordsum_3x10", 4)


# ---------------------------------------------------------------- the report


def test_report_writes_every_file_it_promises(fixture_runs: Path, tmp_path: Path) -> None:
    write_run(fixture_runs, "alg_b/coordsum_3x30/seed2", "coordsum/3x30", 2, [5.0, 6.0])  # stops early: left out
    out = tmp_path / "report"
    written = report([fixture_runs], out, resamples=100, export=out / "runs.csv")
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "runs.csv",
            "curves_coordsum_3x10.png",
            "curves_coordsum_3x10.svg",
            "curves_coordsum_3x30.png",
            "curves_coordsum_3x30.svg",
            "iqm.png",
            "iqm.svg",
            "report.md",
        ]
    )
    for path in written:
        assert path.is_file() and path.stat().st_size > 0
    assert (out / "iqm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "iqm.svg").read_bytes()
    page = (out / "report.md").read_text()
    for image in ("iqm.png", "iqm.svg", "curves_coordsum_3x10.png", "curves_coordsum_3x30.svg"):
        assert f"]({image})" in page  # relative links beside the page
    assert "alg_b on coordsum/3x30, seed 2" in page and "**20.00 (0.00)**" in page
    assert "**3.50 (0.71)**" in page  # alg_b on 3x30 without its short seed 2
    assert "## Final performance (HCPO protocol)" in page  # runs without an absolute metric keep the median table

    # the export reads back into the same tables
    again = tmp_path / "again"
    report([out / "runs.csv"], again, resamples=100)
    strip = lambda text: text.split("\n", 3)[3]  # noqa: E731 (the sources line differs)
    assert strip((again / "report.md").read_text()) == strip(page)


def _record_software(folder: Path, software: object) -> None:
    (folder / "final_eval.json").write_text(json.dumps({"frames": 2400, "protocol": "hcmarl", "software": software}))


def test_page_lists_the_software_of_each_run_from_its_latest_version(fixture_runs: Path, tmp_path: Path) -> None:
    old, new = {"hcmarl": "0.1.0 (git 0123456789ab)", "torch": "2.12.0"}, {"hcmarl": "0.1.0 (git ba9876543210)", "torch": "2.13.0"}
    _record_software(fixture_runs / "alg_a/coordsum_3x10/seed0/version_0", new)
    _record_software(fixture_runs / "alg_a/coordsum_3x10/seed1/version_0", old)  # resumed: version 1 finished it
    _record_software(fixture_runs / "alg_a/coordsum_3x10/seed1/version_1", new)
    _record_software(fixture_runs / "alg_a/coordsum_3x30/seed1/version_0", old)
    report([fixture_runs], tmp_path / "out", resamples=100)
    page = (tmp_path / "out" / "report.md").read_text()
    section = page.split("## Software\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| coordsum")]
    assert rows == [
        "| coordsum/3x10 | alg_a | 0, 1 | hcmarl 0.1.0 (git ba9876543210), torch 2.13.0 |",
        "| coordsum/3x10 | alg_b | 0, 1 | not recorded |",
        "| coordsum/3x30 | alg_a | 0 | not recorded |",
        "| coordsum/3x30 | alg_a | 1 | hcmarl 0.1.0 (git 0123456789ab), torch 2.12.0 |",
        "| coordsum/3x30 | alg_b | 0, 1 | not recorded |",
    ]


def test_page_says_when_no_run_recorded_its_software_and_refuses_a_malformed_record(fixture_runs: Path, tmp_path: Path) -> None:
    report([fixture_runs], tmp_path / "out", resamples=100)
    page = (tmp_path / "out" / "report.md").read_text()
    assert "## Software" not in page and "Software: not recorded by any of these runs" in page
    folder = fixture_runs / "alg_b/coordsum_3x30/seed0/version_0"
    _record_software(folder, {"torch": 2.13})
    with pytest.raises(RunDataError, match=r"version_0/final_eval.json: 'software' is \{\"torch\": 2.13\}, not an object of name -> version"):
        discover([fixture_runs])


def test_report_command_on_an_empty_folder_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hcmarl: error: no runs found") and "metrics.csv" in err and len(err.strip().splitlines()) == 1


def test_report_command_writes_the_page(fixture_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["report", str(fixture_runs), "--out", str(tmp_path / "out"), "--resamples", "50", "--band", "std"])
    assert (tmp_path / "out" / "report.md").is_file()
    assert "report.md" in capsys.readouterr().out


def test_labels_rename_algorithms_on_the_page_and_refuse_what_would_merge_or_match_nothing(
    fixture_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_run(fixture_runs, "alg_a/coordsum_3x10/a.b.divergence=harl,c.d.divergence=harl/seed0", "coordsum/3x10", 0, [5.0] * 12)
    long_name = "alg_a (a.b.divergence=harl, c.d.divergence=harl)"
    runs, _ = discover([fixture_runs])
    assert long_name in {r.algorithm for r in runs}
    runs, _ = discover([fixture_runs], {long_name: "alg_a (harl)", "alg_b": "B"})
    assert sorted({r.algorithm for r in runs}) == ["B", "alg_a", "alg_a (harl)"]
    assert len(runs) == 9  # relabelling renames, it merges nothing
    out = tmp_path / "out"
    main(["report", str(fixture_runs), "--out", str(out), "--resamples", "20", "--label", long_name, "alg_a (harl)", "--label", "alg_b", "B"])
    page = (out / "report.md").read_text()
    assert "| coordsum/3x10 | alg_a (harl) | 0 |" in page and "| coordsum/3x10 | B | 0, 1 |" in page and long_name not in page
    for labels, message in (
        ({"alg_c": "C"}, "no run has that algorithm; the runs' algorithms are: alg_a; alg_a (a.b"),
        ({"alg_b": "alg_a"}, "'alg_a' and 'alg_b' would both be named 'alg_a'"),
        ({long_name: "X", "alg_b": "X"}, "would both be named 'X'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            discover([fixture_runs], labels)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(fixture_runs), "--out", str(out), "--label", "alg_b", "B", "--label", "alg_b", "C"])
    assert exit_info.value.code == 2 and "--label 'alg_b' is given more than once" in capsys.readouterr().err


def test_export_without_required_columns_names_them(tmp_path: Path) -> None:
    bad = tmp_path / "export.csv"
    bad.write_text("Name,step,eval/return\nx,1,2\n")
    with pytest.raises(RunDataError, match="frames") as info:
        discover([bad])
    assert "run or name" in str(info.value) and "Name, step, eval/return" in str(info.value)


def test_wandb_export_rows_without_frames_take_them_from_the_epoch(tmp_path: Path) -> None:
    export = tmp_path / "wandb.csv"
    export.write_text(
        "name,group,seed,epoch,frames,eval/return\n"
        "r0,mappo/coordsum/3x10,0,0,100,\n"
        "r0,mappo/coordsum/3x10,0,0,,5\n"
        "r0,mappo/coordsum/3x10,0,1,200,\n"
        "r0,mappo/coordsum/3x10,0,2,,7\n"
    )
    (run,), _ = discover([export])
    assert (run.algorithm, run.task, run.seed) == ("mappo", "coordsum/3x10", 0)
    assert run.curves["eval/return"] == [(100.0, 5.0), (200.0, 7.0)]


def test_report_logs_its_figures_to_an_offline_wandb_run(fixture_runs: Path, tmp_path: Path) -> None:
    """In its own process, as W&B keeps per-process state that a later run in the test process would trip over."""
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hcmarl.modules.cli",
            "report",
            str(fixture_runs),
            "--out",
            str(tmp_path / "out"),
            "--resamples",
            "50",
            "--wandb",
            "hcmarl-test",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("W&B run with the figures: ")][0]
    run_dir = Path(line.split(": ", 1)[1])
    images = sorted(p.name.split("_")[0] for p in (run_dir / "files" / "media" / "images" / "report").glob("*.png"))
    assert images == ["curves", "curves", "iqm"]
    assert (run_dir / "files" / "report.md").read_text() == (tmp_path / "out" / "report.md").read_text()
