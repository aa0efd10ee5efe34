import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.lib import models

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
# A classification project does not lock segmentation-models-pytorch: its segmentation cases skip.
needs_smp = pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                               reason="segmentation-models-pytorch is not installed (not in a classifier's lock)")


def _build(task, architecture, encoder=None, num_classes=2, **kw):
    return models.build_model(task, architecture, encoder, num_classes, MEAN, STD, **kw).eval()


# Every name the project offers: each architecture with the default encoder, each encoder with Unet.
# 128 px: the smallest size every architecture takes (PAN needs it; see test_too_small_input_is_explained).
@needs_smp
@pytest.mark.parametrize("architecture", list(models.SEGMENTATION))
def test_segmentation_architecture_forward_shape(architecture):
    with torch.no_grad():
        assert _build("segmentation", architecture, "resnet18")(torch.rand(2, 3, 128, 128)).shape == (2, 1, 128, 128)


@needs_smp
@pytest.mark.parametrize("encoder", models.ENCODERS)
def test_segmentation_encoder_forward_shape(encoder):
    with torch.no_grad():
        out = _build("segmentation", "Unet", encoder, num_classes=4)(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 4, 64, 64)  # multiclass: one logit per class


@pytest.mark.parametrize("architecture", list(models.CLASSIFICATION))
def test_classification_forward_shape(architecture):
    with torch.no_grad():
        assert _build("classification", architecture, num_classes=3)(torch.rand(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("task,architecture,encoder,key", [
    ("segmentation", "Unett", "resnet18", "architecture"),
    ("segmentation", "Unet", "resnet19", "encoder"),
    ("classification", "resnet19", None, "architecture"),
])
def test_unknown_name_lists_valid_names(task, architecture, encoder, key):
    valid = {"architecture": models.SEGMENTATION if task == "segmentation" else models.CLASSIFICATION,
             "encoder": models.ENCODERS}[key]
    with pytest.raises(ValueError, match=f"train.model.{key}") as e:
        _build(task, architecture, encoder)
    assert all(name in str(e.value) for name in valid)


@needs_smp
def test_too_small_input_is_explained():
    model = _build("segmentation", "PAN", "resnet18")
    with pytest.raises(ValueError, match="cannot take 64x64 inputs.*image_size"):
        models.check_input_size(model, 64, "PAN/resnet18")
    models.check_input_size(model, 128, "PAN/resnet18")


def test_normalisation_is_inside_the_model():
    model = _build("classification", "resnet18", num_classes=3)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))


@needs_smp
def test_checkpoint_round_trip_rebuilds_from_its_own_arguments(tmp_path):
    args = {"task": "segmentation", "architecture": "FPN", "encoder": "resnet18", "num_classes": 3,
            "mean": MEAN, "std": STD}
    model = models.build_model(**args).eval()
    path = tmp_path / "model.safetensors"
    models.save_checkpoint(path, model, args)
    loaded, loaded_args = models.load_checkpoint(path)
    assert loaded_args == args
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert b"pickle" not in path.read_bytes()[:64]  # a safetensors header, no pickle


def test_pretrained_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    # torchvision's own loader, pointed at a cache holding a resnet18 checkpoint under its published file
    # name: no network needed, and the weights must be the cached ones.
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    model = _build("classification", "resnet18", num_classes=3, pretrained=True)
    assert torch.equal(model.net.conv1.weight, cached["conv1.weight"])
    assert model.net.fc.out_features == 3  # head replaced for our classes


def test_pretrained_without_network_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must download
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(RuntimeError, match="pretrained: false"):
        _build("classification", "resnet18", num_classes=3, pretrained=True)


@pytest.mark.process
def test_stage_imports_leave_the_model_libraries_until_a_model_is_built():
    # smp (with timm and torchvision) costs seconds per stage process; only building a model may pay it.
    code = ("import sys; from {{ cookiecutter.package_name }} import compare, prepare, register, train; "
            "print(sorted({'segmentation_models_pytorch', 'timm', 'torchvision'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}).stdout
    assert out.strip() == "[]"


GOOD = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


# numpy arrays are what a served model receives (serving.py), tensors what the stages pass.
@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
@pytest.mark.parametrize("x,rule", [
    (GOOD.astype(np.float64), r"dtype .*float64: expected float32"),
    ((GOOD * 255).round().astype(np.uint8), r"dtype .*uint8: expected float32"),
    (GOOD[:, :, :4], r"shape \(2, 3, 4, 8\): expected \(B, 3, 8, 8\)"),
    (GOOD[:, :1], r"shape \(2, 1, 8, 8\)"),
    (GOOD[0], r"shape \(3, 8, 8\)"),
    (GOOD[:0], r"shape \(0, 3, 8, 8\).*B >= 1"),
    (np.where(GOOD > 0.5, np.inf, GOOD).astype(np.float32), "NaN or infinite"),
    (GOOD * 255, r"span \[0.*, 25.*\]: expected \[0, 1\]"),
    (GOOD - 0.5, r"span \[-0.4.*, 0.4.*\]: expected \[0, 1\]"),
], ids=["float64", "uint8", "height", "channels", "3-D", "empty", "inf", "0-255", "negative"])
def test_validate_input_names_the_broken_rule(kind, x, rule):
    with pytest.raises(ValueError, match=rule):
        models.validate_input(kind(np.ascontiguousarray(x)), [3, 8, 8])
    assert models.validate_input(kind(GOOD), [3, 8, 8]) is not None


def test_validate_input_refuses_other_types():
    with pytest.raises(ValueError, match="expected a torch.Tensor or numpy.ndarray"):
        models.validate_input(GOOD.tolist(), [3, 8, 8])
