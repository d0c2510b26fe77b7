"""Log a report's figures and page to Weights & Biases (issue 7: "the plots of (c) logged"), offline without an API key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hcmarl.errors import MissingDependencyError
from hcmarl.wandb_credentials import wandb_offline_by_default


def log_report(files: Sequence[Path], project: str, name: str | None = None) -> Path:
    """One W&B run (``job_type="report"``) holding every PNG of ``files`` as an image under ``report/<stem>`` and the
    Markdown page as a file. Offline when no API key is set (``hcmarl.wandb_credentials``)
    or ``WANDB_MODE=offline``; returns the run's local folder."""
    try:
        import wandb
    except ImportError as err:
        raise MissingDependencyError("wandb", "wandb", "hcmarl report --wandb") from err
    offline = wandb_offline_by_default()
    pages = [Path(f) for f in files if Path(f).suffix == ".md"]
    run = wandb.init(
        project=project,
        name=name,
        job_type="report",
        mode="offline" if offline else "online",
        dir=str(pages[0].parent if pages else Path(files[0]).parent),
    )
    run.log({f"report/{Path(f).stem}": wandb.Image(str(f)) for f in files if Path(f).suffix == ".png"})
    for page in pages:
        run.save(str(page), base_path=str(page.parent), policy="now")
    folder = Path(run.dir).parent
    run.finish()
    return folder
