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
