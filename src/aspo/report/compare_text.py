"""``report.md`` of `aspo compare`: setup, tables with 95 % intervals, figures, the claims' tests.

The generated text only states numbers; the interpretation is a person's ``notes.md``, included verbatim.
"""

from __future__ import annotations

from typing import Any

from aspo.report.verdicts import ALPHA, CLAIMS, TARGET_POWER

FINAL_COLUMNS = ["pass@1", "pass@k", "pass@1_gain", "entropy", "response_length", "repetition"]
TRAINING_COLUMNS = [
    "mean_entropy",
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


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _test_row(t: dict[str, Any], primary: bool) -> list[str]:
    d = _digits(t["metric"])
    label = f"{t['a']} − {t['b']}"
    if t["test"] is None:
        return [label, "-", "-", "-", "-", "-", *(["-", t.get("verdict", "-")] if primary else [])]
    r = t["test"]
    cells = [
        label,
        f"{r['kind']}, n={r['n']}",
        f"{r['diff']:+.{d}f}",
        f"[{r['low']:+.{d}f}, {r['high']:+.{d}f}]",
        _fmt_p(r["p"]),
    ]
    if primary:
        cells += [_fmt_p(t.get("p_holm")), f"**{t['verdict']}**"]
    else:
        cells.insert(1, f"`{t['metric']}`")
    return cells


def _power_text(line: dict[str, Any]) -> str:
    if line.get("sd") is None:
        return "Power: no test to estimate the spread from."
    needed = line["seeds_needed"]
    strict = line["seeds_needed_corrected"]
    what = "the paired differences" if line["kind"] == "paired" else "the seeds of an arm (unpaired)"
    return (
        f"Power: SD of {what} up to {line['sd']:.3g}; with n={line['n']} the test has "
        f"{100 * line['power']:.0f} % power to detect {line['effect']:.3g}"
        + (f" ({line['effect_rule']}); " if line.get("effect_rule") else "; ")
        + f"{100 * TARGET_POWER:.0f} % power "
        f"needs {needed if needed else 'more than 10,000'} seeds per arm at alpha {ALPHA:g}, "
        f"{strict if strict else 'more than 10,000'} at alpha {line['alpha_corrected']:.3g} "
        "(Holm's strictest step in this family)."
    )


def claims_lines(
    agg: dict[str, dict[str, Any]],
    algos: list[str],
    n_seeds: dict[str, int],
    tests: list[dict[str, Any]],
    power: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Per claim: the metric table, its primary tests (raw and Holm-adjusted p, verdict), the power line
    and the exploratory comparisons (raw p only, no verdict)."""
    lines = []
    for i, claim in enumerate(CLAIMS):
        mine = [t for t in tests if t["claim"] == claim.title]
        lines += ["", f"### {claim.title}", ""]
        lines += _metric_table(agg, algos, [claim.endpoint, *claim.exploratory], n_seeds)
        lines += [
            "",
            f"Primary endpoint (fixed before the data): `{claim.endpoint}`; the claim predicts it "
            f"{claim.direction} for ASPO.",
            "",
        ]
        lines += _table(
            ["comparison", "test", "difference", "95 % interval", "p", "Holm p", "verdict"],
            [_test_row(t, True) for t in mine if t["primary"]],
        )
        if power:
            lines += ["", _power_text(power[i])]
        exploratory = [t for t in mine if not t["primary"] and t["test"] is not None]
        if exploratory:
            lines += ["", "Exploratory (raw p, not corrected, no verdict):", ""]
            lines += _table(
                ["comparison", "metric", "test", "difference", "95 % interval", "p"],
                [_test_row(t, False) for t in exploratory],
            )
    return lines


def grid_claims_lines(summary: dict[str, Any]) -> list[str]:
    """The claims once per grid point, each comparing the algorithms at that point only."""
    agg, runs = summary["aggregate"], summary["runs"]
    tests = summary["claims"]["tests"]
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
        here = [t for t in tests if t["point"] == label]
        lines += ["", f"### At {label}"]
        lines += [
            line.replace("### ", "#### ", 1) for line in claims_lines(sub, list(by_algo), n_seeds, here)
        ]
    return lines


def _failure_cells(failures: dict[str, dict[str, int]]) -> str:
    return (
        " / ".join(f"{f['count']}" for f in failures.values()) + f" of {next(iter(failures.values()))['n']}"
    )


def _frontier_lines(summary: dict[str, Any]) -> list[str]:
    modes = [k.split("/", 1)[1] for k in summary["metric_definitions"] if k.startswith("failure/")]
    lines = ["## Frontier", ""]
    for key, per_line in summary.get("frontier", {}).items():
        values = list(dict.fromkeys(e["value"] for entries in per_line.values() for e in entries))
        lines += [f"Final held-out pass@1 (runs with {' / '.join(modes)}) against `{key}`:", ""]
        rows = []
        for line, entries in per_line.items():
            by_value = {e["value"]: e for e in entries}
            rows.append(
                [
                    line,
                    *(
                        f"{fmt_stat(by_value[v]['pass@1'])} ({_failure_cells(by_value[v]['failures'])})"
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
        f"(temperature {ev.get('temperature')}) "
        + (f"every {train.get('eval_every')} steps and " if train.get("eval_every") else "at step 0 and ")
        + "at the end",
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
    defs = summary["metric_definitions"]
    lines += ["", "Failure modes (runs showing each / finished runs), counted apart:", ""]
    lines += _table(
        ["algorithm", *(m for m in agg[algos[0]].get("failures", {}))],
        [
            [a, *(f"{f['count']}/{f['n']}" for f in agg[a].get("failures", {}).values())]
            for a in algos
            if agg[a].get("failures")
        ],
    )
    lines += [""] + [f"- `{k.split('/', 1)[1]}`: {v}" for k, v in defs.items() if k.startswith("failure/")]
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
        unclipped = [b.replace("pos_weight/", "pos_unclipped_weight/") for b in buckets]
        if any(agg[a].get(u, {}).get("mean") is not None for a in algos for u in unclipped):
            lines += [
                "",
                "The same over the tokens no clip touched (a weight of 0 by clipping is the clip range's "
                "doing, not the ratio's):",
                "",
            ]
            lines += _metric_table(agg, algos, unclipped, n_seeds)
    lines += ["", "## Figures", ""]
    for name, caption in figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    if summary.get("frontier"):
        lines += _frontier_lines(summary)
    claims = summary["claims"]
    lines += [
        "## Claims (docs/algorithm.md, the paper's claims)",
        "",
        f"The family: {claims['family_size']} primary tests (each claim's pre-registered endpoint, for each "
        f"comparison{', at each grid point' if setup.get('grid') else ''}), adjusted together with Holm's "
        f"step-down method at alpha {claims['alpha']:g}. A test is *paired* on the seeds both sides finished "
        "(same seed, same start) and Welch's otherwise; the interval is the unadjusted 95 % interval of the "
        "difference. *holds* / *contradicted*: the Holm-adjusted p is below alpha, with the difference in / "
        "against the predicted direction; otherwise the claim is *not shown*, and the interval says which "
        "differences the data still allows.",
    ]
    if setup.get("grid"):
        lines += grid_claims_lines(summary)
        lines += ["", "### Power, over every grid point", ""] + [
            f"- {c.title}. {_power_text(p)}" for c, p in zip(CLAIMS, claims["power"], strict=True)
        ]
    else:
        lines += claims_lines(agg, algos, n_seeds, claims["tests"], claims["power"])
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
