"""Worker processes for multi-agent MuJoCo (DESIGN.md, "Scale": CPU-bound envs step in worker processes).

A :class:`WorkerPool` splits a batch of raw envs into contiguous slices, one per process, and
offers the same interface as ``hcmarl.envs.mamujoco.LocalBatch``. A worker that raises ends the
call with :class:`MaMuJoCoWorkerError` carrying its traceback; one that dies, with its exit code.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Final

import numpy as np

WORKER_START_METHOD: Final = "forkserver"
"""Workers fork from a clean server process that has imported this module once."""


class MaMuJoCoWorkerError(RuntimeError):
    """A MaMuJoCo worker process failed; the message carries the worker's traceback."""


def _worker_main(pipe: Connection, task: str, num_envs: int, env_kwargs: dict[str, Any]) -> None:
    """A worker's loop: build its envs, then answer ``(command, argument)`` messages until ``close``.

    Replies are ``("ok", result)`` or ``("error", traceback)``; after an error the worker exits.
    """
    from hcmarl.envs.mamujoco import LocalBatch  # the family module imports this one

    try:
        batch = LocalBatch(task, num_envs, **env_kwargs)
        pipe.send(("ok", batch.layout))
        while True:
            command, argument = pipe.recv()
            if command == "close":
                batch.close()
                return
            pipe.send(("ok", getattr(batch, command)(*argument)))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        pipe.send(("error", traceback.format_exc()))


class WorkerPool:
    """``num_envs`` raw envs split into contiguous slices over ``num_workers`` processes; :class:`LocalBatch`'s interface."""

    def __init__(self, task: str, num_envs: int, num_workers: int, **env_kwargs: Any) -> None:
        context = mp.get_context(WORKER_START_METHOD)
        context.set_forkserver_preload(["hcmarl.envs.mamujoco"])
        self.slices = np.array_split(np.arange(num_envs), num_workers)
        self.pipes: list[Connection] = []
        self.processes = []
        for part in self.slices:
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, task, len(part), env_kwargs), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        self.layout = self._receive(range(num_workers))[0]

    def _send(self, w: int, command: str, *argument: Any) -> None:
        """Send a command to worker ``w``; a dead worker's broken pipe is reported by :meth:`_receive`."""
        try:
            self.pipes[w].send((command, argument))
        except OSError:
            pass

    def _receive(self, workers) -> list[Any]:
        """Each listed worker's reply, in order; a failed or dead worker closes the pool and raises."""
        replies = []
        for w in workers:
            wait([self.pipes[w], self.processes[w].sentinel])
            try:
                status, value = self.pipes[w].recv() if self.pipes[w].poll() else ("died", None)
            except (EOFError, OSError):
                status, value = "died", None
            if status != "ok":
                self.processes[w].join(timeout=5)
                code = self.processes[w].exitcode
                self.close()
                if status == "error":
                    raise MaMuJoCoWorkerError(f"MaMuJoCo worker {w} failed:\n{value}")
                raise MaMuJoCoWorkerError(f"MaMuJoCo worker {w} died (exit code {code}) without a message; see its output above")
            replies.append(value)
        return replies

    def reset(self, indices: list[int], seeds: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`LocalBatch.reset`, each worker resetting its own envs among ``indices``."""
        busy = []
        for w, part in enumerate(self.slices):
            mine = [(int(i - part[0]), seed) for i, seed in zip(indices, seeds, strict=True) if part[0] <= i <= part[-1]]
            if mine:
                local, local_seeds = zip(*mine, strict=True)
                self._send(w, "reset", list(local), list(local_seeds))
                busy.append(w)
        obs, states = zip(*self._receive(busy), strict=True)
        return np.concatenate(obs), np.concatenate(states)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """:meth:`LocalBatch.step`, the workers stepping their slices at the same time."""
        for w, part in enumerate(self.slices):
            self._send(w, "step", actions[part])
        return tuple(np.concatenate(parts) for parts in zip(*self._receive(range(len(self.pipes))), strict=True))

    def close(self) -> None:
        """Ask live workers to close their envs, then end every worker process."""
        for w, process in enumerate(self.processes):
            if process.is_alive():
                self._send(w, "close")
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []
        self.pipes = []


# ---- the TorchRL env ----------------------------------------------------------------------------
