"""Bake over the option matrix and check what comes out, file by file."""

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import BIN, TEMPLATE, bake

pytestmark = pytest.mark.fast

STAGES = ("check", "prepare", "train", "analyze", "optimize", "robustness", "register")
ENTRY_POINTS = (*STAGES, "compare", "predict", "challenge", "pr_report")

# The exact files of a baked project (besides .git/), before conditional ones.
COMMON = {
    ".dvcignore", ".gitignore", "MLproject", "Makefile", "README.md", "dvc.yaml", "params.yaml", "pyproject.toml",
    "uv.lock", "requirements.txt", ".github/workflows/ci.yml", ".pre-commit-config.yaml", "data/raw/README.md",
    "Dockerfile", ".dockerignore", "compose.yaml", ".env.example", ".devcontainer/devcontainer.json",
    # The README is a map; what it points to lives in the modules' docstrings or in docs/.
    *(f"docs/{d}.md" for d in ("pipeline", "experiments", "predict", "team", "distributed", "environment")),
    # The entry points (one per DVC stage or command) over one library folder.
    *(f"src/{{pkg}}/{m}.py" for m in ("__init__", *ENTRY_POINTS)),
    *(f"src/{{pkg}}/lib/{m}.py" for m in (
        "__init__", "names", "paths", "params", "stage", "models", "optim", "task", "runtime", "measure",
        "explain", "decoding", "corruptions", "security", "serving", "tracking", "environment", "files", "plots",
        "report", "pickles", "splits", "drift", "agreement", "ingest", "dataset", "store", "energy", "inference",
        "card", "scoring")),
    *(f"tests/{m}.py" for m in (
        "conftest", "test_check", "test_params", "test_stage", "test_ingest", "test_dataset", "test_models",
        "test_optim", "test_task", "test_tracking", "test_store", "test_energy", "test_environment", "test_files",
        "test_runtime",
        "test_corruptions", "test_security", "test_serving", "test_decoding", "test_prepare", "test_predict",
        "test_challenge", "test_pr_report", "test_drift", "test_explain", "test_train", "test_analyze",
        "test_optimize", "test_robustness", "test_register", "test_card", "test_pickles", "test_splits",
        "test_scoring")),
}
GIT = {".dvc/.gitignore", ".dvc/config"}

MAX_MODULE_LINES = 300

# Options that don't interact are cycled, not multiplied (cookiecutter-data-science style).
MATRIX = [
    {"task": "segmentation", "license": "MIT", "init_git": True},
    {"task": "classification", "license": "none", "init_git": False},
    {"task": "segmentation", "license": "Apache-2.0", "init_git": True, "dvc_remote": "/tmp/dvc-remote",
     "architecture": "FPN", "encoder": "mobilenet_v2"},
    {"task": "classification", "license": "BSD-3-Clause", "init_git": True, "architecture": "mobilenet_v2",
     "mlflow_tracking_uri": "http://127.0.0.1:5000", "python_version": "3.12"},
]


def expected_files(ctx, package):
    files = {f.replace("{pkg}", package) for f in COMMON}
    if ctx.get("license", "MIT") != "none":
        files.add("LICENSE")
    if ctx.get("init_git", True):
        files |= GIT
    return files


def project_files(project):
    # .git/ and DVC's own scratch space (.dvc/tmp, git-ignored) aside.
    return {str(p.relative_to(project)) for p in project.rglob("*")
            if p.is_file() and ".git" not in p.parts and "tmp" not in p.relative_to(project).parts[:2]}


@pytest.fixture(scope="module", params=MATRIX, ids=lambda c: "-".join(str(v) for v in c.values()))
def case(request, tmp_path_factory):
    ctx = request.param
    return ctx, bake(tmp_path_factory.mktemp("bake"), **ctx)


def test_exact_file_set(case):
    ctx, project = case
    assert project_files(project) == expected_files(ctx, project.name.replace("-", "_"))


def test_nothing_left_unrendered(case):
    _, project = case
    for path in project.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            text = re.sub(r"\$\{\{ [^}]+ \}\}", "", path.read_text())  # GitHub Actions expressions
            assert "{{" not in text and "{%" not in text and "cookiecutter" not in text.replace(
                "pytorch-dvc-mlflow template", ""), path


def test_generated_config_parses_and_carries_the_answers(case):
    ctx, project = case
    params = yaml.safe_load((project / "params.yaml").read_text())
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    task = ctx["task"]
    assert params["prepare"]["task"] == task
    assert params["train"]["model"]["architecture"] == ctx.get("architecture", "Unet" if task == "segmentation"
                                                                 else "resnet18")
    assert params["mlflow"]["tracking_uri"] == ctx.get("mlflow_tracking_uri", "sqlite:///mlflow.db")
    assert list(dvc["stages"]) == list(STAGES)
    # check first: every other stage depends on its output, which never changes, and it on the whole params.yaml
    assert dvc["stages"]["check"]["deps"][:2] == ["params.yaml", "uv.lock"]
    assert all("reports/check.txt" in stage["deps"] for name, stage in dvc["stages"].items() if name != "check")
    assert params["register"]["model_name"] == project.name
    assert pyproject["project"]["requires-python"] == f">={ctx.get('python_version', '3.11')}"
    assert "torch>=2.10" in pyproject["project"]["dependencies"]
    # A classifier needs no smp: neither its pyproject.toml nor its lock names it.
    assert any(d.startswith("segmentation-models-pytorch") for d in pyproject["project"]["dependencies"]) == (
        task == "segmentation")
    assert pyproject["project"].get("license") == (None if ctx["license"] == "none" else ctx["license"])
    # The container files: the dev container builds the Dockerfile's dev target; compose builds the same image.
    devcontainer = json.loads((project / ".devcontainer/devcontainer.json").read_text())
    assert devcontainer["build"] == {"dockerfile": "../Dockerfile", "context": "..", "target": "dev"}
    stages = re.findall(r"^FROM \S+ AS (\w+)$", (project / "Dockerfile").read_text(), re.M)
    assert stages[-1] == "pipeline" and {"dev", "serve"} <= set(stages)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert compose["services"]["model"]["build"]["target"] == "serve" and compose["services"]["mlflow"]["build"] == "."


def package_imports(src, package, module):
    """Our modules that `module` (a path under src/, e.g. "train" or "lib/data") imports: `from pkg import a`,
    `from pkg.lib import a, b`, `from pkg.lib.a import x`, `import pkg.lib.a`; as paths of the same form."""
    found = set()
    for node in ast.walk(ast.parse((src / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            parts = node.module.split(".")[1:]
            names = [a.name for a in node.names]
            found |= {"/".join(parts)} if (src / f"{'/'.join(parts)}.py").is_file() else {
                "/".join([*parts, n]) for n in names}
        elif isinstance(node, ast.Import):
            found |= {"/".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith(f"{package}.")}
    return found


def modules(src):
    """Every module under src/<pkg>, as "train", "lib/data", ..."""
    return {str(p.relative_to(src).with_suffix("")) for p in src.rglob("*.py") if p.stem != "__init__"}


def test_dvc_stages_depend_on_exactly_the_modules_they_import(case):
    # The classic template bug: a stage importing a shared module that isn't in its deps (no rerun when it
    # changes); the opposite, a module it doesn't use, reruns it for nothing.
    _, project = case
    package = project.name.replace("-", "_")
    src = project / "src" / package
    for name, stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items():
        assert stage["cmd"] == f"python -m {package}.{name}"
        needed, todo = {name}, [name]
        while todo:
            for m in package_imports(src, package, todo.pop()) - needed:
                needed.add(m)
                todo.append(m)
        code_deps = {d for d in stage["deps"] if d.startswith("src/")}
        assert code_deps == {f"src/{package}/{m}.py" for m in needed}, name


def test_two_floors_entry_points_over_one_library(case):
    # `ls src/<pkg>` shows what runs (a module per DVC stage or command, each with a __main__ guard) and lib/.
    # No entry point imports another, and the library never imports an entry point: what two share lives in lib/.
    _, project = case
    package = project.name.replace("-", "_")
    src = project / "src" / package
    assert {p.name for p in src.iterdir() if p.name != "__pycache__"} == {
        "__init__.py", "lib", *(f"{m}.py" for m in ENTRY_POINTS)}
    for module in modules(src):
        tree = ast.parse((src / f"{module}.py").read_text())
        guarded = any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) for n in tree.body)
        assert guarded == (module in ENTRY_POINTS), module
        imported = package_imports(src, package, module) & set(ENTRY_POINTS)
        assert not imported, f"{module} imports the entry point(s) {imported}"


def test_every_module_is_small_has_one_true_sentence_and_a_test(case):
    # A module holds one idea: under the size limit, its docstring's first sentence says what it is, and its tests
    # live in tests/test_<module>.py unless the project README's list of untested-alone modules names it.
    _, project = case
    package = project.name.replace("-", "_")
    src = project / "src" / package
    readme = (project / "README.md").read_text()
    for module in modules(src):
        path = src / f"{module}.py"
        assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, f"{module} is over {MAX_MODULE_LINES} lines"
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.split("\n")[0].strip(), f"{module} has no docstring"
        name = module.rsplit("/", 1)[-1]
        assert (project / "tests" / f"test_{name}.py").is_file() or f"`{name}.py`" in readme.split(
            "<!-- untested -->")[1].split("<!-- /untested -->")[0], f"{module} has no test file and no README note"


def test_functions_stay_short_and_train_trains_only(case):
    # Long functions were where the stages' copies of the same start, end and evaluation loop hid.
    _, project = case
    src = project / "src" / project.name.replace("-", "_")
    for module in src.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{module.name}:{node.name} is over 60 lines"
    assert len((src / "train.py").read_text().splitlines()) <= 250


def test_paths_are_written_once(case):
    # dvc.yaml declares every path the stages use (paths.py), and no module spells a path of its own.
    _, project = case
    package = project.name.replace("-", "_")
    src = project / "src" / package
    dvc = (project / "dvc.yaml").read_text()
    tree = ast.parse((src / "lib" / "paths.py").read_text())
    declared = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and "/" in n.value and " " not in n.value]
    for path in declared:
        if "{" not in path and path not in ("reports/compare", "reports/pr"):  # commands' outputs, not the pipeline's
            assert path in dvc, f"{path} (paths.py) is not declared in dvc.yaml"
    literal = re.compile(r"""["'](data|models|metrics|plots|reports)/[\w./-]*["']""")
    for module in src.rglob("*.py"):
        if module.name != "paths.py":
            code = "\n".join(line for line in module.read_text().splitlines() if not line.strip().startswith(
                ("#", '"""')) and ">>>" not in line)
            assert not literal.search(code), f"{module.name} spells a path: {literal.search(code)[0]}"


def test_generated_ci_workflow_uses_what_the_project_has(case):
    ctx, project = case
    package = project.name.replace("-", "_")
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    assert next(s for s in steps if "setup-python" in s.get("uses", ""))["with"]["python-version"] == ctx.get(
        "python_version", "3.11")
    script = "\n".join(s.get("run", "") for s in steps)
    assert "pytest" in script and "ruff check" in script and f"python -m {package}.compare" in script
    report = next(s for s in steps if f"python -m {package}.pr_report" in s.get("run", ""))  # on pull requests
    assert report["if"] == "${{ github.event_name == 'pull_request' }}" and "GITHUB_STEP_SUMMARY" in report["run"]
    assert steps[0]["with"]["fetch-depth"] == 0  # the base branch's commits
    assert "uv lock --check" in script and "make install-cpu" in script  # the lock checked; CPU-only torch
    params = yaml.safe_load((project / "params.yaml").read_text())
    keys = re.findall(r"-S ([\w.]+)=", script)
    assert keys
    for key in keys:  # `dvc exp run -S` fails on a key params.yaml lacks
        node = params
        for part in key.split("."):
            node = node[part]


def test_makefile_and_pre_commit(case):
    _, project = case
    hooks = {h["id"] for r in yaml.safe_load((project / ".pre-commit-config.yaml").read_text())["repos"]
             for h in r["hooks"]}
    assert {"ruff", "check-yaml", "check-added-large-files", "uv-lock", "uv-export"} <= hooks
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    listed = subprocess.run([make, "help"], cwd=project, capture_output=True, text=True, check=True).stdout
    targets = {line.split()[0] for line in listed.splitlines()}
    assert {"install", "install-cpu", "lock", "repro", "exp", "compare", "pr-report", "predict", "challenge", "test",
            "ui", "server", "serve", "push", "image", "up", "down"} <= targets
    # The team server binds loopback unless MLFLOW_HOST says otherwise (tests/test_server.py runs it), after a check
    # that says in one line what would stop it (the project's tests/test_store.py).
    package = project.name.replace("-", "_")
    dry = subprocess.run([make, "-n", "server", "AUTH=1"], cwd=project, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    check = f"import sys; from {package}.lib import store; sys.exit(store.server_problem(True))"
    assert dry == [f'uv run python -c "{check}"',
                   'uv run mlflow server --host "${MLFLOW_HOST:-127.0.0.1}" --app-name basic-auth']
    # The model server on loopback: MLflow's scoring app behind the project's guard (lib/scoring.py).
    dry = subprocess.run([make, "-n", "serve"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert f"uv run uvicorn --factory {package}.lib.scoring:app --host 127.0.0.1 --port 5001" in " ".join(dry.split())
    dry = subprocess.run([make, "-n", "exp", "ARGS=-S lr=0.003"], cwd=project, capture_output=True, text=True,
                         check=True).stdout
    assert dry.strip() == "uv run dvc exp run -S lr=0.003"
    dry = subprocess.run([make, "-n", "pr-report", "BASE=origin/main"], cwd=project, capture_output=True, text=True,
                         check=True).stdout
    assert dry.strip() == f"uv run python -m {package}.pr_report --base origin/main"
    dry = subprocess.run([make, "-n", "lock"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert "uv lock" in dry and "--output-file=requirements.txt" in dry
    # Containers: docker or podman, as given (or found on PATH); podman keeps HEALTHCHECK only in Docker's format.
    for tool, compose in (("docker", "docker compose"), ("/usr/bin/podman", None)):
        dry = subprocess.run([make, "-n", "image", "up", "down", f"CONTAINER={tool}", "IMAGE=img"], cwd=project,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        dry = [" ".join(line.split()) for line in dry]
        fmt = " --format docker" if "podman" in tool else ""
        assert dry[:2] == [f"{tool} build{fmt} -t img .", f"{tool} build{fmt} --target serve -t img-serve ."]
        assert dry[2].endswith(" up -d") and dry[3].endswith(" down")
        assert compose is None or dry[2].startswith(compose)


def test_ruff_clean(case):
    _, project = case
    result = subprocess.run([BIN / "ruff", "check", "--no-cache", "."], cwd=project, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_git_and_dvc_initialised_with_one_clean_commit(case):
    ctx, project = case
    if not ctx["init_git"]:
        assert not (project / ".git").exists() and not (project / ".dvc").exists()
        return
    log = subprocess.run(["git", "log", "--format=%s"], cwd=project, capture_output=True, text=True, check=True)
    assert len(log.stdout.splitlines()) == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True)
    assert status.stdout == ""
    config = (project / ".dvc" / "config").read_text()
    if ctx.get("dvc_remote"):
        assert "remote = storage" in config and ctx["dvc_remote"] in config
    else:
        assert "remote" not in config


def test_hostile_answers_survive(tmp_path):
    answers = {
        "project_name": "Ünïcode \"Quoted\" O'Brien's \"\"\"Triple\"\"\" \\n \\u0041 \\ Project",
        "project_slug": "hostile-project",
        "author_name": "O'Brien \"The Tester\" Ñoño",
        "description": "Line one with \"quotes\", a backslash \\ and a colon: yes\nline two {braces} # not a comment",
        "init_git": False,
    }
    project = bake(tmp_path, **answers)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == answers["description"]
    assert pyproject["project"]["authors"][0]["name"] == answers["author_name"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["mlflow"]["experiment"] == "hostile-project"
    assert (project / "src" / "hostile_project" / "train.py").exists()
    compile((project / "src" / "hostile_project" / "__init__.py").read_text(), "__init__.py", "exec")
    # Every answer round-trips: Markdown heading, the licence, and the package imports.
    assert (project / "README.md").read_text().splitlines()[0] == f"# {answers['project_name']}"
    assert answers["author_name"] in (project / "LICENSE").read_text()
    subprocess.run([sys.executable, "-c", "import hostile_project.lib.params, hostile_project.lib.names"], check=True,
                   env={"PYTHONPATH": str(project / "src"), "PATH": str(BIN)})


def test_first_commit_without_a_git_identity(tmp_path):
    # Fresh CI runners have no user.name / user.email: the hook must still make the commit dvc exp needs.
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out),
                             str(TEMPLATE), "author_name=Ada", "author_email=ada@example.org"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "No git identity configured" in result.stdout
    author = subprocess.run(["git", "log", "--format=%an <%ae>"], cwd=out / "shapes-segmentation", env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert author == "Ada <ada@example.org>"


def test_readme_tree_matches_the_baked_files(baked):
    # The top-level README's tree of the generated project is checked against a real bake.
    readme = (TEMPLATE / "README.md").read_text()
    tree = readme.split("<!-- tree -->")[1].split("<!-- /tree -->")[0]
    project = baked("segmentation")
    for f in project_files(project) - GIT:
        assert f.rsplit("/", 1)[-1] in tree, f"{f} missing from the README tree"
