"""Plan pass: defaults, JSON round trip, paths, fingerprints and status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.plan import Plan
from llm_recipe.compiler.status import read_manifest
from llm_recipe.errors import RecipeError

PIPELINE = """\
recipe: 1
name: pipe
description: a pipeline
seed: 3
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: abc123
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
    n: 64
  prefs:
    path: data/prefs.jsonl
    format: preference
compute:
  env:
    HF_TOKEN: ${env:HF_TOKEN}
tracking:
  backend: mlflow
  uri: ${env:MLFLOW_TRACKING_URI}
stages:
  sft:
    kind: sft
    model: base
    data: math
    adapter: {type: lora, r: 8}
    description: first
    train:
      max_steps: 10
  dpo:
    kind: dpo
    policy: sft
    data: prefs
    train:
      max_steps: 5
  eval:
    kind: eval
    models: [base, sft, dpo]
    data: math
"""


@pytest.fixture
def recipe(write, tmp_path: Path) -> Path:
    write('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', "data/prefs.jsonl")
    return write(PIPELINE)


def plan_of(path: Path, *overrides: str, cwd: Path | None = None,
            require_files: bool = True) -> Plan:
    return compile_recipe(path, overrides=overrides, cwd=cwd or path.parent,
                          require_files=require_files)


def fingerprints(path: Path, *overrides: str) -> dict[str, str]:
    plan = plan_of(path, *overrides)
    return {stage.name: stage.fingerprint for stage in plan.stages}


def test_plan_shape(recipe: Path) -> None:
    plan = plan_of(recipe)
    assert [s.name for s in plan.stages] == ["sft", "dpo", "eval"]
    assert [s.index for s in plan.stages] == [0, 1, 2]
    assert plan.workspace == "outputs/pipe"
    assert plan.stage("dpo").dir == "outputs/pipe/dpo"
    assert plan.stage("dpo").upstream == ("sft",)
    assert plan.stage("sft").output.type == "adapter"
    assert plan.stage("sft").output.path == "outputs/pipe/sft/adapter"
    assert plan.stage("dpo").output.base == "base"
    assert plan.stage("eval").output.path == "outputs/pipe/eval/report.json"
    assert plan.recipe["description"] == "a pipeline"
    assert plan.recipe["seed"] == 3
    with pytest.raises(KeyError):
        plan.stage("nope")


def test_inputs_carry_lineage_and_paths(recipe: Path) -> None:
    dpo = plan_of(recipe).stage("dpo")
    policy, data = dpo.inputs
    assert (policy.field, policy.ref, policy.type, policy.base, policy.producer) == (
        "policy",
        "sft",
        "adapter",
        "base",
        "sft",
    )
    assert policy.path == "outputs/pipe/sft/adapter"
    assert (data.ref, data.type, data.format, data.path) == (
        "prefs",
        "dataset",
        "preference",
        "data/prefs.jsonl",
    )
    eval_inputs = plan_of(recipe).stage("eval").inputs
    assert [i.field for i in eval_inputs] == ["models.0", "models.1", "models.2", "data"]


def test_defaults_are_filled_from_the_schema(recipe: Path) -> None:
    plan = plan_of(recipe)
    sft = plan.stage("sft").config
    assert sft["train"]["batch_size"] == 8
    assert sft["train"]["lr"] == 2e-5  # the sft default
    assert sft["loss"] == "completion_only"
    assert sft["adapter"] == {
        "type": "lora",
        "r": 8,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "quant_type": "nf4",
        "double_quant": True,
    }
    assert sft["seed"] == 3
    assert plan.stage("dpo").config["train"]["lr"] == 5e-6  # the dpo default
    assert plan.stage("dpo").config["beta"] == 0.1
    assert plan.stage("eval").config["metrics"] == ["gsm8k_accuracy"]
    assert plan.models["base"]["dtype"] == "auto"
    assert plan.datasets["math"]["split"] == "train"
    assert plan.tracking["log_artifacts"] is True
    compute = plan.stage("sft").compute
    assert compute["launcher"] == "local"
    assert compute["distributed"]["strategy"] == "auto"
    assert plan.stage("sft").launcher == {
        "name": "local",
        "inner": None,
        "nodes": 1,
        "processes_per_node": 1,
        "processes": 1,
    }


def test_absent_optional_blocks_stay_absent(recipe: Path) -> None:
    assert "adapter" not in plan_of(recipe).stage("dpo").config


def test_stage_seed_overrides_the_recipe_seed(recipe: Path) -> None:
    assert plan_of(recipe, "stages.dpo.seed=9").stage("dpo").config["seed"] == 9


def test_stage_compute_is_merged_over_the_recipe_compute(recipe: Path) -> None:
    plan = plan_of(recipe, "compute.gpus_per_node=2", "stages.dpo.compute={launcher: torchrun}")
    assert plan.stage("sft").compute["gpus_per_node"] == 2
    dpo = plan.stage("dpo")
    assert (dpo.compute["gpus_per_node"], dpo.compute["launcher"]) == (2, "torchrun")
    assert dpo.compute["env"] == {"HF_TOKEN": "${env:HF_TOKEN}"}
    assert dpo.launcher["processes"] == 2


def test_plan_json_round_trip(recipe: Path) -> None:
    plan = plan_of(recipe)
    text = plan.to_json()
    again = Plan.from_dict(json.loads(text))
    assert again == plan
    assert again.to_json() == text


def test_plan_from_dict_refuses_other_formats(recipe: Path) -> None:
    data = plan_of(recipe).to_dict()
    data["plan_format"] = 99
    with pytest.raises(ValueError, match="unsupported plan format"):
        Plan.from_dict(data)


def test_env_references_stay_literal_and_are_listed(recipe: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    plan = plan_of(recipe)
    assert plan.env == ("HF_TOKEN", "MLFLOW_TRACKING_URI")
    text = plan.to_json()
    assert "hf_secret_value" not in text
    assert plan.tracking["uri"] == "${env:MLFLOW_TRACKING_URI}"


def test_warnings(write) -> None:
    text = PIPELINE.replace("    revision: abc123\n", "")
    plan = plan_of(write(text), require_files=False)  # as status and clean compile
    assert any("revision not pinned" in w for w in plan.warnings)
    assert any("data/prefs.jsonl does not exist yet" in w for w in plan.warnings)


def test_a_missing_data_file_is_an_error_at_its_line(write) -> None:
    recipe = write(PIPELINE)
    with pytest.raises(RecipeError) as caught:
        plan_of(recipe)
    [error] = caught.value.errors if hasattr(caught.value, "errors") else [caught.value]
    line = PIPELINE.splitlines().index("    path: data/prefs.jsonl") + 1
    assert error.location is not None and error.location.line == line
    assert "dataset 'prefs': data/prefs.jsonl does not exist" in error.message
    assert "read by stage dpo (data)" in (error.expected or "")
    write("{}\n", "data/prefs.jsonl")
    assert plan_of(recipe).datasets["prefs"]["path"] == "data/prefs.jsonl"


def test_paths_are_relative_to_the_working_directory(write, tmp_path: Path) -> None:
    write("{}\n", "recipes/data/prefs.jsonl")
    path = write(PIPELINE, "recipes/pipe.yaml")
    plan = compile_recipe(path, cwd=tmp_path)
    assert plan.datasets["prefs"]["path"] == "recipes/data/prefs.jsonl"
    assert plan.stage("dpo").inputs[1].path == "recipes/data/prefs.jsonl"
    from_inside = compile_recipe(path, cwd=tmp_path / "recipes")
    assert from_inside.datasets["prefs"]["path"] == "data/prefs.jsonl"
    absolute = compile_recipe(path, overrides=["datasets.prefs.path=/abs/p.jsonl"], cwd=tmp_path,
                              require_files=False)
    assert absolute.datasets["prefs"]["path"] == "/abs/p.jsonl"


def test_recipe_records_how_it_was_compiled(recipe: Path) -> None:
    plan = compile_recipe(recipe, overrides=["seed=4"], cwd=recipe.parent)
    assert plan.recipe["overrides"] == ["seed=4"]
    assert plan.recipe["profiles"] == []
    assert plan.recipe["file"] == str(recipe)


# fingerprints


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("stages.sft.train.max_steps=11", {"sft", "dpo", "eval"}),
        ("stages.sft.adapter.r=16", {"sft", "dpo", "eval"}),
        ("stages.dpo.beta=0.2", {"dpo", "eval"}),
        ("stages.eval.metrics=[exact_match]", {"eval"}),
        ("stages.dpo.seed=5", {"dpo", "eval"}),
        ("seed=4", {"sft", "dpo", "eval"}),
        ("datasets.math.n=65", {"sft", "dpo", "eval"}),
        ("models.base.revision=def456", {"sft", "dpo", "eval"}),
        ("compute.precision=bf16", {"sft", "dpo", "eval"}),
        ("stages.dpo.compute={gpus_per_node: 2}", {"dpo", "eval"}),
        ("stages.sft.train.lr=2e-5", set()),  # the default, written out
        ("stages.sft.description=changed", set()),
        ("description=changed", set()),
        ("models.base.description=x", set()),
        ("datasets.math.examples=100", set()),
        ("stages.dpo.after=[sft]", set()),
        ("compute.launcher=torchrun", set()),
        ("compute.env.OTHER=1", set()),
        ("tracking.experiment=x", set()),
    ],
)
def test_fingerprint_changes_exactly_with_relevant_keys(
    recipe: Path, override: str, changed: set[str]
) -> None:
    before = fingerprints(recipe)
    after = fingerprints(recipe, override)
    assert {name for name in before if before[name] != after[name]} == changed


def test_fingerprint_sees_local_file_content(recipe: Path, write) -> None:
    before = fingerprints(recipe)
    write('{"prompt": "q", "chosen": "a", "rejected": "b"}\n', "data/prefs.jsonl")
    after = fingerprints(recipe)
    assert {n for n in before if before[n] != after[n]} == {"dpo", "eval"}


def test_recipe_fingerprint_follows_stage_fingerprints(recipe: Path) -> None:
    assert plan_of(recipe).recipe["fingerprint"] == plan_of(recipe).recipe["fingerprint"]
    assert (
        plan_of(recipe).recipe["fingerprint"]
        != plan_of(recipe, "stages.sft.train.max_steps=3").recipe["fingerprint"]
    )
    assert (
        plan_of(recipe).recipe["fingerprint"]
        == plan_of(recipe, "description=other").recipe["fingerprint"]
    )


# status against a workspace


def write_manifest(root: Path, stage: str, **fields: object) -> None:
    """A manifest as the runtime writes it, with a one-file output that exists."""
    directory = root / "outputs" / "pipe" / stage
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "out.txt").write_text("weights")
    output = {"path": f"outputs/pipe/{stage}/out.txt", "files": {"out.txt": {"size": 7}}}
    (directory / "manifest.json").write_text(json.dumps({"output": output, **fields}), "utf-8")


def test_a_fresh_stage_whose_output_is_gone_or_resized_is_stale(recipe: Path,
                                                                tmp_path: Path) -> None:
    sft = plan_of(recipe).stage("sft")
    write_manifest(tmp_path, "sft", status="complete", fingerprint=sft.fingerprint)
    assert plan_of(recipe).stage("sft").status["state"] == "fresh"
    output = tmp_path / "outputs" / "pipe" / "sft" / "out.txt"
    output.write_text("weights, truncated later")
    status = plan_of(recipe).stage("sft").status
    assert status["state"] == "stale"
    assert status["reason"] == ("output damaged: outputs/pipe/sft/out.txt has 24 bytes; "
                                "its manifest recorded 7")
    output.unlink()
    status = plan_of(recipe).stage("sft").status
    assert status["reason"] == "output damaged: outputs/pipe/sft/out.txt is missing"


@pytest.mark.parametrize("manifest", [
    [1, 2], {"status": "complete"}, {"status": "complete", "fingerprint": 5},
    {"status": "complete", "fingerprint": "f", "metrics": "high"},
    {"status": "complete", "fingerprint": "f", "output": "model"},
])
def test_a_manifest_of_the_wrong_shape_counts_as_absent(tmp_path: Path, manifest) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(tmp_path) is None


def test_status_missing_without_a_manifest(recipe: Path) -> None:
    plan = plan_of(recipe)
    assert [s.status["state"] for s in plan.stages] == ["missing", "blocked", "blocked"]
    assert plan.stage("dpo").status["reason"] == "waits for sft"


def test_status_fresh_stale_missing(recipe: Path, tmp_path: Path) -> None:
    plan = plan_of(recipe)
    sft, dpo, eval_ = plan.stages
    write_manifest(
        tmp_path, "sft", status="complete", fingerprint=sft.fingerprint, config=sft.config
    )
    old = {**dpo.config, "beta": 0.5, "description": "ignored"}
    write_manifest(tmp_path, "dpo", status="complete", fingerprint="0" * 64, config=old)
    write_manifest(tmp_path, "eval", status="running", fingerprint=eval_.fingerprint)
    again = plan_of(recipe)
    assert again.stage("sft").status == {"state": "fresh", "reason": None}
    assert again.stage("dpo").status == {"state": "stale", "reason": "config changed: beta"}
    assert again.stage("eval").status == {"state": "blocked", "reason": "waits for dpo"}


def test_stale_because_an_input_changed(recipe: Path, tmp_path: Path) -> None:
    dpo = plan_of(recipe).stage("dpo")
    inputs = [{"field": i.field, "fingerprint": i.fingerprint} for i in dpo.inputs]
    inputs[-1]["fingerprint"] = "old"
    write_manifest(
        tmp_path, "dpo", status="complete", fingerprint="x", config=dpo.config, inputs=inputs
    )
    status = plan_of(recipe).stage("dpo").status
    assert status == {"state": "stale", "reason": f"input changed: {dpo.inputs[-1].field}"}


def test_stale_after_an_upstream_change(recipe: Path, tmp_path: Path) -> None:
    plan = plan_of(recipe)
    for stage in plan.stages:
        write_manifest(
            tmp_path,
            stage.name,
            status="complete",
            fingerprint=stage.fingerprint,
            config=stage.config,
            inputs=[{"field": i.field, "fingerprint": i.fingerprint} for i in stage.inputs],
        )
    changed = plan_of(recipe, "stages.sft.train.max_steps=20")
    states = {s.name: s.status for s in changed.stages}
    assert states["sft"] == {"state": "stale", "reason": "config changed: train.max_steps"}
    consumed = ", ".join(i.field for i in changed.stage("dpo").inputs if i.ref == "sft")
    assert states["dpo"] == {"state": "stale", "reason": f"input changed: {consumed}"}
    assert states["eval"]["state"] == "stale"


@pytest.mark.parametrize("content", ["not json", "[]", "{}"])
def test_unreadable_manifest_is_missing(recipe: Path, tmp_path: Path, content: str) -> None:
    directory = tmp_path / "outputs" / "pipe" / "sft"
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(content, "utf-8")
    assert plan_of(recipe).stage("sft").status["state"] == "missing"


def test_status_is_read_relative_to_the_working_directory(recipe: Path, tmp_path: Path) -> None:
    sft = plan_of(recipe).stage("sft")
    elsewhere = tmp_path / "elsewhere"
    write_manifest(elsewhere, "sft", status="complete", fingerprint=sft.fingerprint)
    assert plan_of(recipe).stage("sft").status["state"] == "missing"
    assert plan_of(recipe, cwd=elsewhere).stage("sft").status["state"] == "fresh"


def test_relative_paths_follow_the_file_that_wrote_them(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "base.yaml").write_text(
        "recipe: 1\nname: b\nmodels: {m: {hub: gpt2, revision: main}}\n"
        "datasets: {d: {path: data/x.jsonl, format: text}}\n"
        "stages: {p: {kind: pretrain, model: m, data: d}}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("recipe: 1\nextends: ../base.yaml\nname: c\n")
    monkeypatch.chdir(tmp_path)
    plan = compile_recipe("sub/child.yaml")
    assert plan.datasets["d"]["path"] == "data/x.jsonl"
    assert not plan.warnings or "does not exist" not in " ".join(plan.warnings)
    monkeypatch.chdir(tmp_path / "sub")
    assert compile_recipe("child.yaml").datasets["d"]["path"] == "../data/x.jsonl"


def test_training_length_defaults_to_one_epoch_and_x_keys_are_ignored(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "recipe: 1\nname: r\nx-train: &t {lr: 1.0e-4}\nmodels: {m: {hub: gpt2, revision: main}}\n"
        "datasets: {d: {builtin: corpus, format: text}}\n"
        "stages:\n  p: {kind: pretrain, model: m, data: d, train: *t}\n"
        "  q: {kind: pretrain, model: p, data: d, train: {<<: *t, max_steps: 5}}\n")
    plan = compile_recipe(path, cwd=tmp_path)
    assert plan.stage("p").config["train"]["epochs"] == 1
    assert plan.stage("p").config["train"]["lr"] == 1e-4
    assert "epochs" not in plan.stage("q").config["train"]


def _outside(plan: Plan) -> list[str]:
    return [w for w in plan.warnings if "outside the project directory" in w]


@pytest.mark.parametrize(("path", "why"), [
    ("../../../../etc/passwd", "it leaves the project with '..'"),
    ("/etc/passwd", "an absolute path"),
    ("data/link/passwd", "a symlink to /etc/passwd"),
])
def test_a_path_outside_the_project_is_allowed_with_a_warning(
    write, tmp_path: Path, path: str, why: str
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to("/etc")
    recipe = write(PIPELINE.replace("path: data/prefs.jsonl", f"path: {path}"))
    plan = plan_of(recipe, cwd=tmp_path, require_files=False)
    [warning] = _outside(plan)
    assert warning.startswith(f"dataset 'prefs': path {plan.datasets['prefs']['path']} ")
    assert warning.endswith(f"({why})")


def test_paths_inside_the_project_do_not_warn(write, tmp_path: Path) -> None:
    write("{}\n", "data/prefs.jsonl")
    (tmp_path / "inner").mkdir()
    (tmp_path / "data" / "alias").symlink_to(tmp_path / "inner")  # a link that stays inside
    assert _outside(plan_of(write(PIPELINE), cwd=tmp_path)) == []
    linked = PIPELINE.replace("path: data/prefs.jsonl", "path: data/alias/p.jsonl")
    assert _outside(plan_of(write(linked), cwd=tmp_path, require_files=False)) == []


def test_model_and_tokenizer_paths_outside_warn_too(write, tmp_path: Path) -> None:
    text = PIPELINE.replace(
        "    hub: sshleifer/tiny-gpt2\n    revision: abc123\n",
        "    path: /opt/models/tiny\n    tokenizer: {path: ../tok}\n")
    warnings = _outside(plan_of(write(text), cwd=tmp_path, require_files=False))
    assert [w.split(" is outside")[0] for w in warnings] == [
        "model 'base': path /opt/models/tiny", "model 'base': tokenizer.path ../tok"]


def test_plan_json_refuses_a_non_finite_number(recipe: Path) -> None:
    """A safety net behind validation: strict JSON, or an error naming the value."""
    plan = plan_of(recipe)
    plan.stage("sft").config["train"]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"plan\.stages\[0\]\.config\.train\.lr"):
        plan.to_json()
