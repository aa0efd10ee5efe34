"""Fixtures and collection rules of the template's tests; what tests and benchmarks share is in helpers.py."""

import pytest

from helpers import BIN, STAGES, TEMPLATE, TINY, bake, free_port, project_env, sh, wait_until_up  # noqa: F401

# Every test carries exactly one cost marker (registered, with its meaning, in pytest.ini), so that a selection
# such as `-m fast` cannot miss a new test. Their order is the order files start in.
COST = ("pipeline", "services", "fast")


def _costs(item):
    return [mark.name for mark in item.iter_markers() if mark.name in COST]


def pytest_collection_modifyitems(items):
    # Runs before -m deselects: a test without exactly one cost marker is given them all, so that every
    # selection by cost keeps it, and fails in set-up, below (a collection error would not reach xdist's report).
    costs = {item: _costs(item) for item in items}
    for item, found in costs.items():
        if len(found) != 1:
            for name in COST:
                item.add_marker(name)
            costs[item] = [COST[0]]
    # xdist hands a worker a whole file (--dist loadfile), and its next file once 2 tests of the current one are
    # left; by itself it would order files by their number of tests, leaving the long pipeline files to start
    # last and run alone at the end (pytest.ini turns that off). Files start by the cost of most of their tests
    # (a tie counts as the costlier), and within one cost those with fewer tests first (a few tests of a cost are
    # long scenarios, many are a table of short cases): the baked suites' 2 tests start first, with the next
    # pipeline file queued behind them on that worker, while the other worker takes everything else.
    counts = {}
    for item in items:
        counts.setdefault(item.path, [0] * len(COST))[COST.index(costs[item][0])] += 1
    rank = {path: max(range(len(COST)), key=lambda i: (n[i], -i)) for path, n in counts.items()}
    items.sort(key=lambda item: (rank[item.path], sum(counts[item.path])))  # stable: a file's own order is kept


def pytest_runtest_setup(item):
    if len(_costs(item)) != 1:
        pytest.fail(f"{item.nodeid} needs exactly one of the markers {', '.join(COST)} (pytest.ini)", pytrace=False)


@pytest.fixture(scope="session")
def baked(tmp_path_factory):
    """One default project per task, shared by the tests that only read it."""
    cache = {}

    def get(task):
        if task not in cache:
            cache[task] = bake(tmp_path_factory.mktemp(task), task=task)
        return cache[task]

    return get
