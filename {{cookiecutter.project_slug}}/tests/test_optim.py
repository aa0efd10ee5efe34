from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.lib import names, optim, params

PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.mark.parametrize("name", list(names.OPTIMIZERS))
def test_every_optimizer_name_builds_with_each_of_its_keys(name):
    cls_name, keys = names.OPTIMIZERS[name]
    values = {"weight_decay": 0.01, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "betas": [0.9, 0.99],
              "eps": 1e-8, "amsgrad": False}
    opt = optim.make_optimizer(torch.nn.Linear(1, 1), {"name": name, **{k: values[k] for k in keys}}, 0.1)
    assert type(opt).__name__ == cls_name and opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("name", list(names.SCHEDULERS))
def test_every_scheduler_name_builds_from_params(name):
    opt = optim.make_optimizer(torch.nn.Linear(1, 1), {"name": "sgd"}, 0.1)
    cfg = params.load(PARAMS)["train"]["scheduler"] | {"name": name}  # the shipped arguments of each
    scheduler = optim.make_scheduler(opt, cfg, epochs=12)
    assert (scheduler is None) == (names.SCHEDULERS[name][0] is None)
    if scheduler is not None:
        assert type(scheduler).__name__ == names.SCHEDULERS[name][0]


def test_unknown_optimizer_and_scheduler_are_named():
    with pytest.raises(ValueError, match="train.optimizer.name='lbfgs'.*adamw"):
        optim.make_optimizer(torch.nn.Linear(1, 1), {"name": "lbfgs"}, 0.1)
    opt = optim.make_optimizer(torch.nn.Linear(1, 1), {"name": "sgd"}, 0.1)
    with pytest.raises(ValueError, match="train.scheduler.name='cyclic'.*cosine"):
        optim.make_scheduler(opt, {"name": "cyclic"}, 3)
