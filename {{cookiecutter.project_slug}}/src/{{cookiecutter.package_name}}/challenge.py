"""challenge: two models on the same images (a challenger against the champion, or any two deployables): how far
they agree, where they disagree most, and how fast each is.

    python -m {{ cookiecutter.package_name }}.challenge "models:/<name>@champion" "models:/<name>@challenger" photos/ --out DIR
    python -m {{ cookiecutter.package_name }}.challenge models/deployable other/deployable photos/ --out DIR

MODEL_A, MODEL_B: deployable folders or registry URIs; INPUT: image files or folders, decoded as predict decodes
them (by each model's own training rules). Writes DIR/challenge.md and .html (agreement, latency, the images where
they disagree most), challenge.json, agreement.csv (one row per image) and disagreements/<rank>_<name>.png, all
logged as one MLflow run of the experiment <mlflow.experiment>-challenge tagged with both URIs. Latency: the model
call alone, decoding excluded, the two models alternating (params' `challenge`: top_k, warmup, rounds).

Exit codes: 0; 1 when any file could not be read, or on a one-line error.
"""

import argparse
import html
import sys
import time
from pathlib import Path

import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import (
    agreement,
    decoding,
    files,
    inference,
    measure,
    params,
    plots,
    report,
    stage,
    tracking,
)


def decode_for(path, models, max_pixels):
    """(upright image, {model key: its input (3, S, S)}): decoded once per distinct set of decoding rules."""
    done, inputs, upright = {}, {}, None
    for key, (_, info, _) in models.items():
        rules = (info["image_size"], info.get("resize", "stretch"), str(info.get("window")))
        if rules not in done:
            done[rules], upright = inference.decode(path, info, max_pixels)
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


def score_all(models, found, batch_size, top_k, max_pixels):
    """Both models over every found file. Returns (rows, TopK, errors, {key: first batch's model input})."""
    rows, errors, first = [], [], {}
    top = agreement.TopK(top_k)
    infos = [info for _, info, _ in models.values()]
    for batch in inference.decoded_batches(found, lambda path, _: (path, *decode_for(path, models, max_pixels)),
                                           batch_size, errors, "challenge"):
        outputs = {}
        for key, (fn, model_info, _) in models.items():
            x = inference.model_input([b[2][key] for b in batch])
            first.setdefault(key, x)
            outputs[key] = inference.run_batch(fn, x, model_info)
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
            plots.panels([("input", upright), (a, inference.overlay(upright, ma)), (b, inference.overlay(upright, mb)),
                          ("where A and B differ", agreement.difference(upright, ma, mb))], png,
                         title=f"{Path(path).name}: pixel agreement {1 - score:.3f}")
        else:
            (row,) = rest
            plots.panels([("input", upright)], png, title=f"{a}: {row['label_a']} ({row['p_a']:.2f})\n"
                                                          f"{b}: {row['label_b']} ({row['p_b']:.2f})")
        written.append((rank, str(path), score, png))
    return written


def headline_metrics(rows, lat, info):
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


def write_report(out, uris, metrics, lat, batch, pictures, errors):
    """out/challenge.md and out/challenge.html, the same content (the HTML with the pictures inlined)."""
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
    md = (f"# challenge: A vs B\n\n{report.markdown(models)}\n{report.markdown(figures)}\n{note}\n\n"
          f"## Where A and B disagree most\n\n{report.markdown(top)}\n"
          + "".join(f"![{f}](disagreements/{png.name})\n" for _, f, _, png in pictures))
    body = (f"{report.rows_table(models)}{report.rows_table(figures)}<p>{html.escape(note)}</p>"
            f"<h2>Where A and B disagree most</h2>{report.rows_table(top)}"
            + "".join(report.image(png, f) for _, f, _, png in pictures))
    for name, text in (("challenge.md", md), ("challenge.html", report.page("challenge: A vs B", body))):
        with files.atomic_path(out / name) as t:
            t.write_text(text)
    return [out / "challenge.md", out / "challenge.html"]


def log_run(cfg, uris, info, metrics, written, pictures_dir):
    """One MLflow run in the experiment <mlflow.experiment>-challenge, tagged with both URIs; its id, or None."""
    if not cfg["enabled"]:
        return None
    import mlflow

    cfg = {**cfg, "experiment": f"{cfg['experiment']}-challenge", "run_name": None, "system_metrics": False}
    tags = {"challenge.model_a": uris[0], "challenge.model_b": uris[1], "task": info["task"]}
    with tracking.closing(lambda: tracking.start(cfg, f"challenge_{time.strftime('%Y%m%d-%H%M%S')}", tags)) as run:
        mlflow.log_metrics(metrics)
        for path in written:
            mlflow.log_artifact(str(path), "challenge")
        mlflow.log_artifacts(str(pictures_dir), "compare/disagreements")
        return run.info.run_id


def challenge(found, uris, out, batch_size, p):
    """Both models on the same images; the report, its files and the MLflow run. Returns the unreadable files."""
    models = {key: inference.load_model(uri, p["mlflow"]) for key, uri in zip("AB", uris, strict=True)}
    (_, a, _), (_, b, _) = models.values()
    if (a["task"], a["class_names"]) != (b["task"], b["class_names"]):
        raise ValueError(f"{uris[0]} ({a['task']}, classes {a['class_names']}) and {uris[1]} ({b['task']}, classes "
                         f"{b['class_names']}) predict different things; compare models of the same task and classes")
    out.mkdir(parents=True, exist_ok=True)  # after both models loaded: a model that fails leaves nothing behind
    cfg = p["challenge"]
    rows, top, errors, first = score_all(models, found, batch_size, cfg["top_k"], p["prepare"]["max_image_pixels"])
    inference.write_table(out / "errors.csv", ["file", "error"], errors)
    if not rows:
        raise ValueError(f"none of the {len(found)} files could be read (see {out / 'errors.csv'}); nothing to compare")
    lat = latency(models, first, cfg["warmup"], cfg["rounds"])
    rule = p["optimize"]["latency"]["reliability"]  # the project's one rule for a figure that can be trusted
    for t in lat.values():
        t["reliable"], t["reliability"] = measure.reliability(t, rule["max_p90_p50"], rule["max_interval_width"])
    metrics = headline_metrics(rows, lat, a)
    inference.write_table(out / "agreement.csv", list(rows[0]), [list(r.values()) for r in rows])
    files.write_json(out / "challenge.json", {"model_a": uris[0], "model_b": uris[1], "metrics": metrics,
                                            "latency": lat, "latency_batch": len(first["A"])})
    pictures = disagreement_pictures(top, a, uris, out / "disagreements")
    written = write_report(out, uris, metrics, lat, len(first["A"]), pictures, errors)
    run_id = log_run(p["mlflow"], uris, a, metrics, [*written, out / "challenge.json", out / "agreement.csv"],
                         out / "disagreements")
    headline = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("agreement/"))
    print(f"challenge: {len(rows)} of {len(found)} images: {headline}; B's speedup over A "
          f"{report.speedup_cell(lat['B'])} -> {out / 'challenge.md'}" + (f", MLflow run {run_id}" if run_id else ""))
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.challenge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a", metavar="MODEL_A", help="the baseline: a deployable folder or models:/NAME@ALIAS")
    parser.add_argument("model_b", metavar="MODEL_B", help="the challenger, likewise")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (%(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1")
    p = params.load()
    for uri in (args.model_a, args.model_b):  # both, before either loads
        inference.check_model_uri(uri)
    inference.check_out(args.out)
    found = inference.find_inputs(args.inputs)
    errors = challenge(found, [args.model_a, args.model_b], args.out, args.batch_size, p)
    if errors:
        sys.exit(f"challenge: {len(errors)} file(s) could not be read; see {args.out / 'errors.csv'}")


if __name__ == "__main__":
    stage.run("challenge", main)
