"""train: fit the model on data/prepared, keep the best epoch, evaluate it on the test split, track it in MLflow.

    python -m {{ cookiecutter.package_name }}.train       # or: dvc repro train
    dvc exp run -S lr=0.003                               # an experiment = one MLflow run

Several processes (GPUs, or CPU cores for a test) with DistributedDataParallel, the batch split between them:

    torchrun --standalone --nproc_per_node 2 -m {{ cookiecutter.package_name }}.train

Reads params `seed`, `lr`, `train`, `mlflow`. Writes models/model.safetensors (weights + constructor
arguments), metrics/train.json, metrics/mlflow.json (the run id and logged model URI), plots/train/*.
Under torchrun only rank 0 writes files and talks to MLflow; train metrics are summed over ranks.
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from {{ cookiecutter.package_name }} import data, environment, files, models, params, tracking

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PREPARED = Path("data/prepared")
CHECKPOINT = "models/model.safetensors"
METRICS = "metrics/train.json"
RUN_FILE = "metrics/mlflow.json"
HISTORY = "plots/train/history.json"
CURVES = "plots/train/curves.png"
PREDICTIONS = "plots/train/predictions.png"
SEG_LOSSES = ("dice", "bce", "focal", "dice_bce")

# SIGTERM (`dvc queue kill`, schedulers, torchrun) and SIGINT (Ctrl-C) only set this; training stops at the next
# batch, and the run ends KILLED. An exception raised wherever a signal happens to land can leave a lock held
# inside a library (logging's handler locks, a database session), and MLflow's system-metrics thread, which
# end_run waits for, then blocks on it forever; between two batches no library code is running.
STOP = {"signal": None}


def request_stop(signum, frame):
    if STOP["signal"]:  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt(f"{STOP['signal']} received twice")
    STOP["signal"] = signal.Signals(signum).name
    # os.write, not print: the signal may have interrupted a print on the same stream.
    os.write(2, f"train: {STOP['signal']} received, stopping after this batch (again: at once)\n".encode())


def stop_point(outcome="no output half written, any MLflow run ended KILLED"):
    if STOP["signal"]:
        raise KeyboardInterrupt(f"{STOP['signal']} received; {outcome}")


def primary_metric(task):
    return "dice" if task == "segmentation" else "accuracy"


def make_loss(task, name, num_classes, label_smoothing=0.0):
    """loss(logits, targets). Segmentation: bce is cross-entropy when num_classes > 2."""
    if task == "classification":
        if name != "ce":
            raise ValueError(f"train.loss={name!r}: classification supports 'ce'")
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name not in SEG_LOSSES:
        raise ValueError(f"train.loss={name!r}: valid segmentation losses: {', '.join(SEG_LOSSES)}")
    binary = num_classes == 2
    mode = "binary" if binary else "multiclass"

    def ce(logits, y):  # logits (B, 1 or C, H, W), y (B, H, W) class indices
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float()) if binary else F.cross_entropy(logits, y)

    from segmentation_models_pytorch import losses  # imported here for the reason in models.py

    parts = {"dice": losses.DiceLoss(mode, from_logits=True), "bce": ce, "focal": losses.FocalLoss(mode)}
    chosen = [parts[n] for n in (("dice", "bce") if name == "dice_bce" else (name,))]
    return lambda logits, y: sum(fn(logits, y) for fn in chosen)


def predict(logits, task, num_classes):
    """Class indices: (B, H, W) for segmentation, (B,) for classification."""
    if task == "segmentation" and num_classes == 2:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def batch_stats(logits, y, task, num_classes):
    """Counts that add up over batches; `scores` turns their sum into metrics."""
    pred = predict(logits, task, num_classes)
    stats = {"correct": (pred == y).sum().double(), "total": torch.tensor(y.numel(), dtype=torch.float64)}
    if task == "segmentation":
        classes = torch.arange(1, num_classes, device=y.device)[:, None, None, None]  # foreground classes
        p, t = pred[None] == classes, y[None] == classes  # (K, B, H, W)
        stats["tp"] = (p & t).sum((1, 2, 3)).double()
        stats["fp"] = (p & ~t).sum((1, 2, 3)).double()
        stats["fn"] = (~p & t).sum((1, 2, 3)).double()
    return stats


def add_stats(a, b):
    return b if a is None else {k: a[k] + b[k] for k in a}


def scores(task, s):
    if task == "classification":
        return {"accuracy": (s["correct"] / s["total"]).item()}
    # Dataset-level (micro over pixels) per foreground class, then the mean over classes. A class absent from
    # both prediction and truth scores 1.
    denom_dice, denom_iou = 2 * s["tp"] + s["fp"] + s["fn"], s["tp"] + s["fp"] + s["fn"]
    dice = torch.where(denom_dice > 0, 2 * s["tp"] / denom_dice.clamp(min=1), torch.ones_like(denom_dice))
    iou = torch.where(denom_iou > 0, s["tp"] / denom_iou.clamp(min=1), torch.ones_like(denom_iou))
    return {"dice": dice.mean().item(), "iou": iou.mean().item(),
            "pixel_accuracy": (s["correct"] / s["total"]).item()}


def train_one_epoch(model, loader, loss_fn, optimizer, *, task, num_classes, device, augment, generator,
                    grad_clip_norm=None, amp=False):
    model.train()
    total, n, stats = 0.0, 0, None
    for images, y in tqdm(loader, desc="train", leave=False, disable=None):
        stop_point()
        x, y = data.augment(data.to_float(images), y, augment, generator)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        if grad_clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
        total += loss.item() * len(x)
        n += len(x)
        stats = add_stats(stats, batch_stats(logits.detach().float(), y, task, num_classes))
    if dist.is_initialized():  # each rank saw its shard: sum the counts, then score
        packed = torch.cat([torch.tensor([total, n], dtype=torch.float64, device=device),
                            *(v.reshape(-1) for v in stats.values())])
        dist.all_reduce(packed)
        total, n = packed[0].item(), packed[1].item()
        sizes = [v.numel() for v in stats.values()]
        stats = {k: t.reshape(v.shape) for (k, v), t in zip(stats.items(), packed[2:].split(sizes), strict=True)}
    return {"loss": total / n, **scores(task, stats)}


def evaluate(model, loader, loss_fn, *, task, num_classes, device, amp=False):
    model.eval()
    total, n, stats = 0.0, 0, None
    with torch.inference_mode():
        for images, y in loader:
            stop_point()
            x, y = data.to_float(images).to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).float()
            total += loss_fn(logits, y).item() * len(x)
            n += len(x)
            stats = add_stats(stats, batch_stats(logits, y, task, num_classes))
    return {"loss": total / n, **scores(task, stats)}


def make_optimizer(model, cfg, lr):
    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if cfg["name"] not in table:
        raise ValueError(f"train.optimizer.name={cfg['name']!r}: valid names: {', '.join(table)}")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if cfg["name"] == "sgd":
        kwargs.setdefault("momentum", 0.9)
    return table[cfg["name"]](model.parameters(), lr=lr, **kwargs)


def make_scheduler(optimizer, name, epochs):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":  # steps on the validation metric, which we maximise
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "none":
        return None
    raise ValueError(f"train.scheduler={name!r}: valid: cosine, plateau, step, none")


def fit(model, train_loader, val_loader, loss_fn, optimizer, scheduler, *, epochs, patience, task, num_classes,
        device, augment, generator, grad_clip_norm=None, amp=False, on_epoch=lambda record: None):
    """Train for up to `epochs`, stopping after `patience` epochs without a better validation metric
    (0: never). Returns (best state_dict, per-epoch history, best epoch)."""
    metric = primary_metric(task)
    net = model.module if isinstance(model, DistributedDataParallel) else model  # what is evaluated and saved
    best, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        tr = train_one_epoch(model, train_loader, loss_fn, optimizer, task=task, num_classes=num_classes,
                             device=device, augment=augment, generator=generator, grad_clip_norm=grad_clip_norm,
                             amp=amp)
        # Every rank evaluates the whole (small) validation split: identical metrics, identical early stopping.
        va = evaluate(net, val_loader, loss_fn, task=task, num_classes=num_classes, device=device, amp=amp)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(va[metric])
        elif scheduler is not None:
            scheduler.step()
        record = {"epoch": epoch, **{f"train/{k}": v for k, v in tr.items()},
                  **{f"val/{k}": v for k, v in va.items()}, "lr": lr,
                  "epoch_time_s": time.perf_counter() - start,
                  # train metric is measured on augmented batches in train mode; a growing gap = overfitting
                  "overfit_gap": tr[metric] - va[metric]}
        history.append(record)
        on_epoch(record)
        if va[metric] > best:
            best, best_epoch = va[metric], epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif patience and epoch - best_epoch >= patience:
            break
    return best_state, history, best_epoch


def plot_curves(history, metric, path):
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", metric), strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [r[f"{split}/{key}"] for r in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(images, targets, preds, task, class_names, path):
    """Segmentation: image / truth / prediction overlays per row. Classification: a grid of labelled images."""
    n = len(images)
    if task == "segmentation":
        fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for row, img, truth, pred in zip(axes, images, targets, preds, strict=True):
            panels = (("image", None), ("truth", truth), ("prediction", pred))
            for ax, (title, mask) in zip(row, panels, strict=True):
                ax.imshow(img.permute(1, 2, 0).numpy())
                if mask is not None:  # classes as solid colours over the image, background left clear
                    ax.imshow(np.ma.masked_equal(mask.numpy(), 0), cmap="cool", alpha=0.7, vmin=1,
                              vmax=max(len(class_names) - 1, 1), interpolation="nearest")
                ax.set_title(title if row is axes[0] else "")
                ax.axis("off")
    else:
        cols = min(n, 6)
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(2 * cols, 2.2 * ((n + cols - 1) // cols)),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img, t, p in zip(axes.flat, images, targets, preds, strict=False):
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(f"{class_names[p]}\n(true: {class_names[t]})", fontsize=8,
                         color="green" if p == t else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def init_distributed():
    """(rank, world size, local rank); joins the process group when started by torchrun (WORLD_SIZE > 1).
    NCCL between GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local_rank


def pick_device(name, local_rank=0):
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def main():
    p = params.load()
    files.require("train")
    tp, mp = p["train"], p["mlflow"]
    seed_everything(p["seed"])
    rank, world, local_rank = init_distributed()
    if tp["batch_size"] % world:
        raise ValueError(f"train.batch_size={tp['batch_size']}: must divide by the {world} processes (each takes "
                         "an equal share of every batch)")
    info = json.loads((PREPARED / "dataset.json").read_text())
    task, num_classes = info["task"], info["num_classes"]
    metric = primary_metric(task)
    seg = task == "segmentation"
    device = pick_device(tp["device"], local_rank)
    amp = bool(tp["amp"]) and device.type == "cuda"

    model_args = {"task": task, "architecture": tp["model"]["architecture"],
                  "encoder": tp["model"]["encoder"] if seg else None, "num_classes": num_classes,
                  "mean": info["mean"], "std": info["std"]}
    model = models.build_model(**model_args, pretrained=tp["model"]["pretrained"])
    models.check_input_size(model, info["image_size"], f"{model_args['architecture']}/{model_args['encoder']}")
    model.to(device)
    splits = {name: data.load_split(PREPARED / f"{name}.npz") for name in ("train", "val", "test")}
    shuffle = torch.Generator().manual_seed(p["seed"])
    sampler = (DistributedSampler(TensorDataset(*splits["train"]), world, rank, shuffle=True, seed=p["seed"])
               if world > 1 else None)
    loaders = {name: DataLoader(TensorDataset(*tensors), batch_size=tp["batch_size"] // world if name == "train"
                                else tp["batch_size"], shuffle=name == "train" and sampler is None,
                                sampler=sampler if name == "train" else None,
                                generator=shuffle if name == "train" and sampler is None else None,
                                num_workers=tp["num_workers"], pin_memory=device.type == "cuda")
               for name, tensors in splits.items()}
    loss_fn = make_loss(task, tp["loss"], num_classes, tp.get("label_smoothing", 0.0))
    optimizer = make_optimizer(model, tp["optimizer"], p["lr"])
    scheduler = make_scheduler(optimizer, tp["scheduler"], tp["epochs"])

    def start():  # inside closing(): a signal arriving as the run opens still ends it KILLED
        if not mp["enabled"] or rank != 0:
            return None
        experiment_id = tracking.set_experiment(mp, tracking.repo_root())
        tracking.close_orphans(experiment_id)
        name = mp["run_name"] or tracking.run_name(model_args["architecture"], model_args["encoder"],
                                                   tp["model"]["pretrained"])
        tags = {"task": task, "architecture": model_args["architecture"], "encoder": str(model_args["encoder"]),
                "pretrained": str(tp["model"]["pretrained"]).lower(),
                "augmentation": "on" if any(tp["augment"].values()) else "off", "loss": tp["loss"],
                "data_source": info["source"], "data_sha256": info["sha256"], "world_size": str(world),
                "device": str(device), **tracking.context_tags(), **environment.tags(),
                **tracking.process_tags()}
        started = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags,
                                   log_system_metrics=mp["system_metrics"])
        print(f"train: MLflow run {started.info.run_name} ({started.info.run_id}) in {mlflow.get_tracking_uri()}")
        return started

    with tracking.closing(start) as run:
        if run:
            mlflow.log_params(params.flatten(p))
            mlflow.log_dict(environment.installed_versions(), "environment/installed_versions.json")
            prepared = json.loads(Path("metrics/prepare.json").read_text())
            mlflow.log_metrics({f"prepare/{k}": v for k, v in prepared.items()})
            mlflow.log_metric("params/total", sum(t.numel() for t in model.parameters()))

        def on_epoch(r):
            if rank != 0:
                return
            print(f"epoch {r['epoch']:3d}  train/loss {r['train/loss']:.4f}  val/loss {r['val/loss']:.4f}  "
                  f"val/{metric} {r[f'val/{metric}']:.4f}  lr {r['lr']:.2e}  {r['epoch_time_s']:.1f}s", flush=True)
            if run:
                mlflow.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"])

        start = time.perf_counter()
        wrapped = (DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
                   if world > 1 else model)
        best_state, history, best_epoch = fit(
            wrapped, loaders["train"], loaders["val"], loss_fn, optimizer, scheduler, epochs=tp["epochs"],
            patience=tp["early_stopping_patience"], task=task, num_classes=num_classes, device=device,
            augment=tp["augment"], generator=torch.Generator().manual_seed(p["seed"] + 1 + rank),
            grad_clip_norm=tp["grad_clip_norm"], amp=amp, on_epoch=on_epoch)
        train_time = time.perf_counter() - start
        if world > 1:
            dist.destroy_process_group()
        if rank != 0:  # rank 0 holds the same weights and writes everything
            return
        model.load_state_dict(best_state)
        ev = {name: evaluate(model, loaders[name], loss_fn, task=task, num_classes=num_classes, device=device,
                             amp=amp) for name in ("val", "test")}
        metrics = {"best_epoch": best_epoch, "epochs_run": len(history),
                   "stopped_early": int(len(history) < tp["epochs"]), "train_time_s": train_time,
                   **{f"best_val/{k}": v for k, v in ev["val"].items()},
                   **{f"test/{k}": v for k, v in ev["test"].items()}}

        stop_point()
        model.cpu().eval()
        images, targets = splits["test"][0][:6], splits["test"][1][:6]
        with torch.inference_mode():
            preds = predict(model(data.to_float(images)), task, num_classes)
        for path in (CHECKPOINT, CURVES):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(CHECKPOINT) as tmp:
            models.save_checkpoint(tmp, model, model_args, input_shape=[3, info["image_size"], info["image_size"]])
        files.write_json(HISTORY, history)
        with files.atomic_path(CURVES) as tmp:
            plot_curves(history, metric, tmp)
        with files.atomic_path(PREDICTIONS) as tmp:
            plot_predictions(data.to_float(images), targets, preds, task, info["class_names"], tmp)
        files.write_json(METRICS, metrics)

        run_ref = {"enabled": False}
        if run:
            stop_point()
            mlflow.log_metrics(metrics)
            for path, folder in ((CHECKPOINT, "checkpoint"), (HISTORY, "history"), (METRICS, "metrics"),
                                 ("params.yaml", "config"), (str(PREPARED / "dataset.json"), "config"),
                                 (CURVES, "plots"), (PREDICTIONS, "plots")):
                mlflow.log_artifact(path, folder)
            # A batch of 2: MLflow's default pt2 (torch.export) format fixes dimensions of size 1.
            example = data.to_float(splits["test"][0][:2]).numpy()  # (2, 3, H, W) float32 in [0, 1]
            with torch.inference_mode():
                output = model(torch.from_numpy(example)).numpy()
            logged = mlflow.pytorch.log_model(
                model, name="model", input_example=example,
                signature=mlflow.models.infer_signature(example, output),
                pip_requirements=mlflow.pytorch.get_default_pip_requirements())
            run_ref = {"enabled": True, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                       "model_uri": logged.model_uri}
        files.write_json(RUN_FILE, run_ref)
    # A signal during the last writes: they completed, but whoever sent it (dvc queue kill, a scheduler) wants
    # the pipeline stopped, so exit as stopped instead of letting DVC go on to the next stage.
    stop_point("it came as train finished: outputs and MLflow run are complete")
    print(f"train: best epoch {best_epoch}/{len(history)}, val/{metric} {metrics[f'best_val/{metric}']:.4f}, "
          f"test/{metric} {metrics[f'test/{metric}']:.4f} -> {CHECKPOINT}, {METRICS}")


if __name__ == "__main__":
    # Here, not in main(): a process of its own defers signals; callers in-process keep their own handlers.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    try:
        main()
    except (ValueError, ConnectionError, FileNotFoundError) as e:
        sys.exit(f"train: {type(e).__name__}: {e}")
    except KeyboardInterrupt as e:
        print(f"train: stopped: {e or 'interrupted'}", file=sys.stderr)
        sys.exit(128 + signal.Signals[STOP["signal"] or "SIGINT"])  # the shell's code for death by that signal
