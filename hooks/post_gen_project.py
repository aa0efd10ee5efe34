"""git init, dvc init, the DVC remote and the first commit; each step says what it did or why it didn't."""

import shutil
import subprocess
import sys
from pathlib import Path

INIT_GIT = {{ 'True' if cookiecutter.init_git else 'False' }}
DVC_REMOTE = {{ cookiecutter.dvc_remote | tojson }}
AUTHOR = ({{ cookiecutter.author_name | tojson }}, {{ cookiecutter.author_email | tojson }})


def which(tool):
    # Also next to the running Python: cookiecutter called from a venv that isn't activated.
    return shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))


def run(*cmd):
    subprocess.run([which(cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL)


def main():
    if not INIT_GIT:
        print("init_git is false: run `git init && dvc init` yourself before `dvc repro`.")
        return
    missing = [tool for tool in ("git", "dvc") if which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found on PATH: skipped git/dvc set-up. After installing the project "
              "(uv sync), run: git init && dvc init && git add -A && git commit -m 'Initial commit'")
        return
    run("git", "init", "-q", "-b", "main")
    run("dvc", "init", "-q")
    if DVC_REMOTE:
        run("dvc", "remote", "add", "-d", "storage", DVC_REMOTE)
    run("git", "add", "-A")
    # `dvc exp run` needs a commit; a machine without a git identity (fresh CI runners) can't make one,
    # so fall back to the template's author answer for this one commit.
    identity = []
    if subprocess.run(["git", "config", "user.email"], capture_output=True).returncode != 0:
        identity = ["-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}"]
        print(f"No git identity configured: made the first commit as {AUTHOR[0]} <{AUTHOR[1]}>.")
    run("git", *identity, "commit", "-q", "-m", "Initial commit from the pytorch-dvc-mlflow template")
    print("Initialised git and DVC" + (f" with remote 'storage' -> {DVC_REMOTE}" if DVC_REMOTE else "")
          + ", and made the first commit.")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"post-generation step failed: {' '.join(e.cmd)} (exit {e.returncode})")
