"""The `aspo` command: train | eval | score | compare | merge-lora.

Each sub-command lives in ``aspo.commands.<name>`` and is imported only when used, so `aspo --help`
starts in a fraction of a second. Every ``UserError`` (and a few other predictable failures) becomes a
one-paragraph message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train a policy with RLVR (ASPO by default) on the tiny lab or a local checkpoint",
    "eval": "sample K responses per problem and report avg@K, pass@1, pass@K, maj@K",
    "score": "score a JSONL of responses offline with a reward (math, code, lab tasks, file.py:fn)",
    "compare": "run several algorithms over several seeds and write a report with figures",
    "merge-lora": "fold a LoRA adapter checkpoint into a plain transformers checkpoint",
}

USAGE = "usage: aspo {train,eval,score,compare,merge-lora} [args...]\n       aspo COMMAND --help"


def _help() -> str:
    lines = [
        "aspo -- reinforcement learning with verifiable rewards, built around ASPO.",
        "",
        USAGE,
        "",
        "commands:",
    ]
    lines += [f"  {name:<11}{doc}" for name, doc in COMMANDS.items()]
    lines += ["", "`aspo train` with no arguments trains the embedded tiny lab with ASPO (no download)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:  # called as a function (tests, scripts): the process goes on
        return _dispatch(list(argv))
    code = 0
    try:
        code = _dispatch(sys.argv[1:])
        sys.stdout.flush()  # a buffered stdout meets a closed pipe here, not in the interpreter's exit
    except BrokenPipeError:  # `aspo --help | head`: the reader left; nothing more to say
        _stdout_to_devnull()
    except SystemExit:  # argparse's --help and usage errors exit through here: flush inside the guard too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
        raise
    finally:
        # the process ends next: spare the ~370k objects that torch, transformers and a run leave behind the
        # collector's passes at interpreter teardown (measured: 11-12 s of a tiny `aspo train` on a loaded
        # 2-core machine, 0.2-1.6 s frozen; the launcher SIGKILLs a rank that takes 30 s to stop)
        import gc

        gc.freeze()
    return code


def _stdout_to_devnull() -> None:
    """After a broken pipe: later writes (and the interpreter's final flush) go nowhere, silently."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from aspo import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"aspo: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from aspo.errors import Interrupted, UserError

    if "torch" not in sys.modules:  # libgomp reads its wait policy once, when torch loads: set it before
        from aspo.threads import configure_environment

        configure_environment()
    try:
        module = importlib.import_module(f"aspo.commands.{name.replace('-', '_')}")
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"aspo {name}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `aspo train --help | head`
        _stdout_to_devnull()
        return 0
    except Interrupted as stop:  # SIGTERM / SIGINT in training: what was kept is in the message
        if not stop.quiet:
            print(f"aspo {name}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"aspo {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
