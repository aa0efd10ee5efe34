"""predict: the model on new images, decoded by the rules it was trained with.

    python -m {{ cookiecutter.package_name }}.predict INPUT... --out DIR              # the deployable, offline
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --model "models:/<name>@champion"
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --fail-on-drift      # a batch job's alarm
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --compare MODEL_A MODEL_B  # A/B, see below
    make predict IN=photos/ OUT=predictions/

INPUT: image files or folders (searched recursively; hidden files and folders skipped), any size, kind and
orientation prepare accepts (lib/decoding.py: every PIL mode, 16-bit, EXIF orientation). Each image is decoded and
fitted to the model's size exactly as prepare did, from the dataset description the model was trained on
(data/prepared/dataset.json for the local deployable, the run's config/dataset.json for a registry URI).
{%- if cookiecutter.task == 'segmentation' %}

Writes DIR/masks/<name>.png, the class index per pixel at the image's own size and (EXIF-upright)
orientation, and DIR/overlays/<name>.png, the classes in colour over the image.
{%- else %}

Writes DIR/predictions.csv: file, label, then the probability of each class.
{%- endif %}
A file that cannot be read is listed in DIR/errors.csv and the others are processed.

Drift: the new images are tested against the statistics of the split the model was trained on
(data/prepared/reference.json for the local deployable, the run's config/reference.json for a registry URI;
drift.py says which tests, params' predict.drift the threshold). DIR/drift.json holds the evidence, a line
of the output the verdict; drift is a warning, or with --fail-on-drift exit code 3 (DRIFT_EXIT).

--compare MODEL_A MODEL_B (deployable folders or registry URIs, e.g. models:/<name>@champion and
models:/<name>@challenger) runs both on the same images instead, with no drift check, and writes
DIR/compare.md and .html (agreement, latency, the images where they disagree most), compare.json,
agreement.csv (one row per image) and disagreements/<rank>_<name>.png, all logged as one MLflow run of the
experiment <mlflow.experiment>-compare tagged with both URIs. Latency: the model call alone, decoding excluded.

Exit codes: 0; 1 when any file could not be read, or on a one-line error (e.g. --fail-on-drift for a model
without reference statistics); 3 with --fail-on-drift when the images drift.
"""

import argparse
import csv
import html
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from {{ cookiecutter.package_name }}.lib import (
    agreement,
    decoding,
    drift,
    files,
    measure,
    params,
    paths,
    plots,
    report,
    serving,
    stage,
    store,
    task,
    tracking,
)

# Class colours of the overlays (class 0, background, is left clear).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)
DRIFT_EXIT = 3  # --fail-on-drift: distinct from 1 (unreadable files, errors) and 2 (argparse's usage errors)


def find_inputs(inputs):
    """[(image path, output name without suffix)]: files as given, folders searched recursively, in order."""
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            found += [(p, p.relative_to(given).with_suffix("")) for p in sorted(given.rglob("*"))
                      if decoding.is_image(p) and not any(part.startswith(".") for part in p.relative_to(given).parts)]
        elif given.exists():
            found.append((given, Path(given.stem)))
        else:
            raise FileNotFoundError(f"{given}: no such file or folder; give image files or folders")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(decoding.SUFFIXES)}, any case) in {', '.join(inputs)}")
    return found


def load_model(uri, mlflow_cfg):
    """(fn: float32 numpy (B, 3, H, W) -> numpy logits, the dataset description it was trained on, the drift
    reference statistics of its training split or None when the model has none)."""
    if not uri.startswith("models:/"):
        folder = Path(uri)
        spec_path = folder / paths.DEPLOY_INFO.name
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: no deployable model; run `dvc repro optimize` (or dvc pull), or "
                                    "give --model models:/<name>@<alias>")
        if not paths.DATASET.is_file():
            raise FileNotFoundError(f"{paths.DATASET}: the decoding rules the model was trained with are missing; "
                                    "run `dvc repro prepare` (or dvc pull)")
        spec = files.read_json(spec_path)
        reference = files.read_json(paths.REFERENCE) if paths.REFERENCE.is_file() else None
        return serving.runner(folder / spec["file"], spec["runtime"]), files.read_json(paths.DATASET), reference
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(store.tracking_uri(mlflow_cfg["tracking_uri"], store.repo_root()))
    model = mlflow.pyfunc.load_model(uri)
    run_id = model.metadata.run_id
    info_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"config/{paths.DATASET.name}")
    try:  # runs logged before drift checks existed have none
        reference = files.read_json(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"config/{paths.REFERENCE.name}"))
    except (MlflowException, OSError):
        reference = None
    return model.predict, files.read_json(info_path), reference


def decode(path, info):
    """(uint8 (3, S, S) model input, upright uint8 (H, W, 3) image) by prepare's rules."""
    upright, _ = decoding.read(path, "image", info.get("window"))
    fitted = decoding.fit(upright, info["image_size"], info.get("resize", "stretch"))
    return torch.from_numpy(fitted).permute(2, 0, 1), upright


def model_input(decoded):
    """float32 numpy (B, 3, S, S) in [0, 1] from a list of uint8 (3, S, S) tensors."""
    return np.ascontiguousarray(torch.stack(decoded).float().div_(255).numpy())


def run_batch(fn, x, info):
    """Model outputs for a batch x (model_input): per image, a class-index mask (S, S) or probabilities (C,)."""
    logits = torch.from_numpy(np.asarray(fn(x))).float()
    if info["task"] == "segmentation":
        return task.predict(logits, info["task"], info["num_classes"]).to(torch.uint8).numpy()
    return torch.softmax(logits, 1).numpy()


def write_segmentation(out, name, mask, upright, info):
    """The mask at the image's own size and orientation, and an overlay of it on the image."""
    from PIL import Image

    full = decoding.unfit(mask, upright.shape[1], upright.shape[0], info.get("resize", "stretch"))
    for folder, arr in (("masks", full), ("overlays", overlay(upright, full))):
        target = out / folder / name.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(target)


def overlay(image, mask, alpha=0.5):
    """uint8 (H, W, 3) image with each foreground class blended in its palette colour."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    blend = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return blend.round().astype(np.uint8)


def decoded_batches(found, decode_one, batch_size, errors, desc):
    """Lists of up to batch_size `decode_one(path, name)` results over the found files, in order; a file that
    cannot be read goes to `errors` as (file, reason) and the rest go on."""
    batch = []
    for path, name in stage.checked(tqdm(found, desc=desc, unit="image", disable=None)):
        try:
            batch.append(decode_one(path, name))
        except decoding.DataError as e:
            errors.append((str(path), str(e)))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_all(fn, info, found, out, batch_size, stats):
    """Run the model over every found file, adding each decoded image to `stats` (drift.Statistics); returns
    (classification rows, [(file, error)])."""
    rows, errors = [], []

    def decode_one(path, name):
        x, upright = decode(path, info)
        stats.add(x.permute(1, 2, 0).numpy(), (upright.shape[1], upright.shape[0]))  # fitted (S, S, 3), (W, H)
        return x, path, name, upright

    for batch in decoded_batches(found, decode_one, batch_size, errors, "predict"):
        x = model_input([b[0] for b in batch])
        for (_, path, name, upright), result in zip(batch, run_batch(fn, x, info), strict=True):
            if info["task"] == "segmentation":
                write_segmentation(out, name, result, upright, info)
            else:
                rows.append([str(path), info["class_names"][int(result.argmax())], *map(float, result)])
    return rows, errors


def write_table(path, header, rows):
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def check_drift(reference, stats, rows, info, cfg, out):
    """The drift evidence for the images predicted, written to out/drift.json."""
    if stats.seen == 0:
        evidence = {"checked": False, "reason": "no image could be read"}
    elif reference is None:
        evidence = {"checked": False, "reason": f"the model has no reference statistics ({paths.REFERENCE}, or "
                                                f"config/{paths.REFERENCE.name} in its MLflow run); rerun dvc repro"}
    else:
        counts = None
        if info["task"] == "classification":  # the predicted labels' balance, reported beside the tests
            counts = np.bincount([info["class_names"].index(r[1]) for r in rows], minlength=len(info["class_names"]))
        evidence = drift.check(reference, stats, cfg["alpha"], cfg["min_effect"], predicted_counts=counts)
    files.write_json(out / "drift.json", evidence)
    return evidence


# --- predict --compare MODEL_A MODEL_B ---------------------------------------------------------------------

def decode_for(path, models):
    """(upright image, {model key: its input (3, S, S)}): decoded once per distinct set of decoding rules."""
    done, inputs, upright = {}, {}, None
    for key, (_, info, _) in models.items():
        rules = (info["image_size"], info.get("resize", "stretch"), str(info.get("window")))
        if rules not in done:
            done[rules], upright = decode(path, info)
        inputs[key] = done[rules]
    return upright, inputs


def score_pair(path, upright, out_a, out_b, infos, top):
    """One image's agreement row; the image joins `top` (the worst disagreements) with what its picture needs.
    Masks are compared at the image's own size, each mapped back by its own model's fitting rule."""
    info = infos[0]
    if info["task"] == "segmentation":
        ma, mb = (decoding.unfit(m, upright.shape[1], upright.shape[0], i.get("resize", "stretch"))
                  for m, i in zip((out_a, out_b), infos, strict=True))
        agree, iou = agreement.mask_agreement(ma, mb, info["num_classes"])
        if agree < 1:  # only images where they disagree at all can be among the worst
            top.add(1 - agree, (path, upright, ma, mb))
        return {"file": str(path), "pixel_agreement": agree, "mean_iou": iou}
    same, distance = agreement.label_agreement(out_a, out_b)
    names = info["class_names"]
    row = {"file": str(path), "label_a": names[int(out_a.argmax())], "p_a": float(out_a.max()),
           "label_b": names[int(out_b.argmax())], "p_b": float(out_b.max()), "same_label": same, "distance": distance}
    if distance > 0:  # different labels first, then the furthest apart probabilities
        top.add((1 - same, distance), (path, upright, row))
    return row


def compare_all(models, found, batch_size, top_k):
    """Both models over every found file. Returns (rows, TopK, errors, {key: first batch's model input})."""
    rows, errors, first = [], [], {}
    top = agreement.TopK(top_k)
    infos = [info for _, info, _ in models.values()]
    for batch in decoded_batches(found, lambda path, _: (path, *decode_for(path, models)), batch_size, errors,
                                 "compare"):
        outputs = {}
        for key, (fn, model_info, _) in models.items():
            x = model_input([b[2][key] for b in batch])
            first.setdefault(key, x)
            outputs[key] = run_batch(fn, x, model_info)
        for (path, upright, _), a, b in zip(batch, outputs["A"], outputs["B"], strict=True):
            rows.append(score_pair(path, upright, a, b, infos, top))
    return rows, top, errors, first


def latency(models, first, warmup, rounds):
    """Each model's call on the first batch, decoding excluded, alternating rounds (measure.interleaved_latency):
    {key: latency stats, with B's speedup over A}."""
    # Each function runs on its own input (the two models may be trained at different sizes); the tensor passed
    # only tells interleaved_latency the batch size.
    fns = {key: (lambda _, fn=models[key][0], x=x: fn(x)) for key, x in first.items()}
    return measure.interleaved_latency(fns, torch.empty(len(first["A"])), warmup, rounds, baseline="A")


def disagreement_pictures(top, info, uris, folder):
    """One labelled PNG per image of `top`, worst first; returns [(rank, file, score, png path)]."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = (f"{key}: {Path(uri).name}" for key, uri in zip("AB", uris, strict=True))  # models:/m@champion -> m@champion
    written = []
    for rank, (score, (path, upright, *rest)) in enumerate(top.items(), 1):
        png = folder / f"{rank:02d}_{Path(path).stem}.png"
        if info["task"] == "segmentation":
            ma, mb = rest
            plots.panels([("input", upright), (a, overlay(upright, ma)), (b, overlay(upright, mb)),
                          ("where A and B differ", agreement.difference(upright, ma, mb))], png,
                         title=f"{Path(path).name}: pixel agreement {1 - score:.3f}")
        else:
            (row,) = rest
            plots.panels([("input", upright)], png, title=f"{a}: {row['label_a']} ({row['p_a']:.2f})\n"
                                                          f"{b}: {row['label_b']} ({row['p_b']:.2f})")
        written.append((rank, str(path), score, png))
    return written


def compare_metrics(rows, lat, info):
    """The comparison's headline figures (MLflow metrics and compare.json)."""
    if info["task"] == "segmentation":
        m = {"agreement/pixel_mean": float(np.mean([r["pixel_agreement"] for r in rows])),
             "agreement/pixel_min": float(np.min([r["pixel_agreement"] for r in rows])),
             "agreement/mean_iou": float(np.mean([r["mean_iou"] for r in rows]))}
    else:
        m = {"agreement/label": float(np.mean([r["same_label"] for r in rows])),
             "agreement/probability_distance_mean": float(np.mean([r["distance"] for r in rows]))}
    for key, t in lat.items():
        m.update({f"latency/{key}/p50_ms": t["p50_ms"], f"latency/{key}/p90_ms": t["p90_ms"],
                  f"latency/{key}/p90_p50": t["p90_p50"]})
    m.update({"latency/B/speedup_over_A": lat["B"]["speedup"], "latency/B/speedup_ci_low": lat["B"]["speedup_ci_low"],
              "latency/B/speedup_ci_high": lat["B"]["speedup_ci_high"], "latency/reliable": int(
                  lat["A"]["reliable"] and lat["B"]["reliable"]), "images": len(rows)})
    return m


def write_compare_report(out, uris, metrics, lat, batch, pictures, errors):
    """out/compare.md and out/compare.html, the same content (the HTML with the pictures inlined)."""
    models = [{"": key, "model": uri, "p50 ms": lat[key]["p50_ms"], "p90 ms": lat[key]["p90_ms"],
               "p90/p50": lat[key]["p90_p50"],
               "speedup over A": "baseline" if key == "A" else report.speedup_cell(lat[key]),
               "reliability": lat[key]["reliability"]} for key, uri in zip("AB", uris, strict=True)]
    figures = [{k: v for k, v in metrics.items() if k.startswith("agreement/") or k == "images"}]
    note = (f"Latency: the model call alone (decoding excluded), on a batch of {batch} images at each model's "
            f"input size, {lat['A']['runs']} rounds alternating A and B; speedup: the median per-round ratio of "
            f"A's time to B's, with its 95% bootstrap interval (UNRELIABLE: outside params' "
            f"optimize.latency.reliability). Unreadable files: {len(errors)} (errors.csv).")
    top = [{"rank": r, "file": f, "disagreement": s[1] if isinstance(s, tuple) else s} for r, f, s, _ in pictures]
    md = (f"# predict --compare\n\n{report.markdown(models)}\n{report.markdown(figures)}\n{note}\n\n"
          f"## Where A and B disagree most\n\n{report.markdown(top)}\n"
          + "".join(f"![{f}](disagreements/{png.name})\n" for _, f, _, png in pictures))
    body = (f"{report.rows_table(models)}{report.rows_table(figures)}<p>{html.escape(note)}</p>"
            f"<h2>Where A and B disagree most</h2>{report.rows_table(top)}"
            + "".join(report.image(png, f) for _, f, _, png in pictures))
    for name, text in (("compare.md", md), ("compare.html", report.page("predict --compare: A vs B", body))):
        with files.atomic_path(out / name) as t:
            t.write_text(text)
    return [out / "compare.md", out / "compare.html"]


def log_compare(cfg, uris, info, metrics, written, pictures_dir):
    """One MLflow run in the experiment <mlflow.experiment>-compare, tagged with both URIs; its id, or None."""
    if not cfg["enabled"]:
        return None
    import mlflow

    cfg = {**cfg, "experiment": f"{cfg['experiment']}-compare", "run_name": None, "system_metrics": False}
    tags = {"compare.model_a": uris[0], "compare.model_b": uris[1], "task": info["task"]}
    with tracking.closing(lambda: tracking.start(cfg, f"compare_{time.strftime('%Y%m%d-%H%M%S')}", tags)) as run:
        mlflow.log_metrics(metrics)
        for path in written:
            mlflow.log_artifact(str(path), "compare")
        mlflow.log_artifacts(str(pictures_dir), "compare/disagreements")
        return run.info.run_id


def compare(found, uris, out, batch_size, p):
    """predict --compare: both models on the same images; the report, its files and the MLflow run."""
    models = {key: load_model(uri, p["mlflow"]) for key, uri in zip("AB", uris, strict=True)}
    (_, a, _), (_, b, _) = models.values()
    if (a["task"], a["class_names"]) != (b["task"], b["class_names"]):
        raise ValueError(f"{uris[0]} ({a['task']}, classes {a['class_names']}) and {uris[1]} ({b['task']}, classes "
                         f"{b['class_names']}) predict different things; compare models of the same task and classes")
    cfg = p["predict"]["compare"]
    rows, top, errors, first = compare_all(models, found, batch_size, cfg["top_k"])
    write_table(out / "errors.csv", ["file", "error"], errors)
    if not rows:
        raise ValueError(f"none of the {len(found)} files could be read (see {out / 'errors.csv'}); nothing to compare")
    lat = latency(models, first, cfg["warmup"], cfg["rounds"])
    rule = p["optimize"]["latency"]["reliability"]  # the project's one rule for a figure that can be trusted
    for t in lat.values():
        t["reliable"], t["reliability"] = measure.reliability(t, rule["max_p90_p50"], rule["max_interval_width"])
    metrics = compare_metrics(rows, lat, a)
    write_table(out / "agreement.csv", list(rows[0]), [list(r.values()) for r in rows])
    files.write_json(out / "compare.json", {"model_a": uris[0], "model_b": uris[1], "metrics": metrics,
                                            "latency": lat, "latency_batch": len(first["A"])})
    pictures = disagreement_pictures(top, a, uris, out / "disagreements")
    written = write_compare_report(out, uris, metrics, lat, len(first["A"]), pictures, errors)
    run_id = log_compare(p["mlflow"], uris, a, metrics, [*written, out / "compare.json", out / "agreement.csv"],
                         out / "disagreements")
    headline = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("agreement/"))
    print(f"predict --compare: {len(rows)} of {len(found)} images: {headline}; B's speedup over A "
          f"{report.speedup_cell(lat['B'])} -> {out / 'compare.md'}" + (f", MLflow run {run_id}" if run_id else ""))
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", default=str(paths.DEPLOY_DIR),
                        help="a deployable folder (default %(default)s) or a registry URI models:/<name>@<alias>")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (%(default)s)")
    parser.add_argument("--fail-on-drift", action="store_true",
                        help=f"exit {DRIFT_EXIT} when the images drift from the model's training images")
    parser.add_argument("--compare", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                        help="run two models (folders or URIs) on the same images and report how they agree")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1")
    if args.compare and args.fail_on_drift:
        parser.error("--fail-on-drift checks one model's images; run it without --compare")
    if args.compare and args.model != parser.get_default("model"):
        parser.error("--model with --compare: give both models to --compare MODEL_A MODEL_B")
    p = params.load()
    found = find_inputs(args.inputs)
    if args.compare:
        args.out.mkdir(parents=True, exist_ok=True)
        errors = compare(found, args.compare, args.out, args.batch_size, p)
    else:
        fn, info, reference = load_model(args.model, p["mlflow"])
        if reference is None and args.fail_on_drift:
            raise FileNotFoundError(f"--fail-on-drift: {args.model} has no drift reference statistics ("
                                    f"{paths.REFERENCE}, or config/{paths.REFERENCE.name} in its run); rerun dvc repro")
        args.out.mkdir(parents=True, exist_ok=True)
        stats = drift.Statistics(drift.sample_mask(len(found), seed=0))  # features of at most drift.SAMPLE images
        rows, errors = predict_all(fn, info, found, args.out, args.batch_size, stats)
        if info["task"] == "classification":
            write_table(args.out / "predictions.csv", ["file", "label", *info["class_names"]], rows)
        write_table(args.out / "errors.csv", ["file", "error"], errors)
        evidence = check_drift(reference, stats, rows, info, p["predict"]["drift"], args.out)
        print(f"predict: {len(found) - len(errors)} of {len(found)} images -> {args.out}/")
        print(f"predict: {drift.summary(evidence)} -> {args.out / 'drift.json'}",
              file=sys.stderr if evidence.get("drift") else sys.stdout)
        if args.fail_on_drift and evidence.get("drift"):
            print(f"predict: exit {DRIFT_EXIT} (--fail-on-drift)", file=sys.stderr)
            sys.exit(DRIFT_EXIT)
    if errors:
        sys.exit(f"predict: {len(errors)} file(s) could not be read; see {args.out / 'errors.csv'}")


if __name__ == "__main__":
    stage.run("predict", main)
