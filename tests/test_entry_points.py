"""``python -m api``, ``python -m inference_worker`` and ``python -m dicom_listener`` are the
CLI's ``api``, ``worker`` and ``listener``: the same help, and the same
refusal of settings that are not valid (nothing is started)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurogate.cli import EX_CONFIG

REPO = Path(__file__).resolve().parents[1]
SERVICES = [("api", "api"), ("inference_worker", "worker"), ("dicom_listener", "listener")]


def _run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEUROGATE_")}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("module", "command"), SERVICES)
def test_help_is_the_cli_subcommand(module: str, command: str) -> None:
    result = _run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: neurogate {command} " in result.stdout


@pytest.mark.parametrize(("module", "command"), SERVICES)
def test_invalid_settings_are_refused_before_starting(module: str, command: str) -> None:
    result = _run(module, NEUROGATE_PROFILE="nowhere")
    assert result.returncode == EX_CONFIG, result.stderr
    assert "the settings are not valid" in result.stderr
    assert "PROFILE" in result.stderr


@pytest.mark.parametrize(("module", "command"), SERVICES)
def test_a_mistyped_setting_is_refused_before_starting(module: str, command: str) -> None:
    result = _run(module, NEUROGATE_LISTENER__AE_TITEL="NG")
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.splitlines()[1:] == [
        "  NEUROGATE_LISTENER__AE_TITEL: not a setting; did you mean NEUROGATE_LISTENER__AE_TITLE?"
    ]
