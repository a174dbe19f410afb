"""training.process.training_process: the trainers' shared scaffold sets up and tears down in a fixed order."""

from __future__ import annotations

import logging
import os

import pytest
import torch

import training.process as process_module
from training.process import training_process

LOGGER = "test_training_process"


class Resource:
    """Records its close in ``events`` and logs it (the run log must still be attached then)."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def close(self):
        self.events.append(f"close {self.name}")
        logging.getLogger(LOGGER).info("closing %s", self.name)


@pytest.fixture
def events(monkeypatch):
    """The calls of shutdown, in order beside the resources' closes."""
    seen = []
    real = process_module.shutdown
    monkeypatch.setattr(process_module, "shutdown", lambda env: seen.append(f"shutdown rank {env.rank}") or real(env))
    return seen


def settings():
    return torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()


def read_log(out_dir):
    with open(os.path.join(out_dir, "train.log"), encoding="utf-8") as handle:
        return handle.read()


def test_a_run_sets_up_then_closes_resources_newest_first_before_leaving_the_group(tmp_path, events):
    before = settings()
    threads = 1 if before[0] != 1 else 2
    with training_process(str(tmp_path), threads, True, "cpu", None, (LOGGER,)) as process:
        assert (process.env.rank, process.env.world_size, process.env.device) == (0, 1, torch.device("cpu"))
        assert settings() == (threads, True)
        first = process.closing(Resource("monitor", events))
        assert first.name == "monitor"  # closing hands the resource back
        process.closing(Resource("second", events))
        logging.getLogger(LOGGER).info("inside the run")
        assert events == []
    assert events == ["close second", "close monitor", "shutdown rank 0"]
    assert settings() == before
    text = read_log(str(tmp_path))
    assert "inside the run" in text and "closing monitor" in text and "closing second" in text
    logging.getLogger(LOGGER).info("after the run")
    assert "after the run" not in read_log(str(tmp_path))  # the log file is detached at the end


def test_an_error_in_the_run_propagates_after_the_same_clean_up(tmp_path, events):
    before = settings()
    with pytest.raises(ValueError, match="step 3 failed"):
        with training_process(str(tmp_path), None, True, "cpu", None, (LOGGER,)) as process:
            process.closing(Resource("monitor", events))
            raise ValueError("step 3 failed")
    assert events == ["close monitor", "shutdown rank 0"]
    assert settings() == before
    assert "closing monitor" in read_log(str(tmp_path))


def test_a_run_that_closes_nothing_still_leaves_the_group(tmp_path, events):
    before = settings()
    with training_process(str(tmp_path), None, False, "cpu", None, (LOGGER,)):
        assert settings() == before  # no thread count and deterministic=False: the settings are left alone
    assert events == ["shutdown rank 0"]
