"""Which policy acts where: the behaviour policy that collects, the deployed one that is evaluated (DESIGN.md, "One iteration").

Built from the roles, holding them (not copies): the collector acts with the parameters being trained.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase

from hcmarl.keys import ACTION, LOG_PROB
from hcmarl.roles.conductor import Conductor, ExecutionMode
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import GuiderMemory
from hcmarl.roles.learner import Learner
from hcmarl.roles.policy import ActingPolicy
from hcmarl.roles.team import Roles

EvaluationMode = ExecutionMode | Literal["guider"]
Act = Callable[[TensorDictBase], TensorDictBase]
OUT_KEYS = [ACTION, LOG_PROB]


def _after_instruction(
    conductor: Conductor, mode: ExecutionMode, actor: Act, in_keys: Sequence, begin_rollout: Callable[[], None] | None = None
) -> ActingPolicy:
    """``actor`` acting on the instruction ``conductor`` gives in ``mode`` (``central``: from the global state)."""

    def act(td: TensorDictBase) -> TensorDictBase:
        return actor(conductor.instruct(td, mode))

    conductor_keys = list(conductor.network.in_keys) if mode == "central" else []
    return ActingPolicy(act, [*conductor_keys, *in_keys], OUT_KEYS, begin_rollout=begin_rollout)


def _advancing(actor: Act, advance: Callable[[TensorDictBase], object]) -> Act:
    """``actor`` acting, then ``advance`` stepping a recurrent network that does not act on the same step (it writes
    that network's next hidden state under ``"next"``; its output is not used)."""

    def act(td: TensorDictBase) -> TensorDictBase:
        td = actor(td)
        with torch.no_grad():
            advance(td)
        return td

    return act


def advancing_learner(actor: Act, learner: Learner) -> Act:
    """``actor`` (the guider) acting, then the recurrent learner's hidden state advanced on the same step: it writes the
    next ``RNN_STATE`` (its action is not used), so every stored learner state of a guider's rollout is the one the
    learner would have had acting itself (ALGORITHMS.md section 4; the official code's fix of 2026-07-27)."""
    return _advancing(actor, learner.actor.step)


def advancing_critic(actor: Act, critic: Critic) -> Act:
    """``actor`` acting, then a recurrent critic's hidden state advanced on the same step (``Critic.advance`` writes the
    next ``CRITIC_RNN_STATE``), so the rollout stores the state each env's critic starts it from, which the values of
    the advantages and the critic's training replay (``hcmarl.nn.recurrent_critics``); Mava's rec_mappo steps its critic
    in the rollout the same way."""
    return _advancing(actor, critic.advance)


def behaviour_policy(roles: Roles) -> ActingPolicy:
    """What collects training data: the guider if there is one (MAGPO, MAT), else the learner sampling;
    with a conductor (HCPO, or a conductor-guided guider), after the central conductor's instruction.
    Under a guider, a recurrent learner's hidden state is advanced at every step (``advancing_learner``); so is a
    recurrent critic's (``advancing_critic``)."""
    learner, critic, conductor, guider = roles.learner, roles.critic, roles.conductor, roles.guider
    begin_rollout: Callable[[], None] | None = None
    if guider is not None:
        memory = guider.new_collection_memory()
        actor: Act = functools.partial(guider.act, memory=memory)
        in_keys, begin_rollout = guider.network.in_keys, memory.begin_rollout
        if learner is not None and learner.actor.recurrent:
            actor = advancing_learner(actor, learner)
            in_keys = [*in_keys, *(key for key in learner.actor.in_keys if key not in in_keys)]
    elif learner is not None:
        actor, in_keys = learner.act, learner.actor.in_keys
    else:
        raise ValueError("behaviour_policy: the roles have neither a guider nor a learner to act")
    if critic is not None and critic.recurrent:
        actor = advancing_critic(actor, critic)
        in_keys = [*in_keys, *(key for key in critic.network.in_keys if key not in in_keys)]
    if conductor is None:
        return ActingPolicy(actor, in_keys, OUT_KEYS, begin_rollout=begin_rollout)
    return _after_instruction(conductor, "central", actor, in_keys, begin_rollout)


def deployment_policy(roles: Roles, execution: EvaluationMode | None = None, deterministic: bool = False) -> ActingPolicy:
    """What is evaluated and deployed: decentralised actors, reading no global state.

    With a conductor, each agent's instruction comes from ``execution`` (default: the conductor's
    ``execution`` setting, ``local``); only ``central`` reads the global state. ``guider`` (and a
    recipe with no learner, MAT) acts with the guider, centrally (after the central conductor's
    instruction, if there is a conductor), sampling unless ``deterministic``.
    """
    learner, conductor, guider = roles.learner, roles.conductor, roles.guider
    mode: ExecutionMode | None
    if execution == "guider" or learner is None:
        if guider is None:
            raise ValueError("deployment_policy: the roles have neither a learner nor a guider to act")
        actor: Act = functools.partial(guider.act, deterministic=deterministic, memory=GuiderMemory())
        in_keys, mode = guider.network.in_keys, "central"
    else:
        actor = functools.partial(learner.act, deterministic=deterministic)
        in_keys, mode = learner.actor.in_keys, execution
    if conductor is None:
        return ActingPolicy(actor, in_keys, OUT_KEYS)
    return _after_instruction(conductor, mode or conductor.execution, actor, in_keys)


def evaluation_modes(roles: Roles) -> dict[str, EvaluationMode | None]:
    """Metric prefix -> execution mode of each evaluation: the deployment policy as ``eval/``; for HCPO
    also the central conductor as ``eval/central/`` (ALGORITHMS.md section 3: report both); for MAGPO
    and CTDS also the guider, centralised, as ``eval/guider/``."""
    learner, conductor, guider = roles.learner, roles.conductor, roles.guider
    modes: dict[str, EvaluationMode | None] = {"eval": None}
    if guider is not None and learner is not None:
        modes["eval/guider"] = "guider"
    if conductor is not None and conductor.execution != "central" and conductor.n_instructions > 1:
        modes["eval/central"] = "central"
    return modes
