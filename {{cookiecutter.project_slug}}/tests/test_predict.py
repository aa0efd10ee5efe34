import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from {{ cookiecutter.package_name }} import predict
from {{ cookiecutter.package_name }}.lib import decoding, inference, paths


def _inputs(folder):
    """Images of several sizes and kinds: a wide RGB JPEG, a tall PNG, an EXIF-rotated JPEG, a 16-bit PNG and
    its 8-bit twin, in a nested folder."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(folder / "wide.JPG")
    Image.fromarray(rng.integers(0, 256, (70, 20, 3), dtype=np.uint8)).save(folder / "sub" / "tall.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 24 high, shown 24 wide x 40 high
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    gray = rng.integers(0, 256, (33, 33), dtype=np.uint8)
    Image.fromarray(gray).save(folder / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    (folder / ".ipynb_checkpoints").mkdir()
    Image.fromarray(gray).save(folder / ".ipynb_checkpoints" / "hidden.png")
    return {"wide": (50, 30), "sub/tall": (20, 70), "rotated": (24, 40), "gray8": (33, 33), "gray16": (33, 33)}


def test_every_image_gets_a_prediction_at_its_own_size(deployable, tmp_path):
    sizes = _inputs(tmp_path / "in")
    predict.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--batch-size", "2"])
    if deployable["task"] == "segmentation":
        for name, size in sizes.items():
            mask = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
            assert mask.size == size and mask.mode == "P", name  # the palette index is the class
            assert np.asarray(mask).max() < deployable["num_classes"]
            assert Image.open(tmp_path / "out" / "overlays" / f"{name}.png").size == size
        twins = [np.asarray(Image.open(tmp_path / "out" / "masks" / f"{n}.png")) for n in ("gray8", "gray16")]
    else:
        with open(tmp_path / "out" / "predictions.csv") as f:
            rows = {r["file"].rsplit("in/", 1)[1]: r for r in csv.DictReader(f)}
        assert len(rows) == len(sizes)  # the hidden folder is skipped
        for r in rows.values():
            probs = [float(r[c]) for c in deployable["class_names"]]
            assert sum(probs) == pytest.approx(1, abs=1e-5) and r["label"] in deployable["class_names"]
        twins = [[rows[n][c] for c in deployable["class_names"]] for n in ("gray8.png", "gray16.png")]
    assert np.array_equal(twins[0], twins[1])  # a 16-bit image predicts as its 8-bit twin
    assert (tmp_path / "out" / "errors.csv").read_text().strip() == "file,error"


def test_a_mask_png_keeps_the_classes_and_shows_them_in_colour(tmp_path):
    mask = np.array([[0, 1, 2], [3, 1, 0]], np.uint8)  # (H, W) classes
    inference.mask_image(mask).save(tmp_path / "m.png")
    saved = Image.open(tmp_path / "m.png")
    assert saved.mode == "P" and np.array_equal(np.asarray(saved), mask)
    palette = np.asarray(saved.getpalette()[:12]).reshape(4, 3)  # classes 0..3
    assert palette[0].tolist() == [0, 0, 0] and all(c.any() for c in palette[1:])  # background black, others not
    assert len({tuple(c) for c in palette}) == 4  # each class its own colour
    assert np.array_equal(decoding.read(tmp_path / "m.png", "mask")[0], mask)  # prepare reads it back as classes


def test_a_corrupt_file_is_reported_and_the_rest_processed(deployable, tmp_path, capsys):
    _inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit, match="1 file"):
        predict.main([str(tmp_path / "in"), str(tmp_path / "in" / "wide.JPG"), "--out", str(tmp_path / "out")])
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "broken.png" in errors and "cannot read image" in errors
    assert "predict: 6 of 7 images" in capsys.readouterr().out


def test_missing_input_and_missing_model_are_named(project, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such file"):
        predict.main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="no deployable model"):
        predict.main([str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])


def test_drift_is_reported_and_fails_the_job_only_when_asked(deployable, synthetic_pngs, tmp_path, capsys):
    same = synthetic_pngs(tmp_path / "same", deployable, seed=1234)
    noisy = synthetic_pngs(tmp_path / "noisy", deployable, seed=1234, corruption="gaussian_noise")
    predict.main([str(same), "--out", str(tmp_path / "a"), "--fail-on-drift"])  # no exit: no drift
    evidence = json.loads((tmp_path / "a" / "drift.json").read_text())
    assert evidence["checked"] and not evidence["drift"] and evidence["images"] == 16
    assert "predict: no drift detected" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(noisy), "--out", str(tmp_path / "c"), "--fail-on-drift"])
    assert stopped.value.code == predict.DRIFT_EXIT == 3
    assert "predict: WARNING: drift" in capsys.readouterr().err  # without the flag, this warning and exit 0
    evidence = json.loads((tmp_path / "c" / "drift.json").read_text())
    assert evidence["drift"] and {"std_r", "std_g", "std_b"} <= set(evidence["drifted_features"])
    if deployable["task"] == "classification":
        assert "predicted_class_balance" in evidence
    paths.REFERENCE.unlink()  # a model without reference statistics: said, and refused under --fail-on-drift
    predict.main([str(same), "--out", str(tmp_path / "d")])
    assert not json.loads((tmp_path / "d" / "drift.json").read_text())["checked"]
    with pytest.raises(FileNotFoundError, match="no drift reference statistics"):
        predict.main([str(same), "--out", str(tmp_path / "e"), "--fail-on-drift"])


def _png(path, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def test_two_inputs_of_one_name_are_refused_before_anything_is_written(deployable, tmp_path):
    for name in ("x.png", "x.jpg", "a.b.png", "a.c.png"):
        _png(tmp_path / "in" / name)
    out = tmp_path / "out"
    if deployable["task"] == "segmentation":  # one mask per name
        with pytest.raises(ValueError, match=r"in/x.jpg and .*in/x.png would both be written as .*out/masks/x.png"):
            predict.main([str(tmp_path / "in"), "--out", str(out)])
        assert not out.exists()
        with pytest.raises(ValueError, match=r"a/v.png and .*b/v.png would both be written as"):  # files given
            predict.main([str(_png(tmp_path / "a" / "v.png")), str(_png(tmp_path / "b" / "v.png")), "--out", str(out)])
        (tmp_path / "in" / "x.jpg").unlink()
        predict.main([str(tmp_path / "in"), "--out", str(out)])
        assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.b.png", "a.c.png", "x.png"]  # dots kept
    else:  # one row per file: nothing is shared
        predict.main([str(tmp_path / "in"), "--out", str(out)])
        assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 4


def test_a_bad_out_or_model_uri_is_refused_before_any_model_loads(project, tmp_path):
    # No deployable here: each refusal comes before the model would be looked for.
    image = str(_png(tmp_path / "a.png"))
    (tmp_path / "taken").write_text("")
    with pytest.raises(NotADirectoryError, match=r"--out .*taken: is a file, not a folder; give a folder"):
        predict.main([image, "--out", str(tmp_path / "taken")])
    for model, message in (("models:/%%%", r"models:/%%%: not a valid model URI; valid forms: models:/<name>@<alias>, "
                                           r"models:/<name>/<version>"),
                           ("s3x://bucket/m", r"s3x://bucket/m: unsupported scheme s3x:; give a deployable folder")):
        with pytest.raises(ValueError, match=message):
            predict.main([image, "--out", str(tmp_path / "out"), "--model", model])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri", ["models:/m@champion", "models:/m/3", "models:/m/latest", "models:/m/Production",
                                 "models:/m-0123456789abcdef0123456789abcdef", "models/deployable", "C:/models/x"])
def test_every_model_uri_form_mlflow_resolves_passes(uri):
    inference.check_model_uri(uri)


def test_the_pixel_limit_predict_applies_is_prepare_max_image_pixels(deployable, tmp_path):
    p = yaml.safe_load(paths.PARAMS.read_text())
    p["prepare"]["max_image_pixels"] = 1000
    paths.PARAMS.write_text(yaml.safe_dump(p))
    _png(tmp_path / "in" / "small.png", 20)
    _png(tmp_path / "in" / "big.png", 40)  # 1600 pixels
    with pytest.raises(SystemExit, match="1 file"):
        predict.main([str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert "big.png: over prepare.max_image_pixels=1000" in (tmp_path / "out" / "errors.csv").read_text()
    p["prepare"]["max_image_pixels"] = 1600  # the advice given, taken
    paths.PARAMS.write_text(yaml.safe_dump(p))
    predict.main([str(tmp_path / "in"), "--out", str(tmp_path / "out")])
