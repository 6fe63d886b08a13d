"""``report.md`` of `aspo compare`: setup, tables with 95 % intervals, figures, claim-by-claim numbers.

The generated text only states numbers; the interpretation is a person's ``notes.md``, included verbatim.
"""

from __future__ import annotations

from typing import Any

from aspo.report.stats import diff_ci95

# docs/algorithm.md, the paper's claims: (title, metrics shown, the metric the one-line comparison uses,
# which direction the claim predicts for ASPO)
CLAIMS: list[tuple[str, list[str], str, str]] = [
    ("(1) token entropy does not collapse", ["entropy", "min_entropy"], "entropy", "higher"),
    (
        "(2) no premature convergence or repetitive outputs",
        ["repetition", "response_length", "pass@k"],
        "repetition",
        "lower",
    ),
    (
        "(3) more stable training (smoother clip fractions and KL)",
        ["jitter_ppo_kl", "jitter_clipfrac_pos", "jitter_clipfrac_neg", "avg_ppo_kl"],
        "jitter_ppo_kl",
        "lower",
    ),
    ("(4) higher final accuracy", ["pass@1", "pass@k", "pass@1_gain"], "pass@1", "higher"),
]
FINAL_COLUMNS = ["pass@1", "pass@k", "pass@1_gain", "entropy", "response_length", "repetition"]
TRAINING_COLUMNS = [
    "min_entropy",
    "avg_clipfrac_pos",
    "avg_clipfrac_neg",
    "avg_dualclip_pos",
    "avg_dualclip_neg",
    "avg_ppo_kl",
    "jitter_ppo_kl",
]


def fmt_stat(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± ci95`` (or the mean alone with one seed, ``-`` with none)."""
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("ci95") is not None:
        text += f" ± {stat['ci95']:.{digits}f}"
    return text


def _digits(metric: str) -> int:
    return 1 if metric == "response_length" else (4 if "kl" in metric else 3)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _metric_table(
    agg: dict[str, dict[str, Any]], algos: list[str], metrics: list[str], n_seeds: dict[str, int]
) -> list[str]:
    rows = [
        [algo, str(n_seeds.get(algo, 0)), *(fmt_stat(agg[algo].get(m), _digits(m)) for m in metrics)]
        for algo in algos
    ]
    return _table(["algorithm", "seeds", *metrics], rows)


def verdict(diff: tuple[float, float, float] | None, direction: str, digits: int = 3) -> str:
    """ "holds here" / "contradicted here" / "no difference larger than X at this power" for a claim that
    predicts a ``direction`` ("higher" | "lower") difference, from its 95 % interval (lo, hi)."""
    if diff is None:
        return "no verdict (needs >= 2 seeds on both sides)"
    _, lo, hi = diff
    sign = 1.0 if direction == "higher" else -1.0
    lo, hi = sorted((sign * lo, sign * hi))  # now a positive difference is what the claim predicts
    if lo > 0:
        return "holds here"
    if hi < 0:
        return "contradicted here"
    return f"no difference larger than {max(abs(lo), abs(hi)):.{digits}f} at this power"


def _versus(agg: dict[str, dict[str, Any]], a: str, b: str, metric: str, direction: str | None = None) -> str:
    """One sentence: the difference of the means, its Welch 95 % interval, and the claim's verdict."""
    sa, sb = agg[a].get(metric) or {}, agg[b].get(metric) or {}
    if sa.get("mean") is None or sb.get("mean") is None:
        return f"{a} vs {b}: {metric} not available"
    d = _digits(metric)
    diff = diff_ci95(sa, sb)
    interval = (
        "no interval (one seed)" if diff is None else f"95 % interval [{diff[1]:+.{d}f}, {diff[2]:+.{d}f}]"
    )
    text = (
        f"{a} − {b}: {metric} {sa['mean'] - sb['mean']:+.{d}f}, {interval} "
        f"({fmt_stat(sa, d)} vs {fmt_stat(sb, d)})"
    )
    return text if direction is None else f"{text}: **{verdict(diff, direction, d)}**"


def comparison_pairs(algos: list[str]) -> list[tuple[str, str]]:
    """ASPO against each baseline; each ASPO ablation against ASPO (or the baselines when aspo is absent)."""
    variants = [a for a in algos if a.startswith("aspo")]
    baselines = [a for a in algos if not a.startswith("aspo")]
    if "aspo" not in variants:
        return [(a, b) for a in variants for b in baselines]
    return [("aspo", b) for b in baselines] + [(a, "aspo") for a in variants if a != "aspo"]


def claims_lines(agg: dict[str, dict[str, Any]], algos: list[str], n_seeds: dict[str, int]) -> list[str]:
    lines = []
    pairs = comparison_pairs(algos)
    for title, metrics, key, direction in CLAIMS:
        lines += ["", f"### {title}", ""]
        lines += _metric_table(agg, algos, metrics, n_seeds)
        lines += ["", f"The claim predicts {direction} `{key}` for ASPO than for the baselines."]
        lines += [f"- {_versus(agg, a, b, key, direction)}" for a, b in pairs]
    if "dapo" in algos and "dapo_no_is" in algos:
        lines += ["", "### (5) DAPO without IS ratios is not worse than DAPO", ""]
        lines += _metric_table(agg, ["dapo", "dapo_no_is"], ["pass@1", "pass@k", "entropy"], n_seeds)
        lines += ["", f"- {_versus(agg, 'dapo_no_is', 'dapo', 'pass@1')}"]
    return lines


def grid_claims_lines(summary: dict[str, Any]) -> list[str]:
    """The claims once per grid point, each comparing the algorithms at that point only."""
    agg, runs = summary["aggregate"], summary["runs"]
    lines: list[str] = []
    points: dict[str, dict[str, str]] = {}
    for r in runs:
        points.setdefault(", ".join(f"{k}={v}" for k, v in r["point"].items()), {})[r["algo"]] = r["variant"]
    for label, by_algo in points.items():
        sub = {algo: agg[variant] for algo, variant in by_algo.items()}
        n_seeds = {
            algo: sum(r["variant"] == v and r["status"] == "finished" for r in runs)
            for algo, v in by_algo.items()
        }
        lines += ["", f"### At {label}"]
        lines += [line.replace("### ", "#### ", 1) for line in claims_lines(sub, list(by_algo), n_seeds)]
    return lines


def _frontier_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["## Frontier", "", f"Collapse: {summary['metric_definitions'].get('collapsed', '')}.", ""]
    for key, per_line in summary.get("frontier", {}).items():
        values = list(dict.fromkeys(e["value"] for entries in per_line.values() for e in entries))
        lines += [f"Final held-out pass@1 (collapsed runs / seeds) against `{key}`:", ""]
        rows = []
        for line, entries in per_line.items():
            by_value = {e["value"]: e for e in entries}
            rows.append(
                [
                    line,
                    *(
                        f"{fmt_stat(by_value[v]['pass@1'])} ({by_value[v]['collapsed']['count']}/"
                        f"{by_value[v]['collapsed']['n']})"
                        if v in by_value
                        else "-"
                        for v in values
                    ),
                ]
            )
        lines += _table(["algorithm", *(f"{key}={v}" for v in values)], rows) + [""]
    return lines


def _setup_lines(setup: dict[str, Any]) -> list[str]:
    cfg = setup.get("config", {})
    train, rollout, ev, alg = (cfg.get(k, {}) for k in ("train", "rollout", "eval", "algorithm"))
    machine = setup.get("machine", {})
    lines = ["## Setup", ""]
    if setup.get("command"):
        lines += [f"- command: `{setup['command']}`"]
    lines += [
        f"- model `{cfg.get('model')}`, task `{cfg.get('task')}`; "
        f"{plural(len(setup.get('seeds', [])), 'seed')} ({', '.join(map(str, setup.get('seeds', [])))}) "
        "per algorithm",
        f"- {train.get('steps')} steps of {train.get('prompts_per_step')} prompts "
        f"x {rollout.get('n')} responses "
        f"(max {setup.get('max_new_tokens')} tokens, temperature {rollout.get('temperature')}); "
        f"{train.get('mini_batches')} mini-batches x {train.get('epochs')} epochs = "
        f"{(train.get('mini_batches') or 0) * (train.get('epochs') or 0)} optimizer steps per rollout "
        f"(off-policy after the first); lr {train.get('lr')}, warm-up {train.get('warmup_steps')}, "
        f"grad clip {train.get('grad_clip')}, KL coef {alg.get('kl_coef')}, "
        f"advantage `{alg.get('advantage')}`, "
        f"zero-variance groups dropped: {alg.get('filter_groups')}",
        f"- held-out eval: {cfg.get('data', {}).get('num_test')} problems x {ev.get('n')} samples "
        f"(temperature {ev.get('temperature')}) every {train.get('eval_every')} steps and at the end",
        f"- shared overrides: {', '.join(f'`{o}`' for o in setup.get('overrides', [])) or 'none'}"
        + (f"; config file `{setup['config_file']}`" if setup.get("config_file") else ""),
        f"- machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, "
        f"python {machine.get('python')}, "
        f"torch {machine.get('torch')}; {setup.get('workers')} runs in parallel x "
        f"{setup.get('threads_per_run')} torch thread(s) each",
        f"- wall time of the comparison: {_minutes(setup.get('wall_s'))}",
        "",
        "Presets (every other setting is shared):",
        "",
    ]
    lines += _table(
        ["preset", "overrides"],
        [[name, " ".join(f"`{o}`" for o in items)] for name, items in setup.get("presets", {}).items()],
    )
    return lines


def plural(count: int, noun: str) -> str:
    """ "1 seed", "3 seeds"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def definition_lines(definitions: dict[str, str], columns: list[str]) -> list[str]:
    """What each column of the report's tables is, from summary.json's ``metric_definitions``."""
    return [f"- `{c}`: {definitions[c]}" for c in columns if c in definitions]


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def render_report(summary: dict[str, Any], figures: list[tuple[str, str]], notes: str | None) -> str:
    setup, agg, runs = summary["setup"], summary["aggregate"], summary["runs"]
    algos = list(agg)  # variants: the preset, plus its grid point when the comparison sweeps one
    n_seeds = {a: sum(r["variant"] == a and r["status"] == "finished" for r in runs) for a in algos}
    lines = [
        f"# aspo compare: {setup.get('name', '')}",
        "",
        f"{', '.join(algos)} on the same configuration; numbers are the mean ± 95 % t-interval "
        "half-width over seeds (`summary.json` holds every run and every number below).",
        "",
    ]
    lines += _setup_lines(setup)
    lines += ["", "## Final metrics", ""]
    lines += _metric_table(agg, algos, FINAL_COLUMNS, n_seeds)
    definitions = summary.get("metric_definitions", {})
    lines += ["", *definition_lines(definitions, FINAL_COLUMNS)]
    initial = [fmt_stat(agg[a].get("initial_pass@1")) for a in algos]
    collapsed = [
        f"{a} {agg[a]['collapsed']['count']}/{agg[a]['collapsed']['n']}"
        for a in algos
        if "collapsed" in agg[a]
    ]
    if collapsed:
        lines += [
            "",
            f"Collapsed runs ({summary['metric_definitions'].get('collapsed', '')}): {', '.join(collapsed)}.",
        ]
    lines += [
        "",
        f"Held-out pass@1 at step 0 (the shared starting policy): {', '.join(sorted(set(initial)))}.",
        "",
        "## Over training",
        "",
    ]
    lines += _metric_table(agg, algos, TRAINING_COLUMNS, n_seeds)
    lines += ["", *definition_lines(definitions, TRAINING_COLUMNS)]
    buckets = [k for a in algos for k in agg[a] if k.startswith("pos_weight/")]
    buckets = sorted(set(buckets), key=lambda k: float(k.split("/")[1].split("-")[0]))
    if buckets:
        lines += ["", "Mean gradient weight of positive-advantage tokens by behaviour probability:", ""]
        lines += _metric_table(agg, algos, buckets, n_seeds)
    lines += ["", "## Figures", ""]
    for name, caption in figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    if summary.get("frontier"):
        lines += _frontier_lines(summary)
    lines += [
        "## Claims (docs/algorithm.md, the paper's claims)",
        "",
        "Each line: the difference of the means over seeds, its Welch 95 % interval, and the verdict -- "
        "*holds here* when the interval excludes 0 in the predicted direction, *contradicted here* when it "
        "excludes 0 the other way, else the largest difference the interval still allows.",
    ]
    lines += grid_claims_lines(summary) if setup.get("grid") else claims_lines(agg, algos, n_seeds)
    lines += ["", "## Interpretation", ""]
    lines += [
        notes.strip()
        if notes
        else "_No interpretation written yet: put it in `notes.md` next to this "
        "report and rerun `aspo compare --report-only --output DIR`._"
    ]
    lines += ["", "## Runs", ""]
    lines += _table(
        ["run", "status", "steps", "wall", "log"],
        [
            [
                r["run_dir"],
                r["status"],
                f"{r['steps']}/{r['target_steps']}",
                _minutes(r.get("wall_s")),
                r.get("log") or "-",
            ]
            for r in runs
        ],
    )
    return "\n".join(lines) + "\n"
