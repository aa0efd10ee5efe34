"""The robustness stage's corruption figures under the home-made severities (before the one-floor refactor) and
under ImageNet-C's (now), on the same trained model and the same seeded test subset.

    python benchmarks/corruptions_before_after.py <baked project after dvc repro> <old robustness.py>

The old definitions are read from the old module's source (its `_jpeg` and `corrupt`), so nothing is re-typed.
Prints a Markdown table and writes benchmarks/results/corruptions-<task>.json.
"""

import ast
import importlib
import json
import sys
from pathlib import Path

import torch


def old_corrupt(source):
    """`corrupt` (and `_jpeg`) from the old robustness.py, run in a namespace of their own."""
    tree = ast.parse(Path(source).read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_jpeg", "corrupt")]
    namespace = {}
    exec("import io\nimport numpy as np\nimport torch\nfrom PIL import Image\n"  # noqa: S102 - our own old code
         "from torchvision.transforms.functional import gaussian_blur\n", namespace)
    exec(compile(ast.Module(body=wanted, type_ignores=[]), source, "exec"), namespace)  # noqa: S102
    return namespace["corrupt"]


def main(project, old_source):
    project = Path(project).resolve()
    sys.path.insert(0, str(project / "src"))
    pkg = next((project / "src").iterdir()).name
    mod = {m: importlib.import_module(f"{pkg}.lib.{m}") for m in ("corruptions", "dataset", "models", "params", "paths",
                                                                   "task")}
    p = mod["params"].load(project / "params.yaml")
    rp, seed = p["robustness"], p["seed"]
    model, args = mod["models"].load_checkpoint(project / "models/model.safetensors")
    images, targets = mod["dataset"].load_split(project / mod["paths"].split("test"))
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:rp["subset"]]
    x, y = mod["dataset"].to_float(images[pick]), targets[pick]
    t = mod["task"].Task.of(args)
    task, metric = t.name, t.metric

    def score(xc):
        out = mod["task"].score_batches(model, mod["dataset"].batches(xc, y, rp["batch_size"]), t)
        return mod["task"].scores(t, mod["task"].reduce(out["stats"]))[metric]

    old = old_corrupt(old_source)
    rows = [{"definition": "clean", "corruption": "-", "severity": "-", metric: score(x)}]
    for kind in ("gaussian_noise", "blur", "brightness", "contrast", "jpeg"):
        for s in (1, 2, 3):
            rows.append({"definition": "before (home-made)", "corruption": kind, "severity": s,
                         metric: score(old(x, kind, s, torch.Generator().manual_seed(seed)))})
    for kind in mod["corruptions"].CORRUPTIONS:
        for s in (1, 3, 5):
            rows.append({"definition": "after (ImageNet-C)", "corruption": kind, "severity": s,
                         metric: score(mod["corruptions"].corrupt(x, kind, s, torch.Generator().manual_seed(seed)))})
    print(f"| definition | corruption | severity | fp32 {metric} |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['definition']} | {r['corruption']} | {r['severity']} | {r[metric]:.4f} |")
    out = Path(__file__).parent / "results" / f"corruptions-{task}.json"
    out.write_text(json.dumps({"project": str(project), "subset": len(x), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
