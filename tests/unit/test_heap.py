"""offload.heap: with the thresholds fixed, a large block freed does not send the next ones to the heap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# In a fresh interpreter (the thresholds are the process's): is a 1 MiB block taken after another was freed
# served by its own mmap (counted in mallinfo2's hblkhd), or from the heap?
SCRIPT = """
import ctypes, sys
from offload.heap import return_large_blocks

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "fixed" and not return_large_blocks():
    sys.exit("not glibc")
first = bytearray(1 << 20)
del first
before = libc.mallinfo2().hblkhd
second = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - before >= 1 << 20)
"""


def mapped_after_a_free(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True)
    if out.returncode and "not glibc" in out.stderr:
        pytest.skip("the C library is not glibc")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_large_block_leaves_the_next_one_mapped_only_with_the_thresholds_fixed() -> None:
    assert mapped_after_a_free("fixed")
    assert not mapped_after_a_free("default")  # glibc's own rule: the freed block raised the threshold
