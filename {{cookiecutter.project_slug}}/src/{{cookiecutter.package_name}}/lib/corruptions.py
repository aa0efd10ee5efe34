"""Common image corruptions at ImageNet-C's five severities, on float (B, 3, H, W) batches in [0, 1].

The constants are ImageNet-C's (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019), read from github.com/hendrycks/robustness
`ImageNet-C/imagenet_c/imagenet_c/corruptions.py` (the same values as `ImageNet-C/create_c/make_imagenet_c.py`),
so "gaussian_noise at severity 3" means what it means in the literature:

    gaussian_noise    sigma = .08 .12 .18 .26 .38     x + N(0, sigma^2), clipped
    gaussian_blur     sigma = 1 2 3 4 6               torchvision gaussian_blur, kernel radius round(4 sigma)
    brightness        c     = .1 .2 .3 .4 .5          V + c in HSV (ImageNet-C's definition, see below)
    contrast          c     = .4 .3 .2 .1 .05         (x - channel mean) * c + channel mean
    jpeg              quality = 25 18 15 10 7         PIL JPEG round trip, as ImageNet-C

ImageNet-C's images are 224 x 224; the same sigma blurs a 64 x 64 image more (CIFAR-10-C and Tiny-ImageNet-C
have smaller tables for that reason; this project keeps ImageNet-C's so figures compare with published ones).
Where the reference used scikit-image, this module uses torchvision (`transforms.v2.functional.gaussian_blur`)
or the reference's formula itself; JPEG goes through PIL, the encoder ImageNet-C used (torchvision 0.29's
`transforms.v2.JPEG` calls `torchvision.io` codecs, deprecated there in favour of TorchCodec):
- gaussian_noise draws its noise from the caller's `torch.Generator` (torchvision's GaussianNoise uses the
  global RNG, which would make a figure depend on whatever ran before).
- brightness adds c to V in HSV, as ImageNet-C does; torchvision's `adjust_brightness` multiplies every pixel
  by a factor instead (dark pixels barely move), a different corruption. With hue and saturation fixed the HSV
  round trip is linear in V, so V + c is the exact rescaling x * V'/V (V = max over channels).
- contrast uses the per-channel mean, as ImageNet-C does; torchvision's `adjust_contrast` blends towards the
  grayscale mean, which also shifts colours.
- blur pads by reflection (scikit-image: nearest); the kernel radius (round(4 sigma), scikit-image's
  truncation: 24 pixels at severity 5) is capped at the image side - 1, which reflection padding needs.

    >>> x = torch.rand(2, 3, 32, 32)
    >>> corrupt(x, "jpeg", 3, torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 32, 32])
"""

import io
import math

import torch

from {{ cookiecutter.package_name }}.lib import names

LEVELS = names.CORRUPTION_SEVERITIES
SOURCE = ("ImageNet-C severities (Hendrycks & Dietterich, ICLR 2019; hendrycks/robustness, "
          "ImageNet-C/imagenet_c/imagenet_c/corruptions.py)")

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMA = (1, 2, 3, 4, 6)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
JPEG_QUALITY = (25, 18, 15, 10, 7)


def gaussian_noise(x, severity, generator):
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + NOISE_SIGMA[severity - 1] * noise).clamp(0, 1)


def gaussian_blur(x, severity, generator):
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    sigma = BLUR_SIGMA[severity - 1]
    radius = min(math.floor(4 * sigma + 0.5), min(x.shape[-2:]) - 1)  # scikit-image's truncate=4; reflect pad < size
    return blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma)] * 2).clamp(0, 1)


def brightness(x, severity, generator):
    v = x.amax(dim=1, keepdim=True)  # (B, 1, H, W): HSV value
    v_new = (v + BRIGHTNESS[severity - 1]).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new).clamp(0, 1)  # black (S = 0) becomes grey


def contrast(x, severity, generator):
    mean = x.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    return ((x - mean) * CONTRAST[severity - 1] + mean).clamp(0, 1)


def jpeg(x, severity, generator):
    import numpy as np
    from PIL import Image

    out = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():  # (H, W, 3) uint8 each
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY[severity - 1])
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return (torch.stack(out).permute(0, 3, 1, 2).to(x.dtype) / 255).to(x.device)


# Keyed by names.CORRUPTIONS, the one list of valid names (params.py's schema reads it there).
CORRUPTIONS = {"gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "brightness": brightness,
               "contrast": contrast, "jpeg": jpeg}
assert tuple(CORRUPTIONS) == names.CORRUPTIONS, "names.CORRUPTIONS and corruptions.CORRUPTIONS differ"


def corrupt(x, kind, severity, generator):
    """x (B, 3, H, W) float in [0, 1] -> the same shape and dtype, corrupted; the same generator state gives
    the same output."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption {kind!r}: unknown; valid: {', '.join(CORRUPTIONS)}")
    if severity not in LEVELS:
        raise ValueError(f"corruption severity {severity!r}: must be one of {', '.join(map(str, LEVELS))}")
    return CORRUPTIONS[kind](x, severity, generator)
