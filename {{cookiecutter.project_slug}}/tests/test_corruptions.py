import os
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from {{ cookiecutter.package_name }}.lib import corruptions, params
from {{ cookiecutter.package_name }}.lib.corruptions import CORRUPTIONS, LEVELS, corrupt


def _images(n=4, size=32):
    # Smooth shapes plus texture, away from 0 and 1, so every corruption has something to change.
    torch.manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, size)
    x = (ramp[None, None, :, None] * ramp[None, None, None, :]).repeat(n, 3, 1, 1)
    return (x + 0.1 * torch.rand(n, 3, size, size)).clamp(0, 1)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_grows_with_severity(kind):
    x = _images()
    dist = []
    for severity in LEVELS:
        xc = corrupt(x, kind, severity, torch.Generator().manual_seed(0))
        assert xc.shape == x.shape and xc.dtype == x.dtype
        assert xc.min() >= 0 and xc.max() <= 1
        dist.append((xc - x).abs().mean().item())
    assert 0 < dist[0], kind  # it changes the image
    assert all(a < b for a, b in pairwise(dist)), (kind, dist)  # monotone in severity


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_same_seed_same_output(kind):
    x = _images()
    a = corrupt(x, kind, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part
    torch.rand(10)
    b = corrupt(x, kind, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_noise_depends_on_the_seed_and_has_imagenet_c_sigma():
    x = torch.full((2, 3, 64, 64), 0.5)
    a = corrupt(x, "gaussian_noise", 1, torch.Generator().manual_seed(0))
    b = corrupt(x, "gaussian_noise", 1, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    assert (a - x).std().item() == pytest.approx(0.08, rel=0.05)  # ImageNet-C severity 1


def test_brightness_is_imagenet_cs_hsv_shift():
    # ImageNet-C: rgb -> hsv, V + c clipped, hsv -> rgb. Compared with matplotlib's HSV conversion.
    x = torch.rand(2, 3, 8, 8)
    x[0, :, 0, 0] = 0  # a black pixel turns grey
    for severity in LEVELS:
        hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + corruptions.BRIGHTNESS[severity - 1], 0, 1)
        expected = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2).float()
        assert torch.allclose(corrupt(x, "brightness", severity, None), expected, atol=1e-5)


def test_contrast_keeps_each_channel_mean_when_nothing_clips():
    x = _images()
    xc = corrupt(x, "contrast", 5, None)
    assert torch.allclose(xc.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(xc.std(dim=(2, 3)), 0.05 * x.std(dim=(2, 3)), rtol=1e-3)


def test_blur_works_on_images_smaller_than_its_kernel():
    x = _images(size=16)  # severity 5: sigma 6, radius 24 > 16, capped
    assert corrupt(x, "gaussian_blur", 5, None).shape == x.shape


def test_unknown_names_and_severities_list_the_valid_ones():
    x = _images()
    with pytest.raises(ValueError, match="valid: gaussian_noise, gaussian_blur, brightness, contrast, jpeg"):
        corrupt(x, "blur", 1, None)
    with pytest.raises(ValueError, match="must be one of 1, 2, 3, 4, 5"):
        corrupt(x, "jpeg", 6, None)


def test_params_schema_reads_the_names_from_here():
    rule = params.SCHEMA["robustness"]
    assert rule["corruptions"](list(CORRUPTIONS)) is None and rule["severities"](list(LEVELS)) is None
    assert "gaussian_blur" in rule["corruptions"](["blur"]) and rule["severities"]([0]) is not None


@pytest.mark.process
def test_importing_params_does_not_import_torchvision():
    code = f"import sys, {params.__name__}; print('torchvision' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # pytest's pythonpath setting, passed on
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip() == "False"
