"""An evaluation scores each env's first episode: its win and its episode metrics are read at that episode's last step.

``first_episode_end`` against a step-by-step reference, and the case it exists for: an episode that ends early (lost)
and a later episode in the same rollout that wins must count as a loss.
"""

from __future__ import annotations

import torch

from hcmarl.datamodules.episodes import episode_returns, first_episode_end, rollout_first_episodes
from hcmarl.envs import make_env
from hcmarl.evaluation import logged_means


def reference_first_end(values: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Walk each env's steps until its first ``done`` (the last step when it never ends)."""
    out = []
    for e in range(values.shape[0]):
        t = 0
        while t < values.shape[1] - 1 and not bool(done[e, t, 0]):
            t += 1
        out.append(values[e, t, 0])
    return torch.stack(out)


def test_first_episode_end_equals_a_step_by_step_walk() -> None:
    gen = torch.Generator().manual_seed(0)
    done = torch.rand(64, 30, 1, generator=gen) < 0.08  # several episodes per env, some envs never ending
    values = torch.rand(64, 30, 1, generator=gen)
    assert (~done.any(dim=1)).any() and (done.sum(dim=1) > 1).any()
    torch.testing.assert_close(first_episode_end(values, done), reference_first_end(values, done), rtol=0, atol=0)


def test_a_later_episodes_win_is_not_the_first_episodes() -> None:
    """Env 0 loses at step 1 and wins a second episode at step 4; env 1 wins at its only end; env 2 never ends."""
    done = torch.zeros(3, 6, 1, dtype=torch.bool)
    win = torch.zeros(3, 6, 1, dtype=torch.bool)
    done[0, 1] = done[0, 4] = win[0, 4] = True
    done[1, 3] = win[1, 3] = True
    assert first_episode_end(win, done).tolist() == [False, True, False]
    rate = torch.tensor([[0.1, 0.3, 0.0, 0.5, 1.0, 0.0], [0.2, 0.4, 0.6, 0.8, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]]).unsqueeze(-1)
    torch.testing.assert_close(first_episode_end(rate, done), torch.tensor([0.3, 0.8, 0.7]), rtol=0, atol=0)
    _, lengths = episode_returns(torch.ones(3, 6, 1), done)
    assert lengths.tolist() == [2.0, 4.0, 6.0]  # the same first episodes as the returns


def test_logged_means_name_wins_as_a_rate_and_skip_lengths() -> None:
    assert logged_means(["return", "length", "win", "connection_rate"]) == {
        "return": "return",
        "win": "win_rate",
        "connection_rate": "connection_rate",
    }


def test_evaluations_of_fixed_length_episodes_are_torchrls_uncut_rollouts() -> None:
    """CoordSum's episodes all end at ``max_steps``: two evaluations in a row step the env exactly as two TorchRL
    rollouts do (the last step of each left unreset), so the second one's episodes are the same too."""
    env = make_env("coordsum/3x10", num_envs=3, seed=0)
    max_steps = env.info.max_steps

    def policy(td):
        td["agents", "action"] = torch.randint(0, 10, td["agents", "observation"].shape[:-1])
        return td

    results = []
    for cut in (False, True):
        env.set_seed(5)
        torch.manual_seed(0)
        for _ in range(2):
            results.append(
                rollout_first_episodes(env, policy, max_steps, chunk=7) if cut else env.rollout(max_steps, policy, break_when_any_done=False)
            )
    for uncut, cut in zip(results[:2], results[2:], strict=True):
        assert cut.shape == uncut.shape == (3, max_steps)
        for key in (("agents", "action"), ("next", "reward"), ("next", "done"), ("next", "state")):
            torch.testing.assert_close(cut[key], uncut[key], rtol=0, atol=0)
