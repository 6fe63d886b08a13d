"""How a record becomes the text the policy sees: the one rule that `aspo train`, its held-out evals and
`aspo eval` share (config section ``prompt``), so training and evaluation never prompt differently.

1. The user message: ``prompt.template`` filled from the record (``{prompt}`` and any other field), then
   ``prompt.instruction`` on a new line when it is set.
2. With ``prompt.chat_template`` and a tokenizer that has one: an optional ``prompt.system`` turn and the
   user turn through ``apply_chat_template(..., add_generation_prompt=True)``. Otherwise the plain text,
   with ``prompt.system`` as its first line when set.

A record whose ``prompt`` is a chat message list (verl's RLHF layout, ``[{role, content}, ...]``) is already
a conversation: it goes through the chat template (``prompt.chat_template=true`` is required, and a tokenizer
with one); ``template`` and ``instruction`` apply to its last user turn (``{prompt}`` is that turn's text),
and a system turn of its own wins over ``prompt.system``.

`aspo eval` on a plain checkpoint (one not inside a run directory) uses ``eval_defaults``: the chat template
when the tokenizer has one, with the standard instruction of the reward (math: "reason step by step ...
\\boxed{}"; HumanEval-style code: complete the function in a ```python block); a tokenizer without a chat
template gets the bare ``{prompt}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aspo.config import PromptConfig
from aspo.errors import UserError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in a ```python block."
)


def is_chat(prompt: Any) -> bool:
    """Whether a record's ``prompt`` is a chat message list rather than text."""
    return isinstance(prompt, (list, tuple))


def uses_chat_template(cfg: PromptConfig, tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template (which then supplies the special tokens)."""
    return bool(cfg.chat_template and getattr(tokenizer, "chat_template", None))


def _fill(template: str, record: dict[str, Any], prompt_text: str) -> str:
    try:
        return template.format(**{**record, "prompt": prompt_text})
    except (KeyError, IndexError) as err:
        raise UserError(
            f"prompt.template {template!r} names field {err} which a record does not have"
        ) from err
    except ValueError as err:  # a stray brace
        raise UserError(f"prompt.template {template!r} is not a valid format string: {err}") from err


def format_prompt(record: dict[str, Any], cfg: PromptConfig, tokenizer: Any) -> str:
    """The text the policy continues for ``record`` (see the module docstring for the rule)."""
    chat = uses_chat_template(cfg, tokenizer)
    if is_chat(record["prompt"]):
        if not chat:
            raise UserError(
                "a record's prompt is a chat message list: set prompt.chat_template=true (and use a "
                "tokenizer with a chat template) to train or evaluate on it"
            )
        messages = [dict(m) for m in record["prompt"]]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise UserError(f"a record's chat prompt has no user turn: {messages!r:.200}")
        last = users[-1]
        messages[last]["content"] = _user_text(cfg, record, str(messages[last]["content"]))
        if cfg.system is not None and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": cfg.system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    user = _user_text(cfg, record, str(record["prompt"]))
    if chat:
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system is not None else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return user if cfg.system is None else f"{cfg.system}\n{user}"


def _user_text(cfg: PromptConfig, record: dict[str, Any], prompt_text: str) -> str:
    text = _fill(cfg.template, record, prompt_text)
    return f"{text}\n{cfg.instruction}" if cfg.instruction else text


def eval_defaults(reward: str, records: Sequence[dict[str, Any]], tokenizer: Any) -> PromptConfig:
    """`aspo eval`'s formatting for a checkpoint that was not trained by `aspo train` (module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        return PromptConfig(template="{prompt}", chat_template=False)
    if reward == "code" and records and all(r.get("entry_point") for r in records):
        return PromptConfig(template=f"{CODE_INSTRUCTION}\n```python\n{{prompt}}\n```", chat_template=True)
    return PromptConfig(chat_template=True, instruction=MATH_INSTRUCTION if reward == "math" else "")
