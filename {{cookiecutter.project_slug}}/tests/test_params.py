from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.lib import names, params

SHIPPED = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


def errors_with(**changes):
    """params.validate + cross_checks of the shipped params.yaml with dotted keys changed."""
    p = yaml.safe_load(yaml.safe_dump(SHIPPED))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = p
        for part in parents:
            node = node[part]
        node[key] = value
    return params.validate(p) or params.cross_checks(p)


def test_the_shipped_params_are_valid():
    assert errors_with() == []


def test_a_misspelt_key_gets_a_did_you_mean():
    p = yaml.safe_load(yaml.safe_dump(SHIPPED))
    p["train"]["epoch"] = p["train"].pop("epochs")
    assert "train.epoch: unknown key; did you mean train.epochs?" in params.validate(p)


def test_an_optimizer_key_of_another_optimizer_is_one_clear_line():
    # adamw has no momentum: torch would raise a TypeError deep inside train.
    (error,) = errors_with(train__optimizer={"name": "adamw", "momentum": 0.9})
    assert error == ("train.optimizer.momentum: adamw takes no momentum (its keys: weight_decay, betas, eps, "
                     "amsgrad); remove it or choose sgd")
    assert errors_with(train__optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True}) == []


TASK = SHIPPED["prepare"]["task"]
OTHER = next(t for t in names.TASKS if t != TASK)


@pytest.mark.parametrize("name", list(names.OPTIMIZERS))
def test_every_optimizer_name_is_accepted(name):
    assert errors_with(train__optimizer={"name": name}) == []


@pytest.mark.parametrize("name", list(names.SCHEDULERS))
def test_every_scheduler_name_is_accepted(name):
    assert errors_with(train__scheduler__name=name) == []


@pytest.mark.parametrize("name", names.LOSSES[TASK])
def test_every_loss_of_the_task_is_accepted(name):
    assert errors_with(train__loss=name) == []


@pytest.mark.parametrize("name", [n for n in names.LOSSES[OTHER] if n not in names.LOSSES[TASK]])
def test_a_loss_of_the_other_task_lists_this_task_s_losses(name):
    (error,) = errors_with(train__loss=name)
    assert error.startswith(f"train.loss={name!r}: valid {TASK} losses: {', '.join(names.LOSSES[TASK])}")


@pytest.mark.parametrize("key,value", [("train__optimizer__name", "lbfgs"), ("train__scheduler__name", "cyclic"),
                                       ("robustness__corruptions", ["fog"]), ("robustness__severities", [9]),
                                       ("train__model__architecture", "NoSuchNet"),
                                       ("mlflow__tracking_uri", "ftp://x")])
def test_unknown_names_are_refused_with_the_valid_ones(key, value):
    (error,) = errors_with(**{key: value})
    assert error.startswith(key.replace("__", "."))
    valid = {"train__optimizer__name": names.OPTIMIZERS, "train__scheduler__name": names.SCHEDULERS,
             "robustness__corruptions": names.CORRUPTIONS, "robustness__severities": names.CORRUPTION_SEVERITIES,
             "mlflow__tracking_uri": names.TRACKING_SCHEMES,
             "train__model__architecture": names.SEGMENTATION_ARCHITECTURES if TASK == "segmentation"
             else names.CLASSIFICATION_ARCHITECTURES}[key]
    assert ", ".join(map(str, valid)) in error


def test_one_problem_is_one_line_and_several_are_listed(tmp_path):
    p = yaml.safe_load(yaml.safe_dump(SHIPPED))
    p["seed"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(params.ParamsError) as e:
        params.load(tmp_path / "params.yaml")
    assert str(e.value) == f"{tmp_path / 'params.yaml'}: seed=-1: must be an integer >= 0"
    p["lr"] = "fast"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(params.ParamsError, match="2 problems:\n  seed=-1.*\n  lr='fast'"):
        params.load(tmp_path / "params.yaml")


def test_flatten():
    assert params.flatten({"train": {"model": {"encoder": "x"}}, "lr": 1}) == {"train.model.encoder": "x", "lr": 1}


@pytest.mark.parametrize("uri", ["postgresql://me:hunter2@db/mlflow", "http://alice:hunter2@host:5000",
                                 "https://host/?token=hunter2"])
def test_a_tracking_uri_with_a_password_is_refused_without_echoing_it(uri):
    (error,) = errors_with(mlflow__tracking_uri=uri)
    assert "must not carry a password" in error and "MLFLOW_TRACKING_PASSWORD" in error and "hunter2" not in error


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_numbers_must_be_finite(value):
    (error,) = errors_with(lr=value)
    assert error.startswith("lr=") and "must be a number" in error


def test_a_duplicated_key_is_an_error_not_a_silent_choice(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\nlr: 0.1\nseed: 2\n")
    with pytest.raises(params.ParamsError, match=r"YAML \(duplicate key 'seed'; keep one of them in .*line 3"):
        params.load(tmp_path / "params.yaml")


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("1e+30", 1e30), ("2E3", 2000.0), ("1.5e-3", 1.5e-3)])
def test_a_number_as_dvc_writes_it_is_a_number(tmp_path, text, value):
    # `dvc exp run -S lr=1e-4` writes `lr: 1e-4`: YAML 1.2's float, which YAML 1.1 (PyYAML) reads as a string.
    shipped = (Path(__file__).parents[1] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(shipped.replace("\nlr: 0.001\n", f"\nlr: {text}\n", 1))
    assert params.load(tmp_path / "params.yaml")["lr"] == value


@pytest.mark.parametrize("value", ["usa", "US", "United States", 840])
def test_the_energy_country_is_a_three_letter_code(value):
    (error,) = errors_with(mlflow__energy__country=value)
    assert error.startswith("mlflow.energy.country=") and "ISO 3166-1 alpha-3" in error


def test_the_randomisation_threshold_is_a_correlation():
    (error,) = errors_with(analyze__explain__max_rank_correlation=1.5)
    assert "must be a number in [-1, 1]" in error


@pytest.mark.parametrize("value", [0, "two", 1.5])
def test_train_threads_is_null_or_a_number_of_threads(value):
    assert errors_with(train__threads=value) == [f"train.threads={value!r}: must be an integer >= 1, or null"]
    assert errors_with(train__threads=2) == errors_with(train__threads=None) == []
