"""The argument parser every `aspo` sub-command with options uses."""

from __future__ import annotations

import argparse

from aspo.errors import UserError


class CommandParser(argparse.ArgumentParser):
    """argparse whose bad input is a UserError naming the command's help (one paragraph, exit 2), as
    everywhere else in the CLI, instead of argparse's own usage dump and exit."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (`{self.prog} --help` shows the usage)")
