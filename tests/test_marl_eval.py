"""marl-eval JSON: export of hcmarl run folders, import of published results, the names map, the report.

The rules a file must keep are tested in tests/test_marl_eval_validation.py."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hcmarl.errors import ConfigError, RunDataError
from hcmarl.modules.cli import main
from hcmarl.provenance import describe
from hcmarl.report import report
from hcmarl.report.discovery import discover
from hcmarl.report.marl_eval import hcmarl_task, marl_eval_export, marl_eval_names, read_marl_eval, software_file, write_marl_eval
from hcmarl.report.tables import absolute_scores, score_rules

Evaluation = tuple[int, list[float], list[bool] | None]
"""(frames, per-episode returns, per-episode wins or None)"""


def episodes(rng: np.random.Generator, n: int, wins: bool) -> tuple[list[float], list[bool] | None]:
    returns = [round(float(v), 3) for v in rng.normal(10.0, 3.0, n)]
    return returns, [bool(v) for v in rng.random(n) < 0.6] if wins else None


def episode_dict(returns: list[float], wins: list[bool] | None) -> dict[str, list]:
    values: dict[str, list] = {"return": returns, "length": [25.0] * len(returns)}
    if wins is not None:
        values["win"] = wins
    return values


def write_folder(
    root: Path,
    algorithm: str,
    env: str,
    seed: int,
    evaluations: list[Evaluation],
    final: tuple[list[float], list[bool] | None] | None,
    protocol: str = "magpo",
    version: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> Path:
    """A run folder as hcmarl fit writes it: metrics.csv, config.yaml, evaluations.jsonl and final_eval.json.

    ``final`` None writes an older run's final_eval.json (means only, no protocol or episodes).
    """
    folder = root / algorithm / env.replace("/", "_") / f"seed{seed}" / f"version_{version}"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "frames", "eval/return"])
        writer.writeheader()
        for epoch, (frames, returns, _) in enumerate(evaluations):
            writer.writerow({"epoch": epoch, "frames": frames, "eval/return": statistics.fmean(returns)})
    data = {"env": env} | ({"env_kwargs": env_kwargs} if env_kwargs else {})
    config = {"seed_everything": seed, "trainer": {"logger": {"init_args": {"name": f"{algorithm}/{env}"}}}, "data": data}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [
        {
            "iteration": 10 * (i + 1),
            "frames": frames,
            "elapsed_time": 1.5 * (i + 1),
            "steps_per_second": 1000.0 + i,
            "episodes": {"eval": episode_dict(returns, wins), "eval/guider": episode_dict([0.0] * len(returns), wins)},
        }
        for i, (frames, returns, wins) in enumerate(evaluations)
    ]
    (folder / "evaluations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    last_frames = evaluations[-1][0]
    if final is None:
        summary: dict[str, Any] = {"eval/return": statistics.fmean(evaluations[-1][1]), "frames": last_frames}
    else:
        returns, wins = final
        summary = {
            "eval/return": statistics.fmean(returns),
            "frames": last_frames,
            "protocol": protocol,
            "score": statistics.fmean(returns),
            "score_metric": "eval/return",
            "score_rule": "a sentence",
            "score_frames": last_frames,
            "episodes": {"eval": episode_dict(returns, wins)},
        }
    (folder / "final_eval.json").write_text(json.dumps(summary))
    return folder


def make_run(root: Path, rng: np.random.Generator, algorithm: str, env: str, seed: int, wins: bool, n: int = 4, **kwargs: Any) -> Path:
    evaluations = [(100 * (i + 1), *episodes(rng, n, wins)) for i in range(3)]
    return write_folder(root, algorithm, env, seed, evaluations, episodes(rng, 10 * n, wins), **kwargs)


def read_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("task", "env_kwargs", "names"),
    [
        ("coordsum/3x10", None, ("coordsum", "3x10-30-v0")),
        ("coordsum/3x30", None, ("coordsum", "3x30-50-v0")),
        ("coordsum/5x20", None, ("coordsum", "5x20-80-v0")),
        ("coordsum/8x15", None, ("coordsum", "8x15-100-v0")),
        ("smax/3s5z", None, ("smax", "3s5z")),
        ("mpe/simple_spread_v3", {"max_cycles": 25}, ("mpe", "simple_spread_3ag")),
        ("rware/tiny-2ag", None, ("robotwarehouse", "tiny-2ag")),
        ("lbf/8x8-2p-2f-coop", None, ("levelbasedforaging", "8x8-2p-2f-coop")),
        ("connector/con-5x5x3a", None, ("connector", "con-5x5x3a")),
        ("vmas/balance", None, ("vmas", "balance")),
    ],
)
def test_names_map_both_ways(task: str, env_kwargs: dict | None, names: tuple[str, str]) -> None:
    assert marl_eval_names(task, env_kwargs) == names
    assert hcmarl_task(*names) == task


def test_names_from_mava_spelling() -> None:
    assert hcmarl_task("CoordSum", "3x10-30-v0") == "coordsum/3x10"
    assert hcmarl_task("Smax", "2s3z") == "smax/2s3z"
    assert hcmarl_task("MaConnector", "con-7x7x5a") == "connector/con-7x7x5a"  # Mava's current name of Connector
    assert hcmarl_task("LevelBasedForaging", "2s-8x8-2p-2f-coop") == "lbf/2s-8x8-2p-2f-coop"
    assert marl_eval_names("mpe/simple_spread_v3", {"N": 5}) == ("mpe", "simple_spread_5ag")
    assert hcmarl_task("MPE", "simple_spread_5ag") == "mpe/simple_spread_v3 (N=5)"  # not the default task
    assert hcmarl_task("Matrax", "Climbing-stateless-v0") == "matrax/climbing-stateless-v0"
    with pytest.raises(RunDataError, match="not family/task"):
        marl_eval_names("coordsum_3x10")


# ---------------------------------------------------------------- export


def test_export_layout_and_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folders = {
        ("mappo", 0): make_run(tmp_path, rng, "mappo", "coordsum/3x10", 0, wins=False),
        ("mappo", 1): make_run(tmp_path, rng, "mappo", "coordsum/3x10", 1, wins=False),
        ("magpo", 0): make_run(tmp_path, rng, "magpo", "smax/3m", 0, wins=True),
    }
    data, notes = marl_eval_export([tmp_path])
    assert notes == []
    assert sorted(data) == ["coordsum", "smax"]
    assert list(data["coordsum"]) == ["3x10-30-v0"] and list(data["coordsum"]["3x10-30-v0"]) == ["mappo"]
    assert sorted(data["coordsum"]["3x10-30-v0"]["mappo"]) == ["seed_0", "seed_1"]
    for (algorithm, seed), folder in folders.items():
        env, task = ("coordsum", "3x10-30-v0") if algorithm == "mappo" else ("smax", "3m")
        run = data[env][task][algorithm][f"seed_{seed}"]
        assert sorted(run) == ["absolute_metrics", "step_0", "step_1", "step_2"]
        for k, line in enumerate(read_lines(folder)):
            step = run[f"step_{k}"]
            assert step["step_count"] == line["frames"] == 100 * (k + 1)
            assert step["return"] == line["episodes"]["eval"]["return"]  # the deployed policy only, per episode
            assert step["steps_per_second"] == [line["steps_per_second"]] and step["elapsed_time"] == line["elapsed_time"]
            wins = line["episodes"]["eval"].get("win")
            assert step.get("win_rate") == (None if wins is None else [100.0 if w else 0.0 for w in wins])
        final = json.loads((folder / "final_eval.json").read_text())["episodes"]["eval"]
        assert run["absolute_metrics"]["return"] == final["return"] and len(final["return"]) == 40
        if "win" in final:
            assert statistics.fmean(run["absolute_metrics"]["win_rate"]) == pytest.approx(100 * sum(final["win"]) / len(final["win"]))
    # every key lower case, as marl-eval reads them
    text = json.dumps(data)
    assert text == text.lower()


def test_export_merges_the_versions_of_a_resumed_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    first = [(100 * (i + 1), *episodes(rng, 4, False)) for i in range(3)]
    second = [(300, *episodes(rng, 4, False)), (400, *episodes(rng, 4, False))]  # 300 repeated after a resume
    write_folder(tmp_path, "mappo", "coordsum/3x30", 0, first, episodes(rng, 40, False), version=0)
    final = episodes(rng, 40, False)
    write_folder(tmp_path, "mappo", "coordsum/3x30", 0, second, final, version=1)
    data, notes = marl_eval_export([tmp_path])
    run = data["coordsum"]["3x30-50-v0"]["mappo"]["seed_0"]
    assert notes == []
    assert [run[f"step_{k}"]["step_count"] for k in range(4)] == [100, 200, 300, 400]
    assert run["step_2"]["return"] == second[0][1]  # the later version's evaluation at 300 frames
    assert run["step_1"]["return"] == first[1][1]
    assert run["absolute_metrics"]["return"] == final[0]  # the latest version's final_eval.json
    (merged,), _ = discover([tmp_path])  # the report's run takes its absolute metric from the same file
    assert merged.absolute == pytest.approx({"eval/return": statistics.fmean(final[0])})


def test_export_of_an_older_final_eval_repeats_the_last_evaluation_and_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    evaluations = [(100 * (i + 1), *episodes(rng, 4, False)) for i in range(2)]
    write_folder(tmp_path, "mappo", "coordsum/3x10", 0, evaluations, None)
    data, notes = marl_eval_export([tmp_path])
    assert data["coordsum"]["3x10-30-v0"]["mappo"]["seed_0"]["absolute_metrics"]["return"] == evaluations[-1][1]
    (note,) = notes
    assert "mappo on coordsum/3x10, seed 0" in note and "repeats its last evaluation, at 200 frames" in note


def test_export_names_the_rules_its_runs_break(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    make_run(tmp_path, rng, "mappo", "coordsum/3x10", 0, wins=False)
    short = [(100, *episodes(rng, 4, False)), (200, *episodes(rng, 4, False))]
    write_folder(tmp_path, "mappo", "coordsum/3x10", 1, short, episodes(rng, 40, False))
    old = tmp_path / "mappo" / "coordsum" / "3x10" / "seed5" / "version_0"  # an older run: no evaluation record
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("epoch,frames,eval/return\n0,100,1.0\n")
    _, notes = marl_eval_export([tmp_path])
    assert any(n.startswith(f"{old}: no evaluations.jsonl") for n in notes)
    assert any("coordsum/3x10-30-v0/mappo/seed_1: has 2 evaluations" in n and "lacks step_2" in n for n in notes)


def test_export_without_evaluation_records_is_one_clear_error(tmp_path: Path) -> None:
    old = tmp_path / "mappo" / "coordsum" / "3x10" / "seed0" / "version_0"
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("epoch,frames,eval/return\n0,100,1.0\n")
    with pytest.raises(RunDataError, match="no hcmarl run folder with evaluations.jsonl"):
        marl_eval_export([tmp_path])


def test_export_names_algorithms_by_their_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    make_run(tmp_path, rng, "mappo", "coordsum/3x10", 0, wins=False)
    make_run(tmp_path, rng, "magpo", "coordsum/3x10", 0, wins=False)
    data, _ = marl_eval_export([tmp_path], {"magpo": "MAGPO (paper)"})
    assert sorted(data["coordsum"]["3x10-30-v0"]) == ["magpo (paper)", "mappo"]
    assert data["coordsum"]["3x10-30-v0"]["magpo (paper)"] == marl_eval_export([tmp_path])[0]["coordsum"]["3x10-30-v0"]["magpo"]


# ---------------------------------------------------------------- import


def test_round_trip_keeps_curves_and_absolute_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    folders = [make_run(tmp_path / "runs", rng, "magpo", "smax/3m", seed, wins=True) for seed in (0, 1)]
    file, software, notes = write_marl_eval([tmp_path / "runs"], tmp_path / "results.json")
    assert notes == [] and software is None  # no run recorded its software
    runs = sorted(read_marl_eval(file), key=lambda r: r.seed)
    assert [(r.algorithm, r.task, r.seed) for r in runs] == [("magpo", "smax/3m", 0), ("magpo", "smax/3m", 1)]
    for run, folder in zip(runs, folders, strict=True):
        lines = read_lines(folder)
        expected_return = [(float(x["frames"]), statistics.fmean(x["episodes"]["eval"]["return"])) for x in lines]
        expected_win = [(float(x["frames"]), sum(x["episodes"]["eval"]["win"]) / len(x["episodes"]["eval"]["win"])) for x in lines]
        np.testing.assert_allclose(run.curves["eval/return"], expected_return)
        np.testing.assert_allclose(run.curves["eval/win_rate"], expected_win)  # back to a fraction
        final = json.loads((folder / "final_eval.json").read_text())["episodes"]["eval"]
        assert run.absolute == pytest.approx(
            {"eval/return": statistics.fmean(final["return"]), "eval/win_rate": sum(final["win"]) / len(final["win"])}
        )


def mava_file() -> dict[str, Any]:
    """A file as Mava's (and the MAGPO code's) JSON logger writes it: one-value lists of means, win rate in percent."""

    def step(count: int, value: float, win: float) -> dict[str, Any]:
        return {"step_count": count, "elapsed_time": 0.5 * count, "steps_per_second": [900.0], "mean_episode_return": [value], "win_rate": [win]}

    def run(offset: float) -> dict[str, Any]:
        return {
            "absolute_metrics": {"mean_episode_return": [20.0 + offset], "win_rate": [87.5], "steps_per_second": [950.0]},
            "step_0": step(1000, 1.0 + offset, 0.0),
            "step_1": step(2000, 5.0 + offset, 25.0),
            "step_2": step(3000, 9.0 + offset, 50.0),
        }

    return {"CoordSum": {"3x10-30-v0": {"rec_MAGPO": {"seed_0": run(0.0), "seed_1": run(1.0)}}}}


def test_a_mava_file_reads_into_hcmarl_names_and_units(tmp_path: Path) -> None:
    path = tmp_path / "mava.json"
    path.write_text(json.dumps(mava_file()))
    runs = read_marl_eval(path)
    assert [(r.algorithm, r.task, r.seed) for r in runs] == [("rec_magpo", "coordsum/3x10", 0), ("rec_magpo", "coordsum/3x10", 1)]
    assert runs[1].curves["eval/return"] == [(1000.0, 2.0), (2000.0, 6.0), (3000.0, 10.0)]
    assert runs[1].curves["eval/win_rate"] == [(1000.0, 0.0), (2000.0, 0.25), (3000.0, 0.5)]
    assert runs[1].absolute == {"eval/return": 21.0, "eval/win_rate": 0.875}
    assert f"{path} (coordsum/3x10-30-v0/rec_magpo/seed_1)" in runs[1].sources


# ---------------------------------------------------------------- the report


def test_report_puts_imported_and_hcmarl_runs_in_one_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for seed in (0, 1):
        make_run(tmp_path / "runs", rng, "mappo", "coordsum/3x10", seed, wins=False)
    published = tmp_path / "published.json"
    published.write_text(json.dumps(mava_file()))
    out = tmp_path / "report"
    written = report([tmp_path / "runs", published], out, resamples=50, marl_eval=out / "ours.json")
    assert out / "ours.json" in written
    page = (out / "report.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| task | metric |"))
    assert header == "| task | metric | mappo | rec_magpo |"
    row = next(line for line in page.splitlines() if line.startswith("| coordsum/3x10 | eval/return |"))
    assert "-" not in row.split("|")[3:5]  # both algorithms have a cell in the same task's row
    assert "absolute metric" in page  # both sides have one on coordsum/3x10, so the aggregate scores by it
    assert "Raw results in marl-eval's JSON layout" in page
    assert sorted(json.loads((out / "ours.json").read_text())["coordsum"]["3x10-30-v0"]) == ["mappo"]  # only hcmarl's runs


def test_absolute_scores_of_folders_and_imports(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    folders = {seed: make_run(tmp_path / "runs", rng, "mappo", "coordsum/3x10", seed, wins=False) for seed in (0, 1)}
    make_run(tmp_path / "runs", rng, "ctds", "coordsum/3x30", 0, wins=False, protocol="hcmarl")
    published = tmp_path / "published.json"
    published.write_text(json.dumps(mava_file()))
    runs, _ = discover([tmp_path / "runs", published])
    metrics = dict.fromkeys({r.task for r in runs}, "eval/return")
    assert score_rules(runs, metrics) == {"coordsum/3x10": "absolute", "coordsum/3x30": "final"}  # hcmarl protocol: no absolute
    assert score_rules(runs, metrics, "final") == {"coordsum/3x10": "final", "coordsum/3x30": "final"}
    on_3x10 = [r for r in runs if r.task == "coordsum/3x10"]
    scores = absolute_scores(on_3x10, metrics)["coordsum/3x10"]
    expected = [statistics.fmean(json.loads((folders[s] / "final_eval.json").read_text())["episodes"]["eval"]["return"]) for s in (0, 1)]
    np.testing.assert_allclose(scores["mappo"], expected)
    np.testing.assert_allclose(scores["rec_magpo"], [20.0, 21.0])
    with pytest.raises(RunDataError, match="ctds on coordsum/3x30, seed 0") as info:
        absolute_scores(runs, metrics)
    assert "--score auto or final" in str(info.value)


def test_a_run_read_from_a_folder_and_its_export_is_refused(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", np.random.default_rng(7), "mappo", "mamujoco/HalfCheetah-2x3", 0, wins=False)
    file = write_marl_eval([tmp_path / "runs"], tmp_path / "ours.json").file
    (run,) = read_marl_eval(file)
    assert run.task == "mamujoco/halfcheetah-2x3"  # marl-eval lower-cases names...
    with pytest.raises(RunDataError, match=r"mappo on mamujoco/HalfCheetah-2x3, seed 0 is read twice"):
        discover([tmp_path / "runs", file])  # ...and the report spells it as the run folder does


def test_report_command_writes_marl_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(tmp_path / "runs", np.random.default_rng(8), "mappo", "coordsum/3x10", 0, wins=False)
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out), "--resamples", "20", "--marl-eval", str(out / "ours.json"), "--score", "absolute"])
    assert str(out / "ours.json") in capsys.readouterr().out
    (run,) = read_marl_eval(out / "ours.json")
    assert (run.algorithm, run.task, run.seed) == ("mappo", "coordsum/3x10", 0)


def test_the_runs_software_travels_in_a_file_beside_the_marl_eval_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    folders = [make_run(tmp_path / "runs", rng, "magpo", "smax/3m", seed, wins=True) for seed in (0, 1)]
    record = {"hcmarl": "0.1.0 (git 0123456789ab)", "python": "3.11.7", "torch": "2.13.0+cpu", "jaxmarl": "0.2.0"}
    final = folders[0] / "final_eval.json"
    final.write_text(json.dumps(json.loads(final.read_text()) | {"software": record}))  # seed 1: a run from before the record
    file, beside, _ = write_marl_eval([tmp_path / "runs"], tmp_path / "out" / "results.json")
    assert beside == software_file(file) == tmp_path / "out" / "results.software.json"
    assert json.loads(beside.read_text()) == {"smax": {"3m": {"magpo": {"seed_0": record}}}}
    assert "software" not in json.dumps(json.loads(file.read_text()))  # the marl-eval file keeps marl-eval's layout
    runs = sorted(read_marl_eval(file), key=lambda r: r.seed)
    assert [r.software for r in runs] == [record, {}]

    report([file], tmp_path / "page", resamples=20)  # the page from the file alone lists what trained each run
    page = (tmp_path / "page" / "report.md").read_text()
    assert f"| smax/3m | magpo | 0 | {describe(record)} |" in page
    assert "| smax/3m | magpo | 1 | not recorded |" in page

    runs, notes = discover([file, beside])  # a shell glob gives both: the records are not read as runs
    assert len(runs) == 2 and notes == [f"{beside}: the software records of a marl-eval file, read with that file, not as runs"]

    final.write_text(json.dumps({k: v for k, v in json.loads(final.read_text()).items() if k != "software"}))
    assert write_marl_eval([tmp_path / "runs"], file).software is None
    assert not beside.exists()  # no run recorded any: a stale file is removed, not left to mislabel the runs

    beside.write_text(json.dumps({"smax": {"3m": {"magpo": {"seed_0": {"torch": 2}}}}}))
    with pytest.raises(RunDataError, match="results.software.json, smax/3m/magpo/seed_0: 'software' is"):
        read_marl_eval(file)
    beside.write_text(json.dumps({"smax": ["3m"]}))
    with pytest.raises(RunDataError, match="is not laid out as"):
        read_marl_eval(file)


def test_labels_of_imported_runs_leave_the_export_of_the_run_folders_alone(tmp_path: Path) -> None:
    make_run(tmp_path / "runs", np.random.default_rng(10), "mappo", "coordsum/3x10", 0, wins=False)
    published = tmp_path / "published.json"
    published.write_text(json.dumps(mava_file()))
    out = tmp_path / "report"
    labels = {"rec_magpo": "magpo (published)", "mappo": "mappo (ours)"}
    report([tmp_path / "runs", published], out, resamples=20, marl_eval=out / "ours.json", labels=labels)
    assert "| task | metric | magpo (published) | mappo (ours) |" in (out / "report.md").read_text()
    assert sorted(json.loads((out / "ours.json").read_text())["coordsum"]["3x10-30-v0"]) == ["mappo (ours)"]
    with pytest.raises(ConfigError, match="--label 'rec_mappo': no run has that algorithm"):
        report([tmp_path / "runs", published], out, resamples=20, marl_eval=out / "ours.json", labels={"rec_mappo": "mappo"})
