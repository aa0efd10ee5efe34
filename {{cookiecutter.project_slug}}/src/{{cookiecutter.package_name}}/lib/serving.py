"""The deployable as an MLflow pyfunc model that checks its input before predicting, loaded without pickle.

    model_uri = serving.log_model(paths.DEPLOY_DIR, example)   # in an active MLflow run

Whichever variant optimize chose, the model answers the same way: float32 (B, 3, H, W) pixels in [0, 1] at
the trained size go in; float32 logits come out, (B, C_out, H, W) for segmentation (C_out = 1 for binary) and
(B, C) for classification. Any other input is refused by `models.validate_input`, the one definition of the
contract, with a message naming the rule; the model server (scoring.py, MLflow's scoring app) answers it with
HTTP 400.

The model is logged from code (MLflow's models-from-code): the MLmodel points at a three-line file that
imports `Deployable` from this package, and the package's modules it needs travel with the model
(`code_paths`), so loading runs our code and reads the ONNX or safetensors file, never a pickle.
"""

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from {{ cookiecutter.package_name }}.lib import models, runtime

RUNTIMES = runtime.RUNTIMES
# Images one request may hold: a larger batch is refused here, before inference; its bytes are capped before
# parsing, by scoring.py (MODEL_MAX_BYTES, by default room for this many images). Set in the server's environment.
MAX_BATCH_ENV = "MODEL_MAX_BATCH"
MAX_BATCH_DEFAULT = 64
# The file MLflow executes when the model loads; set_model hands it the model object. Kept out of this module,
# which must not register a model as a side effect of being imported.
MODEL_CODE = f'''"""Executed by MLflow when the model loads (models-from-code): no pickle involved."""
import mlflow

from {__name__} import Deployable

mlflow.models.set_model(Deployable())
'''
# Library modules that loading needs: serving and what it imports (models needs names and task; runtime models).
CODE = ("__init__.py", "names.py", "task.py", "models.py", "runtime.py", "serving.py")


def runner(path, runtime_name):
    """A function: float32 numpy (B, 3, H, W) -> float32 numpy logits, for the deployable file at `path`."""
    run = runtime.deployable(path, runtime_name)
    return lambda x: run(torch.from_numpy(x)).numpy()


class Deployable(mlflow.pyfunc.PythonModel):
    """The pyfunc: validate, then run the deployable file. Artifacts: `spec` (deployable.json), `model`."""

    def load_context(self, context):
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.input_shape = spec["input_shape"]  # [3, H, W]
        self.run = runner(context.artifacts["model"], spec["runtime"])
        self.max_batch = int(os.environ.get(MAX_BATCH_ENV, MAX_BATCH_DEFAULT))

    # np.ndarray: a type hint MLflow accepts without deriving a schema from it (the signature is the logged one).
    def predict(self, context, model_input: np.ndarray, params=None):
        try:
            models.validate_input(model_input, self.input_shape)
            if len(model_input) > self.max_batch:
                raise ValueError(f"a batch of {len(model_input)} images: at most {self.max_batch} per request "
                                 f"({MAX_BATCH_ENV} on the server); split the batch")
        except ValueError as e:
            # MlflowException with this code is what the scoring server turns into HTTP 400 carrying only the
            # message; any other exception becomes a 400 carrying a stack trace instead.
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        try:
            return self.run(model_input)
        except Exception:
            # The traceback (server paths, library internals) goes to the server's log, not to the client.
            logging.getLogger(__name__).exception("inference failed")
            raise MlflowException("inference failed on the server; its log has the details",
                                  error_code=INTERNAL_ERROR) from None


def requirements(runtime):
    """Pinned pip requirements of the model's runtime: writing them saves MLflow 7-15 s of inference."""
    names = ["mlflow", "numpy", "safetensors", "torch"]  # models.py imports torch and safetensors either way
    names += ["onnxruntime"] if runtime == "onnxruntime" else ["torchvision", "segmentation-models-pytorch"]
    return [f"{n}=={importlib.metadata.version(n).split('+')[0]}" for n in names]  # "2.14.1+cu128" -> 2.14.1


def log_model(deploy_dir, example):
    """Log deploy_dir (deployable.json + the file it names) as a pyfunc model in the active run; returns the
    model URI. `example`: float32 (B, 3, H, W) in [0, 1], B >= 2 (input example and signature; the batch
    dimension is left free)."""
    deploy_dir = Path(deploy_dir)
    spec = json.loads((deploy_dir / "deployable.json").read_text())
    models.validate_input(example, spec["input_shape"])
    output = runner(deploy_dir / spec["file"], spec["runtime"])(example)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / __package__.split(".")[0]  # the project's package, holding lib/
        (package / "lib").mkdir(parents=True)
        shutil.copy2(Path(__file__).parents[1] / "__init__.py", package / "__init__.py")
        for name in CODE:
            shutil.copy2(Path(__file__).with_name(name), package / "lib" / name)
        code = Path(tmp) / "deployable_model.py"
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name="deployable", python_model=str(code), code_paths=[str(package)],
            artifacts={"spec": str(deploy_dir / "deployable.json"), "model": str(deploy_dir / spec["file"])},
            input_example=example, signature=mlflow.models.infer_signature(example, output),
            pip_requirements=requirements(spec["runtime"])).model_uri
