"""One optimizer step of the native trainer on a fixed global batch; run with 1 or N processes.

usage: python one_update.py OUT.pt RUN_DIR MODEL_DIR TRAIN_JSONL [uneven] [nan-first] [extra dotted overrides]
Every rank samples the same global batch (same weights, same seed), keeps its own share of the groups (with
``uneven`` and 2 processes: 3 groups on rank 0, 1 on rank 1) and calls Trainer.update; rank 0 saves the
updated weights to OUT.pt for comparison across world sizes (and with train.fsdp=true, between sharded and
whole weights). With ``nan-first``, an update whose loss is NaN on rank 0 alone comes first: every rank must
skip it (no hang in the gradient all-reduce, no step anywhere), so the weights end as without it.
"""

import sys

import torch

from aspo.advantages import compute_advantages
from aspo.config import load_config
from aspo.distributed import full_state_dict, full_weights
from aspo.trainer import Trainer

out, run_dir, model_dir, train = sys.argv[1:5]
flags = {"uneven", "nan-first"}
uneven, nan_first = "uneven" in sys.argv[5:], "nan-first" in sys.argv[5:]
extra = [a for a in sys.argv[5:] if a not in flags]
cfg = load_config(None, [f"model={model_dir}", f"data.train={train}", "reward=arithmetic", "train.device=cpu",
                         "train.mini_batches=1", "train.epochs=1", "train.prompts_per_step=4", "train.lr=1e-2",
                         "train.warmup_steps=0", f"output_dir={run_dir}", *extra])
trainer = Trainer(cfg, progress=False)
prompts = [r["prompt"] for r in trainer.train_records[:4]]
with full_weights(trainer.accelerator, trainer.train_model):  # FSDP: whole weights to sample
    rollout = trainer.engine.generate(prompts, n=4, max_new_tokens=12, seed=123)
rewards = torch.tensor([sum(c.isdigit() for c in t) / max(len(t), 1) for t in rollout.responses])
advantages = compute_advantages("grpo", rewards, rollout.group_ids)
groups_per_rank = 4 // trainer.world
if uneven and trainer.world == 2:
    owner = (rollout.group_ids >= 3).long()
else:
    owner = rollout.group_ids // groups_per_rank
mine = (owner == trainer.rank).nonzero().squeeze(-1)
if nan_first:  # rank 0's activations turn NaN (as in a diverging forward), rank 1's stay finite
    model = trainer.accelerator.unwrap_model(trainer.train_model)
    hook = model.model.norm.register_forward_hook(lambda module, args, out: out * float("nan"))
    if trainer.rank != 0:
        hook.remove()
    skipped = trainer.update(1, rollout.select(mine), advantages[mine])
    hook.remove()
    assert skipped["actor/optimizer_steps"] == 0.0 and skipped["actor/nonfinite_steps"] == 1.0, skipped
metrics = trainer.update(1, rollout.select(mine), advantages[mine])
assert metrics["actor/optimizer_steps"] == 1.0, metrics
weights = full_state_dict(trainer.accelerator, trainer.train_model)  # FSDP: gathered to rank 0
if trainer.is_main:
    torch.save({k: v.detach().clone() for k, v in weights.items()}, out)
trainer.close()
