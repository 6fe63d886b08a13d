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
    clip_cov               Clip-Cov: PPO-clip, gradient cut on a random 2e-4 of high-covariance tokens
    kl_cov                 KL-Cov: unclipped ratio, |log r| penalty on the top 2e-4 tokens by covariance
    grpo_entropy_bonus     grpo + a fixed entropy bonus, coefficient 0.001
    grpo_adaptive_entropy  grpo + Skywork-OR1's adaptive entropy bonus (target 0.2 nats, step 0.005)
    dapo_top_entropy       dapo trained on the top 20% of tokens by entropy ("Beyond the 80/20 Rule")
    grpo_off_policy_mask   grpo + DeepSeek-V3.2's off-policy sequence mask (delta 0.5)

The entropy-preserving baselines keep their references' defaults (verl's for Clip-Cov / KL-Cov, TRL's and
Skywork-OR1's for the adaptive bonus, TRL's example delta); docs/algorithm.md gives each form and source.
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
    "clip_cov": ("algorithm.loss=clip_cov", "algorithm.entropy_split=false"),
    "kl_cov": ("algorithm.loss=kl_cov", "algorithm.entropy_split=false"),
    "grpo_entropy_bonus": (
        "algorithm.loss=grpo",
        "algorithm.entropy_split=false",
        "algorithm.entropy_coef=0.001",
    ),
    "grpo_adaptive_entropy": (
        "algorithm.loss=grpo",
        "algorithm.entropy_split=false",
        "algorithm.entropy_adaptive=true",
        "algorithm.entropy_coef=0.0",
    ),
    "dapo_top_entropy": ("algorithm.loss=dapo", *_DAPO, "algorithm.top_entropy_quantile=0.2"),
    "grpo_off_policy_mask": (
        "algorithm.loss=grpo",
        "algorithm.entropy_split=false",
        "algorithm.off_policy_mask_threshold=0.5",
    ),
}

# presets whose overrides also carry the soft overlong penalty, sized from the response cap
_OVERLONG_PRESETS = ("dapo", "dapo_no_is", "dapo_top_entropy")


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
