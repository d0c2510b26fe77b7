"""Writing an episode's frames as a video file: MP4 when imageio-ffmpeg is installed, else an animated GIF.

Both formats go through ``imageio`` (the ``video`` extra: ``pip install 'hcmarl[video]'``
brings imageio and imageio-ffmpeg). A GIF is written by Pillow, which merges consecutive
identical frames into one longer frame.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from hcmarl.errors import MissingDependencyError

VideoFormat = Literal["mp4", "gif"]


def best_video_format() -> VideoFormat:
    """``mp4`` when imageio-ffmpeg is installed, else ``gif``."""
    return "mp4" if importlib.util.find_spec("imageio_ffmpeg") is not None else "gif"


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10, video_format: VideoFormat | None = None) -> Path:
    """Write RGB ``frames`` (uint8 ``[H, W, 3]``, all one size) to ``path`` and return the file written.

    Args:
        frames: the images, in order.
        path: the file; its suffix is replaced by the format's (``.mp4`` or ``.gif``).
        fps: frames per second.
        video_format: ``mp4`` or ``gif``; None: :func:`best_video_format`.
    """
    if importlib.util.find_spec("imageio") is None:
        raise MissingDependencyError("imageio", "video", "Writing an episode video")
    import imageio.v3 as iio

    if not frames:
        raise ValueError("write_video: no frames to write")
    video_format = video_format or best_video_format()
    path = Path(path).with_suffix(f".{video_format}")
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(frames)
    if video_format == "mp4":
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            raise MissingDependencyError("imageio-ffmpeg", "video", "Writing an MP4 video")
        # H.264 needs even sizes; a block of 2 keeps the frames' own size when it is even
        iio.imwrite(path, stack, plugin="FFMPEG", fps=fps, macro_block_size=2)
    else:
        iio.imwrite(path, stack, extension=".gif", duration=1000 / fps, loop=0)
    return path
