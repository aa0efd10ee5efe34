"""Optimizers and learning-rate schedulers by their params.yaml names (names.OPTIMIZERS / names.SCHEDULERS), with
params' keyword arguments passed straight through to torch.

    >>> make_optimizer(torch.nn.Linear(2, 1), {"name": "sgd", "momentum": 0.9}, lr=0.1).defaults["momentum"]
    0.9
"""

import torch

from {{ cookiecutter.package_name }}.lib import names


def make_optimizer(model, cfg, lr):
    """torch.optim by params.yaml name; the other keys of cfg pass straight through (params.py checked them)."""
    if cfg["name"] not in names.OPTIMIZERS:
        raise ValueError(f"train.optimizer.name={cfg['name']!r}: valid names: {', '.join(names.OPTIMIZERS)}")
    cls = getattr(torch.optim, names.OPTIMIZERS[cfg["name"]][0])
    return cls(model.parameters(), lr=lr, **{k: v for k, v in cfg.items() if k != "name"})


def make_scheduler(optimizer, cfg, epochs):
    """torch.optim.lr_scheduler by params.yaml name, with that scheduler's own section of cfg as arguments."""
    if cfg["name"] not in names.SCHEDULERS:
        raise ValueError(f"train.scheduler.name={cfg['name']!r}: valid names: {', '.join(names.SCHEDULERS)}")
    if (cls_name := names.SCHEDULERS[cfg["name"]][0]) is None:
        return None
    # cosine anneals over the whole run; plateau steps on the validation metric, which we maximise.
    fixed = {"cosine": {"T_max": epochs}, "plateau": {"mode": "max"}}.get(cfg["name"], {})
    return getattr(torch.optim.lr_scheduler, cls_name)(optimizer, **fixed, **(cfg.get(cfg["name"]) or {}))
