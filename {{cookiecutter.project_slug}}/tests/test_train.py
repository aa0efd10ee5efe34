import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }} import train
from {{ cookiecutter.package_name }}.lib import dataset, files, ingest, models, optim, params, stage
from {{ cookiecutter.package_name }}.lib import task as task_module

CLASSES = task_module.Task("classification", 3)


def _tiny_fit(seed, epochs=3, lr=0.01, patience=0):
    torch.manual_seed(seed)
    images, labels, _ = ingest.make_synthetic("classification", n=48, size=32, num_classes=3, seed=0)
    ds = dataset.Split(images, labels, augment={"hflip": True, "rot90": True, "brightness": 0.1}, seed=seed)
    model = models.build_model("classification", "resnet18", None, 3, [0.5] * 3, [0.25] * 3)
    opt = optim.make_optimizer(model, {"name": "adamw"}, lr)
    loss = task_module.make_loss(CLASSES, "ce")
    best_state, history, best_epoch = train.fit(
        model, DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        DataLoader(dataset.Split(images, labels), batch_size=16), loss, opt,
        optim.make_scheduler(opt, {"name": "cosine"}, epochs), epochs=epochs, patience=patience,
        t=CLASSES, device=torch.device("cpu"))
    return best_state, history, best_epoch


def test_fit_learns_and_is_deterministic_on_cpu():
    state_a, history, _ = _tiny_fit(seed=0)
    state_b, _, _ = _tiny_fit(seed=0)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert set(history[0]) >= {"epoch", "train/loss", "val/loss", "train/accuracy", "val/accuracy", "lr",
                               "epoch_time_s", "overfit_gap"}


def test_a_non_finite_loss_stops_training_at_once_naming_epoch_and_batch():
    images, labels, _ = ingest.make_synthetic("classification", n=48, size=16, num_classes=3, seed=0)
    ds = dataset.Split(images, labels)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    calls = []

    def loss(logits, y):  # cross-entropy that turns NaN on the second batch
        calls.append(1)
        return torch.nn.functional.cross_entropy(logits, y) * (float("nan") if len(calls) == 2 else 1.0)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optim.make_optimizer(model, {"name": "sgd"}, 0.1)
    with pytest.raises(ValueError, match="training diverged at epoch 1, batch 2 of 3: loss nan"):
        train.fit(model, DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16), loss, opt, None, epochs=2,
                  patience=0, t=CLASSES, device=torch.device("cpu"))
    assert len(calls) == 2  # stopped at that batch
    after = model.state_dict()
    assert all(torch.isfinite(after[k]).all() and not torch.equal(before[k], after[k]) for k in after)  # one good step


def test_without_a_terminal_an_epoch_prints_progress_lines(monkeypatch, capsys):
    monkeypatch.setattr(stage, "reported", functools.partial(stage.reported, every=0))  # a line after each batch
    images, labels, _ = ingest.make_synthetic("classification", n=40, size=16, num_classes=3, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    train.train_one_epoch(model, DataLoader(dataset.Split(images, labels), batch_size=16),
                          task_module.make_loss(CLASSES, "ce"), optim.make_optimizer(model, {"name": "sgd"}, 0.1),
                          t=CLASSES, device=torch.device("cpu"), epoch=2, epochs=5)
    lines = capsys.readouterr().out.splitlines()  # capsys: stderr is no terminal, so tqdm draws no bar
    assert [line.split(" after ")[0] for line in lines] == [
        "train: epoch 2/5, batch 1/3 (33%)", "train: epoch 2/5, batch 2/3 (66%)", "train: epoch 2/5, batch 3/3 (100%)"]


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    val = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9])  # best at epoch 2, then 2 epochs without improvement
    model = torch.nn.Linear(1, 1)

    def one_epoch(model, *a, **k):
        with torch.no_grad():
            model.weight += 1  # each epoch changes the weights, so "best" is a real snapshot
        return {"loss": 1.0, "accuracy": 0.5}

    monkeypatch.setattr(train, "train_one_epoch", one_epoch)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"loss": 1.0, "accuracy": next(val)})
    opt = optim.make_optimizer(model, {"name": "sgd"}, 0.1)
    w0 = model.weight.item()
    best_state, history, best_epoch = train.fit(
        model, None, None, None, opt, None, epochs=10, patience=2, t=task_module.Task("classification", 2),
        device=torch.device("cpu"))
    assert best_epoch == 2 and len(history) == 4
    assert best_state["weight"].item() == pytest.approx(w0 + 2)


def test_prepare_outputs(project, task):
    info = json.loads((project / "data/prepared/dataset.json").read_text())
    assert info["task"] == task and sum(info["sizes"].values()) == 30
    metrics = json.loads((project / "metrics/prepare.json").read_text())
    assert metrics["train/images"] == info["sizes"]["train"]
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_train_tracks_a_finished_run(project, task, runs, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # default 10 s outlasts tiny training
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    train.main()
    metric = task_module.primary_metric(task)
    m = json.loads((project / "metrics/train.json").read_text())
    assert 0 <= m[f"test/{metric}"] <= 1 and m["epochs_run"] == 2
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    (run,) = runs(project)
    assert run.info.status == "FINISHED" and run.info.run_id == ref["run_id"]
    assert run.data.params["lr"] == str(params.load()["lr"]) and run.data.params["train.epochs"] == "2"
    assert run.data.metrics[f"test/{metric}"] == pytest.approx(m[f"test/{metric}"])
    assert run.data.tags["task"] == task and "git_commit" in run.data.tags
    assert run.data.tags["threads"] == str(torch.get_num_threads())  # train.threads: null keeps torch's default
    assert "system/cpu_utilization_percentage" in run.data.metrics  # mlflow.system_metrics
    model, _ = models.load_checkpoint(project / "models/model.safetensors")
    assert model(torch.rand(2, 3, 32, 32)).shape[0] == 2


def test_train_threads_sets_torch_s_thread_count_and_records_it(project, runs, capsys):
    p = params.load()
    p["train"]["threads"] = 1
    files.write_json("params.yaml", p)  # JSON is YAML
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # not 1 already, whatever this machine's cores
        train.main()
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    (run,) = runs(project)
    assert used == 1 and run.data.tags["threads"] == "1"
    assert "epochs take ~" in (out := capsys.readouterr().out) and "on 1 CPU thread(s) (train.threads" in out


@pytest.mark.parametrize("exc,status", [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_interrupted_training_closes_the_run_and_writes_nothing(project, monkeypatch, exc, status, runs):
    def boom(*a, **k):
        raise exc("stop")

    monkeypatch.setattr(train, "train_one_epoch", boom)
    with pytest.raises(exc):
        train.main()
    (run,) = runs(project)
    assert run.info.status == status
    assert not (project / "models").exists() and not (project / "metrics/train.json").exists()


def _train_process(project, wait_for):
    """A real `python -m <pkg>.train` process, returned once it printed a line starting with `wait_for`."""
    # System metrics on (the default) and sampled often, so MLflow's monitor thread is busy with the store.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PYTHONUNBUFFERED": "1",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "{{ cookiecutter.package_name }}.train"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(wait_for):
            return proc
    raise AssertionError(f"train ended before printing {wait_for!r}")


@pytest.mark.process
def test_sigterm_ends_the_run_killed(project, runs):
    # A real signal to a real stage process, as `dvc queue kill` or a batch scheduler would send it.
    proc = _train_process(project, "train: MLflow run")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped: SIGTERM received" in out, out
    (run,) = runs(project)
    assert run.info.status == "KILLED"
    assert not (project / "models").exists()


@pytest.mark.process
def test_run_left_running_by_a_killed_process_is_closed_when_train_starts(project, runs):
    # SIGKILL: nothing in the process can end its run. The next stage start must not leave it RUNNING forever.
    proc = _train_process(project, "epoch")
    proc.kill()
    proc.communicate(timeout=60)
    (orphan,) = runs(project)
    assert orphan.info.status == "RUNNING"
    train.main()
    status = {r.info.run_id: r.info.status for r in runs(project)}
    assert status.pop(orphan.info.run_id) == "KILLED" and list(status.values()) == ["FINISHED"]


def _torchrun(project, *launcher_args):
    """`torchrun <launcher_args> -m <pkg>.train` started in project (one launcher = one node); returns the Popen,
    its output going to a file (a pipe nobody reads while another launcher is awaited could fill and block)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    log = tempfile.TemporaryFile("w+")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher_args,
                                 "-m", "{{ cookiecutter.package_name }}.train"], cwd=project, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    launcher.log = log
    return launcher


def _output(launcher):
    launcher.log.seek(0)
    return launcher.log.read()


def _finished(*launchers):
    """The launchers' outputs, once all exited 0."""
    for launcher in launchers:
        launcher.wait(timeout=600)
    outs = [_output(launcher) for launcher in launchers]
    for launcher, out in zip(launchers, outs, strict=True):
        assert launcher.returncode == 0, out[-5000:]
    return outs


def _listening(port, launcher, timeout=120):
    """Wait until the rendezvous store of `launcher` (the first node) accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and launcher.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the first node's rendezvous never listened on {port}: {_output(launcher)[-3000:]}")


@pytest.mark.process
def test_gloo_one_node_two_nodes_and_one_process_agree(project, runs, closed_port):
    # torchrun with gloo on CPU. One node, two processes (as on a multi-GPU machine), then two nodes of one
    # process each, two launchers meeting at a c10d rendezvous on 127.0.0.1 (as two machines would at the first
    # node's address). The same ranks see the same shards and the all-reduce sums the same numbers: the two
    # launches agree exactly. Rank 0 alone writes and tracks. One process: the same within tolerance (shards and
    # batch-norm statistics differ, so not bit for bit).
    p = params.load()
    p["train"].update(epochs=2, batch_size=8, early_stopping_patience=0)
    p["train"]["augment"].update(hflip=False, vflip=False, rot90=False, brightness=0.0)
    files.write_json("params.yaml", p)
    (out,) = _finished(_torchrun(project, "--standalone", "--nproc_per_node", "2"))
    assert out.count("train: best epoch") == 1  # one writer
    one_node = json.loads(Path("metrics/train.json").read_text())
    (run,) = runs(project)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"

    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "two-nodes",
                  "--rdzv-endpoint", f"127.0.0.1:{closed_port}", "--local-addr", "127.0.0.1"]
    first = _torchrun(project, *rendezvous)
    _listening(closed_port, first)  # the first launcher hosts the rendezvous store; the second joins it
    outs = _finished(first, _torchrun(project, *rendezvous))
    assert sum(o.count("train: best epoch") for o in outs) == 1 and sum(o.count("MLflow run") for o in outs) == 1
    two_nodes = json.loads(Path("metrics/train.json").read_text())
    two_nodes_run = next(r for r in runs(project) if r.info.run_id != run.info.run_id)
    assert len(runs(project)) == 2 and two_nodes_run.info.status == "FINISHED"
    assert two_nodes_run.data.tags["world_size"] == "2"
    assert two_nodes_run.info.run_id == json.loads(Path("metrics/mlflow.json").read_text())["run_id"]
    timing = ("train_time_s",)
    assert {k: v for k, v in two_nodes.items() if k not in timing} == {
        k: v for k, v in one_node.items() if k not in timing}

    train.main()  # the same params in one process
    single = json.loads(Path("metrics/train.json").read_text())
    metric = task_module.primary_metric(params.load()["prepare"]["task"])
    assert one_node["epochs_run"] == single["epochs_run"] == 2
    assert abs(one_node[f"test/{metric}"] - single[f"test/{metric}"]) <= 0.15, (one_node, single)
    assert abs(one_node["test/loss"] - single["test/loss"]) <= 0.25 * single["test/loss"], (one_node, single)


def test_unreachable_server_stops_before_training(project, monkeypatch, closed_port):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConnectionError, match="unreachable"):
        train.main()


def test_a_disk_without_room_for_the_model_stops_before_training(project, monkeypatch, runs):
    usage = shutil.disk_usage(project)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: usage._replace(free=2**20))
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(OSError, match=r": 1048576 bytes free \(1 MiB\), train needs about \d+ bytes \(\d+ MiB: the "):
        train.main()
    (run,) = runs(project)
    assert run.info.status == "FAILED" and not (project / "models").exists()


def test_tracking_can_be_switched_off(project):
    p = params.load()
    p["mlflow"]["enabled"] = False
    files.write_json("params.yaml", p)  # JSON is YAML
    train.main()
    assert json.loads(Path("metrics/mlflow.json").read_text()) == {"enabled": False}
    assert not Path("mlflow.db").exists()
    assert os.path.exists("models/model.safetensors")
