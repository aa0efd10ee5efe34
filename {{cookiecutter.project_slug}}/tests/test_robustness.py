import json

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }} import optimize, robustness
from {{ cookiecutter.package_name }}.lib import models
from {{ cookiecutter.package_name }}.lib import task as task_module


def _tiny_classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    return models.Normalized(net, [0.5] * 3, [0.25] * 3).eval()


def _loss(model, x, y):
    with torch.no_grad():
        return task_module.cross_entropy(model(x), y, task_module.Task("classification", 3)).item()


def test_attacks_behave_like_attacks():
    model = _tiny_classifier()
    x, y = torch.rand(32, 3, 8, 8), torch.randint(0, 3, (32,))
    loss = lambda logits, t: task_module.cross_entropy(logits, t, task_module.Task("classification", 3))  # noqa: E731
    assert torch.equal(robustness.fgsm(model, x, y, 0, loss), x)  # epsilon 0 changes nothing
    g = torch.Generator().manual_seed(0)
    losses = []
    for eps in (1 / 255, 4 / 255, 16 / 255):
        adv = robustness.fgsm(model, x, y, eps, loss)
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        strong = robustness.pgd(model, x, y, eps, loss, steps=10, step_size=0.25, generator=g)
        assert (strong - x).abs().max() <= eps + 1e-6
        assert _loss(model, strong, y) >= _loss(model, adv, y) - 1e-4  # PGD at least as strong as FGSM
        losses.append(_loss(model, adv, y))
    assert _loss(model, x, y) < losses[0] < losses[1] < losses[2]  # stronger budget, higher loss


def test_bootstrap_interval_brackets_the_estimate():
    y = torch.randint(0, 3, (40,))
    logits = torch.nn.functional.one_hot(y, 3).float()
    logits[:10] = logits[:10].roll(1, dims=1)  # 10 of 40 wrong: accuracy 0.75
    out = robustness.scores_with_interval(lambda x: x, logits, y, task_module.Task("classification", 3), batch_size=8,
                                          resamples=500, seed=0)
    assert out["accuracy"] == 0.75
    assert out["accuracy_ci_low"] < 0.75 < out["accuracy_ci_high"]


@pytest.mark.stage
def test_robustness_stage(trained, runs, task):
    optimize.main()
    robustness.main()
    metric = task_module.primary_metric(task)
    report = json.loads((trained / "reports/robustness.json").read_text())
    m = json.loads((trained / "metrics/robustness.json").read_text())
    # epsilon 0 leaves the metric unchanged
    pgd0 = next(r for r in report["adversarial"] if r["attack"] == "pgd" and r["epsilon"] == 0)
    assert pgd0[metric] == pytest.approx(m[f"clean/{metric}"])
    assert 0 <= m[f"fp32/corrupted/{metric}"] <= 1
    assert m["level"] in ("low", "medium", "high") and m["security/fail"] == 0
    assert {f["check"] for f in report["security"]} == {"no-pickle-format", "pickle-scan", "cve-floor",
                                                         "tracking-config", "secrets", "input-validation", "sha256"}
    assert (trained / "plots/robustness/curve.png").stat().st_size > 0
    (run,) = runs(trained)
    assert run.info.status == "FINISHED" and run.data.tags["robustness_level"] == m["level"]
