"""A snippet run in a fresh interpreter: what importing a module pulls in (or what a command
line offers without the dev package) shows only in a process that has not already imported
the test session's modules."""

import subprocess
import sys


def fresh_python(code: str) -> str:
    """The stdout of `python -c code` in a new process; the test fails with its stderr when
    it exits non-zero."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout
