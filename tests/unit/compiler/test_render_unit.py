"""Render pass pieces: the shell filters, the strict environment, the template lint and the
launcher settings (accelerate config, docker mounts, slurm checks)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from jinja2 import nodes

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.plan import Plan
from llm_recipe.compiler.render import (
    comment,
    env_word,
    quote,
    render_plan,
    sbatch_value,
    template_env,
)
from llm_recipe.errors import RecipeError

HOSTILE = ["$(touch PWNED)", "`touch PWNED`", "a; touch PWNED", "a && touch PWNED",
           "line\ntouch PWNED", "it's \"quoted\"", "*", "-rf", "", " lead", "${HOME}"]
SAFE_FILTERS = {"q", "envval", "c", "sbatch", "yaml"}
COMMENT_ONLY = {"c", "sbatch"}
"""Filters that do not make shell words: only on lines that start with '#'."""


def _bash(script: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", **(env or {})}, check=True)
    return result.stdout


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_is_one_literal_word(value: str, tmp_path: Path) -> None:
    out = _bash(f"cd {shlex.quote(str(tmp_path))} && printf '%s\\0' {quote(value)}")
    assert out.split("\0")[:-1] == [value]
    assert not (tmp_path / "PWNED").exists()


def test_quote_spells_booleans_and_refuses_none() -> None:
    assert (quote(True), quote(False), quote(3)) == ("true", "false", "3")
    with pytest.raises(TypeError):
        quote(None)


@pytest.mark.parametrize("value", HOSTILE)
def test_env_word_literal(value: str) -> None:
    assert _bash(f"v={env_word(value)}; printf '%s' \"$v\"") == value


def test_env_word_reads_references_from_the_environment() -> None:
    word = env_word("Bearer ${env:TOKEN}; $(x) ${env:OTHER}")
    assert "s3cret" not in word
    out = _bash(f"v={word}; printf '%s' \"$v\"", {"TOKEN": "s3cret", "OTHER": "o"})
    assert out == "Bearer s3cret; $(x) o"
    missing = subprocess.run(["bash", "-c", f"v={word}"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0 and "TOKEN must be set" in missing.stderr


def test_comment_and_sbatch_filters() -> None:
    assert comment("a\nrm -rf /\r\x00b") == "a rm -rf / b"
    assert sbatch_value("outputs/x/sft/slurm-%j.log") == "outputs/x/sft/slurm-%j.log"
    for bad in ["a b", "-x", "a\nb", "$(x)", "a;b", "'a'"]:
        with pytest.raises(ValueError):
            sbatch_value(bad)


def test_strict_undefined_fails_instead_of_printing_nothing() -> None:
    env = template_env()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("echo {{ missing | q }}").render()
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("stage.sh.j2").render(recipe="r", source="r.yaml", total=1,
                                               fingerprint="f")


def test_templates_filter_every_value() -> None:
    """Lint: every {{ }} ends in a safe filter or calls a template macro, and the filters
    that do not quote for a shell (comment text, #SBATCH values) stay on '#' lines."""
    env = template_env()
    names = env.list_templates(extensions=["j2"])
    assert {"stage.sh.j2", "run_all.sh.j2", "slurm.sbatch.j2", "Dockerfile.j2"} <= set(names)
    for name in names:
        source = env.loader.get_source(env, name)[0]
        tree = env.parse(source)
        macros = {m.name for m in tree.find_all(nodes.Macro)}
        imported = {i.target for i in tree.find_all(nodes.Import)}
        lines = source.splitlines()
        for output in tree.find_all(nodes.Output):
            for expr in output.nodes:
                if isinstance(expr, nodes.TemplateData):
                    continue
                where = f"{name}:{expr.lineno}"
                if isinstance(expr, nodes.Call):
                    callee = expr.node
                    assert (isinstance(callee, nodes.Name) and callee.name in macros) or (
                        isinstance(callee, nodes.Getattr)
                        and isinstance(callee.node, nodes.Name)
                        and callee.node.name in imported), where
                    continue
                assert isinstance(expr, nodes.Filter) and expr.name in SAFE_FILTERS, where
                if expr.name in COMMENT_ONLY:
                    assert lines[expr.lineno - 1].lstrip().startswith("#"), where
                if expr.name == "yaml":
                    assert name.endswith(".yaml.j2"), where


def _plan(write, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    # Rendering for a machine that has the data (e.g. /srv): not required here.
    return compile_recipe(write(text), require_files=False)


BASE = """\
recipe: 1
name: unit
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  math: {builtin: arithmetic, format: gsm8k, n: 8}
compute: %s
stages:
  sft: {kind: sft, model: base, data: math, train: {max_steps: 1, batch_size: 2, grad_accum: 3}}
"""


@pytest.mark.parametrize(("compute", "expected"), [
    ("{launcher: accelerate, gpus_per_node: 1}",  # auto: bf16-true, no autocast
     {"distributed_type": "NO", "mixed_precision": "no", "use_cpu": False}),
    ("{launcher: accelerate, gpus_per_node: 1, precision: bf16-mixed}",
     {"distributed_type": "NO", "mixed_precision": "bf16", "use_cpu": False}),
    ("{launcher: accelerate, gpus_per_node: 1, precision: fp16}",
     {"distributed_type": "NO", "mixed_precision": "fp16", "use_cpu": False}),
    ("{launcher: accelerate, gpus_per_node: 0}",
     {"distributed_type": "NO", "mixed_precision": "no", "use_cpu": True}),
    ("{launcher: accelerate, gpus_per_node: 0, processes_per_node: 2}",
     {"distributed_type": "MULTI_GPU", "num_processes": 2, "use_cpu": False}),
    ("{launcher: accelerate, gpus_per_node: 8, precision: fp32}",
     {"distributed_type": "MULTI_GPU", "mixed_precision": "no", "num_processes": 8}),
    ("{launcher: accelerate, gpus_per_node: 4, distributed: {strategy: fsdp, offload: none}}",
     {"distributed_type": "FSDP"}),
    ("{launcher: accelerate, gpus_per_node: 4, distributed: {strategy: deepspeed, zero_stage: 2,"
     " offload: parameters}}", {"distributed_type": "DEEPSPEED"}),
])
def test_accelerate_config(compute: str, expected: dict, write, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    files = render_plan(_plan(write, BASE % compute, tmp_path, monkeypatch))
    config = yaml.safe_load(files["accelerate/sft.yaml"])
    assert expected.items() <= config.items()
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"] == {
            "zero_stage": 2, "offload_optimizer_device": "cpu", "offload_param_device": "cpu",
            "gradient_accumulation_steps": 3, "zero3_init_flag": False,
            "zero3_save_16bit_model": False}
    if config["distributed_type"] == "FSDP":
        assert config["fsdp_config"]["fsdp_offload_params"] is False
    accelerate = pytest.importorskip("accelerate.commands.config.config_args")
    path = tmp_path / "accelerate.yaml"
    path.write_text(files["accelerate/sft.yaml"], "utf-8")
    loaded = accelerate.load_config_from_file(str(path))
    assert str(loaded.distributed_type).endswith(config["distributed_type"])


def test_global_batch_in_the_header(write, tmp_path: Path, monkeypatch) -> None:
    plan = _plan(write, BASE % "{launcher: accelerate, gpus_per_node: 8}", tmp_path, monkeypatch)
    script = render_plan(plan)["stages/01-sft.sh"]
    assert "# global batch: 2 per device x 3 accumulation x 8 processes = 48" in " ".join(
        script.split())


def test_docker_refuses_a_path_with_a_colon(write, tmp_path: Path, monkeypatch) -> None:
    text = BASE % "{launcher: docker, docker: {image: img}}"
    plan = _plan(write, text.replace("datasets:\n", "datasets:\n  odd: {path: 'a:b.jsonl', "
                                     "format: gsm8k}\n"), tmp_path, monkeypatch)
    with pytest.raises(RecipeError) as error:
        render_plan(plan)
    assert error.value.path == ("datasets", "odd", "path")


def test_docker_named_volumes_and_cpu_image(write, tmp_path: Path, monkeypatch) -> None:
    text = BASE % ("{launcher: docker, docker: {image: img, volumes: {hf: /hf, ./x/../y: /y}}}")
    files = render_plan(_plan(write, text, tmp_path, monkeypatch))
    script = files["stages/01-sft.sh"]
    assert "  -v hf:/hf \\\n" in script and '  -v "$PWD"/y:/y \\\n' in script
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    assert not [line for line in commands if "--gpus" in line or "--restart" in line]
    assert "FROM python:3.11-slim" in files["Dockerfile"]


def test_slurm_without_gpus_has_no_gpu_line(write, tmp_path: Path, monkeypatch) -> None:
    text = BASE % "{launcher: slurm, nodes: 2, slurm: {exclusive: false}}"
    sbatch = render_plan(_plan(write, text, tmp_path, monkeypatch))["slurm/sft.sbatch"]
    assert "--gpus-per-node" not in sbatch and "--exclusive" not in sbatch
    assert "#SBATCH --nodes=2\n" in sbatch and "#SBATCH --job-name=unit-sft\n" in sbatch


def _mounts(script: str) -> list[str]:
    """The container side of every ``-v`` of a docker stage script."""
    words = shlex.split(" ".join(line.rstrip("\\") for line in script.splitlines()
                                 if not line.lstrip().startswith("#")))
    return [words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-v"]


def _outside_inputs(write, tmp_path: Path, monkeypatch) -> tuple:
    (tmp_path / "project").mkdir()
    text = (BASE % "{launcher: docker, docker: {image: img}}").replace("datasets:\n", (
        "datasets:\n"
        "  etc: {path: /etc/passwd, format: text}\n"
        "  up: {path: ../shared/train.jsonl, format: gsm8k}\n"
        "  here: {path: data/x.jsonl, format: gsm8k}\n"
        "  root: {path: ., format: text}\n"
    )).replace("models:\n",
               "models:\n  abs: {path: /models/tiny, tokenizer: {path: /models/tok}}\n")
    monkeypatch.chdir(tmp_path / "project")
    plan = compile_recipe(write(text, "project/r.yaml"))
    return plan, render_plan(plan)


def test_docker_never_mounts_over_the_image_outside_its_mount_roots(
    write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/etc/passwd`` mounted at ``/etc/passwd`` would replace the container's own file:
    inputs outside the project go under /recipe-inputs, inside it under /app."""
    _, files = _outside_inputs(write, tmp_path, monkeypatch)
    boxes = _mounts(files["stages/01-sft.sh"])
    assert all(b.startswith(("/app/", "/recipe-inputs/")) or b == "/recipe" for b in boxes), boxes
    assert "/etc/passwd:/recipe-inputs/datasets/etc/passwd:ro" in files["stages/01-sft.sh"]
    assert sorted(b for b in boxes if b.startswith("/recipe-inputs/")) == [
        "/recipe-inputs/datasets/etc/passwd",
        "/recipe-inputs/datasets/root/root",
        "/recipe-inputs/datasets/up/train.jsonl",
        "/recipe-inputs/models/abs.tokenizer/tok",
        "/recipe-inputs/models/abs/tiny",
    ]
    assert "/app/data/x.jsonl" in boxes


def test_docker_stages_read_a_plan_with_the_container_paths(
    write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime reads only the plan: inside the container it must name the mounts."""
    plan, files = _outside_inputs(write, tmp_path, monkeypatch)
    assert json.loads(files["plan.json"])["datasets"]["etc"]["path"] == "/etc/passwd"
    boxed = Plan.from_dict(json.loads(files["docker/plan.json"]))
    assert boxed.datasets["etc"]["path"] == "/recipe-inputs/datasets/etc/passwd"
    assert boxed.datasets["up"]["path"] == "/recipe-inputs/datasets/up/train.jsonl"
    assert boxed.datasets["here"]["path"] == "data/x.jsonl"  # /app/data/x.jsonl from -w /app
    assert boxed.models["abs"] == {**plan.models["abs"], "path": "/recipe-inputs/models/abs/tiny",
                                   "tokenizer": {"path": "/recipe-inputs/models/abs.tokenizer/tok"}}
    assert boxed.stages == plan.stages  # this stage reads no remapped input
    assert boxed.workspace == plan.workspace


def test_container_plan_rewrites_stage_inputs(write, tmp_path: Path, monkeypatch) -> None:
    text = (BASE % "{launcher: docker, docker: {image: img}}").replace(
        "data: math", "data: abs").replace(
        "datasets:\n", "datasets:\n  abs: {path: /srv/train.jsonl, format: gsm8k}\n")
    plan = _plan(write, text, tmp_path, monkeypatch)
    boxed = Plan.from_dict(json.loads(render_plan(plan)["docker/plan.json"]))
    assert plan.stage("sft").inputs[1].path == "/srv/train.jsonl"
    assert boxed.stage("sft").inputs[1].path == "/recipe-inputs/datasets/abs/train.jsonl"


def test_no_container_plan_when_every_input_is_inside(write, tmp_path: Path,
                                                      monkeypatch) -> None:
    plan = _plan(write, BASE % "{launcher: docker, docker: {image: img}}", tmp_path, monkeypatch)
    assert "docker/plan.json" not in render_plan(plan)


def test_docker_stage_script_passes_the_container_plan(write, tmp_path: Path,
                                                       monkeypatch) -> None:
    _, files = _outside_inputs(write, tmp_path, monkeypatch)
    assert "-m llm_recipe.runtime /recipe/docker/plan.json sft" in " ".join(
        files["stages/01-sft.sh"].split())


def test_a_stale_container_plan_is_removed(write, tmp_path: Path, monkeypatch) -> None:
    from llm_recipe.compiler.render import write_rendered

    plan, _ = _outside_inputs(write, tmp_path, monkeypatch)
    out = tmp_path / "launch"
    write_rendered(plan, out)
    assert (out / "docker" / "plan.json").is_file()
    inside = _plan(write, BASE % "{launcher: docker, docker: {image: img}}", tmp_path,
                   monkeypatch)
    write_rendered(inside, out)
    assert not (out / "docker" / "plan.json").exists()
