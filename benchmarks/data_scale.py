"""Real data at real size: prepare's memory and throughput, training's memory and time waiting for data,
predict's speed, and what DVC caches, on generated folders of 512 x 512 JPEGs.

    .venv/bin/python benchmarks/data_scale.py [--sizes 1000 5000 20000] [--train-sizes 1000 5000]
        [--predict 1000] [--task classification] [--out benchmarks/results]

Bakes a default project, writes `max(sizes)` JPEGs of 512 x 512 (smooth random colour fields plus noise, about
the entropy of photos; class folders, or images + binary masks for segmentation), then, each in a fresh process:

- prepare on the first N images for each N in --sizes, with 1 and 2 workers: wall time, images/s, peak RSS of
  the main process (VmHWM) and of its largest worker (RUSAGE_CHILDREN), the prepared size on disk against the
  decoded size (N x 512 x 512 x 3 bytes) and the JPEGs' size;
- one training epoch (default params, default train.num_workers) on each of --train-sizes: peak RSS and the
  share of the epoch spent blocked on the loader (time inside the loader's `next`, over the epoch);
- predict on --predict images with an fp32 PyTorch deployable and an int8 ONNX Runtime one (random weights:
  speed does not depend on them), at batch 1 and 16, decoding and writing included, process start-up and
  imports excluded: images/s.

Targets (issue 14): prepare peak RSS <= 1.5 GB and flat over sizes, 2 workers >= 1.7x the throughput of 1;
train peak RSS <= 3 GB, data wait <= 5 %.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import bake, project_env  # noqa: E402  (after the sys.path insert)

PX = 512

# Runs in the project: prepare's main, then its peak RSS (VmHWM, reset after the imports) and its workers'.
PREPARE = """
import resource, sys, time
sys.argv = ['prepare']
from {pkg} import prepare
open('/proc/self/clear_refs', 'w').write('5')
start = time.perf_counter()
prepare.main()
wall = time.perf_counter() - start
hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))
print('RESULT', wall, hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

# One epoch of train's own loop over the prepared train split, the loader wrapped to time each `next`.
TRAIN = """
import json, resource, time, torch
from {pkg} import train
from {pkg}.lib import dataset, models, optim, params, paths, task
p = params.load()
tp = p["train"]
info = json.loads(paths.DATASET.read_text())
model, _ = models.for_data(tp["model"], info)
sets = {{"train": dataset.Split.open(paths.split("train"), tp["augment"], p["seed"])}}
loader = torch.utils.data.DataLoader(sets["train"], batch_size=tp["batch_size"], shuffle=True,
                                     num_workers=tp["num_workers"], generator=torch.Generator().manual_seed(0))
waited = [0.0]
class Timed:
    def __iter__(self):
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            waited[0] += time.perf_counter() - t
            yield batch
    def __len__(self):
        return len(loader)
loss = task.make_loss(task.Task.of(info), tp["loss"])
opt = optim.make_optimizer(model, tp["optimizer"], p["lr"])
start = time.perf_counter()
train.train_one_epoch(model, Timed(), loss, opt, t=task.Task.of(info), device=torch.device("cpu"),
                      grad_clip_norm=tp["grad_clip_norm"])
wall = time.perf_counter() - start
print("RESULT", wall, waited[0], len(sets["train"]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, tp["num_workers"])
"""

# fp32 (safetensors, PyTorch) and int8 (ONNX Runtime static QDQ) deployables of the prepared data's model.
DEPLOYABLES = """
import json, shutil, torch
from pathlib import Path
from {pkg} import optimize
from {pkg}.lib import dataset, files, models, paths
info = json.loads(paths.DATASET.read_text())
p = __import__("yaml").safe_load(open("params.yaml"))
torch.manual_seed(0)
model, model_args = models.for_data(p["train"]["model"], info)
model.eval()
shape = [3, info["image_size"], info["image_size"]]
images, _ = dataset.load_split(paths.split("train"))
for name in ("fp32", "int8"):
    d = Path("bench-models") / name
    d.mkdir(parents=True, exist_ok=True)
    if name == "fp32":
        models.save_checkpoint(d / "model.safetensors", model, model_args, input_shape=shape)
        spec = {{"file": "model.safetensors", "runtime": "pytorch"}}
    else:
        optimize.export_onnx(model, shape, d / "fp32.onnx")
        calibration = [dataset.to_float(images[i:i + 8]).numpy() for i in range(0, 64, 8)]
        optimize.quantize_onnx(d / "fp32.onnx", d / "model.onnx", calibration)
        spec = {{"file": "model.onnx", "runtime": "onnxruntime"}}
    files.write_json(d / "deployable.json", {{"variant": name, "input_shape": shape, "model_args": model_args, **spec}})
"""


# predict's main in a process whose imports are done: model loading, decoding, inference and writing timed.
PREDICT = """
import time
from {pkg} import predict
start = time.perf_counter()
predict.main({argv!r})
print("RESULT", time.perf_counter() - start)
"""


def make_image(raw, i, task, seed=0):
    """Image i (and its mask for segmentation) in data/raw's layout, drawn from its own seed: any process can
    write any image, and the folder is the same however the work is split."""
    rng = np.random.default_rng([seed, i])
    field = rng.uniform(0, 255, (9, 9, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(field).resize((PX, PX), Image.BICUBIC), np.float32)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if task == "segmentation":
        path = raw / "images" / f"{i:06d}.jpg"
        mask = np.zeros((PX, PX), np.uint8)
        mask[PX // 4:PX // 2, PX // 3:2 * PX // 3] = 255
        (raw / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(raw / "masks" / f"{i:06d}.png")
    else:
        path = raw / f"class_{i % 3}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)
    return path


def make_images(raw, n, task):
    """n JPEGs of 512 x 512 (and PNG masks for segmentation), written by one process per core."""
    with multiprocessing.Pool(len(os.sched_getaffinity(0))) as pool:
        return pool.starmap(make_image, [(raw, i, task) for i in range(n)], chunksize=64)


def subset(raw, target, n):
    """A raw folder of the first n images (symlinks), so every size reads the same files."""
    for p in sorted(p for p in raw.rglob("*") if p.is_file()):
        rel = p.relative_to(raw)
        if int(p.stem) < n:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).symlink_to(p)


def set_params(project, **prepare):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["prepare"].update(prepare)
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def run(project, code):
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=project_env(project), capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    return out.stdout


def du(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def bench_prepare(project, pkg, raw, sizes):
    rows = []
    for n in sizes:
        folder = project / f"raw-{n}"
        subset(raw, folder, n)
        jpeg_bytes = sum(os.path.getsize(p) for p in folder.rglob("*.jpg"))
        for workers in (1, 2):
            set_params(project, source="folder", raw_dir=str(folder), workers=workers)
            wall, hwm_kb, child_kb = map(float, run(project, PREPARE.format(pkg=pkg)).split("RESULT")[1].split())
            rows.append({"images": n, "workers": workers, "wall_s": wall, "images_per_s": n / wall,
                         "peak_rss_main_mb": hwm_kb / 1024, "peak_rss_worker_mb": child_kb / 1024,
                         "prepared_mb": du(project / "data/prepared") / 2**20,
                         "decoded_mb": n * PX * PX * 3 / 2**20, "jpeg_mb": jpeg_bytes / 2**20})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_train(project, pkg, sizes):
    rows = []
    for n in sizes:
        set_params(project, source="folder", raw_dir=str(project / f"raw-{n}"), workers=2)
        run(project, PREPARE.format(pkg=pkg))
        wall, waited, count, rss_kb, child_kb, workers = map(float, run(project, TRAIN.format(pkg=pkg)).split(
            "RESULT")[1].split())
        rows.append({"images": n, "train_images": int(count), "num_workers": int(workers), "epoch_s": wall,
                     "data_wait_s": waited, "data_wait_share": waited / wall, "peak_rss_mb": rss_kb / 1024,
                     "peak_rss_loader_worker_mb": child_kb / 1024})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_predict(project, pkg, raw, n):
    run(project, DEPLOYABLES.format(pkg=pkg))
    inputs = project / f"predict-{n}"
    subset(raw, inputs, n)
    rows = []
    for variant in ("fp32", "int8"):
        for batch in (1, 16):
            with tempfile.TemporaryDirectory() as out:
                argv = [str(inputs), "--out", out, "--model", str(project / "bench-models" / variant),
                        "--batch-size", str(batch)]
                wall = float(run(project, PREDICT.format(pkg=pkg, argv=argv)).split("RESULT")[1])
            rows.append({"variant": variant, "batch": batch, "images": n, "wall_s": wall, "images_per_s": n / wall})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--predict", type=int, default=1000)
    parser.add_argument("--task", default="classification", choices=("classification", "segmentation"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="data-scale-"))
    project = bake(work, task=args.task, init_git=False)
    pkg = project.name.replace("-", "_")
    raw = work / "raw"
    start = time.perf_counter()
    make_images(raw, max(args.sizes), args.task)
    print(f"generated {max(args.sizes)} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    result = {"task": args.task, "px": PX, "cores": len(os.sched_getaffinity(0)),
              "prepare": bench_prepare(project, pkg, raw, args.sizes)}
    result["train"] = bench_train(project, pkg, args.train_sizes) if args.train_sizes else []
    result["predict"] = bench_predict(project, pkg, raw, args.predict) if args.predict else []
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"data_scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
