"""What the tests that compare presets with the shipped models' recipes share."""

# Env options added after some shipped models were trained, with the default (off) that the
# presets must keep so each preset still reproduces its model.
ENV_OPTIONS_ADDED = {
    "stage_marker": False,
    "progress_cells": False,
    "demos": "",
    "demo_starts": 0.0,
    "jump_unblock": False,
}


def assert_env_recipe(env_now: dict, trained: dict) -> None:
    """The preset's env settings equal the model's, and any newer option is at its default."""
    assert trained == {k: env_now[k] for k in trained}
    for k in set(env_now) - set(trained):
        assert env_now[k] == ENV_OPTIONS_ADDED[k], k
