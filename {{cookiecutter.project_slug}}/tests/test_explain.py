import importlib.util

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.lib import explain, models, names
from {{ cookiecutter.package_name }}.lib.task import Task

BINARY, MULTI, CLASSES = Task("segmentation", 2), Task("segmentation", 3), Task("classification", 3)

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
needs_smp = pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                               reason="segmentation-models-pytorch is not installed (not in a classifier's lock)")


def _build(task, architecture, encoder=None, num_classes=2):
    torch.manual_seed(0)
    return models.build_model(task, architecture, encoder, num_classes, MEAN, STD).eval()


def _check_layer(model, size, expected_side):
    x = torch.rand(1, 3, size, size)
    name, layer = explain.target_layer(model, x)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen) == 1, f"{name} runs {len(seen)} times per forward"
    assert seen[0][-1] == expected_side, f"{name}: {seen[0]}"  # 1/8 of the input: a map with places in it
    return name


def only(task, wanted):
    if task != wanted:  # the other task's names are tested in that task's project
        pytest.skip(f"a {task} project")


# The rule holds for every name the project offers, on tiny inputs (PAN needs 128 px, as in test_models).
@needs_smp
@pytest.mark.parametrize("architecture", names.SEGMENTATION_ARCHITECTURES)
def test_target_layer_of_every_segmentation_architecture(architecture, task):
    only(task, "segmentation")
    size = 128 if architecture == "PAN" else 64
    name = _check_layer(_build("segmentation", architecture, "resnet18"), size, size // 8)
    assert not name.startswith(("decoder", "segmentation_head"))  # found in the encoder


@needs_smp
@pytest.mark.parametrize("encoder", names.ENCODERS)
def test_target_layer_of_every_encoder(encoder, task):
    only(task, "segmentation")
    _check_layer(_build("segmentation", "Unet", encoder), 64, 8)


@pytest.mark.parametrize("architecture", names.CLASSIFICATION_ARCHITECTURES)
def test_target_layer_of_every_classifier(architecture, task):
    only(task, "classification")
    _check_layer(_build("classification", architecture, num_classes=3), 48, 6)


def test_target_layer_is_a_whole_stage_not_the_start_of_the_next():
    # resnet50's layer3.0.conv1 still runs at 1/8 before the block strides: the stage before it is explained.
    assert _check_layer(_build("classification", "resnet50", num_classes=3), 64, 8) == "layer2"


def test_too_small_an_input_is_refused_with_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=16), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match="prepare.image_size"):
        explain.target_layer(model, torch.rand(1, 3, 32, 32))


def test_rank_correlation():
    a = torch.arange(16.0).reshape(4, 4)
    assert explain.rank_correlation(a, a ** 2) == pytest.approx(1.0)  # same order, other values
    assert explain.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert explain.rank_correlation(a, torch.zeros(4, 4)) is None  # a constant map has no ranking


def test_segmentation_score_is_the_foreground_logit_over_the_predicted_region():
    logits = torch.tensor([[[[2.0, -1.0], [3.0, -4.0]]]])  # (1, 1, 2, 2) binary
    region = explain.targets(logits, BINARY)
    assert region.tolist() == [[[1, -1], [1, -1]]]
    assert explain.score(logits, region, BINARY).item() == 5.0  # 2 + 3
    nothing = torch.full((1, 1, 2, 2), -1.0)  # no foreground predicted: the whole image's foreground logit
    assert explain.score(nothing, explain.targets(nothing, BINARY), BINARY).item() == -4.0


def test_multiclass_score_takes_each_pixel_s_predicted_class():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0], logits[0, 2, 0, 1] = 5.0, 7.0  # pixel 0 -> class 1, pixel 1 -> class 2
    region = explain.targets(logits, MULTI)
    assert region.tolist() == [[[1, 2]]]
    assert explain.score(logits, region, MULTI).item() == 12.0


def test_classification_score_is_the_predicted_class_logit():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 0.5]])
    target = explain.targets(logits, CLASSES)
    assert target.tolist() == [1, 0]
    assert explain.score(logits, target, CLASSES).tolist() == [3.0, 2.0]


class LeftHalf(nn.Module):
    def forward(self, x):  # (B, C, H, W) with the right half zeroed
        return torch.cat([x[..., : x.shape[-1] // 2], torch.zeros_like(x[..., x.shape[-1] // 2:])], -1)


def test_maps_follow_the_evidence_at_the_input_s_size():
    # A classifier whose features see only the left half of the image: its maps must be there, not mirrored.
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), LeftHalf(), nn.AvgPool2d(2))  # (B, 4, 8, 8)
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[-1].weight.fill_(1.0)  # every feature counts for both classes: maps are not all zero
    x = torch.rand(2, 3, 16, 16)
    target = explain.targets(model(x), CLASSES)
    maps = explain.grad_cam(model, x, target, CLASSES, features)
    assert maps.shape == (2, 16, 16) and maps.min() >= 0
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))  # scaled to [0, 1] per image
    assert maps[:, :, :6].sum() > 0 and maps[:, :, 10:].sum() == 0


def test_an_unchanged_map_is_flagged():
    model = _build("classification", "resnet18", num_classes=3)
    x = torch.rand(2, 3, 64, 64)
    same = explain.explain(model, model, x, CLASSES, max_correlation=0.5)  # "randomised" = itself
    assert all(r["spearman"] == pytest.approx(1.0) and r["flagged"] for r in same["rows"])
    other = explain.randomised(lambda: models.build_model("classification", "resnet18", None, 3, MEAN, STD), seed=1)
    changed = explain.explain(model, other, x, CLASSES, max_correlation=0.99)
    assert changed["layer"] == "layer2" and changed["trained"].shape == (2, 64, 64)
    assert any(not r["flagged"] for r in changed["rows"])
    m = explain.metrics_of(same["rows"])
    assert m["explain/images"] == 2 and m["explain/flagged"] == 2
    assert m["explain/randomisation_spearman_max"] == pytest.approx(1.0)


def test_randomised_is_seeded():
    def build():
        return models.build_model("classification", "resnet18", None, 3, MEAN, STD)

    a, b = explain.randomised(build, 3), explain.randomised(build, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
