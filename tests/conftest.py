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


@pytest.fixture
def cli_run(tmp_path):
    """The `bandit` command on a fresh database in tmp_path, through click's CliRunner:
    `cli_run(*args, code=0)` runs it with `--db`, asserts the exit code, returns the result;
    `cli_run.db` is the database's path."""
    from click.testing import CliRunner

    from cli import main

    db = str(tmp_path / "cli.db")
    runner = CliRunner()

    def run(*args, code=0):
        res = runner.invoke(main, [*args, "--db", db])
        assert res.exit_code == code, res.output
        return res

    run.db = db
    return run


@pytest.fixture(scope="session")
def trial_family(tmp_path_factory):
    """A tiny base and two fine-tunes far enough from it for trial merges to tell arms
    apart, built once per session: {"base", "a", "b"} -> folder."""
    from feature_models import make_base, make_finetune

    root = tmp_path_factory.mktemp("trial-family")
    base = make_base(root / "base", seed=0)
    return {"base": base, "a": make_finetune(base, root / "a", seed=1, scale=0.3),
            "b": make_finetune(base, root / "b", seed=2, scale=0.3)}
