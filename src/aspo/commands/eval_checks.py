"""What `aspo eval` checks around the samples: answers the reward needs, the run a checkpoint came from (its
prompt settings, and whether this evaluation uses other data, another reward or other prompts than it
trained with), and samples the reward could not score. Each finding is one line; only a run where most
samples could not be scored is an error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from aspo.config import RENAMED_KEYS, Config, PromptConfig, set_key
from aspo.errors import UserError

# built-in rewards that compare against the record's answer (code runs the record's tests instead)
ANSWER_REWARDS = ("math", "number", "arithmetic", "countdown")


def require_answers(problems: list[dict[str, Any]], reward: str, data: str) -> None:
    """A record without an answer cannot be scored by a reward that compares against it: say which, before
    the model loads (`aspo train` rejects the same file)."""
    if reward not in ANSWER_REWARDS:
        return
    for i, record in enumerate(problems, start=1):
        if record.get("answer") is None:
            where = f"{data}:{i}" if data.endswith((".jsonl", ".json")) else f"{data}, record {i}"
            raise UserError(
                f"{where}: record has no 'answer' field (reward {reward!r} compares the response with it)"
            )


def run_config_path(model: str) -> Path | None:
    """``<run>/config.yaml`` for a checkpoint ``<run>/checkpoints/step-N``; None outside a run directory."""
    path = Path(model).resolve()
    config_path = path.parent.parent / "config.yaml"
    return config_path if path.parent.name == "checkpoints" and config_path.is_file() else None


def run_prompt_config(model: str) -> PromptConfig | None:
    """The ``prompt`` section a run trained with, for a checkpoint ``<run>/checkpoints/step-N``; None for a
    checkpoint outside a run directory. Runs saved before the section existed keep their ``data.*`` keys."""
    config_path = run_config_path(model)
    if config_path is None:
        return None
    try:
        tree = yaml.safe_load(config_path.read_text()) or {}
        data, prompt = tree.get("data") or {}, tree.get("prompt") or {}
        cfg = Config()
        for old in RENAMED_KEYS:
            if old.startswith("data.") and old.split(".", 1)[1] in data:
                set_key(cfg, old, data[old.split(".", 1)[1]])
        for key, value in prompt.items():
            set_key(cfg, f"prompt.{key}", value)
    except (yaml.YAMLError, AttributeError, UserError) as err:
        raise UserError(
            f"{config_path}: cannot read the run's prompt settings ({err}); give them as flags "
            "(--prompt-template, --chat-template, --system, --instruction)"
        ) from err
    return cfg.prompt


def run_tree(model: str) -> dict[str, Any] | None:
    """The config.yaml of the run a checkpoint belongs to, as read (None outside a run directory)."""
    config_path = run_config_path(model)
    if config_path is None:
        return None
    try:
        tree = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        return None  # run_prompt_config names the unreadable file
    return tree if isinstance(tree, dict) else None


def mismatch_notes(
    tree: dict[str, Any] | None, data: str, reward: str, prompt_cfg: PromptConfig, tokenizer: Any
) -> list[str]:
    """One line per way this evaluation differs from what the checkpoint was trained on: another lab task,
    another reward, other prompt formatting, or a chat tokenizer's model prompted without its template."""
    notes = []
    if tree is not None:
        trained_on = (tree.get("data") or {}).get("train")
        task = tree.get("task")
        if data.startswith("lab:"):
            asked = data.split(":")[1]
            if trained_on:
                notes.append(
                    f"the checkpoint was trained on {trained_on}, not on the lab task {asked!r} "
                    f"(--data {data})"
                )
            elif task and task != asked:
                notes.append(
                    f"the checkpoint was trained on task={task!r}; --data {data} is task {asked!r}, which it "
                    f"never saw (--data lab:{task} evaluates what it learned)"
                )
        run_reward = tree.get("reward") or (None if trained_on else _lab_reward(task))
        if run_reward and run_reward != reward and not notes:  # another task's reward: said above
            notes.append(f"the run was scored with reward={run_reward!r}; this evaluation uses {reward!r}")
        run_prompt = tree.get("prompt") or {}
        changed = [
            f"{key} {run_prompt[key]!r} -> {value!r}"
            for key, value in dataclasses.asdict(prompt_cfg).items()
            if key in run_prompt and run_prompt[key] != value
        ]
        if changed:
            notes.append(f"prompts are formatted unlike the run's: {'; '.join(changed)}")
    elif getattr(tokenizer, "chat_template", None) and not prompt_cfg.chat_template:
        notes.append(
            "the tokenizer has a chat template, but prompts are plain text (--no-chat-template); "
            "a chat model answers its own template's prompts"
        )
    return notes


def _lab_reward(task: str | None) -> str | None:
    if not task:
        return None
    from aspo.lab.tasks import get_task

    try:
        return get_task(task).reward
    except UserError:
        return None


def scoring_errors(rows: list[dict[str, Any]], samples: Path) -> str | None:
    """The console line on samples the reward could not score (None when all were scored); a UserError
    with the first error when most of them could not be: their zeros are no verdict on the model."""
    failed = [r for r in rows if r.get("unscored")]
    if not failed:
        return None
    first = failed[0]
    where = f"first: problem {first['id']} sample {first['sample']}: {first['error']}"
    if len(failed) * 2 > len(rows):
        raise UserError(
            f"{len(failed)} of {len(rows)} samples could not be scored (they count as 0, so the figures "
            f"say nothing); {where}. Samples in {samples}"
        )
    return f"{len(failed)} of {len(rows)} samples could not be scored and count as 0 ({where})"
