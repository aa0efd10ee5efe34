"""train: fit the model on data/prepared, keep the best epoch, evaluate it on the test split, track it in MLflow.

    python -m {{ cookiecutter.package_name }}.train       # or: dvc repro train
    dvc exp run -S lr=0.003                               # an experiment = one MLflow run

Several processes (GPUs, or CPU cores for a test) with DistributedDataParallel, the batch split between them:

    torchrun --standalone --nproc_per_node 2 -m {{ cookiecutter.package_name }}.train

Reads params `seed`, `lr`, `train`, `mlflow`. Writes models/model.safetensors (weights + constructor
arguments), metrics/train.json, metrics/mlflow.json (the run id and logged model URI), plots/train/*.
Under torchrun only rank 0 writes files and talks to MLflow; train metrics are summed over ranks.
"""

import tempfile
import time

import mlflow
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from {{ cookiecutter.package_name }}.lib import (
    dataset,
    environment,
    files,
    models,
    optim,
    params,
    paths,
    plots,
    runtime,
    stage,
    store,
    task,
    tracking,
)


def train_one_epoch(model, loader, loss_fn, optimizer, *, t, device, grad_clip_norm=None, amp=False, epoch=1,
                    epochs=1):
    model.train()
    total, n, rows = 0.0, 0, []
    for batch, (images, y) in enumerate(stage.checked(stage.progress(loader, f"train: epoch {epoch}/{epochs}")), 1):
        x, y = dataset.to_float(images).to(device), y.to(device)  # augmented by the loader's dataset.Split
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        runtime.finite_step(loss, model, grad_clip_norm, f"epoch {epoch}, batch {batch} of {len(loader)}")
        optimizer.step()
        total += loss.item() * len(x)
        n += len(x)
        rows.append(task.sample_stats(logits.detach().float(), y, t))
    # Under DDP each rank saw its shard: sum the counts over ranks, then score.
    sums = torch.tensor([total, n], dtype=torch.float64, device=device)
    totals = runtime.sum_over_ranks({"sums": sums, **task.reduce(task.concat(rows))})
    total, n = totals.pop("sums").tolist()
    return {"loss": total / n, **task.scores(t, totals)}


def evaluate(model, loader, loss_fn, *, t, device, amp=False):
    model.eval()

    def logits(x):  # (B, C, ...) logits, in bfloat16 on CUDA with amp
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x)
    batches = ((dataset.to_float(x).to(device), y.to(device)) for x, y in stage.checked(loader))
    out = task.score_batches(logits, batches, t, loss_fn=loss_fn)
    return {"loss": out["loss"], **task.scores(t, task.reduce(out["stats"]))}


def fit(model, train_loader, val_loader, loss_fn, optimizer, scheduler, *, t, epochs, patience, device,
        grad_clip_norm=None, amp=False, on_epoch=lambda record: None):
    """Train for up to `epochs`, stopping after `patience` epochs without a better validation metric
    (0: never). Returns (best state_dict, per-epoch history, best epoch)."""
    metric = t.metric
    net = model.module if isinstance(model, DistributedDataParallel) else model  # what is evaluated and saved
    best, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        for part in (getattr(train_loader, "sampler", None), getattr(train_loader, "dataset", None)):
            if hasattr(part, "set_epoch"):  # a new shuffle (DDP) and new augmentations each epoch
                part.set_epoch(epoch)
        tr = train_one_epoch(model, train_loader, loss_fn, optimizer, t=t, device=device, grad_clip_norm=grad_clip_norm,
                             amp=amp, epoch=epoch, epochs=epochs)
        # Every rank evaluates the whole (small) validation split: identical metrics, identical early stopping.
        va = evaluate(net, val_loader, loss_fn, t=t, device=device, amp=amp)
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


def make_loaders(sets, batch_size, num_workers, seed, world, rank, device, drop_last=False):
    """Train (shuffled; sharded under DDP, each rank taking batch_size / world), val and test loaders over
    dataset.Split datasets (memory-mapped: no split is held in memory)."""
    common = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    shuffle = ({"sampler": DistributedSampler(sets["train"], world, rank, shuffle=True, seed=seed)} if world > 1
               else {"shuffle": True, "generator": torch.Generator().manual_seed(seed)})
    return {"train": DataLoader(sets["train"], batch_size=batch_size // world, drop_last=drop_last, **shuffle,
                                **common),
            **{name: DataLoader(sets[name], batch_size=batch_size, **common) for name in ("val", "test")}}


def start_run(p, info, model_args, world, device):
    """The pipeline's MLflow run, with its tags, params and prepare's statistics."""
    cfg = p["train"]
    tags = {"task": info["task"], "architecture": model_args["architecture"], "encoder": str(model_args["encoder"]),
            "pretrained": str(cfg["model"]["pretrained"]).lower(), "loss": cfg["loss"], "data_source": info["source"],
            "augmentation": "on" if any(cfg["augment"].values()) else "off", "data_sha256": info["sha256"],
            "world_size": str(world), "device": str(device), "threads": str(torch.get_num_threads()),
            **environment.tags()}
    run = tracking.start(p["mlflow"], tracking.run_name(model_args["architecture"], model_args["encoder"],
                                                        cfg["model"]["pretrained"]), tags)
    print(f"train: MLflow run {run.info.run_name} ({run.info.run_id}) in {store.mask(mlflow.get_tracking_uri())}")
    mlflow.log_params(params.flatten(p))
    mlflow.log_dict(environment.installed_versions(), "environment/installed_versions.json")
    mlflow.log_metrics({f"prepare/{k}": v for k, v in files.read_json(paths.metrics("prepare")).items()})
    return run


def write_outputs(model, model_args, info, history, sample):
    """Checkpoint, history and plots, each whole or not at all. sample: (uint8 images, targets)."""
    model.cpu().eval()
    images = dataset.to_float(sample[0])
    with torch.inference_mode():
        preds = task.predict(model(images), task.Task.of(info))
    with files.atomic_path(paths.CHECKPOINT) as tmp:
        models.save_checkpoint(tmp, model, model_args, input_shape=[3, info["image_size"], info["image_size"]])
    files.write_json(paths.HISTORY, history)
    with files.atomic_path(paths.CURVES) as tmp:
        plots.curves(history, task.Task.of(info).metric, tmp)
    with files.atomic_path(paths.PREDICTIONS) as tmp:
        plots.predictions(images, sample[1], preds, info["task"], info["class_names"], tmp)


# What train logs beside its metrics, and where in the run.
ARTIFACTS = ((paths.CHECKPOINT, "checkpoint"), (paths.HISTORY, "history"), (paths.metrics("train"), "metrics"),
             (paths.PARAMS, "config"), (paths.DATASET, "config"), (paths.REFERENCE, "config"),
             (paths.CURVES, "plots"), (paths.PREDICTIONS, "plots"))


def check_room(model, run):
    """Before the first epoch: room for the checkpoint (the model's tensors' bytes) in models/ and, when tracked,
    for log_model's copy in the temporary folder and the two in the run's artifacts (checkpoint, logged model)."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needs = {paths.CHECKPOINT.parent: (size, "the checkpoint")}
    if run is not None:
        needs[tempfile.gettempdir()] = (size, "the model, as MLflow stages it")
        if (artifacts := tracking.local_artifacts(run)) is not None:
            needs[artifacts] = (2 * size, "the checkpoint and the logged model")
    files.check_room(needs, "train")


def log_model(run, model, example):
    """The model (pt2: no pickle) into the run; returns train's run reference."""
    with torch.inference_mode():  # a batch of 2: MLflow's default pt2 (torch.export) format fixes size-1 dimensions
        signature = mlflow.models.infer_signature(example, model(torch.from_numpy(example)).numpy())
    logged = mlflow.pytorch.log_model(model, name="model", input_example=example, signature=signature,
                                      pip_requirements=mlflow.pytorch.get_default_pip_requirements())
    return {"enabled": True, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "model_uri": logged.model_uri}


def epoch_logger(run, rank, metric, epochs, threads):
    def on_epoch(r):  # r: one record of the history
        if rank == 0:
            print(f"epoch {r['epoch']:3d}  train/loss {r['train/loss']:.4f}  val/loss {r['val/loss']:.4f}  "
                  f"val/{metric} {r[f'val/{metric}']:.4f}  lr {r['lr']:.2e}  {r['epoch_time_s']:.1f}s", flush=True)
        if rank == 0 and r["epoch"] == 1 and epochs > 1:  # your data, your machine: the time to expect
            print(f"train: at this pace, {epochs} epochs take ~{epochs * r['epoch_time_s'] / 60:.1f} min on "
                  f"{threads} CPU thread(s) (train.threads; early stopping may end sooner)", flush=True)
        if run:
            mlflow.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"])
    return on_epoch


def main():
    st = stage.begin("train")
    p, cfg = st.params, st.section
    runtime.seed_everything(p["seed"])
    threads = runtime.use_threads(cfg["threads"])  # first: the model is built, and every op runs, on this many
    rank, world, local_rank = runtime.init_distributed(cfg["batch_size"])
    info = files.read_json(paths.DATASET)
    t = task.Task.of(info)
    m = t.metric
    device = runtime.pick_device(cfg["device"], local_rank)
    amp = bool(cfg["amp"]) and device.type == "cuda"
    model, model_args = models.for_data(cfg["model"], info)
    model.to(device)
    sets = {name: dataset.Split.open(paths.split(name), cfg["augment"] if name == "train" else None, p["seed"])
            for name in ("train", "val", "test")}
    loaders = make_loaders(sets, cfg["batch_size"], cfg["num_workers"], p["seed"], world, rank, device,
                           runtime.drop_last_batch(len(sets["train"]), cfg["batch_size"], world, model))
    loss_fn = task.make_loss(t, cfg["loss"], cfg.get("label_smoothing", 0.0))
    optimizer = optim.make_optimizer(model, cfg["optimizer"], p["lr"])
    tracked = p["mlflow"]["enabled"] and rank == 0
    # Opened inside closing(): a signal arriving as the run opens still ends it KILLED.
    with tracking.closing(lambda: start_run(p, info, model_args, world, device) if tracked else None, st.name,
                          p["mlflow"]) as run:
        if rank == 0:  # the one that writes
            check_room(model, run)
        start = time.perf_counter()
        best_state, history, best_epoch = fit(
            runtime.data_parallel(model, world, device), loaders["train"], loaders["val"], loss_fn, optimizer,
            optim.make_scheduler(optimizer, cfg["scheduler"], cfg["epochs"]), epochs=cfg["epochs"],
            t=t, patience=cfg["early_stopping_patience"], device=device, grad_clip_norm=cfg["grad_clip_norm"], amp=amp,
            on_epoch=epoch_logger(run, rank, t.metric, cfg["epochs"], threads))
        metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "train_time_s": time.perf_counter() - start,
                   "stopped_early": int(len(history) < cfg["epochs"]), "params/total": models.parameter_count(model)}
        if world > 1:
            dist.destroy_process_group()
        if rank != 0:  # rank 0 holds the same weights and writes everything
            return
        model.load_state_dict(best_state)
        for name, prefix in (("val", "best_val"), ("test", "test")):
            metrics.update({f"{prefix}/{k}": v for k, v in evaluate(
                model, loaders[name], loss_fn, t=t, device=device, amp=amp).items()})
        stage.stop_point()
        write_outputs(model, model_args, info, history, dataset.head(sets["test"], 6))
        st.publish(run, metrics, ARTIFACTS, headline=(f"best_val/{m}", f"test/{m}", "epochs_run", "train_time_s"))
        stage.stop_point()
        example = dataset.to_float(dataset.head(sets["test"], 2)[0]).numpy()  # (2, 3, H, W) float32 in [0, 1]
        files.write_json(paths.RUN_FILE, log_model(run, model, example) if run else {"enabled": False})
    # A signal during the last writes: they completed, but whoever sent it (dvc queue kill, a scheduler) wants
    # the pipeline stopped, so exit as stopped instead of letting DVC go on to the next stage.
    stage.stop_point("it came as train finished: outputs and MLflow run are complete")
    print(f"train: best epoch {best_epoch}/{len(history)}, val/{m} {metrics[f'best_val/{m}']:.4f}, "
          f"test/{m} {metrics[f'test/{m}']:.4f} -> {paths.CHECKPOINT}, {st.metrics_file}")


if __name__ == "__main__":
    stage.run("train", main, defer_signals=True)
