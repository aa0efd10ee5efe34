"""Every file and folder the stages read or write, relative to the project root, written once.

dvc.yaml declares the same paths as deps and outs and stays the truth for DVC; a template test checks that
each path here is declared there, and that no stage module spells a path of its own.

    >>> str(metrics("train")), str(headline("train")), str(split("test"))
    ('metrics/train.json', 'metrics/headline/train.json', 'data/prepared/test')
"""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")
# What the pipeline itself rewrites in the git workspace (cache: false outputs and the lock).
PIPELINE_WRITTEN = ("dvc.lock", "metrics/", "plots/", "reports/")

# check's output: its content never changes, so it orders the stages after check without rerunning them.
CHECKED = Path("reports/check.txt")

PREPARED = Path("data/prepared")
DATASET = PREPARED / "dataset.json"  # task, classes, normalisation statistics, split sizes, data sha256
REFERENCE = PREPARED / "reference.json"  # the train split's statistics new images are checked against (drift.py)

CHECKPOINT = Path("models/model.safetensors")  # weights + constructor arguments
DEPLOY_DIR = Path("models/deployable")
DEPLOY_INFO = DEPLOY_DIR / "deployable.json"  # variant, file, runtime, input shape, constructor arguments

RUN_FILE = Path("metrics/mlflow.json")  # the pipeline's MLflow run, opened by train, reopened by later stages

HISTORY = Path("plots/train/history.json")
CURVES = Path("plots/train/curves.png")
PREDICTIONS = Path("plots/train/predictions.png")
EXPLANATIONS = Path("plots/analyze/explanations.png")  # Grad-CAM maps, trained vs randomised weights
PARETO = Path("plots/optimize/pareto.png")
ROBUSTNESS_CURVE = Path("plots/robustness/curve.json")
ROBUSTNESS_CURVE_PNG = Path("plots/robustness/curve.png")

ANALYZE_REPORT = Path("reports/analyze.json")
ANALYZE_HTML = Path("reports/analyze.html")
ANALYZE_LAYERS = Path("reports/analyze_layers.csv")
OPTIMIZE_REPORT = Path("reports/optimize.json")
OPTIMIZE_TABLE = Path("reports/optimize.md")
ROBUSTNESS_REPORT = Path("reports/robustness.json")
ROBUSTNESS_HTML = Path("reports/robustness.html")
MODEL_REPORT = Path("reports/model.html")
COMPARE = Path("reports/compare")  # compare's .md / .html / .png (not a pipeline output)
PR_REPORT = Path("reports/pr")  # pr_report's report.md and plots/ (not a pipeline output; git-ignored)


SPLIT_FILES = ("images.npy", "targets.npy")  # in each split's folder


def split(name):
    """data/prepared/<train|val|test>/: images.npy (uint8) and targets.npy, memory-mapped by the stages."""
    return PREPARED / name


def metrics(stage):
    """metrics/<stage>.json: every figure the stage measured, the dict it logs to MLflow (and later stages read)."""
    return Path(f"metrics/{stage}.json")


def headline(stage):
    """metrics/headline/<stage>.json: the few figures DVC's tables show (`dvc exp show`, `dvc metrics show /
    diff`), named as in MLflow."""
    return Path(f"metrics/headline/{stage}.json")
