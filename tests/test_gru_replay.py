"""GRUReplay (hcmarl/nn/gru_replay.py): the replay of rollouts with its own backward pass against the step-by-step loop
recorded by autograd, a numerical gradient check, and the trust region's double differentiation."""

from __future__ import annotations

import pytest
import torch

from hcmarl.nn.gru_replay import GRUReplay, replay_by_autograd, replaying_by_autograd
from hcmarl.nn.recurrent import AgentGRUCell, replay_states


def loop_by_autograd(cell: AgentGRUCell, x: torch.Tensor, is_init: torch.Tensor, first: torch.Tensor, agent: int | None) -> torch.Tensor:
    """The reference: the cell applied step by step (inputs mapped at each step), the state zeroed where an episode starts."""
    h, states = first, []
    for t in range(x.shape[1]):
        h = torch.where(is_init[:, t].unsqueeze(-1), torch.zeros_like(h), h)
        h = cell(x[:, t], h, agent)
        states.append(h)
    return torch.stack(states, dim=1)


def perturbed_cell(input_size: int, hidden_size: int, n_groups: int) -> AgentGRUCell:
    """A cell whose biases are not zero, so every gradient term is exercised."""
    cell = AgentGRUCell(input_size, hidden_size, n_groups)
    with torch.no_grad():
        for parameter in cell.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return cell


# (n_groups, agent, G): shared weights over 3 agents; a weight per agent; one agent of per-agent weights; one of shared
LAYOUTS = [(1, None, 3), (3, None, 3), (3, 1, 1), (1, 0, 1)]


@pytest.mark.parametrize(("n_groups", "agent", "G"), LAYOUTS)
def test_states_and_gradients_equal_the_loop_recorded_by_autograd(n_groups: int, agent: int | None, G: int) -> None:
    torch.manual_seed(0)
    b, T, D, H = 4, 40, 16, 32
    cell = perturbed_cell(D, H, n_groups)
    x = torch.randn(b, T, G, D, requires_grad=True)
    is_init = torch.rand(b, T, 1) < 0.1
    is_init[1, 0] = True
    first = torch.randn(b, G, H, requires_grad=True)
    upstream = torch.randn(b, T, G, H)
    results = []
    for replay in (loop_by_autograd, replay_states):
        leaves = [x, first, *cell.parameters()]
        for leaf in leaves:
            leaf.grad = None
        states = replay(cell, x, is_init, first, agent)
        (states * upstream).sum().backward()
        results.append((states.detach(), [leaf.grad.clone() for leaf in leaves]))
    (reference, reference_grads), (states, grads) = results
    torch.testing.assert_close(states, reference, atol=1e-6, rtol=1e-6)
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-5)
    assert first.grad[1].abs().max() == 0  # its episode starts at the first step: no gradient reaches the stored state


def test_states_are_bit_identical_to_the_loop_at_the_recipes_width() -> None:
    """At width 128 (the MAGPO paper's GRU) the replay performs the cell's operations on the same kernels: equal bits,
    so a recurrent policy's replayed log-probabilities are exactly those it acted with."""
    torch.manual_seed(3)
    cell = perturbed_cell(128, 128, 1)
    x, is_init, first = torch.randn(4, 32, 3, 128), torch.rand(4, 32, 1) < 0.1, torch.randn(4, 3, 128)
    with torch.no_grad():
        assert torch.equal(replay_states(cell, x, is_init, first), loop_by_autograd(cell, x, is_init, first, None))


@pytest.mark.parametrize(("n_groups", "agent", "G"), LAYOUTS)
def test_gradients_pass_a_numerical_check(n_groups: int, agent: int | None, G: int) -> None:
    torch.manual_seed(1)
    b, T, H = 3, 7, 5
    weight, bias = perturbed_cell(H, H, n_groups).double().hidden_map.group_parameters(agent)
    weight, bias = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    gates_x = torch.randn(b, T, G, 3 * H, dtype=torch.float64, requires_grad=True)
    first = torch.randn(b, G, H, dtype=torch.float64, requires_grad=True)
    is_init = torch.rand(b, T, 1) < 0.3
    is_init[0, 3] = True

    def replay(gates_x: torch.Tensor, first: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return GRUReplay.apply(gates_x, is_init, first, weight, bias)

    assert torch.autograd.gradcheck(replay, (gates_x, first, weight, bias))


def test_replay_by_autograd_records_a_graph_that_differentiates_twice() -> None:
    """A trust region's Fisher-vector products take J v by differentiating J^T u with respect to u
    (hcmarl.trust_region.KLCurvature). GRUReplay's backward refuses create_graph (else J v would silently be zero); inside
    replay_by_autograd() (where TrustRegion.update runs) replay_states records the loop, and J v is the loop's."""
    torch.manual_seed(2)
    cell = perturbed_cell(6, 8, 1)
    x, is_init, first = torch.randn(2, 5, 3, 6), torch.rand(2, 5, 1) < 0.2, torch.randn(2, 3, 8)
    weight = cell.hidden_map.weight
    direction = torch.randn_like(weight)

    def jacobian_vector_product(replay) -> torch.Tensor:  # type: ignore[no-untyped-def]
        states = replay(cell, x, is_init, first, None)
        u = torch.zeros_like(states, requires_grad=True)
        (jacobian_t_u,) = torch.autograd.grad(states, weight, grad_outputs=u, create_graph=True)
        (jv,) = torch.autograd.grad(jacobian_t_u, u, grad_outputs=direction)
        return jv

    with pytest.raises(RuntimeError, match="replay_by_autograd"):
        jacobian_vector_product(replay_states)
    assert not replaying_by_autograd()
    with replay_by_autograd():
        assert replaying_by_autograd()
        by_autograd = jacobian_vector_product(replay_states)
    assert not replaying_by_autograd()
    torch.testing.assert_close(by_autograd, jacobian_vector_product(loop_by_autograd), atol=1e-5, rtol=1e-5)
