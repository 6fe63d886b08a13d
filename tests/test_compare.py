"""`aspo compare`: statistics, presets, the subprocess pool, and a tiny end-to-end comparison that resumes."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from aspo.cli import main
from aspo.commands.compare import Job, PlannedRun, is_finished, run_jobs
from aspo.config import load_config
from aspo.errors import UserError
from aspo.presets import PRESETS, overlong_buffer, preset_keys, preset_overrides
from aspo.report.stats import band, mean_ci95, t_quantile_975, trailing_mean

# -- statistics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "df,expected",
    [
        (1, 12.706),
        (2, 4.303),
        (4, 2.776),
        (9, 2.262),
        (29, 2.045),
        (60, 2.000),
        (1000, 1.962),
        (10**9, 1.960),
    ],
)
def test_t_quantiles_match_the_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1.5e-3)


def test_t_quantile_decreases_with_df():
    values = [t_quantile_975(df) for df in range(1, 400)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_mean_ci95_by_hand():
    values = [0.2, 0.4, 0.9]
    sd = statistics.stdev(values)
    got = mean_ci95(values)
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(0.5)
    assert got["ci95"] == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-4)  # t(0.975, 2) = 4.3027


def test_mean_ci95_drops_missing_values_and_has_no_interval_for_one_seed():
    assert mean_ci95([None, float("nan"), 0.7]) == {"mean": 0.7, "ci95": None, "n": 1}
    assert mean_ci95([]) == {"mean": None, "ci95": None, "n": 0}


def test_band_is_the_pointwise_interval():
    stack = np.array([[0.0, 1.0], [2.0, 1.0]])
    mean, half = band(stack)
    assert mean.tolist() == [1.0, 1.0]
    assert half.tolist() == pytest.approx([12.706 * math.sqrt(2) / math.sqrt(2), 0.0], rel=1e-4)


def test_trailing_mean_never_looks_ahead():
    assert trailing_mean([1, 2, 3, 10], 2).tolist() == [1, 1.5, 2.5, 6.5]
    assert trailing_mean([1, 2], 1).tolist() == [1, 2]


# -- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_a_valid_config(name):
    cfg = load_config(None, preset_overrides(name, max_new_tokens=40)).validate()
    assert cfg.train == load_config().train  # presets never touch the shared training budget
    assert cfg.rollout == load_config().rollout


def test_presets_set_what_their_papers_change():
    get = {name: load_config(None, preset_overrides(name, 40)).algorithm for name in PRESETS}
    assert get["grpo"].loss == "grpo" and not get["grpo"].entropy_split and not get["grpo"].dynamic_sampling
    assert get["dapo"].dynamic_sampling and get["dapo"].overlong_buffer == overlong_buffer(40) == 8
    assert get["dapo_no_is"].loss == "no_is" and get["dapo_no_is"].clip_ratio_high == 0.28
    assert get["aspo"].loss == "aspo" and get["aspo"].entropy_split
    assert get["aspo_flip_only"].loss == "aspo_flip_only"
    assert get["aspo_no_entropy_split"].loss == "aspo" and not get["aspo_no_entropy_split"].entropy_split
    assert get["aspo"].overlong_buffer == 0 and not get["aspo"].dynamic_sampling
    # the entropy-preserving baselines: their references' defaults, on the plain grpo / dapo they extend
    assert get["clip_cov"].loss == "clip_cov" and get["kl_cov"].loss == "kl_cov"
    assert get["clip_cov"].resolved_objective_params()["clip_cov_ratio"] == 2e-4
    assert get["kl_cov"].resolved_objective_params()["kl_cov_coef"] == 1.0
    assert get["grpo_entropy_bonus"].entropy_coef == 0.001 and not get["grpo_entropy_bonus"].entropy_adaptive
    adaptive = get["grpo_adaptive_entropy"]
    assert adaptive.entropy_adaptive and adaptive.entropy_coef == 0.0
    assert adaptive.entropy_control() == {
        "entropy_target": 0.2, "entropy_coef_delta": 0.005, "entropy_coef_min": 0.0, "entropy_coef_max": 1.0
    }  # fmt: skip
    top = get["dapo_top_entropy"]
    assert top.loss == "dapo" and top.top_entropy_quantile == 0.2 and top.dynamic_sampling
    assert top.overlong_buffer == overlong_buffer(40)
    assert get["grpo_off_policy_mask"].off_policy_mask_threshold == 0.5
    for name in ("clip_cov", "kl_cov", "grpo_entropy_bonus", "grpo_adaptive_entropy", "grpo_off_policy_mask"):
        assert not get[name].entropy_split and not get[name].dynamic_sampling, name


def test_preset_errors_name_the_preset():
    with pytest.raises(UserError, match="unknown algorithm preset 'ppo2'"):
        preset_overrides("ppo2")
    assert "algorithm.loss" in preset_keys(["grpo"])


# -- the pool --------------------------------------------------------------------------------------


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path):
    jobs = [
        Job(
            "bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "bad.log", {}
        ),
        Job("good", [sys.executable, "-c", "print('fine')"], tmp_path / "good.log", {}),
    ]
    seen = []
    results = {r.name: r for r in run_jobs(jobs, workers=2, report=seen.append)}
    assert results["bad"].returncode == 3 and results["good"].returncode == 0
    assert "boom" in (tmp_path / "bad.log").read_text()
    assert "fine" in (tmp_path / "good.log").read_text()
    assert len(seen) == 2


def test_a_run_is_finished_by_its_final_eval_even_without_checkpoints(tmp_path):
    cfg = load_config(None, ["train.steps=2", "train.save_every=0"])
    run = PlannedRun("grpo", 0, tmp_path, [], cfg)
    rows = [{"step": 0, "eval/pass@1": 0.1}, {"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not is_finished(run)  # no final held-out eval: not finished
    rows[-1]["eval/pass@1"] = 0.3
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert is_finished(run)


# -- command-line errors ---------------------------------------------------------------------------


def test_bad_command_lines_are_user_errors(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert main(["compare", "--algos", "grpo,ppo2", "--output", out]) == 2
    assert "ppo2" in capsys.readouterr().err
    assert main(["compare", "--algos", "grpo,aspo", "--output", out, "algorithm.loss=grpo"]) == 2
    assert "algorithm.loss" in capsys.readouterr().err
    assert main(["compare", "--output", out, "train.seed=3"]) == 2
    assert "train.seed" in capsys.readouterr().err
    assert main(["compare", "--algos", "grpo"]) == 2
    assert "--output" in capsys.readouterr().err
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    assert (
        main(["compare", "--output", out, f"model={tmp_path}", f"data.train={train}", "reward=arithmetic"])
        == 2
    )
    assert "data.test" in capsys.readouterr().err  # no held-out data: nothing to compare


# -- end to end ------------------------------------------------------------------------------------


def tiny_compare_overrides(root):
    """A seconds-long config on the session's tiny checkpoint + JSONL data (conftest.tiny_run_inputs)."""
    return [
        f"model={root / 'model'}",
        f"data.train={root / 'train.jsonl'}",
        f"data.test={root / 'test.jsonl'}",
        f"reward={DATA / 'rewards.py'}:digit_share",
        "rollout.max_new_tokens=12",
        "rollout.n=4",
        "train.prompts_per_step=4",
        "train.mini_batches=2",
        "train.epochs=2",
        "train.steps=2",
        "train.lr=1e-3",
        "train.eval_every=1",
        "train.save_every=1",
        "data.num_test=4",
        "eval.n=2",
        "train.device=cpu",
    ]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_compare_end_to_end_and_resume(tmp_path, capsys, tiny_run_inputs):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--algos",
        "grpo,aspo",
        "--seeds",
        "2",
        "--output",
        str(out),
        "--workers",
        "2",
        *tiny_compare_overrides(tiny_run_inputs),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["algo"], r["seed"]) for r in summary["runs"]] == [
        ("grpo", 0),
        ("grpo", 1),
        ("aspo", 0),
        ("aspo", 1),
    ]
    for run in summary["runs"]:
        run_dir = out / run["run_dir"]
        rows = _rows(run_dir)
        evals = [r for r in rows if "eval/pass@1" in r]
        assert run["status"] == "finished" and run["steps"] == 2 and [r["step"] for r in evals] == [0, 1, 2]
        assert run["final"]["pass@1"] == evals[-1]["eval/pass@1"]
        assert run["final"]["pass@k"] == evals[-1]["eval/pass@k"]
        assert run["final"]["repetition"] == evals[-1]["eval/repetition"]
        assert run["final"]["response_length"] == evals[-1]["eval/response_length"]
        assert (
            run["final"]["entropy"]
            == [r["actor/entropy"] for r in rows if r.get("actor/entropy") is not None][-1]
        )
        assert run["initial"]["pass@1"] == evals[0]["eval/pass@1"]
        loss = load_config(str(run_dir / "config.yaml")).algorithm.loss
        assert loss == run["algo"]
    for algo in ("grpo", "aspo"):
        for metric in ("pass@1", "pass@k", "entropy", "response_length", "repetition"):
            finals = [r["final"][metric] for r in summary["runs"] if r["algo"] == algo]
            agg = summary["aggregate"][algo][metric]
            assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(finals)), metric
            # t(0.975, 1) = 12.7062
            assert agg["ci95"] == pytest.approx(12.706 * np.std(finals, ddof=1) / math.sqrt(2), rel=1e-4), (
                metric
            )
    assert (
        summary["aggregate"]["aspo"]["entropy"]["ci95"] > 0
    )  # seeds differ: the interval is not trivially 0
    # the same seed evaluates the same starting policy with the same samples, whatever the algorithm
    initial = {r["seed"]: set() for r in summary["runs"]}
    for r in summary["runs"]:
        initial[r["seed"]].add(r["initial"]["pass@1"])
    assert all(len(v) == 1 for v in initial.values())
    report = (out / "report.md").read_text()
    for needle in (
        "grpo",
        "aspo",
        "## Claims",
        "eval_pass_at_1.png",
        "token_weight.png",
        "algorithm.loss=aspo",
        "; 2 seeds (0, 1) per algorithm",
        # every table column is defined under its table
        "- `pass@1_gain`: final minus step-0 held-out pass@1\n",
        "- `jitter_ppo_kl`: mean |change| of ppo_kl between consecutive steps\n",
        "- `avg_dualclip_pos`: dual-clip fraction of positive tokens, mean over steps\n",
        "- `repetition`: held-out repetition rate at the last eval\n",
    ):
        assert needle in report
    for name in (
        "eval_pass_at_1",
        "eval_pass_at_k",
        "entropy",
        "clip_fraction",
        "dual_clip_fraction",
        "response_length",
        "repetition",
        "token_weight",
    ):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # make one run look killed during step 2 (after the step-1 checkpoint), then rerun the same command
    before = {r["run_dir"]: (out / r["run_dir"] / "metrics.jsonl").read_bytes() for r in summary["runs"]}
    victim = out / "runs" / "aspo-s1"
    step1_row = _rows(victim)[1]
    shutil.rmtree(victim / "checkpoints" / "step-2")
    (victim / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(victim)[:2]))
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 already finished, 1 to run" in printed
    for run_dir, content in before.items():
        if run_dir != "runs/aspo-s1":
            assert (out / run_dir / "metrics.jsonl").read_bytes() == content, f"{run_dir} was rerun"
    rows = _rows(victim)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1] == step1_row  # resumed from the step-1 checkpoint, not restarted (timings would differ)
    states = {
        r["run_dir"]: json.loads((out / r["run_dir"] / "compare_run.json").read_text())["attempts"]
        for r in summary["runs"]
    }
    assert states == {"runs/grpo-s0": 1, "runs/grpo-s1": 1, "runs/aspo-s0": 1, "runs/aspo-s1": 2}

    # a changed shared config must not silently resume the old runs
    assert main([*argv, "eval.n=3"]) == 2
    assert "eval.n=2 (now 3)" in capsys.readouterr().err
    # the report can be rebuilt from the runs alone, with a person's notes
    (out / "notes.md").write_text("The curves are too short to say anything.\n")
    assert main(["compare", "--report-only", "--output", str(out)]) == 0
    assert "too short to say anything" in (out / "report.md").read_text()


# -- sweeps ----------------------------------------------------------------------------------------


def test_grid_is_the_product_of_its_keys_in_order():
    from aspo.commands.compare import grid_points, parse_grid, point_tag

    grid = parse_grid(["train.epochs=1,2", "train.lr=1e-5, 2e-5 ,4e-5"])
    assert grid == {"train.epochs": ["1", "2"], "train.lr": ["1e-5", "2e-5", "4e-5"]}
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"train.epochs": "1", "train.lr": "1e-5"}
    assert points[3] == {"train.epochs": "2", "train.lr": "1e-5"}  # the first key varies slowest
    assert grid_points({}) == [{}]
    assert point_tag(points[5]) == "-epochs2-lr4e-5"
    assert point_tag({"data.test": "a/b c.jsonl"}) == "-testa_b_c.jsonl"


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("train.epochs", "dotted.key=v1,v2"),
        ("=1,2", "dotted.key=v1,v2"),
        ("train.epochs=", "dotted.key=v1,v2"),
        ("train.epochs=1,1", "repeats a value"),
    ],
)
def test_bad_grids_are_user_errors(spec, needle):
    from aspo.commands.compare import parse_grid

    with pytest.raises(UserError, match=needle):
        parse_grid([spec])
    with pytest.raises(UserError, match="twice"):
        parse_grid(["train.epochs=1", "train.epochs=2"])


def test_grid_runs_are_planned_per_point_and_may_not_sweep_what_presets_set(tmp_path):
    from aspo.commands.compare import plan_runs

    runs, _, _ = plan_runs(
        None, ["train.steps=2"], ["grpo", "aspo"], [0, 1], tmp_path, {"train.mini_batches": ["1", "8"]}
    )
    assert [r.name for r in runs][:4] == [
        "grpo-mini_batches1-s0",
        "grpo-mini_batches1-s1",
        "aspo-mini_batches1-s0",
        "aspo-mini_batches1-s1",
    ]
    assert {r.cfg.train.mini_batches for r in runs} == {1, 8} and len(runs) == 8
    assert runs[-1].variant == "aspo [train.mini_batches=8]" and runs[-1].cfg.algorithm.loss == "aspo"
    for bad in ("algorithm.loss", "train.seed", "train.steps"):
        with pytest.raises(UserError, match=bad):
            plan_runs(None, ["train.steps=2"], ["grpo"], [0], tmp_path, {bad: ["1", "2"]})
    with pytest.raises(UserError, match="train.epochs"):  # an impossible grid value names its key
        plan_runs(None, [], ["grpo"], [0], tmp_path, {"train.epochs": ["0"]})


@pytest.mark.slow
def test_compare_grid_end_to_end(tmp_path, tiny_run_inputs):
    out = tmp_path / "grid"
    overrides = [
        o
        for o in tiny_compare_overrides(tiny_run_inputs)
        if not o.startswith(("train.epochs", "train.steps"))
    ]
    argv = [
        "compare",
        "--algos",
        "grpo,aspo",
        "--seeds",
        "2",
        "--output",
        str(out),
        "--workers",
        "2",
        "--grid",
        "train.epochs=1,3",
        *overrides,
        "train.steps=1",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 8 and all(r["status"] == "finished" for r in summary["runs"])
    for run in summary["runs"]:
        cfg = load_config(str(out / run["run_dir"] / "config.yaml"))
        assert str(cfg.train.epochs) == run["point"]["train.epochs"] and cfg.algorithm.loss == run["algo"]
        # 2 mini-batches x epochs optimizer steps per rollout, as the grid point says
        rows = _rows(out / run["run_dir"])
        assert [r["actor/optimizer_steps"] for r in rows if "actor/optimizer_steps" in r] == [
            2.0 * cfg.train.epochs
        ]
    front = summary["frontier"]["train.epochs"]
    assert set(front) == {"grpo", "aspo"} and [e["value"] for e in front["aspo"]] == ["1", "3"]
    agg = summary["aggregate"]["aspo [train.epochs=3]"]
    assert front["aspo"][1]["pass@1"] == agg["pass@1"] and agg["pass@1"]["n"] == 2
    finals = [r["final"]["pass@1"] for r in summary["runs"] if r["variant"] == "aspo [train.epochs=3]"]
    assert agg["pass@1"]["mean"] == pytest.approx(np.mean(finals))
    for mode, counts in agg["failures"].items():
        assert counts["n"] == 2
        assert counts["count"] == sum(
            mode in r["failures"] for r in summary["runs"] if r["variant"] == "aspo [train.epochs=3]"
        )
    # the family spans every grid point: 4 claims x 1 comparison x 2 points, less any without a test
    primary = [t for t in summary["claims"]["tests"] if t["primary"]]
    assert len(primary) == 8 and {t["point"] for t in primary} == {"train.epochs=1", "train.epochs=3"}
    assert summary["claims"]["family_size"] == sum(t["test"] is not None for t in primary)
    report = (out / "report.md").read_text()
    for needle in ("## Frontier", "train.epochs=3", "### At train.epochs=1", "frontier_train_epochs.png"):
        assert needle in report
    assert (out / "frontier_train_epochs.png").read_bytes()[:4] == b"\x89PNG"
    # the report rebuilds from the manifest alone, grid included
    (out / "summary.json").unlink()
    assert main(["compare", "--report-only", "--output", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["frontier"] == summary["frontier"]


def test_a_run_that_spelled_out_its_objectives_aggregation_still_resumes(tmp_path):
    """Runs saved before loss_agg_mode defaulted to the objective's own carry `token-mean`: same run for aspo,
    a different one for gspo (whose own is seq-mean-token-mean)."""
    from aspo.commands.compare import PlannedRun, check_existing
    from aspo.config import load_config, save_config

    for loss, same in (("aspo", True), ("gspo", False)):
        run_dir = tmp_path / loss
        run_dir.mkdir()
        save_config(
            load_config(None, [f"algorithm.loss={loss}", "algorithm.loss_agg_mode=token-mean"]),
            str(run_dir / "config.yaml"),
        )
        run = PlannedRun(loss, 0, run_dir, [], load_config(None, [f"algorithm.loss={loss}"]))
        if same:
            check_existing(run)
        else:
            with pytest.raises(UserError, match="loss_agg_mode='token-mean' \\(now 'seq-mean-token-mean'\\)"):
                check_existing(run)


def test_one_seed_is_singular_in_the_setup():
    from aspo.report.compare_text import _setup_lines, plural

    assert plural(1, "seed") == "1 seed" and plural(3, "seed") == "3 seeds"
    setup = {"config": {"model": "tiny", "task": "arithmetic"}, "seeds": [0]}
    assert "- model `tiny`, task `arithmetic`; 1 seed (0) per algorithm" in _setup_lines(setup)


def test_curve_figures_say_their_title_once_and_tick_whole_steps(tmp_path, monkeypatch):
    """A 2-step comparison: matplotlib's default ticks would be 0, 0.25, ... 2.0; a one-panel figure had its
    title both above the figure and above the panel."""
    from matplotlib.figure import Figure

    from aspo.report.compare_figures import plot_curves

    drawn = {}
    save = Figure.savefig

    def record(fig, path, *args, **kwargs):
        fig.canvas.draw()
        ticks = [[t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] for ax in fig.axes]
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else None
        drawn[Path(path).stem] = (suptitle, [ax.get_title() for ax in fig.axes], ticks)
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    runs = [
        [
            {"step": s, "eval/pass@1": 0.1 * s + seed, "actor/clipfrac/pos": 0.1, "actor/clipfrac/neg": 0.2}
            for s in (0, 1, 2)
        ]
        for seed in (0, 0.05)
    ]
    plot_curves({"grpo": runs, "aspo": runs}, tmp_path)
    assert drawn["eval_pass_at_1"][:2] == (None, ["held-out pass@1"])
    suptitle, titles, _ = drawn["clip_fraction"]
    assert suptitle == "trust-region clip fraction by advantage sign"
    assert titles == ["positive-advantage tokens", "negative-advantage tokens"]
    for stem, (_, _, ticks) in drawn.items():
        assert all(ax_ticks and all(float(t).is_integer() for t in ax_ticks) for ax_ticks in ticks), stem
