"""Issue 11 finding 3: a signing key must say which company it speaks for (``null`` for an admin key), and a
process that refuses its configuration says which key is wrong without printing any key's secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import ConfigurationError
from config.load import load_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "TOP-SECRET-never-printed-0123456789"
OTHER_SECRET = "another-secret-also-never-printed-42"


def _start(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    return subprocess.run(command, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [[sys.executable, "-m", "api", "--port", "1"],
                                     [sys.executable, "-m", "offload.cli", "projector"]])
def test_a_process_refuses_a_key_without_company_id_naming_the_key_and_never_a_secret(command):
    keys = {"ops": {"secret": OTHER_SECRET, "company_id": None}, "moodle-7": {"secret": SECRET}}
    done = _start(command, OFFLOAD_API_KEYS=json.dumps(keys))
    assert done.returncode == 1, done.stderr
    assert SECRET not in done.stderr + done.stdout and OTHER_SECRET not in done.stderr + done.stdout
    assert "configuration error" in done.stderr and "moodle-7" in done.stderr and "company_id" in done.stderr
    assert "null for an admin key" in done.stderr  # says how to make one on purpose


def test_a_callback_key_without_company_id_is_refused_by_name_without_its_secret():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environment="test", callback_keys=json.dumps({"moodle-7-cb": {"secret": SECRET}}))
    assert "moodle-7-cb" in str(info.value) and "company_id is required" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("bad", [{"secret": SECRET, "company_id": "seven"}, {"secret": SECRET, "company_id": -1},
                                 {"secret": SECRET, "company_id": 7, "admin": True}, {"secret": "short"}])
def test_no_key_problem_prints_a_secret(bad):
    with pytest.raises(ConfigurationError) as info:
        load_settings(environment="test", api_keys={"moodle-7": bad})
    assert "moodle-7" in str(info.value)
    assert SECRET not in str(info.value) and "short" not in str(info.value)


def test_an_admin_key_is_one_whose_company_id_is_null_on_purpose():
    settings = load_settings(environment="test", api_keys={"ops": {"secret": SECRET, "company_id": None},
                                                           "moodle-7": {"secret": OTHER_SECRET, "company_id": 7}})
    assert settings.api_keys["ops"].company_id is None
    assert settings.api_keys["moodle-7"].company_id == 7
