"""Moodle's own PHP client (clients/moodle/example.php) run on a callback a test received, as Moodle would."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.moodle_receiver import Received
from tests.support.stack import REPO

PHP_CLIENT = REPO / "clients" / "moodle" / "example.php"


def php_reads_callback(command: str, received: Received, secrets: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """What the PHP client's ``command`` (verify-callback, unsubscribe-callback) makes of ``received``."""
    php_bin = shutil.which("php")
    assert php_bin, "php-cli is not installed (apt-get install -y php-cli; .ci/run installs it)"
    spec = tmp_path / f"{command}.json"
    spec.write_text(json.dumps({"headers": received.headers, "method": "POST", "path": received.path,
                                "body": received.body.decode(), "secrets": secrets}))
    done = subprocess.run([php_bin, str(PHP_CLIENT), "", "", "", command, str(spec)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result
