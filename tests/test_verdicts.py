"""The statistics behind `aspo compare`'s verdicts: paired and Welch tests, Holm, power, the claim family.

Checked against hand computations and against simulated data of known effect, not against the code's
own output.
"""

import math

import numpy as np
import pytest

from aspo.report.compare import failure_modes
from aspo.report.stats import holm, paired_test, power, seeds_for_power, t_quantile_975, welch_test
from aspo.report.verdicts import CLAIMS, claim_tests, verdict


def test_paired_test_by_hand():
    a, b = [0.50, 0.60, 0.55, 0.70], [0.45, 0.58, 0.50, 0.66]
    d = [0.05, 0.02, 0.05, 0.04]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    se = sd / 2
    r = paired_test(a, b)
    assert r.kind == "paired" and r.n == 4
    assert r.diff == pytest.approx(mean) and r.sd == pytest.approx(sd)
    assert (r.low, r.high) == pytest.approx((mean - t_quantile_975(3) * se, mean + t_quantile_975(3) * se))
    # t = mean / se = 0.04 / 0.007071 = 5.657 on 3 df: two-sided p from the t distribution's tail
    assert mean / se == pytest.approx(5.6569, abs=1e-4)
    assert r.p == pytest.approx(0.01094, abs=5e-5)


def test_welch_test_by_hand():
    a, b = [0.60, 0.62, 0.64, 0.66], [0.40, 0.45, 0.50, 0.42]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    r = welch_test(a, b)
    half = t_quantile_975(df) * math.sqrt(va + vb)
    assert r.kind == "welch" and r.diff == pytest.approx(0.1875)
    assert (r.low, r.high) == pytest.approx((0.1875 - half, 0.1875 + half))
    assert r.p < 0.001


def test_fewer_than_two_seeds_give_no_test():
    assert paired_test([0.5], [0.4]) is None and welch_test([0.5, 0.6], [0.4]) is None
    assert verdict(None, None, "higher") == "no test (needs >= 2 seeds on both sides)"


def test_the_paired_test_finds_a_paired_effect_the_unpaired_test_misses():
    """Seeds differ a lot (the shared start), the algorithm adds a small constant: only pairing sees it."""
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.5, 0.1, size=8)
    b = seed_effect + rng.normal(0, 0.005, size=8)
    a = seed_effect + 0.03 + rng.normal(0, 0.005, size=8)
    assert paired_test(a, b).p < 0.001
    assert welch_test(a, b).p > 0.05


def test_holm_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> max with 0.06)
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_a_null_family_rejects_at_the_nominal_rate():
    """No effect anywhere: each raw test rejects ~5 % of the time; Holm keeps the family-wise rate <= 5 %
    where uncorrected tests reject somewhere in ~26 % of families of six."""
    rng = np.random.default_rng(1)
    families, m, n = 2000, 6, 8
    raw_rejections = any_raw = any_holm = 0
    for _ in range(families):
        start = rng.normal(0.5, 0.1, size=(m, n))  # shared per seed, as in a comparison
        a = start + rng.normal(0, 0.05, size=(m, n))
        b = start + rng.normal(0, 0.05, size=(m, n))
        p = [paired_test(a[i], b[i]).p for i in range(m)]
        raw_rejections += sum(x < 0.05 for x in p)
        any_raw += any(x < 0.05 for x in p)
        any_holm += any(x < 0.05 for x in holm(p))
    rate = raw_rejections / (families * m)
    assert 0.04 < rate < 0.06  # binomial SD at 12,000 tests is 0.002
    assert 0.22 < any_raw / families < 0.31  # 1 - 0.95**6 = 0.265
    assert any_holm / families < 0.065


def test_power_matches_simulation_and_the_known_sample_sizes():
    # two arms, per-seed SD 0.078, effect 0.09: 4 seeds give 28 %, 13 per arm 80 %, 16 at alpha / 2
    assert power(0.078, 0.09, 4, kind="welch") == pytest.approx(0.28, abs=0.01)
    assert seeds_for_power(0.078, 0.09, kind="welch") == 13
    assert seeds_for_power(0.078, 0.09, alpha=0.025, kind="welch") == 16
    # paired: the analytic power agrees with the rejection rate of simulated studies
    rng = np.random.default_rng(2)
    sd, effect, n, trials = 0.02, 0.015, 8, 3000
    hits = sum(paired_test(rng.normal(effect, sd, n), np.zeros(n)).p < 0.05 for _ in range(trials))
    assert hits / trials == pytest.approx(power(sd, effect, n), abs=0.03)


def _run(algo, seed, **values):
    final = {k: values.pop(k) for k in list(values) if k in ("pass@1", "pass@k", "entropy", "repetition")}
    return {"algo": algo, "seed": seed, "point": {}, "status": "finished", "final": final, "training": values}


def test_claim_family_pairs_by_seed_and_holm_corrects_only_primary_endpoints():
    runs = []
    for seed in range(6):
        base = 0.3 + 0.05 * seed
        runs.append(_run("aspo", seed, **{"pass@1": base + 0.2, "mean_entropy": 0.8, "repetition": 0.1}))
        runs.append(_run("grpo", seed, **{"pass@1": base, "mean_entropy": 0.8 + 0.001 * seed}))
        runs.append(_run("dapo", seed, **{"pass@1": base + 0.2 + 0.01 * (-1) ** seed}))
    claims = claim_tests(runs)
    primary = [t for t in claims["tests"] if t["primary"]]
    # 4 claims x 2 comparisons (aspo - grpo, aspo - dapo); only those with >= 2 values on both sides count
    assert {(t["a"], t["b"]) for t in primary} == {("aspo", "grpo"), ("aspo", "dapo")}
    assert len(primary) == len(CLAIMS) * 2
    tested = [t for t in primary if t["test"] is not None]
    assert claims["family_size"] == len(tested)
    by = {(t["metric"], t["b"]): t for t in primary}
    acc = by[("pass@1", "grpo")]
    assert acc["test"]["kind"] == "paired" and acc["test"]["diff"] == pytest.approx(0.2)
    assert acc["verdict"] == "holds" and acc["p_holm"] <= claims["family_size"] * acc["test"]["p"] + 1e-12
    assert by[("pass@1", "dapo")]["verdict"].startswith("not shown: the 95 % interval excludes differences")
    assert by[("repetition", "grpo")]["verdict"] == "no test (needs >= 2 seeds on both sides)"
    assert all("verdict" not in t and "p_holm" not in t for t in claims["tests"] if not t["primary"])
    assert all(line["claim"] for line in claims["power"])


def test_unpaired_seeds_fall_back_to_welch():
    runs = [_run("aspo", s, **{"pass@1": 0.5 + 0.01 * s}) for s in (0, 1, 2)]
    runs += [_run("grpo", s, **{"pass@1": 0.4 + 0.01 * s}) for s in (3, 4, 5)]
    acc = next(t for t in claim_tests(runs)["tests"] if t["metric"] == "pass@1" and t["primary"])
    assert acc["test"]["kind"] == "welch"


def test_failure_modes_are_counted_apart():
    def rows(entropies, kl=0.01):
        return [{"step": 0, "eval/pass@1": 0.3}] + [
            {"step": i + 1, "actor/entropy": e, "actor/ppo_kl": kl} for i, e in enumerate(entropies)
        ]

    assert failure_modes(rows([0.9, 0.5, 0.1]), 0.3, 0.5) == {"entropy_collapse": "entropy 0.9 -> 0.1"}
    # entropy rising is the opposite failure, not a collapse
    assert set(failure_modes(rows([0.1, 0.2, 0.3]), 0.3, 0.5)) == {"divergence"}
    assert set(failure_modes(rows([0.9, 0.8], kl=float("nan")), 0.3, 0.5)) == {"divergence"}
    assert set(failure_modes(rows([0.9, 0.8]), 0.3, 0.2)) == {"below_start"}
    assert failure_modes(rows([0.9, 0.8]), 0.3, 0.5) == {}


def test_verdicts_table_of_a_committed_study_comes_from_its_summary(capsys):
    from pathlib import Path

    from aspo.cli import main

    study = Path(__file__).resolve().parents[1] / "docs" / "results" / "smollm2-arithmetic"
    assert main(["compare", "--verdicts", str(study)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| study | claim | primary endpoint |")
    assert sum(line.startswith("| smollm2-arithmetic |") for line in out) == len(CLAIMS)


def test_verdicts_of_a_missing_comparison_name_it(tmp_path, capsys):
    from aspo.cli import main

    assert main(["compare", "--verdicts", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere' / 'summary.json'} does not exist" in capsys.readouterr().err
