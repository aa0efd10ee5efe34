import csv
import json

import pytest
import torch
import yaml

from {{ cookiecutter.package_name }} import challenge
from {{ cookiecutter.package_name }}.lib import files, models, paths


def test_two_deployables_agree_disagree_and_are_timed(deployable, synthetic_pngs, tmp_path):
    p = yaml.safe_load(paths.PARAMS.read_text())
    p["challenge"].update(top_k=3, warmup=1, rounds=3)
    p["mlflow"]["enabled"] = False  # the MLflow run is checked on the template's pipeline (a new store costs ~8 s)
    paths.PARAMS.write_text(yaml.safe_dump(p))
    other = tmp_path / "other"  # the same architecture from another seed: a challenger that disagrees
    torch.manual_seed(1)
    model, model_args = models.for_data({"architecture": "resnet18" if deployable["task"] == "classification"
                                         else "Unet", "encoder": "resnet18", "pretrained": False}, deployable)
    spec = json.loads(paths.DEPLOY_INFO.read_text())
    other.mkdir()
    models.save_checkpoint(other / spec["file"], model.eval(), model_args, input_shape=spec["input_shape"])
    files.write_json(other / paths.DEPLOY_INFO.name, spec)
    inputs = synthetic_pngs(tmp_path / "in", deployable, seed=5)
    out = tmp_path / "out"
    for wrong in (["--fail-on-drift"], ["--batch-size", "0"]):  # predict's option, a bad value: refused, nothing run
        with pytest.raises(SystemExit) as refused:
            challenge.main([str(paths.DEPLOY_DIR), str(other), str(inputs), "--out", str(out), *wrong])
        assert refused.value.code == 2 and not out.exists()
    challenge.main([str(paths.DEPLOY_DIR), str(other), str(inputs), "--out", str(out)])
    result = json.loads((out / "challenge.json").read_text())
    m = result["metrics"]
    assert m["images"] == 16 and result["latency_batch"] == 16
    key = "agreement/pixel_mean" if deployable["task"] == "segmentation" else "agreement/label"
    assert 0 <= m[key] < 1  # two different random models
    with open(out / "agreement.csv") as f:
        assert len(list(csv.DictReader(f))) == 16
    assert len(list((out / "disagreements").glob("*.png"))) == 3
    assert result["latency"]["A"]["runs"] == 3 and result["latency"]["B"]["speedup"] > 0
    assert "Where A and B disagree most" in (out / "challenge.md").read_text()
    assert (out / "challenge.html").read_text().count("data:image/png;base64") == 3
    assert not (tmp_path / "mlflow.db").exists()


def test_both_uris_and_out_are_checked_before_either_model_loads(project, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="s3x://b: unsupported scheme"):  # model A would fail too: no deployable
        challenge.main([str(paths.DEPLOY_DIR), "s3x://b", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    (tmp_path / "taken").write_text("")
    with pytest.raises(NotADirectoryError, match="--out .*taken: is a file"):
        challenge.main([str(paths.DEPLOY_DIR), str(paths.DEPLOY_DIR), str(tmp_path / "in"), "--out",
                        str(tmp_path / "taken")])
    assert not (tmp_path / "out").exists()
