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
