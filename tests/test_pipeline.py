"""End to end: bake, `dvc repro` with tiny params, and check DVC, MLflow, the registry and the report agree."""

import hashlib
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from conftest import STAGES, TINY, bake, free_port, project_env, sh, wait_until_up


def versions(project):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    return mlflow.MlflowClient().search_model_versions(f"name='{project.name}'")


def raw_image(project, tmp_path):
    """A test image as a user has it: a PNG file, read back as (1, 3, H, W) float32 pixels in [0, 1]."""
    images = np.load(project / "data/prepared/test/images.npy", mmap_mode="r")  # (N, H, W, 3) uint8
    Image.fromarray(images[0]).save(tmp_path / "image.png")
    pixels = np.asarray(Image.open(tmp_path / "image.png").convert("RGB"), dtype=np.float32) / 255
    return pixels.transpose(2, 0, 1)[None]


def runs(project):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A baked segmentation project, committed with tiny params, after one `dvc repro`. (The classification
    pipeline runs end to end in test_server.py, against an MLflow server; both baked test suites run.)"""
    project = bake(tmp_path_factory.mktemp("e2e"), task="segmentation")
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "commit", "-qam", "tiny params")
    out = sh(project, "dvc", "repro")
    return "segmentation", project, out


@pytest.mark.pipeline
def test_dvc_metrics_written(pipeline):
    task, project, out = pipeline
    assert all(f"Running stage '{stage}'" in out for stage in ("check", *STAGES))
    # DVC's tables show the headline figures, named as in MLflow; every figure is in metrics/<stage>.json.
    shown = json.loads(sh(project, "dvc", "metrics", "show", "--json"))
    shown = next(iter(shown.values()))["data"]
    headline = {k: v for path, f in shown.items() if path.startswith("metrics/headline/") for k, v in f["data"].items()}
    metric = "dice" if task == "segmentation" else "accuracy"
    assert 0 <= headline[f"test/{metric}"] <= 1 and headline["epochs_run"] == 2
    assert headline["prepare/train/images"] == 28 and headline["analyze/params/total"] > 0
    assert headline["optimize/deployable/speedup_batch_1"] > 0 and headline["robustness/security/fail"] == 0
    assert headline["register/passed"] == headline["register/registered"] == headline["register/version"] == 1
    assert len(headline) <= 24  # 91 columns of metrics before, and a 2,064-character `dvc metrics show` line
    (run,) = runs(project)
    assert shown["metrics/mlflow.json"]["data"]["run_id"] == run.info.run_id  # the link from a table row to its run
    assert all(run.data.metrics[k] == pytest.approx(v) for k, v in headline.items())
    full = {s: json.loads((project / f"metrics/{s}.json").read_text()) for s in STAGES}
    robust = full["robustness"]
    curve = json.loads((project / "plots/robustness/curve.json").read_text())
    assert curve[0]["epsilon"] == 0 and curve[0]["pgd"] == pytest.approx(robust[f"clean/{metric}"])
    register = full["register"]
    assert register["champion_version"] == 1 and register["gate/min_quality/passed"] == 1
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json"))["data"]
    assert {"loss", metric, "plots/train/curves.png", "plots/train/predictions.png",
            "plots/analyze/explanations.png"} <= set(plots)
    # Grad-CAM on analyze.explain.images (4) test images; each checked against a randomly initialised twin
    analyzed = full["analyze"]
    assert analyzed["explain/images"] == 4 and 0 <= analyzed["explain/flagged"] <= 4
    explained = json.loads((project / "reports/analyze.json").read_text())["summary"]["explain"]
    assert len(explained["test_images"]) == len(set(explained["test_images"])) == 4
    for row in explained["rows"]:
        assert row["spearman"] is None or -1 <= row["spearman"] <= 1
        assert row["flagged"] == (row["note"] == "trained map constant" or (
            row["spearman"] is not None and row["spearman"] > explained["max_rank_correlation"]))


@pytest.mark.pipeline
def test_mlflow_run_finished_with_params_metrics_and_artifacts(pipeline):
    task, project, _ = pipeline
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    (run,) = runs(project)
    assert run.info.run_id == ref["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["prepare.image_size"] == "32"
    assert run.data.tags["dvc_stage"] == "train" and run.data.tags["task"] == task
    lock = hashlib.sha256((project / "uv.lock").read_bytes()).hexdigest()
    assert run.data.tags["lock_sha256"] == lock and run.data.tags["torch_build"]  # the environment's lineage
    analyzed = json.loads((project / "metrics/analyze.json").read_text())
    assert run.data.metrics["analyze/latency/batch_1/p50_ms"] == pytest.approx(analyzed["latency/batch_1/p50_ms"])
    client = mlflow.MlflowClient()
    metric = "dice" if task == "segmentation" else "accuracy"
    history = client.get_metric_history(run.info.run_id, f"val/{metric}")
    assert [m.step for m in history] == [1, 2]
    artifacts = {f.path for folder in client.list_artifacts(run.info.run_id)
                 for f in client.list_artifacts(run.info.run_id, folder.path)}
    assert {"checkpoint/model.safetensors", "history/history.json", "config/params.yaml", "config/reference.json",
            "plots/curves.png", "plots/predictions.png", "metrics/train.json", "analyze/analyze.html",
            "optimize/optimize.md", "robustness/robustness.html", "report/model.html"} <= artifacts
    assert run.data.tags["registry_version"] == "1" and run.data.tags["registry_decision"] == "registered"
    assert {"analyze/explanations.png", "report/model_card.md"} <= artifacts
    assert run.data.metrics["analyze/explain/flagged"] == analyzed["explain/flagged"]
    assert sum(k.startswith("analyze/explain/randomisation_spearman/image_") for k in run.data.metrics) == sum(
        k.startswith("explain/randomisation_spearman/image_") for k in analyzed)
    # Energy of every stage that logs into the run, with the method codecarbon used (offline: nothing leaves)
    for stage in STAGES[1:]:
        assert run.data.metrics[f"{stage}/energy_kwh"] > 0 and run.data.metrics[f"{stage}/emissions_kg_co2eq"] > 0
        assert run.data.tags[f"{stage}.energy_method"].startswith("CPU: ")
    assert run.data.tags["energy_country"] == "USA" and not list(project.rglob("emissions*.csv"))
    # The registry shows the model card: the registered version's description
    card = client.get_model_version(project.name, "1").description
    assert card.startswith("# Model report") and len(card) <= 5000
    assert "| gates | passed: all 5 gates |" in card and "model-randomisation check" in card and "kWh" in card
    # Artifacts live under the project root, where the sqlite store is, not in a working directory.
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())


@pytest.mark.pipeline
def test_logged_model_loads_and_predicts(pipeline):
    task, project, _ = pipeline
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model(ref["model_uri"])
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    y = np.asarray(model.predict(x))
    assert y.shape == ((2, 1, 32, 32) if task == "segmentation" else (2, 3))
    assert np.isfinite(y).all()


@pytest.mark.pipeline
def test_second_repro_runs_nothing(pipeline):
    _, project, _ = pipeline
    out = sh(project, "dvc", "repro")
    assert "Running stage" not in out
    assert "up to date" in sh(project, "dvc", "status")


@pytest.mark.pipeline
def test_a_locked_version_change_marks_every_stage_changed(pipeline):
    _, project, _ = pipeline
    lock = project / "uv.lock"
    shipped = lock.read_text()
    changed = re.sub(r'(name = "tqdm"\nversion = ")[^"]+', r"\g<1>0.0.1", shipped, count=1)
    assert changed != shipped
    lock.write_text(changed)
    try:
        status = yaml.safe_load(sh(project, "dvc", "status", "--json"))
        assert set(status) == {"check", *STAGES}
        assert all({"changed deps": {"uv.lock": "modified"}} in status[s] for s in ("check", *STAGES)), status
    finally:
        lock.write_text(shipped)
    assert "up to date" in sh(project, "dvc", "status")


@pytest.mark.pipeline
def test_push_clone_pull_has_nothing_to_run(pipeline, tmp_path):
    # A colleague's machine: git clone + dvc pull from the shared remote give the same state, nothing to redo.
    _, project, _ = pipeline
    sh(project, "dvc", "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote"))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "pipeline results")
    assert "pushed" in sh(project, "dvc", "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    sh(clone, "dvc", "pull")
    assert "Running stage" not in sh(clone, "dvc", "repro")
    for path in ("metrics/train.json", "metrics/register.json", "models/model.safetensors",
                 "data/prepared/test/images.npy"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path


@pytest.mark.pipeline
def test_champion_loads_without_pickle_and_predicts_on_a_raw_image(pipeline, tmp_path, monkeypatch):
    task, project, _ = pipeline
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    (version,) = versions(project)
    run_id = json.loads((project / "metrics/mlflow.json").read_text())["run_id"]
    deployable = "models/deployable/" + json.loads((project / "models/deployable/deployable.json").read_text())["file"]
    recorded = json.loads((project / "reports/robustness.json").read_text())["sha256"][deployable]
    assert version.run_id == run_id and version.tags["run_id"] == run_id
    assert version.tags["artifact_sha256"] == recorded
    assert version.tags["lock_sha256"] == hashlib.sha256((project / "uv.lock").read_bytes()).hexdigest()
    assert {"git_commit", "dvc_exp_name", "data_sha256", "previous_champion", "promoted_at"} <= set(version.tags)
    model = mlflow.pyfunc.load_model(f"models:/{project.name}@champion")
    logits = model.predict(raw_image(project, tmp_path))  # one output schema, whichever variant is deployed
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    assert logits.shape == ((1, 1, 32, 32) if task == "segmentation" else (1, 3)) and np.isfinite(logits).all()


@pytest.mark.pipeline
def test_predict_command_gives_the_same_mask_from_the_deployable_and_the_champion(pipeline, tmp_path):
    task, project, _ = pipeline
    inputs = tmp_path / "in"
    inputs.mkdir()
    raw_image(project, inputs)  # in/image.png, 32 x 32
    Image.open(inputs / "image.png").resize((48, 40)).save(inputs / "other.jpg")  # another size and format
    package = project.name.replace("-", "_")
    sh(project, sys.executable, "-m", f"{package}.predict", str(inputs), "--out", str(tmp_path / "local"))
    champion = ["--model", f"models:/{project.name}@champion"]
    if make := shutil.which("make"):  # the Makefile's shortcut, with a registry URI
        sh(project, make, "predict", f"IN={inputs}", f"OUT={tmp_path / 'champion'}", f"ARGS={' '.join(champion)}")
    else:
        sh(project, sys.executable, "-m", f"{package}.predict", str(inputs), "--out", str(tmp_path / "champion"),
           *champion)
    for name, size in (("image", (32, 32)), ("other", (48, 40))):
        local, registered = (Image.open(tmp_path / d / "masks" / f"{name}.png") for d in ("local", "champion"))
        assert local.size == registered.size == size
        assert np.array_equal(np.asarray(local), np.asarray(registered))
    # Drift: the deployable finds its reference statistics in data/prepared, the champion in its run's artifacts.
    local, registered = (json.loads((tmp_path / d / "drift.json").read_text()) for d in ("local", "champion"))
    assert local["checked"] and registered["checked"] and local["images"] == 2
    assert local["tests"] == registered["tests"]  # the same images against the same training split
    # Champion vs challenger through the registry (one version here, under both aliases): one MLflow run.
    sh(project, sys.executable, "-m", f"{package}.challenge", f"models:/{project.name}@champion",
       f"models:/{project.name}@challenger", str(inputs), "--out", str(tmp_path / "ab"))
    result = json.loads((tmp_path / "ab" / "challenge.json").read_text())
    assert result["metrics"]["agreement/pixel_mean"] == result["metrics"]["agreement/mean_iou"] == 1.0
    assert result["latency"]["B"]["runs"] == 20 and (tmp_path / "ab" / "challenge.html").is_file()
    assert not list((tmp_path / "ab" / "disagreements").glob("*.png"))  # nowhere do they disagree
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=[f"{project.name}-challenge"], output_format="list")
    assert run.data.tags["challenge.model_a"] == f"models:/{project.name}@champion"
    assert run.data.tags["challenge.model_b"] == f"models:/{project.name}@challenger"
    assert run.data.metrics["agreement/pixel_mean"] == 1.0


def post(port, payload, content_type="application/json"):
    """(HTTP status, body) of a POST to the scoring server's /invocations (a payload that is not bytes as JSON)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post_declared(port, length):
    """(HTTP status, body, seconds) of a POST declaring `length` bytes and sending a few: refused unread, or not."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("POST", "/invocations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(length))
    connection.endheaders()
    start = time.monotonic()
    connection.send(b'{"inputs": [' + b"0.5, " * 1000)
    response = connection.getresponse()
    return response.status, response.read().decode(), time.monotonic() - start


@pytest.mark.services
def test_champion_answers_over_rest_and_refuses_bad_input_with_the_rule(pipeline, tmp_path):
    task, project, _ = pipeline
    port = free_port()
    env = project_env(project, MLFLOW_TRACKING_URI=f"sqlite:///{project}/mlflow.db",
                      MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", MODEL_URI=f"models:/{project.name}@champion")
    # `make serve`'s command (MLflow's scoring app behind lib/scoring.py), on a free port
    package = project.name.replace("-", "_")
    server = subprocess.Popen(["uvicorn", "--factory", f"{package}.lib.scoring:app", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=project, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    image = raw_image(project, tmp_path)  # (1, 3, 32, 32) float32 in [0, 1]
    expected = r"application/json \{\"inputs\": \[...\]\} holding float32 \(B, 3, 32, 32\) pixels in \[0, 1\]"
    # JSON has no dtypes (the server reads numbers as the signature's float32), so float64 is a Python-side
    # case, tested in the baked project's tests/test_serving.py.
    bad = {"NaN": ({"inputs": np.where(image > 0.5, np.nan, image).tolist()}, 400, "NaN or infinite"),
           "0-255 pixels": ({"inputs": (image * 255).tolist()}, 400, r"expected \[0, 1\]"),
           "wrong H, W": ({"inputs": image[:, :, :16].tolist()}, 400, r"[Ss]hape of input \(1, 3, 16, 32\)"),
           "wrong channels": ({"inputs": image[:, :1].tolist()}, 400, r"[Ss]hape of input \(1, 1, 32, 32\)"),
           "3-D": ({"inputs": image[0].tolist()}, 400, r"[Ss]hape of input \(3, 32, 32\)"),
           # refused before MLflow parses them (lib/scoring.py), each naming the input expected
           "booleans": ({"inputs": (image > 0.5).tolist()}, 400, r"inputs hold true/false \(booleans\), not numbers"),
           "empty": ({"inputs": []}, 400, "empty input: the request holds no image; send at least one"),
           "CSV": (b"a,b\n1,2\n", 415, "Content-Type text/csv: this model takes " + expected)}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        first = post(port, {"inputs": image.tolist()})
        refused = {name: post(port, x, "text/csv" if name == "CSV" else "application/json")
                   for name, (x, _, _) in bad.items()}
        too_big = post_declared(port, 127 * 2**20)  # MODEL_MAX_BYTES' default: 64 images of 3x32x32, ~5 MB
        ping = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).close()
        ping = time.monotonic() - ping
        after = post(port, {"inputs": image.tolist()})  # still serving, and the same answer
    finally:
        server.terminate()
        server.wait(30)
    for name, (status, body) in refused.items():
        assert status == bad[name][1], (name, status, body)
        assert re.search(bad[name][2], json.loads(body)["message"]), (name, body)
        # Only the message: no stack trace, no file of the server's.
        assert "stack_trace" not in body and "Traceback" not in body and 'File "' not in body, (name, body)
        assert str(project) not in body and sys.prefix not in body and "site-packages" not in body, (name, body)
    assert re.search(expected, json.loads(refused["booleans"][1])["message"])
    status, body, seconds = too_big
    assert status == 413 and "request body of 133169152 bytes over the server's limit of" in body, too_big
    assert "(MODEL_MAX_BYTES)" in body and seconds < 5 and ping < 5  # refused unread; /ping answers at once
    assert first[0] == after[0] == 200 and first[1] == after[1]
    logits = np.asarray(json.loads(after[1])["predictions"], dtype=np.float32)
    assert logits.shape == ((1, 1, 32, 32) if task == "segmentation" else (1, 3)) and np.isfinite(logits).all()


@pytest.mark.pipeline
def test_model_report_renders_with_its_images(pipeline, tmp_path):
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    _, project, _ = pipeline
    page = (project / "reports/model.html").read_text()
    assert "src=\"data:image/png;base64," in page and "http" not in page.split("<body>")[1]  # self-contained
    # The report has no script of its own: the test adds one that reports, through the title, whether each
    # image decoded, and reads the DOM Chromium ends with.
    probe = "<script>document.title = [...document.images].map(i => i.complete && i.naturalWidth > 0).join()</script>"
    (tmp_path / "report.html").write_text(page.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    loaded = dom.split("<title>")[1].split("</title>")[0].split(",")
    assert loaded == ["true"] * 5, loaded  # curves, predictions, explanations, Pareto plot, robustness curve
    text = re.sub(r"<[^>]+>", " ", dom.split("<body>")[1])
    summary = text.split("Summary")[1].split("Gates:")[0]  # the model card comes first
    for field in ("task", "data sha256", "git commit", "environment", "95% interval", "robustness score",
                  "explanations", "energy", "passed: all 5 gates"):
        assert field in summary, field
    assert "Params that differ from the generated params.yaml" in text and "train.epochs" in text
    assert "model-randomisation check" in text and "rank correlation, trained vs random weights" in text
    assert "emissions_kg_co2eq" in text and "CPU: " in text  # energy per stage and how it was estimated
    assert not re.search(r"<td>(True|False)</td>", page)  # verdicts in words
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a rendered page with plots, not a blank one


@pytest.mark.pipeline
def test_register_again_reuses_the_version(pipeline):
    task, project, _ = pipeline
    package = project.name.replace("-", "_")
    out = sh(project, "python", "-m", f"{package}.register")
    assert "already registered" in out and len(versions(project)) == 1


@pytest.mark.pipeline
def test_tampered_artifact_is_not_registered(pipeline):
    task, project, _ = pipeline
    package = project.name.replace("-", "_")
    report = project / "reports/robustness.json"
    original = report.read_text()
    data = json.loads(original)
    data["sha256"] = {k: "0" * 64 for k in data["sha256"]}
    report.write_text(json.dumps(data))
    try:
        out = sh(project, "python", "-m", f"{package}.register", ok=False)
    finally:
        report.write_text(original)
    assert "IntegrityError" in out and "sha256" in out and len(versions(project)) == 1


@pytest.mark.pipeline
def test_mlflow_project_experiment_is_one_run_in_a_temp_copy(pipeline):
    # `mlflow run -e experiment -P set=lr=...` = `dvc exp run --temp -S lr=...`: the run MLflow Projects
    # opens is the one train logs into and the later stages follow, registration included, although DVC runs
    # the stages in a copy under .dvc/tmp/exps that it deletes afterwards.
    _, project, _ = pipeline
    sh(project, "mlflow", "run", ".", "-e", "experiment", "-P", "set=lr=0.0123", "--env-manager",
       "local", "--experiment-name", project.name)
    run = runs(project)[-1]
    assert run.data.tags["mlflow.project.entryPoint"] == "experiment" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.0123" and run.data.tags.get("dvc_exp_name")
    # MLproject has no defaults of its own: what `set` doesn't name comes from params.yaml (2 tiny epochs here).
    assert run.data.params["train.epochs"] == str(yaml.safe_load((project / "params.yaml").read_text())["train"][
        "epochs"])
    assert "robustness/score" in run.data.metrics and run.data.tags["registry_version"] == "2"
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
    assert mlflow.MlflowClient().list_artifacts(run.info.run_id, "checkpoint")
    assert yaml.safe_load((project / "params.yaml").read_text())["lr"] != 0.0123  # the workspace is untouched
    # Linked both ways: dvc.lock's data hashes on the run, the run id in `dvc exp show`.
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert run.data.tags["dvc.dep.data/prepared"] == next(
        o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    assert run.info.run_id in sh(project, "dvc", "exp", "show", "--json")
    (v2,) = [v for v in versions(project) if v.version == 2]
    assert v2.tags["dvc_exp_name"] == run.data.tags["dvc_exp_name"] and v2.tags["previous_champion"] == "1"


def queue_start(project, *args):
    """`dvc queue start`, not through sh(): the worker DVC daemonises keeps our pipes open, and sh() would read
    them until the worker exits."""
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(["dvc", "queue", "start", *args], cwd=project, env=project_env(project),
                                stdout=log, stderr=subprocess.STDOUT)
        log.seek(0)
        assert result.returncode == 0, log.read()


def queue_settled(project, timeout=900):
    """`dvc queue status` once nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while any(s in (status := sh(project, "dvc", "queue", "status")) for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    return status


def queue_processes(project, kind):
    """DVC's queue processes of this project: kind "queue-worker" (celery) or "exec-run" (one experiment)."""
    return [p for p in psutil.process_iter(["cmdline", "cwd"])
            if kind in " ".join(p.info["cmdline"] or ()) and str(project) in (p.info["cwd"] or "")]


@pytest.mark.pipeline
def test_queue_one_worker_killed_and_recovered_then_two_workers_lose_no_run(pipeline):
    task, project, _ = pipeline
    before = {r.info.run_id for r in runs(project)}

    # One worker, SIGKILLed (OOM killer, a closed session) while its experiment trains (1000 epochs: still
    # training however long the worker takes to start); the experiment's own process lives on without it.
    # Then the recovery the generated docs/experiments.md gives, step by step.
    sh(project, "dvc", "exp", "run", "--queue", "-n", "cut", "-S", "lr=0.003", "-S", "train.epochs=1000",
       "-S", "train.early_stopping_patience=0")
    queue_start(project)  # one worker
    deadline = time.monotonic() + 300
    while not [r for r in runs(project) if r.info.status == "RUNNING"]:
        assert time.monotonic() < deadline, sh(project, "dvc", "queue", "logs", "cut")
        time.sleep(1)
    for worker in queue_processes(project, "queue-worker"):
        worker.kill()
    status = sh(project, "dvc", "queue", "status")
    assert re.search(r"cut\s.*Running", status) and "0 active" in status, status
    sh(project, "dvc", "queue", "kill", "cut")  # stops it: train ends its run KILLED at the next batch
    psutil.wait_procs(queue_processes(project, "exec-run"), timeout=120)
    sh(project, "dvc", "queue", "kill", "cut")  # its process gone: the task is marked failed
    assert re.search(r"cut\s.*Failed", sh(project, "dvc", "queue", "status"))
    sh(project, "dvc", "queue", "remove", "--failed")

    # The killed experiment again, beside another, on two workers.
    sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.003,0.004")
    queue_start(project, "-j", "2")
    status = queue_settled(project)
    assert "Failed" not in status and not re.search(r"^\S+\s+cut\s", status, re.M), status

    new = [r for r in runs(project) if r.info.run_id not in before]
    assert sorted((r.data.params["lr"], r.info.status) for r in new) == [
        ("0.003", "FINISHED"), ("0.003", "KILLED"), ("0.004", "FINISHED")]
    finished = [r for r in new if r.info.status == "FINISHED"]
    assert all(r.data.tags.get("registry_version") for r in finished)
    assert len({r.data.tags["dvc_exp_name"] for r in finished}) == 2
    assert all(r.info.artifact_uri.startswith((project / "mlruns").as_uri()) for r in new)
    assert all(r.data.tags["dvc_exp_name"] in sh(project, "dvc", "exp", "ls") for r in finished)


@pytest.mark.pipeline
def test_failing_gate_registers_nothing_and_fails_only_when_asked(pipeline):
    # Only register's params change, so only register reruns.
    task, project, _ = pipeline
    before = len(versions(project))
    out = sh(project, "dvc", "exp", "run", "-S", "register.gates.min_quality=2")
    assert "Running stage 'register'" in out and "Running stage 'train'" not in out
    assert "not registered: gates not passed: min_quality" in out
    assert "failed: 1 of 5 gates (min_quality)" in (project / "reports/model.html").read_text()
    decision = json.loads((project / "metrics/register.json").read_text())
    assert decision["passed"] == decision["registered"] == 0 and decision["gate/min_quality/passed"] == 0
    out = sh(project, "dvc", "exp", "run", "-S", "register.fail_on_gate=true", ok=False)
    assert "register.fail_on_gate is true" in out
    assert len(versions(project)) == before
