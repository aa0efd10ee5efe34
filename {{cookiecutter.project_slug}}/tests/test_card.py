from {{ cookiecutter.package_name }}.lib import card


def test_params_that_differ_from_the_generated_ones():
    defaults = {"seed": 42, "train": {"epochs": 12, "model": {"encoder": "resnet18"}}, "old": 1}
    now = {"seed": 42, "train": {"epochs": 3, "model": {"encoder": "resnet18"}}, "new": True}
    assert card.params_changes(now, defaults) == [
        {"param": "new", "value": True, "default": "(absent)"}, {"param": "old", "value": "(removed)", "default": 1},
        {"param": "train.epochs", "value": 3, "default": 12}]
    assert card.params_changes(now, None) is None  # no git history: unknown, not "no changes"


def test_gate_verdict_is_words():
    gates = [{"gate": "min_quality", "passed": True}, {"gate": "max_latency_ms", "passed": False}]
    assert card.gate_verdict(gates) == "failed: 1 of 2 gates (max_latency_ms)"
    assert card.gate_verdict(gates[:1]) == "passed: all 1 gates"


def test_model_card_fits_the_registry_and_says_what_it_left_out():
    pairs = [("task", "segmentation"), ("gates", "passed: all 1 gates")]
    gates = [{"gate": "min_quality", "value": 0.9, "threshold": 0.8, "passed": True, "verdict": "pass"}]
    explained = {"test_images": [3], "rows": [{"spearman": 0.1, "flagged": False, "note": "changed"}]}
    changes = [{"param": f"p{i}", "value": i, "default": 0} for i in range(400)]  # a long table
    args = ("T", pairs, changes, [], gates, {"explain/flagged": 0, "explain/images": 1}, explained)
    short, full = card.markdown(*args), card.markdown(*args, limit=float("inf"))
    assert len(short) <= card.DESCRIPTION_LIMIT < len(full)
    assert "| task | segmentation |" in short and "## Gates: passed" in short and "| 3 | 0.1 | no | changed |" in short
    assert "Left out here for length: Params that differ" in short and "| p399 | 399 | 0 |" in full


def test_the_four_test_scores_say_which_model_and_which_images():
    info = {"task": "segmentation", "num_classes": 2, "class_names": ["background", "shape"], "source": "synthetic",
            "image_size": 64, "sizes": {"train": 336, "val": 72, "test": 72}, "sha256": "d" * 64}
    clean = {m: {"dice": q, "dice_ci_low": q - 0.01, "dice_ci_high": q + 0.01} for m, q in
             (("fp32", 0.93), ("deployable", 0.92))}
    robustness_r = {"summary": {"metric": "dice", "subset": 64, "deployable": "int8_onnxruntime", "score": 0.9,
                                "level": "high", "declared_epsilon": 4}, "clean": clean}
    optimize_m = {"deployable/dice": 0.915, "deployable/p50_ms_batch_1": 2.0, "deployable/speedup_batch_1": 2.5,
                  "deployable/speedup_batch_1_ci_low": 2.4, "deployable/speedup_batch_1_ci_high": 2.6}
    env = {"python_version": "3.11", "torch_version": "2.14.1", "torch_build": "cpu", "platform": "linux",
           "lock_sha256": "l" * 64, "lock_matches": True}
    pairs = dict(card.summary(info, {"model": "Unet/resnet18"}, [{"gate": "min_quality", "passed": True}],
                              {"registered": False, "reason": "test"}, robustness_r, {"test/dice": 0.925},
                              optimize_m, {"explain/images": 4, "explain/flagged": 0}, [], env))
    scores = {k: v for k, v in pairs.items() if k.startswith("test dice")}
    assert len(scores) == 4
    assert scores["test dice, fp32, whole test split (72 images)"] == "0.9250"
    assert scores["test dice, deployable int8_onnxruntime, whole test split (the quality gate's figure)"] == "0.9150"
    assert scores["test dice, fp32, robustness' seeded subset (64 images)"].startswith("0.9300 (95% interval")
    assert scores["test dice, deployable int8_onnxruntime, robustness' seeded subset (64 images)"].startswith("0.9200")
