"""Mava's layers and initialisation (``mava_details``) in the paper recipes' guiders, against the official code
(liyheng/MAGPO d2ac38b, ``mava/networks/sable_network.py``, ``retention.py``, ``mat_network.py``, ``attention.py``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.nn import MATGuider, SableGuider
from hcmarl.nn.retention import MultiScaleRetention
from hcmarl.nn.transformer import FeedForward

DISCRETE = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="categorical", action_dim=4, max_steps=10, has_action_mask=True)
CONTINUOUS = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="continuous", action_dim=2, max_steps=10)
ROOT2 = math.sqrt(2.0)


def orthogonal_with_gain(weight: torch.Tensor, gain: float) -> bool:
    """Whether ``weight`` ``[out, in]`` is ``gain`` times a matrix with orthonormal rows or columns (the shorter side)."""
    gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
    return torch.allclose(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5 * max(gain**2, 1e-2))


def embeddings_and_heads_are_mavas(guider: SableGuider | MATGuider, info: EnvInfo, observation_bias: bool) -> None:
    """Orthogonal embeddings and heads (gain sqrt(2), output layers 0.01), zero biases, the observation embedding's bias
    as the network has it, an action-embedding bias for continuous actions only."""
    hidden = [guider.observation_embedding[1], guider.action_embedding[0], guider.value_head[0], guider.action_head[0]]
    assert all(orthogonal_with_gain(layer.weight, ROOT2) for layer in hidden)
    assert orthogonal_with_gain(guider.value_head[3].weight, 0.01) and orthogonal_with_gain(guider.action_head[3].weight, 0.01)
    assert (guider.observation_embedding[1].bias is not None) == observation_bias
    assert (guider.action_embedding[0].bias is None) == info.categorical
    biases = [layer.bias for layer in [*hidden, guider.value_head[3], guider.action_head[3]] if layer.bias is not None]
    assert len(biases) == 4 + observation_bias + (not info.categorical) and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_sables_mava_details_are_mavas_layers_and_initialisation(info: EnvInfo) -> None:
    """Sable: retention weights from N(0, 1/E^2) with unscaled keys, Mava's embeddings and heads without an observation
    bias, Flax's tanh GELU; without mava_details, PyTorch's initialisation, scaled keys and exact GELU."""
    torch.manual_seed(0)
    guider = SableGuider.paper(embed_dim=128, n_blocks=2, n_heads=2)
    guider.build(info)
    retentions = [m for m in guider.modules() if isinstance(m, MultiScaleRetention)]
    assert len(retentions) == 2 * 3 and not any(m.scale_keys for m in retentions)
    for retention in retentions:
        for projection in (retention.query, retention.key, retention.value, retention.gate, retention.out):
            assert abs(projection.weight.std().item() * 128 - 1.0) < 0.05 and abs(projection.weight.mean().item()) < 1e-3
    embeddings_and_heads_are_mavas(guider, info, observation_bias=False)
    gelus = [m for m in guider.modules() if isinstance(m, nn.GELU)]
    assert len(gelus) == 4 and all(g.approximate == "tanh" for g in gelus)
    default = SableGuider.paper(embed_dim=128, n_blocks=2, n_heads=2, mava_details=False)
    default.build(info)
    assert all(m.scale_keys for m in default.modules() if isinstance(m, MultiScaleRetention))
    assert default.observation_embedding[1].bias is not None and all(g.approximate == "none" for g in default.modules() if isinstance(g, nn.GELU))
    assert abs(default.encoder[0].retention.out.weight.std().item() * 128 - 1.0) > 1.0  # PyTorch's init: std (3 E)^-1/2


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_mats_mava_details_are_mavas_layers_and_initialisation(info: EnvInfo) -> None:
    """MAT: each attention projection orthogonal with gain 0.01 and zero biases, the feed-forward's layers with gains
    sqrt(2) and 0.01, Mava's embeddings and heads with the observation bias, tanh GELU everywhere, LayerNorm eps 1e-6."""
    torch.manual_seed(0)
    guider = MATGuider(embed_dim=64, n_blocks=2, n_heads=4, mava_details=True)
    guider.build(info)
    attentions = [m for m in guider.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attentions) == 2 * 3
    for attention in attentions:
        assert all(orthogonal_with_gain(w, 0.01) for w in (*attention.in_proj_weight.chunk(3), attention.out_proj.weight))
        assert not attention.in_proj_bias.any() and not attention.out_proj.bias.any()
    feed_forwards = [m for m in guider.modules() if isinstance(m, FeedForward)]
    assert len(feed_forwards) == 2 * 2
    for ff in feed_forwards:
        assert orthogonal_with_gain(ff[0].weight, ROOT2) and orthogonal_with_gain(ff[2].weight, 0.01)
        assert not ff[0].bias.any() and not ff[2].bias.any()
    embeddings_and_heads_are_mavas(guider, info, observation_bias=True)
    gelus = [m for m in guider.modules() if isinstance(m, nn.GELU)]
    assert len(gelus) == 4 + 4 and all(g.approximate == "tanh" for g in gelus)
    norms = [m for m in guider.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 5 + 2 * 2 + 2 * 3 and all(n.eps == 1e-6 for n in norms)
    default = MATGuider(embed_dim=64, n_blocks=2, n_heads=4)
    default.build(info)
    assert all(n.eps == 1e-5 for n in default.modules() if isinstance(n, nn.LayerNorm))
    assert not orthogonal_with_gain(default.encoder[0].attention.out_proj.weight, 0.01)
