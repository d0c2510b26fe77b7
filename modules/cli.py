"""The ``hcmarl`` command: Lightning's CLI over ``MARLModule`` and ``OnPolicyDataModule``.

``hcmarl fit|validate|bench --config recipes/<algorithm>/<family>_<task>.yaml [overrides]``.
Every run starts from ``recipes/base.yaml`` (the shared trainer block) and a logger name derived
from the recipe's path, put before the user's arguments (:mod:`hcmarl.modules.base_config`), so a
recipe holds only what differs from the base. Recipes may use OmegaConf interpolation
(``${data.env}``), resolved after command-line overrides. ``--render [--render_dir DIR]`` records
an episode video after each evaluation; a W&B logger's run is grouped under the recipe. Two more
subcommands have their own parsers and no Lightning CLI: ``hcmarl sweep`` trains a recipe over seeds x override values
(:mod:`hcmarl.sweep`) and ``hcmarl report`` writes tables, figures and a page from finished runs
(:mod:`hcmarl.report`). Errors a user can fix end with one message and exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import ActionYesNo, set_parsing_settings
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import DDPStrategy

from hcmarl.datamodules.onpolicy import OnPolicyDataModule, iterations_for
from hcmarl.errors import ConfigError, HcmarlError
from hcmarl.modules.base_config import config_files, with_base


def _seed(seed_everything: Any) -> int:
    return 0 if isinstance(seed_everything, bool) or seed_everything is None else int(seed_everything)


DDP_NAMES: dict[str, Literal["popen", "spawn"]] = {"ddp": "popen", "ddp_spawn": "spawn"}


class HcmarlTrainer(Trainer):
    """Lightning's Trainer plus ``bench``, with DDP set up for per-role updates.

    Each role's backward pass touches only that role's parameters, so ``strategy: ddp``
    (or ``ddp_spawn``) becomes DDP with ``find_unused_parameters=True``.
    """

    callbacks: list[Callback]  # set by Lightning's callback connector, declared here for type checkers

    def __init__(self, *args: Any, strategy: Any = "auto", **kwargs: Any) -> None:
        if isinstance(strategy, str) and strategy in DDP_NAMES:
            strategy = DDPStrategy(find_unused_parameters=True, start_method=DDP_NAMES[strategy])
        if kwargs.get("enable_progress_bar") is False and kwargs.get("callbacks"):
            kwargs["callbacks"] = [c for c in kwargs["callbacks"] if not isinstance(c, ProgressBar)]
        super().__init__(*args, strategy=strategy, **kwargs)

    @property
    def log_dir(self) -> str | None:
        """The run folder (``config.yaml``, ``final_eval.json``, videos). Lightning gives a W&B logger its whole
        ``save_dir``, shared by every run; here a W&B run gets ``<save_dir>/<project>/<run id>``, the folder its
        checkpoints go to."""
        from hcmarl.modules.loggers import WandbLogger

        logger = self.loggers[0] if self.loggers else None
        if not isinstance(logger, WandbLogger):
            return super().log_dir
        run_dir = os.path.join(str(logger.save_dir), str(logger.name), str(logger.version)) if self.is_global_zero else None
        return self.strategy.broadcast(run_dir)

    def bench(self, model: LightningModule, datamodule: OnPolicyDataModule, iterations: int = 5, warmup: int = 1) -> dict[str, float]:
        """Run ``warmup + iterations`` iterations and print collection, update and end-to-end frames/s.

        ``data.total_frames`` is replaced by the frames of those iterations. Frames count over all ranks, as in
        training: under DDP, ``frames_per_iteration`` is ``world_size * num_envs * rollout_steps`` and the frames/s
        are global (all ranks' frames over rank zero's seconds). The figures are returned and kept as
        ``self.bench_result``.

        Args:
            iterations: measured iterations.
            warmup: iterations run first and not measured.
        """
        from hcmarl.modules.callbacks import ThroughputMeter

        meter = ThroughputMeter()
        self.callbacks = [c for c in self.callbacks if not isinstance(c, ModelCheckpoint)] + [meter]
        datamodule.total_frames = (warmup + iterations) * self.num_nodes * self.num_devices * datamodule.frames_per_batch
        self.check_val_every_n_epoch = None
        self.limit_val_batches = 0
        self.fit(model, datamodule=datamodule)
        measured = meter.records[warmup:]
        frames = datamodule.global_frames_per_batch
        collect = sum(r["collect_s"] for r in measured) / len(measured)
        update = sum(r["update_s"] for r in measured) / len(measured)
        walls = [r["wall_s"] for r in measured if not math.isnan(r["wall_s"])]
        wall = sum(walls) / len(walls) if walls else collect + update
        result = {
            "frames_per_iteration": frames,
            "collect_s": collect,
            "update_s": update,
            "iteration_s": wall,
            "collect_fps": frames / collect,
            "update_fps": frames / update,
            "end_to_end_fps": frames / wall,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in meter.records),
        }
        self.bench_result = result
        if self.is_global_zero:
            ranks = f" over {self.world_size} ranks" if self.world_size > 1 else ""
            print(f"\nhcmarl bench: {datamodule.env_name}, {frames} frames per iteration{ranks}, {len(measured)} measured iterations")
            for key, value in result.items():
                print(f"  {key:>22}: {value:,.3f}")
        return result


class HcmarlCLI(LightningCLI):
    """LightningCLI with frames-based run length, interpolation after overrides, a final evaluation,
    episode videos (``--render``) and W&B runs grouped by recipe."""

    trainer: HcmarlTrainer  # what LightningCLI builds from trainer_class, declared here for type checkers
    datamodule: OnPolicyDataModule

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["bench"] = {"model", "datamodule"}
        return {k: v for k, v in commands.items() if k in ("fit", "validate", "bench")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the iterations of one process; once the world size is known, the datamodule's setup sets max_epochs for it
        parser.link_arguments(("data.total_frames", "data.num_envs", "data.rollout_steps"), "trainer.max_epochs", compute_fn=iterations_for)
        parser.link_arguments("data.eval_every", "trainer.check_val_every_n_epoch")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_seed)
        parser.add_argument(
            "--render",
            action=ActionYesNo,
            default=False,
            help="After each evaluation, record one episode of the deployment policy on one env as a video (vmas, mpe envs).",
        )
        parser.add_argument("--render_dir", type=str | None, default=None, help="Folder for --render's videos (default: videos/ in the run folder).")

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        """Set up the parsers, remembering whether the words parsed start with a subcommand."""
        self._has_subcommands = add_subcommands
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the words with the base config put before them (:func:`hcmarl.modules.base_config.with_base`), and
        remember the user's ``--config`` files (``recipe_files``): resolving a recipe's interpolation drops them
        from the parsed config."""
        self.recipe_files: list[str] = []
        if args is not None and not isinstance(args, (list, tuple)):  # a dict or Namespace: a whole config, no base added
            return super().parse_arguments(parser, args)
        words = sys.argv[1:] if args is None else list(args)
        self.recipe_files = config_files(words)
        words = with_base(words, self.subcommands() if self._has_subcommands else None)
        if args is None:  # the words are sys.argv's: Lightning's warning about args given beside sys.argv does not apply
            self.config = parser.parse_args(words)
        else:
            super().parse_arguments(parser, words)

    def before_fit(self) -> None:
        # total_frames counts all ranks: refuse a budget under one iteration before any rank starts
        self.datamodule.check_budget(self.trainer.num_nodes * self.trainer.num_devices)
        self._prepare_run()

    def before_validate(self) -> None:
        self._prepare_run()

    def before_bench(self) -> None:
        self._prepare_run()

    def _refuse_used_run_folder(self) -> None:
        """Stop before Lightning's CSV logger deletes the ``metrics.csv`` of a run already in its folder.

        It happens when a run's saved ``config.yaml`` is used again, since a sweep pins the logger's ``version``.
        """
        from lightning.pytorch.loggers import CSVLogger

        for logger in self.trainer.loggers if self.trainer.is_global_zero else ():
            metrics = os.path.join(logger.log_dir, "metrics.csv") if isinstance(logger, CSVLogger) else None
            if metrics and os.path.exists(metrics):
                raise ConfigError(
                    f"the run folder {logger.log_dir} already holds a run's metrics.csv, which Lightning's CSV logger "
                    "would delete; pass --trainer.logger.init_args.version null for a new version "
                    "(to resume, add --ckpt_path), or move that folder away"
                )

    def _prepare_run(self) -> None:
        """Guard the run folder; add the episode-video callback for ``--render``; give a W&B logger its recipe group, seed and config."""
        from hcmarl.modules.callbacks import EpisodeVideo
        from hcmarl.modules.loggers import WandbLogger, recipe_name

        self._refuse_used_run_folder()
        config = self.config[self.subcommand]
        if config.render_dir is not None and not config.render:
            raise ConfigError("--render_dir is set without --render; add --render to record an episode video")
        if config.render:
            self.trainer.callbacks.append(EpisodeVideo(config.render_dir))
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                resolved = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))
                logger.describe_run(recipe_name(self.recipe_files, self.datamodule.env_name), config.seed_everything, resolved)

    def after_fit(self) -> None:
        """Evaluate the final policy, print the result and write ``final_eval.json`` into the run folder; close W&B runs."""
        try:
            if not self.trainer.interrupted:
                self._final_evaluation()
        finally:
            self._finish_loggers()

    def after_validate(self) -> None:
        self._finish_loggers()

    def after_bench(self) -> None:
        self._finish_loggers()

    def _finish_loggers(self) -> None:
        """Close this run's W&B runs: Lightning leaves them open, and a later run in the same process would log into them."""
        from hcmarl.modules.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.finish()

    def _final_evaluation(self) -> None:
        results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero or not results:
            return
        metrics = {k: float(v) for k, v in results[0].items()}
        metrics["frames"] = self.datamodule.frames  # over all ranks
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "final_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        shown = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k.startswith("eval/"))
        ranks = f" (over {self.trainer.world_size} ranks)" if self.trainer.world_size > 1 else ""
        print(f"\nFinal evaluation of the deployment policy after {metrics['frames']:,} frames{ranks}: {shown}")
        metrics_file = run_dir / "metrics.csv"
        logged = f"; metrics in {metrics_file}" if metrics_file.exists() else ""
        print(f"Results written to {run_dir / 'final_eval.json'}{logged}")


def build_cli(args: list[str] | None = None, run: bool = True) -> HcmarlCLI:
    """The CLI object (``run=False`` only parses and instantiates, for tests and Python use)."""
    from hcmarl.datamodules import OnPolicyDataModule
    from hcmarl.modules import MARLModule
    from hcmarl.modules.callbacks import FramesProgressBar

    # recipes write ${data.env}, not ${fit.data.env}: interpolation is relative to the subcommand
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return HcmarlCLI(
        MARLModule,
        OnPolicyDataModule,
        trainer_class=HcmarlTrainer,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf+"},
        trainer_defaults={
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "callbacks": [FramesProgressBar(), ModelCheckpoint(save_on_train_epoch_end=True, save_last=True)],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "hcmarl"}},
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def user_error(err: BaseException) -> HcmarlError | None:
    """The ``HcmarlError`` behind ``err``, if any: jsonargparse wraps errors raised by a nested block's constructor."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, HcmarlError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Console entry point: ``report`` and ``sweep`` go to their own parsers, the rest to the Lightning CLI.

    Errors a user can fix print one line and exit with code 2.
    """
    torch.set_float32_matmul_precision("high")
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["report"]:
            from hcmarl.report.cli import main as report_main

            report_main(argv[1:])
        elif argv[:1] == ["sweep"]:
            from hcmarl.sweep import main as sweep_main

            sweep_main(argv[1:])
        else:
            build_cli(args)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"hcmarl: error: {cause}", file=sys.stderr)
        sys.exit(2)
    finally:
        # Lightning leaves the DDP process group alive; gloo's threads then abort the process at exit
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
