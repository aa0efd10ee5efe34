import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.lib import runtime


def test_a_device_that_does_not_exist_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"train.device='tpu': no such device here; valid: auto, cpu"):
        runtime.pick_device("tpu")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def _bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


@pytest.mark.parametrize("n,batch,world,drop", [(17, 8, 1, True), (16, 8, 1, False), (18, 8, 1, False),
                                                (19, 8, 2, False), (17, 8, 2, True)])
def test_a_last_batch_of_one_is_dropped(n, batch, world, drop):
    assert runtime.drop_last_batch(n, batch, world, _bn()) == drop


def test_batches_of_one_through_batchnorm_are_refused_up_front():
    with pytest.raises(ValueError, match="batch_size=1 .* batches of one, which BatchNorm"):
        runtime.drop_last_batch(100, 1, 1, _bn())
    assert runtime.drop_last_batch(100, 1, 1, nn.Linear(1, 1)) is False  # no BatchNorm: fine


def _step(loss_scale, weight=1.0):
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
    loss = model(torch.ones(1, 2)).sum() * loss_scale
    loss.backward()
    return loss, model


@pytest.mark.parametrize("scale,weight,grad", [(float("nan"), 1.0, None), (1.0, float("inf"), None),
                                               (1.0, 1.0, float("nan"))])
def test_a_non_finite_loss_or_gradient_stops_the_step(scale, weight, grad):
    loss, model = _step(scale, weight)
    if grad is not None:
        model.bias.grad.fill_(grad)
    with pytest.raises(ValueError, match="training diverged at epoch 3, batch 7: loss .*, gradient norm"):
        runtime.finite_step(loss, model, None, "epoch 3, batch 7")


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_a_finite_step_returns_the_norm_and_clips(max_norm):
    loss, model = _step(1.0)
    norm = runtime.finite_step(loss, model, max_norm, "x")
    assert norm.item() == pytest.approx(3 ** 0.5)  # grads: weight (1, 1), bias 1
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert after == pytest.approx(max_norm or 3 ** 0.5, rel=1e-4)
