"""Episode videos: ``hcmarl validate --ckpt_path ... --render`` and the video writer (issue 7)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from hcmarl.video import write_video

pytest.importorskip("imageio")

FIT = ["--data.total_frames", "32"]  # one iteration of the tiny settings (4 envs x 8 steps)
VIDEO_LINE = re.compile(r"Episode video: (\S+) \((\d+) frames: (\d+) steps")
HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


def read_frames(path: Path) -> np.ndarray:
    """The frames of a video file, ``[T, H, W, 3]``."""
    import imageio.v3 as iio

    if path.suffix == ".mp4":
        return iio.imread(path, plugin="FFMPEG", index=None)
    return iio.imread(path, index=None)[..., :3]


def shown_frames(path: Path, fps: int = 10) -> int:
    """Frames a video shows: an MP4's frames; for a GIF, whose writer merges repeated frames into longer
    ones, its total duration in frames."""
    if path.suffix == ".mp4":
        return len(read_frames(path))
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        milliseconds = sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif))
    return round(milliseconds * fps / 1000)


def printed_video(capsys: pytest.CaptureFixture) -> tuple[Path, int, int]:
    """The one video the last command printed: its path, frame count and step count."""
    (match,) = VIDEO_LINE.findall(capsys.readouterr().out)
    return Path(match[0]), int(match[1]), int(match[2])


def check_video(path: Path, frames: int) -> np.ndarray:
    """A non-empty file showing ``frames`` frames (at 10 fps) that are not blank and not all the same."""
    assert path.is_file() and path.stat().st_size > 0
    assert shown_frames(path) == frames
    video = read_frames(path)
    assert video.shape[-1] == 3
    assert all(frame.std() > 0 for frame in video)
    assert np.abs(np.diff(video.astype(np.int16), axis=0)).sum() > 0
    return video


def test_validate_renders_one_episode_of_a_checkpoint(run_cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    max_steps = 8  # vmas/simple_spread never terminates: every episode lasts max_steps
    env = ["--data.env_kwargs", f"{{max_steps: {max_steps}}}"]
    run_cli("fit", "mappo/vmas_simple_spread", *FIT, *env)
    (ckpt,) = tmp_path.rglob("last.ckpt")
    capsys.readouterr()
    run_cli("validate", "mappo/vmas_simple_spread", *env, "--ckpt_path", str(ckpt), "--render", "--render_dir", str(tmp_path / "videos"))
    path, frames, steps = printed_video(capsys)
    assert steps == max_steps and frames == max_steps + 1  # the first observation, then one frame per step
    assert path.parent == tmp_path / "videos" and path.name.startswith("vmas-simple_spread_32frames.")
    assert path.suffix == (".mp4" if HAS_FFMPEG else ".gif")
    check_video(path, frames)


def test_fit_renders_the_final_evaluation_of_an_mpe_env_in_the_run_folder(run_cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_cli("fit", "mappo/mpe_simple_spread_v3", *FIT, "--data.env_kwargs", "{max_cycles: 6}", "--render")
    path, frames, steps = printed_video(capsys)
    assert steps == 6 and frames == 7
    assert path.parent.name == "videos" and (path.parent.parent / "metrics.csv").is_file()
    check_video(path, frames)


@pytest.mark.parametrize("video_format", ["gif", pytest.param("mp4", marks=pytest.mark.skipif(not HAS_FFMPEG, reason="needs imageio-ffmpeg"))])
def test_write_video_keeps_every_frame(video_format: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [np.full((32, 48, 3), 40 * i, dtype=np.uint8) + rng.integers(0, 10, (32, 48, 3), dtype=np.uint8) for i in range(5)]
    path = write_video(frames, tmp_path / "out" / "episode.anything", video_format=video_format)
    assert path == tmp_path / "out" / f"episode.{video_format}"
    video = check_video(path, len(frames))
    assert video.shape == (len(frames), 32, 48, 3)
    means = video.reshape(len(frames), -1).mean(axis=1)
    assert np.all(np.diff(means) > 20)  # the frames keep their order


def test_render_names_the_families_that_render(run_cli, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("validate", "mappo/coordsum_3x10", "--render")
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "coordsum/3x10" in message and "vmas, mpe" in message


def test_render_dir_needs_render(run_cli, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("validate", "mappo/vmas_simple_spread", "--render_dir", "videos")
    assert exit_info.value.code == 2
    assert "--render" in capsys.readouterr().err
