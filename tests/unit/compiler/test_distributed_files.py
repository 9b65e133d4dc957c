"""A DeepSpeed JSON / FSDP YAML of the user's, checked at plan time, fingerprinted,
rendered into the accelerate config (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.render import render_plan
from llm_recipe.errors import RecipeError, RecipeErrors

RECIPE = """\
recipe: 1
name: files
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  math: {builtin: arithmetic, format: gsm8k, n: 64}
compute:
  launcher: accelerate
  gpus_per_node: 4
  distributed: {DIST}
stages:
  sft:
    kind: sft
    model: base
    data: math
    train: {max_steps: 10, batch_size: 2, grad_accum: 4}
"""
ZERO2 = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
         "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
         "bf16": {"enabled": "auto"}}


@pytest.fixture
def recipe(write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    def make(dist: str, files: dict[str, str] | None = None) -> Path:
        for name, text in (files or {}).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text, "utf-8")
        return write(RECIPE.replace("{DIST}", dist))

    return make


def refused(path: Path) -> list[RecipeError]:
    with pytest.raises(RecipeError) as caught:
        compile_recipe(path)
    error = caught.value
    return list(error.errors) if isinstance(error, RecipeErrors) else [error]


def test_a_deepspeed_file_plans_with_its_stage_offload_and_hash(recipe) -> None:
    path = recipe("{strategy: deepspeed, deepspeed_config: ds/zero2.json}",
                  {"ds/zero2.json": json.dumps(ZERO2)})
    stage = compile_recipe(path).stage("sft")
    dist = stage.compute["distributed"]
    assert dist["deepspeed_config"] == "ds/zero2.json"
    assert dist["zero_stage"] == 2 and dist["offload"] == "optimizer"  # read from the file
    assert len(dist["deepspeed_config_sha256"]) == 64
    config = yaml.safe_load(render_plan(compile_recipe(path))["accelerate/sft.yaml"])
    assert config["deepspeed_config"] == {"deepspeed_config_file": "ds/zero2.json",
                                          "zero3_init_flag": False}
    assert "mixed_precision" not in config  # accelerate refuses it beside a config file
    # the content is fingerprinted: any edit makes the stage stale
    (path.parent / "ds/zero2.json").write_text(json.dumps({**ZERO2, "wall_clock_breakdown": True}))
    assert compile_recipe(path).stage("sft").fingerprint != stage.fingerprint


def test_without_a_file_the_fingerprint_is_what_it_was(recipe) -> None:
    plain = compile_recipe(recipe("{strategy: deepspeed, zero_stage: 2}")).stage("sft")
    assert "deepspeed_config_sha256" not in plain.compute["distributed"]


def test_a_json_error_names_the_file_and_its_line(recipe) -> None:
    path = recipe("{strategy: deepspeed, deepspeed_config: ds.json}",
                  {"ds.json": '{\n  "zero_optimization": {"stage": 2},\n  "bf16": {,}\n}\n'})
    [error] = refused(path)
    assert error.message.startswith("the DeepSpeed config ds.json is not valid JSON: line 3,")
    assert error.location is not None and (error.location.file, error.location.line) == (
        "ds.json", 3)
    assert error.path == ("compute", "distributed", "deepspeed_config")


def test_missing_files_lists_and_stages(recipe) -> None:
    [missing] = refused(recipe("{strategy: deepspeed, deepspeed_config: nope.json}"))
    assert missing.message == "the DeepSpeed config nope.json does not exist"
    assert missing.location is not None and missing.location.line == 10
    [listed] = refused(recipe("{strategy: deepspeed, deepspeed_config: l.json}",
                              {"l.json": "[1, 2]"}))
    assert listed.message == "the DeepSpeed config l.json is a list"
    stageless = refused(recipe("{strategy: deepspeed, deepspeed_config: s.json}", {
        "s.json": '{"zero_optimization": {}, "gradient_accumulation_steps": 4}'}))
    assert [e.message for e in stageless] == [
        "s.json has no zero_optimization.stage (0, 1, 2 or 3)"]


def test_values_the_trainer_would_refuse_are_refused_now(recipe) -> None:
    bad = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4,
           "bf16": {"enabled": True}, "optimizer": {"params": {"lr": 1e-3, "betas": "auto"}}}
    found = refused(recipe("{strategy: deepspeed, zero_stage: 2, deepspeed_config: b.json}",
                           {"b.json": json.dumps(bad)}))
    messages = [e.message for e in found]
    assert any("says ZeRO stage 3 and the recipe says zero_stage 2" in m for m in messages)
    assert any("train_micro_batch_size_per_gpu = 4, and the trainer will use 2" in m
               for m in messages)
    # a missing gradient_accumulation_steps is 1 to accelerate; the recipe says 4
    assert any("gradient_accumulation_steps = 1, and the trainer will use 4" in m
               for m in messages)
    assert any("bf16.enabled = true" in m for m in messages)  # bf16-true: no autocast flag
    assert any("optimizer.params.lr = 0.001" in m for m in messages)
    assert all(e.hint and "auto" in e.hint for e in found if "says ZeRO" not in e.message)


def test_the_file_must_match_the_strategy_and_the_launcher(recipe) -> None:
    [error] = refused(recipe("{strategy: ddp, deepspeed_config: d.json}",
                             {"d.json": json.dumps(ZERO2)}))
    assert error.message == "stage sft uses strategy ddp; deepspeed_config is for deepspeed"
    path = recipe("{strategy: fsdp, fsdp_config: f.yaml}", {"f.yaml": "sharding_strategy: 1\n"})
    text = path.read_text().replace("launcher: accelerate", "launcher: torchrun")
    path.write_text(text)
    [error] = refused(path)
    assert "launched with torchrun; only accelerate takes a fsdp config file" in error.message


def test_fsdp_settings_are_merged_over_the_rendered_defaults(recipe) -> None:
    path = recipe("{strategy: fsdp, fsdp_config: fsdp.yaml}", {
        "fsdp.yaml": "offload_params: true\nfsdp_backward_prefetch: BACKWARD_POST\n"
                     "transformer_layer_cls_to_wrap: [GPT2Block]\n"})
    plan = compile_recipe(path)
    dist = plan.stage("sft").compute["distributed"]
    assert dist["offload"] == "parameters"  # fsdp_offload_params from the file
    assert dist["fsdp_settings"] == {"fsdp_offload_params": True,
                                     "fsdp_backward_prefetch": "BACKWARD_POST",
                                     "fsdp_transformer_layer_cls_to_wrap": ["GPT2Block"]}
    fsdp = yaml.safe_load(render_plan(plan)["accelerate/sft.yaml"])["fsdp_config"]
    assert fsdp["fsdp_offload_params"] is True
    assert fsdp["fsdp_backward_prefetch"] == "BACKWARD_POST"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == ["GPT2Block"]
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # a default kept


def test_an_unknown_fsdp_setting_is_located_in_its_file(recipe) -> None:
    [error] = refused(recipe("{strategy: fsdp, fsdp_config: conf/fsdp.yaml}", {
        "conf/fsdp.yaml": "fsdp_version: 2\nsharding_stratgy: FULL_SHARD\n"}))
    assert error.message == "unknown FSDP setting 'sharding_stratgy'"
    assert error.location is not None
    assert (error.location.file, error.location.line) == ("conf/fsdp.yaml", 2)
    assert error.hint == "did you mean 'fsdp_sharding_strategy'?"
    [error] = refused(recipe("{strategy: fsdp, fsdp_config: y.yaml}", {"y.yaml": "a: [1\n"}))
    assert error.message.startswith("the FSDP settings file y.yaml is not valid YAML: line 2")


def test_fsdp_activation_checkpointing_excludes_the_trainers(recipe) -> None:
    files = {"f.yaml": "activation_checkpointing: true\n"}
    [error] = refused(recipe("{strategy: fsdp, fsdp_config: f.yaml}", files))
    assert "also has the Trainer's" in error.message
    compile_recipe(recipe("{strategy: fsdp, fsdp_config: f.yaml, "
                          "activation_checkpointing: false}", files))
