"""`aspo ... | head`: a reader that leaves early ends the command quietly, for every output path."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("unbuffered", ["1", ""])  # written at once (a terminal-like stdout) or at exit
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["score", "--help"]])
def test_output_into_a_closed_pipe_ends_without_a_traceback(argv, unbuffered):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen(
        [sys.executable, "-m", "aspo", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # the reader is gone before the first line, as with `| head -0`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 0
