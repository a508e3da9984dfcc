"""zocli.run.pretrain: the contrastive pretraining that made the shipped test-bed weights."""

import torch

from zocli.run.pretrain import PretrainConfig, pretrain

SHORT = PretrainConfig(steps=25, batch_size=48, warmup=5, pool=4)


def test_pretraining_is_deterministic_for_a_seed():
    a, b = pretrain(SHORT), pretrain(SHORT)
    assert a.loss_first == b.loss_first and a.loss_last == b.loss_last
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    other = pretrain(PretrainConfig(**{**SHORT.__dict__, "seed": 1, "steps": 1}))
    assert not torch.equal(other.state_dict["visual.conv1.weight"], a.state_dict["visual.conv1.weight"])


def test_pretraining_lowers_the_contrastive_loss():
    result = pretrain(PretrainConfig(steps=60, batch_size=64, warmup=5, pool=8))
    assert result.loss_last < result.loss_first - 0.5
