import json
import os
import subprocess
import sys
import warnings

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from conftest import TASK
from {{ cookiecutter.package_name }}.lib import models, serving

SHAPE = [3, 32, 32]
ARGS = {"segmentation": {"architecture": "Unet", "encoder": "resnet18", "num_classes": 2},
        "classification": {"architecture": "resnet18", "encoder": None, "num_classes": 3}}
LOGITS = {"segmentation": (1, 32, 32), "classification": (3,)}  # per image: binary masks have one logit


def make_deployable(folder, task, runtime):
    """models/deployable as optimize writes it, for a random tiny model; returns (folder, the torch model)."""
    folder.mkdir()
    model_args = {"task": task, **ARGS[task], "mean": [0.5] * 3, "std": [0.25] * 3}
    model = models.build_model(**model_args).eval()
    models.save_checkpoint(folder / "model.safetensors", model, model_args, input_shape=SHAPE)
    name = "model.safetensors"
    if runtime == "onnxruntime":
        name = "model.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, torch.rand(2, *SHAPE), str(folder / name), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        (folder / "model.safetensors").unlink()
    (folder / "deployable.json").write_text(json.dumps(
        {"variant": runtime, "file": name, "input_shape": SHAPE, "model_args": model_args, "runtime": runtime}))
    return folder, model


@pytest.fixture(scope="module", params=[pytest.param(r, marks=pytest.mark.onnx) if r == "onnxruntime" else r
                                                for r in serving.RUNTIMES])
def logged(request, tmp_path_factory):
    """(the pyfunc logged and loaded back without pickle, the torch model it was made from, its URI)."""
    tmp = tmp_path_factory.mktemp(request.param)
    folder, model = make_deployable(tmp / "deployable", TASK, request.param)
    example = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        experiment = mlflow.create_experiment("serving", artifact_location=(tmp / "mlruns").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = serving.log_model(folder, example)
        yield mlflow.pyfunc.load_model(uri), model, uri


def test_good_input_gives_the_same_logits_whichever_runtime(logged):
    pyfunc, model, uri = logged
    x = np.random.default_rng(1).random((3, *SHAPE), dtype=np.float32)  # a batch size the example did not have
    y = pyfunc.predict(x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (3, *LOGITS[TASK])
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)  # ONNX Runtime: float rounding only
    signature = mlflow.models.get_model_info(uri).signature
    assert [(t.type, t.shape) for t in signature.inputs.inputs] == [(np.dtype("float32"), (-1, *SHAPE))]
    assert [(t.type, t.shape) for t in signature.outputs.inputs] == [(np.dtype("float32"), (-1, *LOGITS[TASK]))]


def _image(**kw):
    return np.random.default_rng(2).random((kw.pop("batch", 2), *kw.pop("shape", SHAPE)), dtype=np.float32)


BAD = {
    "NaN": (np.where(_image() > 0.5, np.nan, _image()).astype(np.float32), r"NaN or infinite"),
    "0-255 pixels": ((_image() * 255).round(), r"values span \[0, 255\]: expected \[0, 1\]"),
    "float64": (_image().astype(np.float64), r"float64.*float32"),
    "wrong H, W": (_image(shape=[3, 48, 32]), r"shape"),
    "wrong channels": (_image(shape=[1, 32, 32]), r"shape"),
    "3-D": (_image()[0], r"shape"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_refused_naming_the_rule(logged, name):
    x, rule = BAD[name]
    with pytest.raises(MlflowException, match=rule) as e:
        logged[0].predict(x)
    assert e.value.get_http_status_code() == 400


def test_loads_outside_the_project_with_the_code_it_was_logged_with(logged, tmp_path):
    # A fresh process without this project's src/ on the path: the model brings models.py and serving.py.
    _, _, uri = logged
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    code = (f"import mlflow, numpy as np; m = mlflow.pyfunc.load_model({uri!r}); "
            f"print(m.predict(np.zeros((1, {', '.join(map(str, SHAPE))}), np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith(str((1, *LOGITS[TASK])))
    downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    assert not [p for p in os.listdir(downloaded) if p.endswith((".pkl", ".pickle"))]


def test_a_batch_over_the_limit_is_refused_naming_the_setting(logged, monkeypatch):
    pyfunc = logged[0]
    monkeypatch.setattr(pyfunc.unwrap_python_model(), "max_batch", 2)
    with pytest.raises(MlflowException, match=f"a batch of 3 images: at most 2 per request .{serving.MAX_BATCH_ENV}"):
        pyfunc.predict(_image(batch=3))
    assert pyfunc.predict(_image(batch=2)).shape[0] == 2


def test_an_internal_error_reaches_the_client_without_a_trace_or_a_path(logged, monkeypatch):
    from mlflow.pyfunc import scoring_server

    pyfunc = logged[0]

    def broken(x):
        raise RuntimeError(f"failed in {__file__}")
    monkeypatch.setattr(pyfunc.unwrap_python_model(), "run", broken)
    body = json.dumps({"inputs": _image(batch=1).tolist()})
    with pytest.raises(MlflowException) as e:
        scoring_server.invocations(body, "application/json", pyfunc, pyfunc.metadata.get_input_schema())
    response = e.value.serialize_as_json()  # what the scoring server sends back
    assert e.value.get_http_status_code() == 500 and "inference failed on the server" in response
    assert "Traceback" not in response and __file__ not in response and "stack_trace" not in response
