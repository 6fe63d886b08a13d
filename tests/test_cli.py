import subprocess
import sys

from aspo.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "score", "compare"):
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "aspo", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip()
