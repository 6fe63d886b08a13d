"""Algorithm presets for `aspo compare`: each name is a list of dotted config overrides.

Every preset changes only the objective and what the objective's paper changes with it (DAPO's dynamic
sampling and soft overlong penalty); steps, learning rate, batch, seeds and everything else are shared, so
no algorithm is tuned more than another. A user's own overrides apply to every preset alike.

    grpo                   PPO-clip ratio weights (eps 0.2), hard dual clip on negative tokens
    dapo                   clip-higher (eps_high 0.28) + dynamic sampling + soft overlong penalty
    dapo_no_is             dapo without importance-sampling ratios (the authors' "no IS" control)
    aspo                   flipped ratio on positive tokens, soft dual clip, entropy-aware clip ranges
    aspo_flip_only         ablation: aspo without the soft dual clip
    aspo_no_entropy_split  ablation: aspo with one clip range for every token
"""

from __future__ import annotations

from aspo.errors import UserError

# DAPO's overlong buffer as a fraction of the response cap (the DAPO paper: 4k of 20k tokens).
OVERLONG_BUFFER_FRACTION = 0.2

_DAPO = ("algorithm.dynamic_sampling=true", "algorithm.entropy_split=false")

PRESETS: dict[str, tuple[str, ...]] = {
    "grpo": ("algorithm.loss=grpo", "algorithm.entropy_split=false"),
    "dapo": ("algorithm.loss=dapo", *_DAPO),
    "dapo_no_is": ("algorithm.loss=no_is", "algorithm.clip_ratio_high=0.28", *_DAPO),
    "aspo": ("algorithm.loss=aspo", "algorithm.entropy_split=true"),
    "aspo_flip_only": ("algorithm.loss=aspo_flip_only", "algorithm.entropy_split=true"),
    "aspo_no_entropy_split": ("algorithm.loss=aspo", "algorithm.entropy_split=false"),
}

# presets whose overrides also carry the soft overlong penalty, sized from the response cap
_OVERLONG_PRESETS = ("dapo", "dapo_no_is")


def overlong_buffer(max_new_tokens: int) -> int:
    """DAPO's soft overlong buffer B in tokens for a response cap of ``max_new_tokens``."""
    return max(1, round(OVERLONG_BUFFER_FRACTION * max_new_tokens))


def preset_overrides(name: str, max_new_tokens: int | None = None) -> list[str]:
    """The dotted overrides of preset ``name``; dapo presets need the response cap for their buffer."""
    if name not in PRESETS:
        raise UserError(f"unknown algorithm preset {name!r}; valid presets: {', '.join(PRESETS)}")
    out = list(PRESETS[name])
    if name in _OVERLONG_PRESETS:
        if max_new_tokens is None:
            raise UserError(f"preset {name!r} needs the response cap to size its overlong buffer")
        out.append(f"algorithm.overlong_buffer={overlong_buffer(max_new_tokens)}")
    return out


def preset_keys(names: list[str] | tuple[str, ...]) -> set[str]:
    """Every dotted key that any of the presets ``names`` sets (users may not override these)."""
    keys = {item.partition("=")[0] for name in names for item in PRESETS[name]}
    if any(name in _OVERLONG_PRESETS for name in names):
        keys.add("algorithm.overlong_buffer")
    return keys


def describe_presets() -> str:
    """One line per preset with its overrides (for `aspo compare --help`)."""
    lines = []
    for name, items in PRESETS.items():
        extra = (
            [f"algorithm.overlong_buffer={OVERLONG_BUFFER_FRACTION:g}*max_new_tokens"]
            if name in _OVERLONG_PRESETS
            else []
        )
        lines.append(f"  {name:<22} {' '.join([*items, *extra])}")
    return "\n".join(lines)
