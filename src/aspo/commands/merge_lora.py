"""`aspo merge-lora CHECKPOINT OUTPUT`: fold a LoRA adapter checkpoint into a plain transformers checkpoint.

The output is the adapter's base model with every adapted weight replaced by W + alpha/r * B A, saved with
``save_pretrained`` (model + tokenizer): it loads with ``AutoModelForCausalLM.from_pretrained`` without peft,
and in vLLM or any other tool. It is written under a temporary name and renamed, so OUTPUT appears only
when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import textwrap
from pathlib import Path

from aspo.commands.parser import CommandParser
from aspo.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aspo merge-lora",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Merge the LoRA adapter of a checkpoint written with lora.rank > 0 into its base model and save "
            "the result as a plain transformers checkpoint (no peft needed to load it).",
            100,
        ),
        epilog="example:\n  aspo merge-lora runs/x/checkpoints/step-60 runs/x/merged",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="adapter checkpoint directory (adapter_config.json + adapter_model.safetensors)",
    )
    parser.add_argument(
        "output", type=Path, help="new directory for the merged model (must not exist or be empty)"
    )
    return parser


def main(argv: list[str]) -> int:
    from aspo.lora import read_adapter_base
    from aspo.pretrained import load_checkpoint

    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_dir():
        raise UserError(f"checkpoint {str(args.checkpoint)!r} is not a directory")
    if read_adapter_base(args.checkpoint) is None:
        raise UserError(
            f"{str(args.checkpoint)!r} holds no LoRA adapter (adapter_config.json); it is already a "
            "plain checkpoint"
        )
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise UserError(
            f"output {str(args.output)!r} already exists and is not empty (nothing was overwritten)"
        )
    model, tokenizer = load_checkpoint(str(args.checkpoint))  # the base with the adapter merged in
    tmp = args.output.with_name(f".tmp-{args.output.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if args.output.exists():  # an empty directory
        args.output.rmdir()
    os.rename(tmp, args.output)
    print(f"merged {args.checkpoint} into {args.output}")
    return 0
