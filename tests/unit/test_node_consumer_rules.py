"""The Node.js consumer's counting rules (clients/node-consumer/test/, run with ``node --test``): no broker
needed; tests/integration/test_node_consumer.py compares its whole summary with the read model."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.support.stack import REPO

CLIENT = REPO / "clients" / "node-consumer"


def test_the_node_consumers_summary_rules():
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/setup.sh"
    done = subprocess.run([node, "--test", "test/"], cwd=CLIENT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 4 and "\n# fail 0\n" in done.stdout, done.stdout[-2000:]
