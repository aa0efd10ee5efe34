"""Training throughput with the energy tracker (codecarbon, offline) on vs off, and its fixed costs.

    .venv/bin/python benchmarks/energy.py [--task segmentation] [--rounds 5] [--out benchmarks/results]

Bakes a default project and runs its prepare stage, then, in one process, trains two copies of the same model
an epoch at a time with the project's train.train_one_epoch, the order alternated every round: `off`, and
`on` with the tracker the stages use (energy.start) running through the epoch, started before and
stopped after it, as tracking.closing does around a stage. Ratios are taken round by round and reported as
medians with their min-max. Because that A/B ratio is as noisy as a shared machine, the tracker is also timed
directly: the wall time of its start and stop, and the CPU time of its sampling calls during the epochs
(power every second, energy every 15 s, each in a thread of its own), as a share of the "on" epochs' time
(an upper bound: it assumes every such second is taken from training). The first start in a process probes
the hardware (CPU model, RAPL, GPU); later starts reuse it (codecarbon.core.hardware_cache): both are
reported, since each stage is its own process and pays the first.
Target: the tracker costs <= 1% of a training epoch.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline import cpu_model  # noqa: E402

from helpers import bake, project_env  # noqa: E402  (after the sys.path insert)


def on_thread_cpu(function, spent):
    """`function` counting the CPU time of the thread it runs on into `spent`. codecarbon runs its sampling
    (power every second, energy every measure_power_secs) in a new threading.Timer thread per call, so the
    threads cannot be found once and measured: the calls are."""
    def run(*args, **kwargs):
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent["cpu_s"] += time.thread_time() - start
            spent["calls"] += 1
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="segmentation", choices=["segmentation", "classification"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--country", default="USA")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = bake(Path(tmp), task=args.task, init_git=False)
        package = project.name.replace("-", "_")
        subprocess.run([sys.executable, "-m", f"{package}.prepare"], cwd=project, env=project_env(project),
                       check=True, stdout=subprocess.DEVNULL)
        sys.path.insert(0, str(project / "src"))
        data = __import__(f"{package}.lib.dataset", fromlist=["x"])
        models = __import__(f"{package}.lib.models", fromlist=["x"])
        params = __import__(f"{package}.lib.params", fromlist=["x"])
        optim = __import__(f"{package}.lib.optim", fromlist=["x"])
        train = __import__(f"{package}.train", fromlist=["x"])
        task_lib = __import__(f"{package}.lib.task", fromlist=["x"])
        energy = __import__(f"{package}.lib.energy", fromlist=["x"])

        p = params.load(project / "params.yaml")
        tp = p["train"]
        info = json.loads((project / "data/prepared/dataset.json").read_text())
        task, num_classes = info["task"], info["num_classes"]
        train_set = data.Split.open(project / "data/prepared/train", tp["augment"], seed=0)
        torch.manual_seed(0)
        base = models.build_model(task=task, architecture=tp["model"]["architecture"],
                                  encoder=tp["model"]["encoder"], num_classes=num_classes, mean=info["mean"],
                                  std=info["std"], pretrained=False)
        loss_fn = task_lib.make_loss(task_lib.Task(task, num_classes), tp["loss"])
        variants = {}
        for name in ("off", "on"):
            model = copy.deepcopy(base)
            variants[name] = (model, optim.make_optimizer(model, tp["optimizer"], p["lr"]))
        loader = torch.utils.data.DataLoader(train_set, batch_size=tp["batch_size"], shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        common = {"t": task_lib.Task(task, num_classes), "device": torch.device("cpu"),
                  "grad_clip_norm": tp["grad_clip_norm"]}

        epoch_s = {name: [] for name in variants}
        start_s, stop_s, thread_s, calls, energy_kwh = [], [], [], [], []
        method = None
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                model, optimizer = variants[name]
                if name == "off":
                    t = time.perf_counter()
                    train.train_one_epoch(model, loader, loss_fn, optimizer, **common)
                    epoch_s[name].append(time.perf_counter() - t)
                    continue
                t = time.perf_counter()
                tracker = energy.start(args.country, "benchmark")
                start_s.append(time.perf_counter() - t)
                spent = {"cpu_s": 0.0, "calls": 0}
                for scheduler in (tracker._scheduler, tracker._scheduler_monitor_power):
                    scheduler.function = on_thread_cpu(scheduler.function, spent)
                t = time.perf_counter()
                train.train_one_epoch(model, loader, loss_fn, optimizer, **common)
                epoch_s[name].append(time.perf_counter() - t)
                thread_s.append(spent["cpu_s"])
                calls.append(spent["calls"])
                t = time.perf_counter()
                tracker.stop()
                stop_s.append(time.perf_counter() - t)
                energy_kwh.append(tracker.final_emissions_data.energy_consumed)
                method = energy.method(tracker)
            print(f"round {r + 1}: " + "  ".join(f"{n} {epoch_s[n][-1]:.2f}s" for n in names)
                  + f"  start {start_s[-1]:.2f}s stop {stop_s[-1]:.2f}s sampling {thread_s[-1]:.3f}s CPU "
                  f"({calls[-1]} calls)", flush=True)

    ratios = [a / b - 1 for a, b in zip(epoch_s["on"], epoch_s["off"], strict=True)]
    on_s = sum(epoch_s["on"])
    result = {
        "machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "shared": "yes: other jobs ran on the same 2 cores; run under nice -n 15"},
        "task": args.task, "rounds": args.rounds, "images_per_epoch": len(train_set), "method": method,
        "epoch_s": {n: [round(t, 3) for t in v] for n, v in epoch_s.items()},
        "on_vs_off": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "direct": {"first_start_s": start_s[0], "later_start_s": statistics.median(start_s[1:] or start_s),
                   "stop_s": statistics.median(stop_s), "sampling_cpu_s": thread_s, "sampling_calls": calls,
                   "on_epochs_s": on_s,
                   "running_share": sum(thread_s) / on_s,
                   "share_with_start_stop_per_epoch": (sum(thread_s) + sum(start_s[1:]) + sum(stop_s[1:]))
                   / sum(epoch_s["on"][1:] or epoch_s["on"]),
                   "first_start_share_of_an_epoch": start_s[0] / statistics.median(epoch_s["on"])},
        "energy_kwh_per_epoch": energy_kwh}
    out = Path(args.out) / f"energy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    d, o = result["direct"], result["on_vs_off"]
    print(f"\nmethod: {method}")
    print(f"epoch with tracker vs without: {o['median']:+.2%} (per round {o['min']:+.2%} .. {o['max']:+.2%})")
    print(f"tracker timed directly: its sampling ({sum(calls)} calls) {sum(thread_s):.3f}s CPU over {on_s:.1f}s "
          f"of epochs = "
          f"{d['running_share']:.2%}; with a (warm) start and stop per epoch {d['share_with_start_stop_per_epoch']:.2%}"
          f"; first start in a process {d['first_start_s']:.2f}s = {d['first_start_share_of_an_epoch']:.1%} of an "
          f"epoch; target <= 1%")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
