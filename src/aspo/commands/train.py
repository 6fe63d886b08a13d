"""`aspo train [CONFIG.yaml] [dotted.key=value ...]` -- see `aspo train --help` for every key."""

from __future__ import annotations

from aspo.errors import UserError

USAGE = """usage: aspo train [CONFIG.yaml] [dotted.key=value ...]

Train a policy with RLVR. With no arguments: the embedded tiny lab (a ~1M-parameter Qwen2 model with a
character tokenizer, warm-started on the lab task and cached) trained with ASPO in the off-policy regime
(train.mini_batches x train.epochs optimizer steps per rollout). Values are YAML scalars: rollout.n=16,
algorithm.loss=grpo, data.train=path/to/train.jsonl, resume=true.

Examples:
  aspo train                                   # the demo: ASPO on the tiny lab
  aspo train algorithm.loss=grpo train.seed=1  # the GRPO baseline
  aspo train model=./my-ckpt data.train=train.jsonl data.test=test.jsonl reward=math
  aspo train configs/smollm2-arithmetic.yaml   # a real model (model=smollm2-135m-instruct; make smollm2)
  aspo train output_dir=runs/x resume=true     # continue from the newest complete checkpoint

Multi-process (data parallel; on a CPU-only machine --multi_gpu runs gloo, while --cpu starts one process):
  accelerate launch --multi_gpu --num_processes N -m aspo train ...
  torchrun --nproc_per_node N -m aspo train ...

keys (default value, then what it does):
"""


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    config_path = None
    overrides = []
    for i, arg in enumerate(argv):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0 and arg.endswith((".yaml", ".yml")):
            config_path = arg
        else:
            raise UserError(
                f"unexpected argument {arg!r}: give an optional CONFIG.yaml first, then "
                "dotted.key=value overrides (`aspo train --help` lists the keys)"
            )
    return config_path, overrides


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from aspo.config import describe_keys

        print(USAGE + describe_keys())
        return 0
    import warnings

    warnings.formatwarning = lambda msg, cat, *a, **k: f"aspo train: warning: {msg}\n"
    show = warnings.showwarning

    def above_the_bar(*args: object, **kwargs: object) -> None:  # not glued to the progress bar's line
        from tqdm import tqdm

        with tqdm.external_write_mode():
            show(*args, **kwargs)  # type: ignore[arg-type]

    warnings.showwarning = above_the_bar
    from aspo.config import load_config

    config_path, overrides = parse_args(argv)
    cfg = load_config(config_path, overrides).validate()  # before the heavy imports: bad input fails fast
    from aspo.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0
