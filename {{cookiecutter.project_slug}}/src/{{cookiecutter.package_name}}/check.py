"""check: every params.yaml key and the installed packages checked first, before DVC empties any other stage.

    python -m {{ cookiecutter.package_name }}.check       # or: dvc repro check

DVC deletes a stage's outputs before it runs the stage, so a params error that train itself found (`dvc exp run
-S train.epochs=abc`) would cost the last good model, metrics and plots. This stage depends on the whole
params.yaml and on uv.lock, and every other stage depends on its output, so DVC runs it first whenever either
changes: it checks all of params.yaml against the schema (lib/params.py) and the installed versions against
uv.lock (lib/environment.py), and loads no torch, so it takes a second or two.

Writes reports/check.txt, whose content never changes: the stages after it depend on it for their order only,
and a params change that passes still reruns only the stages that read the changed keys.
"""

from {{ cookiecutter.package_name }}.lib import files, paths, stage

NOTE = ("Written by the check stage (src/{{ cookiecutter.package_name }}/check.py) once params.yaml and the "
        "environment passed its checks.\nIts content never changes: the other stages depend on it so that DVC runs "
        "check before them.\n")


def main():
    stage.begin("check")  # the checks themselves: params.yaml whole, uv.lock, this stage's inputs and output
    with files.atomic_path(paths.CHECKED) as tmp:
        tmp.write_text(NOTE)
    print(f"check: params.yaml and the environment checked -> {paths.CHECKED}")


if __name__ == "__main__":
    stage.run("check", main)
