import re

import pytest
import yaml

from aspo.config import Config, describe_keys, load_config, save_config, to_dict
from aspo.errors import UserError


def test_defaults_are_the_off_policy_aspo_regime():
    cfg = Config()
    assert cfg.algorithm.loss == "aspo" and cfg.model == "tiny"
    assert cfg.train.mini_batches * cfg.train.epochs > 1  # several optimizer steps per rollout


def test_overrides_parse_yaml_scalars_and_types():
    cfg = load_config(
        None,
        [
            "rollout.n=16",
            "train.lr=1e-5",
            "resume=true",
            "algorithm.loss=grpo",
            "algorithm.clip_ratio_high=0.28",
            "rollout.max_new_tokens=null",
        ],
    )
    assert cfg.rollout.n == 16 and cfg.train.lr == 1e-5 and cfg.resume is True
    assert cfg.algorithm.loss == "grpo" and cfg.algorithm.clip_ratio_high == 0.28
    assert cfg.rollout.max_new_tokens is None
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)  # int accepted for a float key


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"rollout": {"n": 4}, "train": {"steps": 7}}))
    cfg = load_config(str(path), ["train.steps=9"])
    assert cfg.rollout.n == 4 and cfg.train.steps == 9


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["rollout.n=3", "algorithm.loss=dapo"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    assert to_dict(load_config(str(tmp_path / "config.yaml"))) == to_dict(cfg)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("rollout.nn=3", "did you mean 'rollout.n'"),
        ("lr=3", "did you mean 'train.lr'"),
        ("trian.steps=3", "did you mean 'train.steps'"),
        ("rollout=3", "unknown config key 'rollout'"),
    ],
)
def test_unknown_key_names_it_and_suggests(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, needle",
    [
        ("rollout.n=0", "rollout.n=0 must be >= 1"),
        ("train.mini_batches=0", "train.mini_batches"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("algorithm.clip_ratio_c=0.5", "algorithm.clip_ratio_c"),
        ("model=/no/such/dir", "/no/such/dir"),
        ("data.train=/no/such.jsonl", "/no/such.jsonl"),
        ("lora.rank=-1", "lora.rank=-1 must be >= 0"),
        ("lora.dropout=1", "lora.dropout"),
        ("lora.alpha=0", "lora.alpha"),
        ("lora.target_modules=,", "lora.target_modules"),
        ("rollout.engine=vllm lora.rank=8", "rollout.engine=hf only"),
        ("train.fsdp=true lora.rank=8", "train.fsdp=true shards the full model"),
        ("train.fsdp=true rollout.engine=vllm", "train.fsdp=true shards the full model"),
        ("train.report_to=tensorboard,mlflow", "train.report_to"),
        ("train.partial_mini_batch=half", "train.partial_mini_batch='half' must be full or scaled"),
        ("train.partial_mini_batch=scaled", "needs train.mini_batch_size > 0"),
    ],
)
def test_impossible_values_name_the_key(override, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, override.split()).validate()


def test_lora_and_report_to_keys_sit_beside_a_plain_model_key(tmp_path):
    cfg = load_config(
        None,
        [
            f"model={tmp_path}",
            "lora.rank=16",
            "lora.alpha=32",
            "lora.target_modules=q_proj,v_proj",
            "train.report_to=tensorboard,wandb",
        ],
    ).validate()
    assert cfg.model == str(tmp_path) and cfg.lora.rank == 16 and cfg.lora.alpha == 32.0
    assert Config().lora.rank == 0 and Config().train.report_to == "tensorboard"  # both off by default
    from aspo.config import report_targets
    from aspo.lora import target_modules

    assert report_targets(cfg.train.report_to) == ["tensorboard", "wandb"] and report_targets("none") == []
    assert (
        target_modules(cfg.lora.target_modules) == ["q_proj", "v_proj"]
        and target_modules("all-linear") == "all-linear"
    )


def test_wrong_type_names_key():
    with pytest.raises(UserError, match="rollout.n='abc' has the wrong type"):
        load_config(None, ["rollout.n=abc"])
    with pytest.raises(UserError, match="not of the form"):
        load_config(None, ["rollout.n"])


def test_help_documents_every_key():
    text = describe_keys()
    for key in (
        "model",
        "task",
        "data.train",
        "data.test",
        "reward",
        "algorithm.loss",
        "algorithm.advantage",
        "algorithm.kl_coef",
        "algorithm.clip_ratio_low",
        "rollout.n",
        "rollout.max_new_tokens",
        "rollout.temperature",
        "rollout.top_p",
        "train.prompts_per_step",
        "train.mini_batches",
        "train.epochs",
        "train.steps",
        "train.lr",
        "train.seed",
        "train.eval_every",
        "train.save_every",
        "output_dir",
        "resume",
        "lora.rank",
        "lora.alpha",
        "lora.dropout",
        "lora.target_modules",
        "train.report_to",
    ):
        assert f"  {key} = " in text, key


def test_shipped_configs_load_and_match_the_defaults():
    from pathlib import Path

    path = Path(__file__).parent.parent / "configs" / "lab-arithmetic.yaml"
    assert to_dict(load_config(str(path))) == to_dict(Config())


def test_prompt_section_and_renamed_keys():
    cfg = load_config(
        None, ["prompt.template=Q: {prompt}", "prompt.system=Be brief.", "prompt.instruction=Think."]
    )
    assert (cfg.prompt.template, cfg.prompt.system, cfg.prompt.instruction) == (
        "Q: {prompt}",
        "Be brief.",
        "Think.",
    )
    assert load_config(None, ["prompt.template={prompt}"]).prompt.template == "{prompt}"  # not a YAML mapping
    # the keys prompt.* replaced still load (saved run directories), into the new section
    old = load_config(None, ["data.prompt_template={prompt} =", "data.chat_template=true"])
    assert old.prompt.template == "{prompt} =" and old.prompt.chat_template is True
    assert "prompt.instruction" in describe_keys()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["algorithm.loss=grpo", "algorithm.clip_cov_ratio=0.01"],
            "clip_cov_ratio applies to algorithm.loss=clip_cov",
        ),
        (
            ["algorithm.loss=clip_cov", "algorithm.kl_cov_coef=2"],
            "kl_cov_coef applies to algorithm.loss=kl_cov",
        ),
        (["algorithm.entropy_coef=-0.1"], "entropy_coef=-0.1 must be >= 0"),
        (["algorithm.entropy_target=0.5"], "entropy_target has no effect without algorithm.entropy_adaptive"),
        (["algorithm.entropy_adaptive=true", "algorithm.entropy_coef=2.0"], "must lie in [entropy_coef_min"),
        (
            ["algorithm.entropy_adaptive=true", "algorithm.entropy_coef_delta=0"],
            "entropy_coef_delta=0.0 must be > 0",
        ),
        (["algorithm.top_entropy_quantile=1.5"], "top_entropy_quantile must be in [0, 1]"),
        (["algorithm.off_policy_mask_threshold=-1"], "off_policy_mask_threshold must be >= 0"),
        (
            ["algorithm.loss=gspo", "algorithm.top_entropy_quantile=0.2"],
            "does not combine with algorithm.loss='gspo'",
        ),
        (["algorithm.loss=kl_cov", "algorithm.kl_cov_ratio=-1"], "kl_cov_ratio"),
    ],
)
def test_baseline_terms_refuse_what_makes_no_sense(overrides, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        load_config(None, overrides).validate()


def test_baseline_terms_combine_where_they_make_sense():
    for overrides in (
        ["algorithm.loss=aspo", "algorithm.entropy_coef=0.01"],
        ["algorithm.loss=aspo", "algorithm.entropy_adaptive=true", "algorithm.entropy_target=0.5"],
        [
            "algorithm.loss=aspo",
            "algorithm.off_policy_mask_threshold=0.5",
            "algorithm.top_entropy_quantile=0.2",
        ],
        ["algorithm.loss=clip_cov", "algorithm.clip_cov_ratio=0.01", "algorithm.entropy_coef=0.001"],
        ["algorithm.loss=kl_cov", "algorithm.kl_cov_ratio=0.002", "algorithm.off_policy_mask_threshold=1"],
    ):
        algorithm = load_config(None, overrides).validate().algorithm
        params = algorithm.resolved_objective_params()
        for item in overrides:
            key, _, value = item.partition("=")
            name = key.split(".")[1]
            if name in params:
                assert str(params[name]) in (value, str(float(value))), item
