"""``model.compile``: compiled networks give the eager results, fall back to eager when compiling fails, and trust
regions stay eager (their Fisher-vector products differentiate twice)."""

from __future__ import annotations

import pytest
import torch

from hcmarl.compilation import CompiledForward, compile_network
from hcmarl.envs import make_env
from hcmarl.modules.cli import build_cli
from hcmarl.nn.layers import AgentMLP
from hcmarl.recipes import RECIPES_DIR


def test_a_failing_compilation_runs_eagerly_from_then_on_with_one_log_line() -> None:
    calls, lines = [], []

    def eager(x: torch.Tensor) -> torch.Tensor:
        calls.append("eager")
        return x + 1

    def failing(x: torch.Tensor) -> torch.Tensor:
        calls.append("compiled")
        raise torch._dynamo.exc.Unsupported("a construct dynamo cannot trace")

    forward = CompiledForward(eager, "learner.actor.net", lines.append)
    forward.compiled = failing
    assert torch.equal(forward(torch.zeros(2)), torch.ones(2))
    assert torch.equal(forward(torch.zeros(2)), torch.ones(2))
    assert calls == ["compiled", "eager", "eager"]
    assert len(lines) == 1 and "learner.actor.net" in lines[0] and "Unsupported" in lines[0]


def test_an_error_of_the_model_itself_is_not_swallowed() -> None:
    forward = CompiledForward(lambda x: x, "critic.network.net", print)
    forward.compiled = lambda x: (_ for _ in ()).throw(ValueError("shape mismatch"))
    with pytest.raises(ValueError, match="shape mismatch"):
        forward(torch.zeros(1))


@pytest.mark.slow
def test_a_compiled_mlp_gives_the_eager_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    net = AgentMLP(5, [16, 16], 3, n_groups=2)
    x = torch.randn(32, 2, 5)
    eager_out = net(x)
    eager_grad = torch.autograd.grad(eager_out.square().sum(), net[0].weight)[0]
    assert compile_network(net, "toy") == 1
    compiled_out = net(x)
    compiled_grad = torch.autograd.grad(compiled_out.square().sum(), net[0].weight)[0]
    assert isinstance(net.forward, CompiledForward) and net.forward.compiled is not None
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-5)


def test_trust_region_roles_stay_eager_and_the_others_are_compiled(capsys: pytest.CaptureFixture) -> None:
    cli = build_cli(["--config", str(RECIPES_DIR / "hcpo/coordsum_3x10.yaml"), "--model.compile", "true"], run=False)
    cli.model.build(make_env("coordsum/3x10", 2).info)
    module = cli.model
    assert not isinstance(module.learner.actor.net.forward, CompiledForward)
    assert not isinstance(module.conductor.network.net.forward, CompiledForward)
    assert isinstance(module.critic.network.net.forward, CompiledForward)
    assert isinstance(module.conductor.local.net.forward, CompiledForward)
    out = capsys.readouterr().out
    assert "learner.actor eager" in out and "conductor.network eager" in out
