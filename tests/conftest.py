import time

import pytest


@pytest.fixture(scope="session")
def reduced_zoo(tmp_path_factory):
    """A reduced zoo (3 tasks, few steps), built once per test session: (Zoo, build seconds)."""
    from zoo.build import build_zoo, reduced_recipe

    root = tmp_path_factory.mktemp("zoo")
    t0 = time.perf_counter()
    built = build_zoo(root, recipe=reduced_recipe(), progress=False)
    return built, time.perf_counter() - t0
