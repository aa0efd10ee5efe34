import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from {{ cookiecutter.package_name }} import prepare
from {{ cookiecutter.package_name }}.lib import ingest, paths

PARAMS = Path(__file__).parents[1] / "params.yaml"
TASK = yaml.safe_load(PARAMS.read_text())["prepare"]["task"]
SRC = str(Path(__file__).parents[1] / "src")


def make_folder(root, n, size=(40, 30), seed=0):
    """n JPEGs of smooth random colour (a different aspect than the square they are fitted to) in data/raw's
    layout for this project's task; binary masks for segmentation."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        img = (rng.uniform(0, 255, (h // 10 + 1, w // 10 + 1, 3))).astype(np.uint8)
        pic = Image.fromarray(img).resize((w, h), Image.BILINEAR)
        if TASK == "segmentation":
            (root / "images").mkdir(parents=True, exist_ok=True)
            pic.save(root / "images" / f"{i:05d}.jpg", quality=90)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:h // 2, w // 4:w // 2] = 255
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(root / "masks" / f"{i:05d}.png")
        else:
            folder = root / f"class_{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pic.save(folder / f"{i:05d}.jpg", quality=90)


def use_folder(tmp, monkeypatch, **prepare_params):
    p = yaml.safe_load(PARAMS.read_text())
    p["prepare"].update({"source": "folder", "raw_dir": str(tmp / "raw"), "image_size": 16, "num_classes": 2,
                         **prepare_params})
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(tmp)


def prepared_bytes(root):
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted((root / paths.PREPARED).rglob("*.npy"))}


def test_one_or_two_workers_write_identical_bytes(tmp_path, monkeypatch):
    make_folder(tmp_path / "raw", 24)
    out = {}
    for workers in (1, 2):
        use_folder(tmp_path, monkeypatch, workers=workers)
        prepare.main()
        out[workers] = prepared_bytes(tmp_path), json.loads(paths.DATASET.read_text())
    assert out[1][0] == out[2][0] and len(out[1][0]) == 6
    assert out[1][1]["sha256"] == out[2][1]["sha256"]
    images = np.load(tmp_path / paths.split("train") / "images.npy", mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3)


def test_synthetic_auto_makes_the_data_its_number_made(tmp_path, monkeypatch):
    p = yaml.safe_load(PARAMS.read_text())
    assert p["prepare"]["num_classes"] == ("auto" if TASK == "classification" else 2)  # the shipped default
    p["prepare"].update(synthetic_images=30, image_size=16)
    monkeypatch.chdir(tmp_path)
    infos = []
    for k in ("auto", ingest.SYNTHETIC_CLASSES[TASK]):
        p["prepare"]["num_classes"] = k
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
        prepare.main()
        infos.append(json.loads(paths.DATASET.read_text()))
    assert infos[0] == infos[1]  # sha256 of the splits included
    assert infos[0]["num_classes"] == {"segmentation": 2, "classification": 3}[TASK]


def test_auto_classes_and_the_resize_note(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "raw", 12)
    use_folder(tmp_path, monkeypatch, num_classes="auto")
    prepare.main()
    assert json.loads(paths.DATASET.read_text())["num_classes"] == 2
    assert "images of 40x30 resized to 16x16 (prepare.resize: pad)" in capsys.readouterr().out
    # The drift reference: every train image, in the split's order, with its size before resizing.
    reference = json.loads(paths.REFERENCE.read_text())
    train = np.load(paths.split("train") / "images.npy")  # (N, 16, 16, 3)
    features = np.asarray(reference["features"])
    assert reference["images"] == reference["sampled"] == len(train) == len(features)
    assert np.allclose(features[:, :3], train.reshape(len(train), -1, 3).mean(1), atol=1e-3)
    assert (features[:, 6:] == [40, 30]).all()
    assert np.asarray(reference["histogram"]).sum() == train.size


# Peak RSS of prepare in a fresh process, from after its imports (Linux: writing 5 to clear_refs resets the
# high-water mark VmHWM), so that the imports' own peak cannot hide what main() adds.
PEAK = ("import sys; sys.argv = ['prepare']; from {{ cookiecutter.package_name }} import prepare; "
        "open('/proc/self/clear_refs', 'w').write('5'); prepare.main(); "
        "print('PEAK_KB', next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")


def peak_rss_mb(root):
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", PEAK], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split("PEAK_KB")[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_prepare_memory_does_not_grow_with_the_number_of_images(tmp_path, monkeypatch):
    # 60 and 240 images of 256x256 prepared at full size: 11.8 vs 47.2 MB decoded, the difference (35 MB)
    # would show in the peak of a prepare that holds a split (or a float copy of it) in memory. A streaming
    # prepare holds a few images: its peak moves by noise only.
    peaks = {}
    for n in (60, 240):
        root = tmp_path / str(n)
        make_folder(root / "raw", n, size=(256, 256), seed=n)
        use_folder(root, monkeypatch, image_size=256, workers=1)
        peaks[n] = peak_rss_mb(root)
    decoded_growth = (240 - 60) * 256 * 256 * 3 / 2**20
    assert peaks[240] - peaks[60] < 0.25 * decoded_growth, (peaks, decoded_growth)
