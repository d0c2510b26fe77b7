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

import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ActionYesNo, set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hcmarl.datamodules.onpolicy import OnPolicyDataModule, iterations_for
from hcmarl.errors import STOPPED_BY_SIGTERM, ConfigError, HcmarlError, SweepStopped
from hcmarl.evaluation import check_evaluation_actions
from hcmarl.modules.base_config import config_files, with_base
from hcmarl.modules.checkpoint_check import check_checkpoint
from hcmarl.modules.trainer import HcmarlTrainer
from hcmarl.provenance import software_versions


def _interval_placeholder(eval_every: int | None) -> int:
    """What the trainer is built with before the datamodule's setup sets its protocol's interval (an int: Lightning
    refuses None beside its default ``val_check_interval``)."""
    return 1 if eval_every is None else eval_every


def _seed(seed_everything: Any) -> int:
    return 0 if isinstance(seed_everything, bool) or seed_everything is None else int(seed_everything)


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
        # the datamodule sets the interval from its evaluation protocol at setup; linked so that it is not set here too
        parser.link_arguments("data.eval_every", "trainer.check_val_every_n_epoch", compute_fn=_interval_placeholder)
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

    def instantiate_classes(self) -> None:
        """Build the model, datamodule and trainer, then refuse evaluation actions that contradict the protocol."""
        super().instantiate_classes()
        check_evaluation_actions(self.datamodule.protocol, self.model.deterministic_eval)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (:func:`check_checkpoint`) before Lightning loads it, here, for its hyperparameters."""
        if self.config.get("subcommand"):
            check_checkpoint(self.config[self.config.subcommand].get("ckpt_path"), self.config.subcommand)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        # total_frames counts all ranks: refuse a budget under one iteration before any rank starts
        ranks = self.trainer.num_nodes * self.trainer.num_devices
        self.datamodule.check_budget(ranks)
        dm = self.datamodule
        if self.trainer.is_global_zero:
            print(dm.protocol.describe(iterations_for(dm.total_frames, dm.num_envs, dm.rollout_steps, ranks)))
        self._continue_run_folder()
        self._prepare_run()
        self._software = software_versions(dm.env_name)  # the code this process imported, not the checkout's at the end

    def before_validate(self) -> None:
        self._prepare_run()

    def before_bench(self) -> None:
        self._prepare_run()

    def _continue_run_folder(self) -> None:
        """A fit resumed from ``<run folder>/checkpoints/<name>.ckpt`` continues that run folder, or says why not and
        starts a new one (:func:`hcmarl.modules.loggers.continue_run`)."""
        from hcmarl.modules.loggers import continue_run

        checkpoint = self.config[self.subcommand].get("ckpt_path")
        if not isinstance(checkpoint, (str, os.PathLike)) or not os.path.isfile(checkpoint):
            return  # no checkpoint, or one of Lightning's names ("last", "best"...)
        self.trainer.loggers, message = continue_run(self.trainer.loggers, checkpoint)
        if message and self.trainer.is_global_zero:
            print(message)

    def _refuse_used_run_folder(self) -> None:
        """Stop before Lightning's CSV logger deletes the ``metrics.csv`` of a run already in its folder.

        It happens when a run's saved ``config.yaml`` is used again, since a sweep pins the logger's ``version``. A
        fit resumed into its own run folder passes: its logger continues the file (:meth:`_continue_run_folder`).
        """
        from lightning.pytorch.loggers import CSVLogger

        from hcmarl.modules.loggers import CSVLogger as ContinuingCSVLogger

        for logger in self.trainer.loggers if self.trainer.is_global_zero else ():
            if not isinstance(logger, CSVLogger) or (isinstance(logger, ContinuingCSVLogger) and logger.continues):
                continue
            if os.path.exists(os.path.join(logger.log_dir, "metrics.csv")):
                raise ConfigError(
                    f"the run folder {logger.log_dir} already holds a run's metrics.csv, which Lightning's CSV logger "
                    "would delete; pass --trainer.logger.init_args.version null for a new version, "
                    f"resume that run with --ckpt_path {os.path.join(logger.log_dir, 'checkpoints', 'last.ckpt')}, "
                    "or move that folder away"
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
        """Score the run by its evaluation protocol (``EvaluationRecorder.final_evaluation``), print the score and
        write it into ``final_eval.json`` in the run folder, with the scored evaluation's means and episodes and the
        software that trained the run (``hcmarl.provenance``, recorded when fit began)."""
        from hcmarl.modules.evaluation import EvaluationRecorder, evaluation_metrics

        recorder = next(c for c in self.trainer.callbacks if isinstance(c, EvaluationRecorder))
        scored = recorder.final_evaluation(self.trainer, self.model, self.datamodule)
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero or scored is None:
            return
        score, evaluation = scored
        for logger in self.trainer.loggers:
            logger.log_metrics({"final/score": score.value}, step=self.datamodule.iterations_done)
            logger.save()
        metrics: dict[str, Any] = evaluation_metrics(evaluation)
        metrics["frames"] = self.datamodule.frames  # over all ranks
        metrics |= {
            "protocol": self.datamodule.protocol.name,
            "score": score.value,
            "score_metric": score.metric,
            "score_rule": score.rule,
            "score_frames": score.frames,
            "episodes": evaluation.episodes,
            "software": self._software,
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "final_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        shown = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k.startswith("eval/"))
        ranks = f" (over {self.trainer.world_size} ranks)" if self.trainer.world_size > 1 else ""
        print(f"\nFinal evaluation after {metrics['frames']:,} frames{ranks}: {shown}")
        print(f"Score: {score.metric} = {score.value:.4g}, {score.rule}")
        metrics_file = run_dir / "metrics.csv"
        logged = f"; metrics in {metrics_file}" if metrics_file.exists() else ""
        print(f"Results written to {run_dir / 'final_eval.json'}{logged}")


def build_cli(args: list[str] | None = None, run: bool = True) -> HcmarlCLI:
    """The CLI object (``run=False`` only parses and instantiates, for tests and Python use)."""
    from hcmarl.datamodules import OnPolicyDataModule
    from hcmarl.modules import MARLModule
    from hcmarl.modules.callbacks import FramesProgressBar, SigtermReport
    from hcmarl.modules.evaluation import EvaluationRecorder

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
            "callbacks": [
                FramesProgressBar(),
                ModelCheckpoint(save_on_train_epoch_end=True, save_last=True),
                EvaluationRecorder(),
                SigtermReport(),
            ],
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


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet_third_party() -> None:
    """Silence what libraries print on every run that tells an hcmarl user nothing about their run, each message by
    its text (all other warnings and log lines still show). The env packages' notices are dropped where those packages
    are used, in env worker processes too (:data:`hcmarl.envs.base.ENV_PACKAGE_NOISE`)."""
    # Lightning advertises its litlogger package whenever a Trainer gets a logger that is not a LitLogger
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_litlogger_tip)
    # Lightning's own pytree helper asks isinstance(spec, LeafSpec), which torch >= 2.10 deprecates: Lightning's code
    # to change, not the user's (printed twice a run, at the first training and the first evaluation step)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


OWN_SUBCOMMANDS = {
    "sweep": "Train a recipe over seeds x override values.",
    "report": "Write tables, figures and a page from finished runs.",
}
"""The subcommands with parsers of their own (not the Lightning CLI's), as ``hcmarl --help`` lists them."""


def _top_level_help(argv: list[str]) -> bool:
    """Whether ``argv`` asks for ``hcmarl --help`` (a help flag before any subcommand)."""
    subcommands = set(HcmarlCLI.subcommands()) | set(OWN_SUBCOMMANDS)
    before = argv[: next((i for i, word in enumerate(argv) if word in subcommands), len(argv))]
    return "-h" in before or "--help" in before


def print_help(args: list[str] | None) -> None:
    """``hcmarl --help``: the Lightning CLI's help with ``OWN_SUBCOMMANDS`` added to its usage line and subcommand list
    (``args`` as ``build_cli``'s: None reads ``sys.argv``)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        build_cli(args)
    lines = text.getvalue().splitlines()
    names = ",".join(OWN_SUBCOMMANDS)
    lines = [re.sub(r"\{(fit,[^}]*)\}", rf"{{\1,{names}}}", line, count=1) if line.startswith("usage:") else line for line in lines]
    last = max((i for i, line in enumerate(lines) if re.match(r"^ {2,}\w+ {2,}\S", line)), default=None)
    entry = re.match(r"^( +\w+ +)", lines[last]) if last is not None else None
    width = len(entry.group(1)) if entry else 24
    own = [f"    {name:<{width - 4}}{description}" for name, description in OWN_SUBCOMMANDS.items()]
    if last is None:
        lines += ["", "Subcommands with their own options (add --help after one):", *own]
    else:
        end = last + 1
        while end < len(lines) and lines[end].startswith(" " * width) and lines[end].strip():  # the entry's wrapped lines
            end += 1
        lines[end:end] = own
    sys.stdout.write("\n".join(lines) + "\n")  # one write, as argparse's help: a reader that stops early (| head) gets no broken pipe


def main(args: list[str] | None = None) -> None:
    """Console entry point: ``report`` and ``sweep`` go to their own parsers, the rest to the Lightning CLI.

    Errors a user can fix print one line and exit with code 2; a fit stopped by SIGTERM (``SigtermReport`` says
    how far it got) exits with ``STOPPED_BY_SIGTERM``, as does a sweep stopped by SIGTERM (:class:`SweepStopped`).
    """
    torch.set_float32_matmul_precision("high")
    quiet_third_party()
    argv = sys.argv[1:] if args is None else args
    try:
        if _top_level_help(argv):
            print_help(args)
        elif argv[:1] == ["report"]:
            from hcmarl.report.cli import main as report_main

            report_main(argv[1:])
        elif argv[:1] == ["sweep"]:
            from hcmarl.sweep import main as sweep_main

            sweep_main(argv[1:])
        else:
            build_cli(args)
    except SIGTERMException:
        sys.exit(STOPPED_BY_SIGTERM)
    except SweepStopped as err:
        print(f"hcmarl sweep: {err}", file=sys.stderr)
        sys.exit(STOPPED_BY_SIGTERM)
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
