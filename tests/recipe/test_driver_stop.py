"""The driver's SIGTERM handling when the trainer does not stop in time (recipe/gxpo/preemption.py):
a real SIGTERM to this process, no Ray; the stop flag's actor is replaced by one that never answers."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from recipe.gxpo.preemption import EXIT_PREEMPTED, DriverStop, StopTimeout


def _stop(tmp_path, grace):
    cfg = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path / "run"), "resume_mode": "auto",
                                        "preempt_grace_s": grace, "total_training_steps": 4}})
    stop = DriverStop(cfg)
    stop._flag = SimpleNamespace(request=SimpleNamespace(remote=lambda reason: None))  # a trainer that never stops
    return stop


def _sigterm_and_wait(seconds):
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("second_signal", [False, True])
def test_grace_period_or_second_sigterm_stops_with_75_and_the_resume_line_last(tmp_path, capsys, second_signal):
    previous = signal.getsignal(signal.SIGTERM)
    stop = _stop(tmp_path, grace=30.0 if second_signal else 0.5)
    try:
        with pytest.raises(StopTimeout) as err:
            if second_signal:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
            _sigterm_and_wait(10)
        assert ("second SIGTERM" if second_signal else "trainer.preempt_grace_s=0.5") in str(err.value)
        with pytest.raises(SystemExit) as ex:
            stop.fail(err.value)
        assert ex.value.code == EXIT_PREEMPTED
    finally:
        stop.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("[gxpo] preempted (SIGTERM)")
    assert out[-1].startswith("[gxpo] to resume: rerun the same command: python -m recipe.gxpo.main_gxpo")
    assert "no checkpoint yet: it starts from step 0" in out[-1]
    assert signal.getsignal(signal.SIGTERM) == previous  # put back when the run is over


@pytest.mark.parametrize("bad", [-1, "soon", True])
def test_a_bad_grace_period_is_refused_naming_the_key(tmp_path, bad):
    from recipe.gxpo.preemption import grace_seconds
    from verl_ext.core.config import ConfigError

    cfg = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path), "preempt_grace_s": bad}})
    with pytest.raises(ConfigError, match="trainer.preempt_grace_s"):
        grace_seconds(cfg)
