"""The claims of ``aspo compare``: pre-registered endpoints, paired tests, Holm's correction, power.

Each of the paper's claims (docs/algorithm.md) has one **primary endpoint**, fixed here before any data
is read; every other metric shown beside it is exploratory. A report's **family** is every primary test
it makes (each claim x each comparison x each grid point); their p-values are adjusted together with
Holm's step-down method, and a verdict is read only from the adjusted p. Runs that share a seed share
their starting point (the same step-0 eval, the same first batch), so wherever both sides have the same
seeds the test is on the paired differences; Welch's test is the fallback for unpaired seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aspo.report.stats import TestResult, holm, paired_test, power, seeds_for_power, welch_test

ALPHA = 0.05
TARGET_POWER = 0.8


@dataclass(frozen=True)
class Claim:
    """One claim: its primary endpoint (a per-run metric), the direction it predicts for ASPO, the
    smallest difference worth detecting (for the power line; a fraction of the baseline's mean when
    ``relative``) and the exploratory metrics shown beside it."""

    title: str
    endpoint: str
    direction: str  # "higher" | "lower"
    effect: float
    exploratory: tuple[str, ...]
    relative: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "(1) token entropy does not collapse",
        "mean_entropy",
        "higher",
        0.1,  # entropy's scale differs by task: 10 % of the baseline's
        ("mean_entropy_high", "entropy", "min_entropy"),
        relative=True,
    ),
    Claim(
        "(2) no premature convergence or repetitive outputs",
        "repetition",
        "lower",
        0.05,
        ("response_length",),
    ),
    Claim(
        "(3) more stable training (smoother clip fractions and KL)",
        "rel_jitter_ppo_kl",
        "lower",
        0.1,
        ("jitter_ppo_kl", "rel_jitter_clipfrac_pos", "rel_jitter_clipfrac_neg", "avg_ppo_kl"),
    ),
    Claim("(4) higher final accuracy", "pass@1", "higher", 0.1, ("pass@k", "pass@1_gain")),
)


def comparison_pairs(algos: list[str]) -> list[tuple[str, str]]:
    """ASPO against each baseline; each ASPO ablation against ASPO (or the baselines when aspo is absent)."""
    variants = [a for a in algos if a.startswith("aspo")]
    baselines = [a for a in algos if not a.startswith("aspo")]
    if "aspo" not in variants:
        return [(a, b) for a in variants for b in baselines]
    return [("aspo", b) for b in baselines] + [(a, "aspo") for a in variants if a != "aspo"]


def run_value(run: dict[str, Any], metric: str) -> float | None:
    """A finished run's value of ``metric`` (a final or a training-wide metric)."""
    for section in ("final", "training"):
        if metric in run.get(section, {}):
            return run[section][metric]
    return None


def compare_runs(
    runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], metric: str
) -> TestResult | None:
    """Paired test over the seeds both sides finished (>= 2 of them), else Welch over all of each."""
    by_seed_a = {r["seed"]: run_value(r, metric) for r in runs_a}
    by_seed_b = {r["seed"]: run_value(r, metric) for r in runs_b}
    shared = [
        s for s in by_seed_a if s in by_seed_b and by_seed_a[s] is not None and by_seed_b[s] is not None
    ]
    if len(shared) >= 2:
        return paired_test([by_seed_a[s] for s in shared], [by_seed_b[s] for s in shared])  # type: ignore[misc]
    return welch_test(
        [v for v in by_seed_a.values() if v is not None], [v for v in by_seed_b.values() if v is not None]
    )


def verdict(test: TestResult | None, p_adjusted: float | None, direction: str, digits: int = 3) -> str:
    """What a primary test says, from its Holm-adjusted p and the sign of its difference."""
    if test is None or p_adjusted is None:
        return "no test (needs >= 2 seeds on both sides)"
    predicted = test.diff > 0 if direction == "higher" else test.diff < 0
    if p_adjusted < ALPHA:
        return "holds" if predicted else "contradicted"
    bound = max(abs(test.low), abs(test.high))
    return f"not shown: the 95 % interval excludes differences beyond {bound:.{digits}f}"


def _points(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Finished runs by grid point label ("" without a grid), then by algorithm."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        label = ", ".join(f"{k}={v}" for k, v in r.get("point", {}).items())
        by_algo = out.setdefault(label, {})
        by_algo.setdefault(r["algo"], [])
        if r["status"] == "finished":
            by_algo[r["algo"]].append(r)
    return out


def claim_tests(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every claim test of a comparison: the primary family (Holm-adjusted) and the exploratory rest.

    Returns ``{"alpha", "family_size", "tests": [...], "power": [...]}``; each test is a dict with the
    claim, grid point, the two algorithms, the metric, whether it is primary, the test's fields (kind, n,
    diff, low, high, p, sd), ``p_holm`` and ``verdict`` (primary tests only).
    """
    tests: list[dict[str, Any]] = []
    for point, by_algo in _points(runs).items():
        pairs = comparison_pairs(list(by_algo))
        for claim in CLAIMS:
            for metric in (claim.endpoint, *claim.exploratory):
                for a, b in pairs:
                    result = compare_runs(by_algo[a], by_algo[b], metric)
                    b_values = [v for v in (run_value(r, metric) for r in by_algo[b]) if v is not None]
                    tests.append(
                        {
                            "claim": claim.title,
                            "point": point,
                            "a": a,
                            "b": b,
                            "metric": metric,
                            "primary": metric == claim.endpoint,
                            "direction": claim.direction,
                            "mean_b": sum(b_values) / len(b_values) if b_values else None,
                            "test": None if result is None else asdict(result),
                        }
                    )
    primary = [t for t in tests if t["primary"] and t["test"] is not None]
    for t, adjusted in zip(primary, holm([t["test"]["p"] for t in primary]), strict=True):
        t["p_holm"] = adjusted
    for t in tests:
        if t["primary"]:
            result = None if t["test"] is None else TestResult(**t["test"])
            t["verdict"] = verdict(result, t.get("p_holm"), t["direction"])
    return {
        "alpha": ALPHA,
        "family_size": len(primary),
        "tests": tests,
        "power": [power_line(claim, primary, len(primary)) for claim in CLAIMS],
    }


def power_line(claim: Claim, primary: list[dict[str, Any]], family_size: int) -> dict[str, Any]:
    """The observed spread of a claim's primary tests and the seeds 80 % power at the claim's effect
    needs, at alpha and at alpha / family size (Holm's first, strictest step). The noisiest comparison
    (and, for a relative effect, the smallest effect) decides what a study needs."""
    mine = [t for t in primary if t["claim"] == claim.title]
    if not mine:
        return {"claim": claim.title, "effect": claim.effect, "sd": None}
    sd = max(t["test"]["sd"] for t in mine)
    n = min(t["test"]["n"] for t in mine)
    effect = claim.effect
    if claim.relative:
        effect *= min(abs(t["mean_b"]) for t in mine if t["mean_b"] is not None)
    strict = ALPHA / max(1, family_size)
    kind = mine[0]["test"]["kind"]
    return {
        "claim": claim.title,
        "endpoint": claim.endpoint,
        "effect": effect,
        "effect_rule": f"{claim.effect:g} x the baseline's mean" if claim.relative else None,
        "sd": sd,
        "n": n,
        "kind": kind,
        "power": power(sd, effect, n, ALPHA, kind),
        "seeds_needed": seeds_for_power(sd, effect, TARGET_POWER, ALPHA, kind),
        "seeds_needed_corrected": seeds_for_power(sd, effect, TARGET_POWER, strict, kind),
        "alpha_corrected": strict,
    }


def verdict_table(studies: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown table over several comparisons (name -> its ``summary.json``): per study and claim,
    the primary tests that hold or are contradicted after Holm's correction, and how many show nothing."""

    def where(t: dict[str, Any]) -> str:
        at = f" at {t['point']}" if t["point"] else ""
        return f"{t['a']} − {t['b']}{at} ({t['test']['diff']:+.3g}, Holm p {t['p_holm']:.3f})"

    lines = [
        "| study | claim | primary endpoint | tests | holds | contradicted |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in studies.items():
        claims = summary["claims"]
        for claim in CLAIMS:
            mine = [t for t in claims["tests"] if t["primary"] and t["claim"] == claim.title and t["test"]]
            holds = [where(t) for t in mine if t["verdict"] == "holds"]
            against = [where(t) for t in mine if t["verdict"] == "contradicted"]
            lines.append(
                f"| {name} | {claim.title} | `{claim.endpoint}` | {len(mine)} of a family of "
                f"{claims['family_size']} | {'; '.join(holds) or 'none'} | {'; '.join(against) or 'none'} |"
            )
    return lines
