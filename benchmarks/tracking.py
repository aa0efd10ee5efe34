"""Training throughput with MLflow tracking on vs off, against a bare PyTorch loop doing the same steps.

    .venv/bin/python benchmarks/tracking.py [--task segmentation] [--rounds 5] [--out benchmarks/results]

Bakes a default project and runs its prepare stage, then, in one process, trains three copies of the same
model an epoch at a time, the order rotated every round so no variant always runs first:
  bare  a hand-written loop (forward, loss, backward, step) with no metric counting,
  off   the project's train.train_one_epoch (metrics counted), no MLflow,
  on    train.train_one_epoch, then mlflow.log_metrics into an active run on the embedded SQLite store,
        with system metrics sampling, as train.main does.
Ratios are taken round by round (the same round's epochs ran seconds apart) and reported as medians with
their min-max. Because the A/B ratio is as noisy as this machine, tracking is also timed directly: the wall
time inside mlflow.log_metrics plus the CPU time of MLflow's system-metrics thread, as a share of the "on"
epochs' time (an upper bound: it assumes every such second is taken from training).
Target: tracking costs <= 1% of training throughput.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline import cpu_model  # noqa: E402

from helpers import bake, project_env  # noqa: E402  (after the sys.path insert)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="segmentation", choices=["segmentation", "classification"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = bake(Path(tmp), task=args.task, init_git=False)
        package = project.name.replace("-", "_")
        subprocess.run([sys.executable, "-m", f"{package}.prepare"], cwd=project, env=project_env(project),
                       check=True, stdout=subprocess.DEVNULL)
        sys.path.insert(0, str(project / "src"))
        import mlflow

        data = __import__(f"{package}.lib.dataset", fromlist=["x"])
        models = __import__(f"{package}.lib.models", fromlist=["x"])
        params = __import__(f"{package}.lib.params", fromlist=["x"])
        train = __import__(f"{package}.train", fromlist=["x"])
        optim = __import__(f"{package}.lib.optim", fromlist=["x"])

        p = params.load(project / "params.yaml")
        tp = p["train"]
        info = json.loads((project / "data/prepared/dataset.json").read_text())
        task, num_classes = info["task"], info["num_classes"]
        task_lib = __import__(f"{package}.lib.task", fromlist=["x"])
        train_set = data.Split.open(project / "data/prepared/train", tp["augment"], seed=0)  # augmented per sample
        torch.manual_seed(0)
        base = models.build_model(task=task, architecture=tp["model"]["architecture"],
                                  encoder=tp["model"]["encoder"], num_classes=num_classes, mean=info["mean"],
                                  std=info["std"], pretrained=False)
        loss_fn = task_lib.make_loss(task_lib.Task(task, num_classes), tp["loss"])
        variants = {}
        for name in ("bare", "off", "on"):
            model = copy.deepcopy(base)
            variants[name] = (model, optim.make_optimizer(model, tp["optimizer"], p["lr"]))
        loader = torch.utils.data.DataLoader(train_set,
                                             batch_size=tp["batch_size"], shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        common = {"t": task_lib.Task(task, num_classes), "device": torch.device("cpu"),
                  "grad_clip_norm": tp["grad_clip_norm"]}

        def bare(model, optimizer):
            model.train()
            for x, y in loader:
                x = data.to_float(x)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                if tp["grad_clip_norm"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tp["grad_clip_norm"])
                optimizer.step()

        mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
        run = mlflow.start_run(log_system_metrics=True)
        epoch_s = {name: [] for name in variants}
        log_s = []
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                model, optimizer = variants[name]
                start = time.perf_counter()
                if name == "bare":
                    bare(model, optimizer)
                else:
                    metrics = train.train_one_epoch(model, loader, loss_fn, optimizer, **common)
                    if name == "on":
                        t = time.perf_counter()
                        mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=r + 1)
                        log_s.append(time.perf_counter() - t)
                epoch_s[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: " + "  ".join(f"{n} {epoch_s[n][-1]:.2f}s" for n in names), flush=True)
        monitor = next(t for t in threading.enumerate() if t.name == "SystemMetricsMonitor")
        cpu = next(t for t in psutil.Process().threads() if t.id == monitor.native_id)
        monitor_cpu_s = cpu.user_time + cpu.system_time
        mlflow.end_run()
        logged = len(mlflow.MlflowClient().get_run(run.info.run_id).data.metrics)

    def ratio(a, b):  # per round: how much longer a's epoch took than b's
        values = [x / y - 1 for x, y in zip(epoch_s[a], epoch_s[b], strict=True)]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {"machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
              "task": args.task, "rounds": args.rounds, "images_per_epoch": len(train_set),
              "epoch_s": {n: [round(t, 3) for t in v] for n, v in epoch_s.items()},
              "images_per_s": {n: len(train_set) / statistics.median(v) for n, v in epoch_s.items()},
              "tracking_overhead": ratio("on", "off"), "metric_counting_overhead": ratio("off", "bare"),
              "metrics_logged": logged,
              "direct": {"log_metrics_s": sum(log_s), "system_metrics_thread_cpu_s": monitor_cpu_s,
                         "on_epochs_s": sum(epoch_s["on"]),
                         "share": (sum(log_s) + monitor_cpu_s) / sum(epoch_s["on"])}}
    out = Path(args.out) / f"tracking-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    t, c = result["tracking_overhead"], result["metric_counting_overhead"]
    print(f"\n| images/s | bare {result['images_per_s']['bare']:.1f} | off {result['images_per_s']['off']:.1f} | "
          f"on {result['images_per_s']['on']:.1f} |")
    print(f"tracking on vs off: {t['median']:+.2%} (per round {t['min']:+.2%} .. {t['max']:+.2%}); target <= +1%")
    d = result["direct"]
    print(f"tracking timed directly: log_metrics {d['log_metrics_s']:.3f}s + system-metrics thread CPU "
          f"{d['system_metrics_thread_cpu_s']:.3f}s over {d['on_epochs_s']:.1f}s of epochs = {d['share']:.2%}")
    print(f"project loop vs bare loop: {c['median']:+.2%} (per round {c['min']:+.2%} .. {c['max']:+.2%})")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
