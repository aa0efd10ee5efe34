"""pr_report: how a branch moved the pipeline against its base, in Markdown for a pull-request comment or a CI
job summary.

    python -m {{ cookiecutter.package_name }}.pr_report                       # the workspace against main
    python -m {{ cookiecutter.package_name }}.pr_report --base origin/main --head HEAD
    python -m {{ cookiecutter.package_name }}.pr_report --head lr-3e-3          # a DVC experiment against main
    make pr-report BASE=origin/main

Reads what git and DVC hold at the two revisions; nothing is rerun or re-measured: the params that differ
(`dvc params diff`), every figure that differs, old -> new (`dvc metrics diff` of each metrics/<stage>.json),
the register gates' verdicts on each side (metrics/register.json), the image plots that differ (copied beside the
report, or linked at --image-url <prefix>/<commit>/<path>, e.g. https://github.com/<owner>/<repo>/raw for a public
repository) and each side's MLflow run (metrics/mlflow.json), linked when the tracking store is a server. Writes
reports/pr/report.md (+ reports/pr/plots/) and prints the Markdown. The generated CI runs it on pull requests
and appends it to the job summary.
"""

import argparse
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import dvc.api
from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.scm import Git, RevError, resolve_rev

from {{ cookiecutter.package_name }}.lib import files, paths, report, stage, store

WORKSPACE = "workspace"  # DVC's name for the files as they are now, committed or not
IMAGES = (paths.CURVES, paths.PREDICTIONS, paths.PARETO, paths.ROBUSTNESS_CURVE_PNG)
GATES = paths.metrics("register")
# Every figure of every stage, not only the headline files dvc.yaml declares as metrics: a review wants each
# figure that moved. `dvc metrics diff` reads any JSON file it is given as a target.
FIGURES = [str(paths.metrics(s)) for s in ("prepare", "train", "analyze", "optimize", "robustness", "register")] + [
    str(paths.RUN_FILE)]


def sides(diff):
    """DVC's {file: {key: {old, new, ...}}} (from diff(all=True)) as {(file, key): (old, new)}."""
    return {(f, k): (v.get("old"), v.get("new")) for f, keys in diff.items() for k, v in keys.items()}


def cell(value):
    """A value for the table; a URI's password masked (a report may end up in a public pull request)."""
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else store.mask(str(value))


def change(old, new):
    """'+0.0312 (+4.1%)' for two numbers, '' otherwise."""
    if isinstance(old, bool) or isinstance(new, bool) or not all(isinstance(v, int | float) for v in (old, new)):
        return ""
    delta = new - old
    relative = f" ({delta / abs(old):+.1%})" if old else ""
    return f"{delta:+.4g}{relative}"


def changed_rows(values, skip=()):
    """[{file, key, old, new, change}] for the entries whose two sides differ, files in `skip` aside."""
    return [{"file": f, "key": k, "old": cell(old), "new": cell(new), "change": change(old, new)}
            for (f, k), (old, new) in sorted(values.items()) if old != new and f not in skip]


def gate_rows(metrics):
    """[{gate, base, branch}]: each register gate's verdict on both sides (metrics/register.json), the overall
    verdict first; '—' where that side has no register metrics."""
    def verdict(v):
        return "—" if v is None else ("pass" if v else "FAIL")

    keys = sorted(k for f, k in metrics if f == str(GATES) and k.startswith("gate/"))
    rows = [{"gate": "all gates", "base": verdict(metrics.get((str(GATES), "passed"), (None, None))[0]),
             "branch": verdict(metrics.get((str(GATES), "passed"), (None, None))[1])}]
    for key in keys:
        old, new = metrics[(str(GATES), key)]
        rows.append({"gate": key.split("/")[1], "base": verdict(old), "branch": verdict(new)})
    return rows


def run_link(run_file, tracking_uri):
    """One side's MLflow run: a link into the server's UI (credentials and query stripped), or where it is."""
    if not run_file or not run_file.get("run_id"):
        return "no MLflow run (metrics/mlflow.json absent or tracking off)"
    run_id, experiment = run_file["run_id"], run_file.get("experiment_id", "0")
    url = urlsplit(tracking_uri or "")
    if url.scheme in ("http", "https"):
        host = url.hostname + (f":{url.port}" if url.port else "")
        return f"[{run_id}]({url.scheme}://{host}{url.path.rstrip('/')}/#/experiments/{experiment}/runs/{run_id})"
    return f"`{run_id}` in {store.mask(tracking_uri or 'the default store')}"


def read_at(root, path, rev):
    """The bytes of a git- or DVC-tracked file at a revision (WORKSPACE: on disk), or None where it is absent."""
    if rev == WORKSPACE:
        return path.read_bytes() if path.is_file() else None
    try:
        return dvc.api.read(path.as_posix(), repo=str(root), rev=rev, mode="rb")
    except (DvcException, FileNotFoundError):  # not in that commit, or a DVC output whose cache is not here
        return None


def plot_rows(root, revs, out, image_url=None):
    """[{plot, base, branch}] for the image plots that differ, as images: copies under out/plots/<side>/, or
    links at image_url/<commit>/<path>. revs: {side: (rev, commit)}."""
    rows = []
    for path in IMAGES:
        data = {side: read_at(root, path, rev) for side, (rev, _) in revs.items()}
        if data["base"] == data["branch"]:
            continue
        row = {"plot": str(path)}
        for side, blob in data.items():
            if blob is None:
                row[side] = "—"
            elif image_url:
                row[side] = f"![{side}]({image_url.rstrip('/')}/{revs[side][1]}/{path.as_posix()})"
            else:
                copy = out / "plots" / side / path
                copy.parent.mkdir(parents=True, exist_ok=True)
                with files.atomic_path(copy) as tmp:
                    tmp.write_bytes(blob)
                row[side] = f"![{side}]({copy.relative_to(out).as_posix()})"
        rows.append(row)
    return rows


def open_repo(root):
    """The DVC repository at root, with git and a commit, or ValueError saying what is missing."""
    try:
        repo = Repo(str(root))
    except DvcException as e:
        raise ValueError(f"{root}: {e}; pr_report compares git revisions of a DVC project: git init && dvc init") from e
    if not isinstance(repo.scm, Git) or repo.scm.no_commits:
        raise ValueError(f"{root}: no git repository with a commit; pr_report compares git revisions: git init, "
                         "dvc init, git commit")
    return repo


def resolve(repo, rev, option):
    """(rev, full commit sha; None for the workspace), or ValueError naming the option and the fix."""
    if rev == WORKSPACE:
        return rev, None
    try:
        return rev, resolve_rev(repo.scm, rev)  # DVC's resolver: branches, tags, commits and experiment names
    except RevError as e:
        raise ValueError(f"{option} {rev}: no such git revision here; fetch it first (git fetch origin, and in CI "
                         "actions/checkout with fetch-depth: 0) or name another branch, tag or commit") from e


def diff_revisions(repo, base, head):
    """(params, metrics) as {(file, key): (base value, head value)}, every key of both sides."""
    params = repo.params.diff(a_rev=base, b_rev=head, all=True)
    metrics = repo.metrics.diff(a_rev=base, b_rev=head, all=True, targets=FIGURES)
    for what, result in (("params", params), ("metrics", metrics)):
        for rev, errors in result.get("errors", {}).items():
            # A file the pipeline has not written (yet) on one side shows as '—'; anything else is an error.
            unreadable = errors if isinstance(errors, Exception) else {
                f: e for f, e in errors.items() if not isinstance(e, FileNotFoundError)}
            if unreadable:
                raise ValueError(f"dvc {what} diff could not read {rev[:8]}: {unreadable}")
    return sides(params.get("diff", {})), sides(metrics.get("diff", {}))


def render(revs, params, metrics, run_files, tracking_uris, plots):
    """The report's Markdown."""
    label = {side: rev if commit is None else f"{rev} ({commit[:8]})" for side, (rev, commit) in revs.items()}
    changed_params = changed_rows(params)
    changed_metrics = changed_rows(metrics, skip={str(paths.RUN_FILE)})  # run ids: the MLflow section
    runs = [{"side": side, "revision": label[side], "MLflow run": run_link(run_files[side], tracking_uris[side])}
            for side in ("base", "branch")]
    return "".join([
        f"## Pipeline changes: {label['branch']} against {label['base']}\n\n",
        f"### Params ({len(changed_params)} changed)\n\n",
        report.markdown(changed_params) if changed_params else "No params changed.\n", "\n",
        f"### Metrics ({len(changed_metrics)} changed)\n\n",
        report.markdown(changed_metrics) if changed_metrics else "No metrics changed.\n", "\n",
        "### Register gates\n\n", report.markdown(gate_rows(metrics)), "\n",
        f"### Plots ({len(plots)} changed)\n\n", report.markdown(plots) if plots else "No image plot changed.\n",
        "\n### MLflow runs\n\n", report.markdown(runs)])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.pr_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="the revision compared against (default %(default)s)")
    parser.add_argument("--head", default=WORKSPACE, help="the branch's revision (default: the files as they are)")
    parser.add_argument("--out", default=str(paths.PR_REPORT), help="output folder (%(default)s)")
    parser.add_argument("--image-url", help="link plots at <IMAGE_URL>/<commit>/<path> instead of copying them")
    args = parser.parse_args(argv)
    root = store.repo_root()
    repo = open_repo(root)
    revs = {"base": resolve(repo, args.base, "--base"), "branch": resolve(repo, args.head, "--head")}
    if args.image_url and revs["branch"][1] is None:
        parser.error("--image-url needs a committed --head (a link cannot point at uncommitted files)")
    # Commits, not names: DVC merges two names of one commit into one "a, b" entry, and neither side is found.
    params, metrics = diff_revisions(repo, *(commit or rev for rev, commit in revs.values()))
    run_files = {side: {k: v[i] for (f, k), v in metrics.items() if f == str(paths.RUN_FILE)}
                 for i, side in enumerate(("base", "branch"))}
    tracking_uris = {side: store.tracking_uri(params.get(("params.yaml", "mlflow.tracking_uri"), (None, None))[i]
                                                 or "", root) for i, side in enumerate(("base", "branch"))}
    out = Path(args.out)
    shutil.rmtree(out / "plots", ignore_errors=True)  # an earlier report's images
    text = render(revs, params, metrics, run_files, tracking_uris, plot_rows(root, revs, out, args.image_url))
    with files.atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    print(text + f"pr_report: -> {out / 'report.md'}")


if __name__ == "__main__":
    stage.run("pr_report", main)
