"""Signal health: a group whose responses all score alike has zero advantage everywhere, so a run in which
no group has signal learns nothing. The usual cause is a reward that does not read the model's answer format
(every response 0) or one that accepts anything (every response 1); this module says so in the first steps,
with the responses and the rewards they got, instead of letting the run finish at 0.000 -> 0.000.
"""

from __future__ import annotations

import inspect
from typing import Any

NO_SIGNAL_STEPS = 3  # signal-less steps in a row, from the first, before the warning
SHOWN_SAMPLES = 4  # responses quoted in the warning
TRAIN_SAMPLES_PER_STEP = 2  # groups per step written to samples.jsonl (split "train")


def signal_note(metrics: dict[str, float]) -> str | None:
    """The progress line's word on a step without signal (None when some group had signal):
    "none (16/16 all 0)", "none (16/16 all 1)" or "none (16/16 equal)"."""
    total = int(metrics.get("groups/sampled", 0))
    if not total or metrics.get("groups/with_signal", 1) > 0:
        return None
    for key, what in (("groups/solve_none", "all 0"), ("groups/solve_all", "all 1")):
        if int(metrics.get(key, 0)) == total:
            return f"none ({total}/{total} {what})"
    return f"none ({total}/{total} equal)"


def expected_format(reward: Any) -> str:
    """What the reward scores, in its own words: the first paragraph of its docstring."""
    reward = getattr(reward, "__wrapped__", reward)  # a file reward run in a worker: the user's function
    doc = inspect.getdoc(reward) or ""
    first = " ".join(doc.split("\n\n")[0].replace("``", "").split())
    where = f"{getattr(reward, '__module__', '?')}.{getattr(reward, '__name__', reward)!s}"
    return f"{first} [{where}]" if first else f"(no docstring in {where})"


def no_signal_message(
    reward_name: str,
    reward: Any,
    steps: list[dict[str, float]],
    rows: list[dict[str, Any]],
    samples_path: str,
    mode: str,
) -> str:
    """The warning (or, with ``train.on_no_signal=stop``, the error) after ``steps`` without signal;
    ``rows`` are training samples of those steps (``step``, ``prompt``, ``answer``, ``response``,
    ``reward``)."""
    total = sum(int(m.get("groups/sampled", 0)) for m in steps)
    none = sum(int(m.get("groups/solve_none", 0)) for m in steps)
    solved = sum(int(m.get("groups/solve_all", 0)) for m in steps)
    if solved == total:
        cause = (
            "every response scored 1: the reward accepts anything, or the task is already solved "
            "(a harder task or a stricter reward gives signal)"
        )
    elif none == total:
        cause = "every response scored 0: the reward may not read the answers in the format the model writes"
    else:
        cause = "every response of a group scored the same"
    lines = [
        f"no group had a learning signal in steps 1-{len(steps)} ({cause}); nothing is being learned.",
        f"  groups: {total} sampled, {total} with equal rewards (groups/solve_none {none}, "
        f"groups/solve_all {solved}, groups/valid 0)",
        f"  reward {reward_name!r} expects: {expected_format(reward)}",
    ]
    for row in sorted(rows, key=lambda r: r["sample"])[:SHOWN_SAMPLES]:  # one per group first
        lines.append(
            f"  step {row['step']}: prompt {row['prompt']!r:.80} answer {row['answer']!r:.30} -> "
            f"response {row['response']!r:.100} got reward {row['reward']:g}"
        )
    lines.append(f"  more responses in {samples_path} (split 'train')")
    if mode == "warn":
        lines.append("  train.on_no_signal=stop stops the run here instead of warning")
    return "\n".join(lines)


def train_sample_rows(
    step: int, records: list[dict[str, Any]], prompts: list[str], rollout: Any, rewards: Any, n: int
) -> list[dict[str, Any]]:
    """samples.jsonl rows for the first ``TRAIN_SAMPLES_PER_STEP`` groups of a step's first sampling round
    (``rewards``: the raw reward of every row, groups of ``n``), one distinct prompt after another."""
    rows = []
    for i in range(min(len(records), TRAIN_SAMPLES_PER_STEP) * n):
        rows.append(
            {
                "step": step,
                "split": "train",
                "prompt": prompts[i // n],
                "answer": records[i // n].get("answer"),
                "sample": i % n,
                "response": rollout.responses[i],
                "reward": float(rewards[i]),
            }
        )
    return rows
