"""``recipe plan --trace``: one training step traced on fake tensors (runtime/memtrace/).

The fake trace is only worth something if it measures what the same step measures on
real tensors, so the first tests run both on tiny models and compare every component;
the real side is built the runtime's way (initialised, then cast), the fake side without
init kernels, so the build paths are checked against each other too. Then a 7B step
must trace with little real memory, LoRA must keep its fp32 adapters, the CLI must
print and refuse as documented, and the plan's analytical estimate must agree with the
trace on small configurations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

from llm_recipe import cli  # noqa: E402
from llm_recipe.compiler import compile_recipe  # noqa: E402
from llm_recipe.compiler.architectures import from_init  # noqa: E402
from llm_recipe.runtime.memtrace import trace_stage  # noqa: E402
from llm_recipe.runtime.memtrace.tracker import TraceSpec, trace_step  # noqa: E402

KEYS = ("parameters", "weight_copies", "gradients", "optimizer", "activations",
        "activation_working_set", "backward_temporaries", "step_temporaries", "peak")
LORA = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}
LLAMA = from_init({"architecture": "llama", "size": "tiny"}, 1024)
GPT2 = from_init({"architecture": "gpt2", "size": "tiny"}, 1024)


def _close(fake: int, real: int) -> bool:
    """Equal within 1%, or within 1 KiB (a rotary buffer's dtype differs by a few bytes
    between a model made in bf16 and one cast to it)."""
    return abs(fake - real) <= max(0.01 * abs(real), 1024)


@pytest.mark.parametrize(("arch", "precision", "checkpointing", "micro_batches"), [
    (LLAMA, "fp32", False, 1),
    (LLAMA, "bf16-true", True, 1),
    (LLAMA, "bf16-mixed", False, 1),
    (LLAMA, "bf16-true", False, 2),
    (GPT2, "fp32", False, 1),
    (GPT2, "bf16-true", False, 1),
], ids=["llama-fp32", "llama-bf16-true-ckpt", "llama-bf16-mixed", "llama-accumulate",
        "gpt2-fp32", "gpt2-bf16-true"])
def test_fake_trace_equals_the_real_step(one_thread, arch, precision, checkpointing,
                                         micro_batches):
    spec = TraceSpec(arch, precision, batch=2, seq=64, checkpointing=checkpointing,
                     micro_batches=micro_batches)
    fake, real = trace_step(spec, fake=True), trace_step(spec, fake=False)
    for key in KEYS:
        assert _close(getattr(fake, key), getattr(real, key)), (key, fake, real)
    assert fake.peak_phase == real.peak_phase
    assert fake.parameters > 0 and fake.gradients > 0 and fake.activations > 0
    if precision == "bf16-mixed":
        assert fake.weight_copies > 0  # autocast's bf16 copies, counted apart
    else:
        assert fake.weight_copies == 0
    if micro_batches > 1:  # the second forward and backward run beside every gradient
        alone = trace_step(TraceSpec(arch, precision, batch=2, seq=64))
        assert fake.peak >= alone.peak + fake.gradients // 2


def test_gpt2_trace_keeps_the_head_tied(one_thread):
    """no_init_weights also skips weight tying: an untied head would add vocab x hidden."""
    measured = trace_step(TraceSpec(GPT2, "fp32", batch=1, seq=32))
    buffers = GPT2.num_layers * GPT2.max_position ** 2  # causal-mask buffers, bool
    assert measured.parameters <= 4 * GPT2.parameter_count() + buffers + 1024


BIG = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from llm_recipe.compiler.architectures import KNOWN
    from llm_recipe.runtime.memtrace.tracker import TraceSpec, trace_step
    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = TraceSpec(KNOWN["llama-2-7b"], "bf16-true", batch=1, seq=512)
    trace_step(TraceSpec(KNOWN["gpt2"], "bf16-true", batch=1, seq=16))  # imports, warm
    before, start = rss_mb(), time.perf_counter()
    measured = trace_step(spec)
    print(json.dumps({"rss_growth_mb": rss_mb() - before, "seconds": time.perf_counter() - start,
                      "n": KNOWN["llama-2-7b"].parameter_count(), **measured.to_dict()}))
""")


def test_a_7b_step_traces_with_little_real_memory():
    """Llama-2-7B, full fine-tune in bf16-true: 63 GiB traced, well under 2 GB of RAM."""
    result = subprocess.run([sys.executable, "-c", BIG], capture_output=True, text=True,
                            timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    n = out["n"]
    assert out["rss_growth_mb"] < 2048, out
    assert out["seconds"] < 60, out
    assert abs(out["parameters"] - 2 * n) < 1e6  # bf16 weights (+ rotary buffers)
    assert out["gradients"] == 2 * n
    assert abs(out["optimizer"] - 4 * n) < 1e6  # two bf16 moments (+ step counters)
    assert out["step_temporaries"] == 2 * n  # foreach AdamW: one parameter-sized buffer
    assert out["peak_phase"] == "optimizer step"
    assert out["peak"] >= 10 * n  # weights, gradients, moments and the step's buffer


def test_lora_trace_keeps_a_frozen_base_and_fp32_adapters(one_thread):
    arch = from_init({"architecture": "llama", "size": "small"}, 1024)
    spec = TraceSpec(arch, "bf16-true", batch=2, seq=64, adapter=LORA)
    fake, real = trace_step(spec, fake=True), trace_step(spec, fake=False)
    for key in KEYS:
        assert _close(getattr(fake, key), getattr(real, key)), (key, fake, real)
    lora = arch.lora_parameter_count(LORA["r"], "all-linear")
    assert fake.gradients == 4 * lora  # only the adapters train, in fp32
    assert abs(fake.optimizer - 8 * lora) < 4096  # two fp32 moments (+ step counters)
    assert abs(fake.parameters - (2 * arch.parameter_count() + 4 * lora)) < 4096


def test_continual_patch_and_reward_model_trace(one_thread):
    patch = trace_step(TraceSpec(GPT2, "bf16-true", batch=2, seq=64,
                                 patch={"rank": 4, "layers": "all"}, dropout=False))
    per_block = 2 * 4 * GPT2.hidden_size + GPT2.hidden_size + 2
    assert patch.gradients == 4 * GPT2.num_layers * per_block  # the fp32 patch only
    reward = trace_step(TraceSpec(LLAMA, "bf16-true", batch=4, seq=64, head="classifier",
                                  adapter=LORA))
    assert reward.gradients > 0 and reward.parameters > 0


RECIPE = """\
recipe: 1
name: trace-demo
models:
  base:
    init: {architecture: llama, size: small, vocab_size: 2048}
    tokenizer: {train: {data: math, vocab_size: 2048}}
datasets:
  math: {builtin: arithmetic, format: gsm8k, n: 64}
compute:
  launcher: local
  gpus_per_node: 1
  gpu: {memory_gb: 80}
  precision: bf16-true
  distributed: {activation_checkpointing: false}
stages:
  sft:
    kind: sft
    model: base
    data: math
    train: {max_steps: 10, batch_size: 2, max_seq_len: 128}
  eval:
    kind: eval
    models: [sft]
    data: math
    metrics: [gsm8k_accuracy]
    limit: 8
"""


def test_cli_prints_the_trace_table(one_thread, write, capsys):
    recipe = write(RECIPE)
    assert cli.main(["plan", str(recipe), "--trace", "--only", "sft"]) == 0
    out, err = capsys.readouterr()
    assert "tracing sft: llama" in err and "bf16-true, sdpa, 2x128" in err
    table = out[out.index("trace sft (sft):"):]
    for row in ("weights", "gradients", "optimizer states", "optimizer step temporaries",
                "activations (working set)", "saved for the backward", "backward temporaries",
                "peak / total"):
        assert row in table
    assert "not seen by a trace" in out and "CUDA context" in out
    assert "eval" not in table.split("not seen")[0]  # --only: eval is not listed


def test_cli_lists_stages_it_does_not_trace(one_thread, write, capsys):
    recipe = write(RECIPE)
    assert cli.main(["plan", str(recipe), "--trace", "--only", "eval"]) == 0
    out, _ = capsys.readouterr()
    assert "not traced eval (eval): no training step" in out


def test_cli_trace_json_adds_a_trace_per_stage(one_thread, write, capsys):
    recipe = write(RECIPE)
    assert cli.main(["plan", str(recipe), "--trace", "--json", "--only", "sft"]) == 0
    data = json.loads(capsys.readouterr().out)
    sft, evaluation = data["stages"]
    trace = sft["trace"]
    assert trace["status"] == "traced"
    assert set(trace["traced_gb"]) >= {"weights", "gradients", "optimizer", "activations",
                                       "activation_working_set", "backward_temporaries",
                                       "step_temporaries", "peak"}
    assert trace["measured_bytes"]["peak"] > 0
    assert trace["plan_gb"] == sft["estimate"]["memory_gb"]
    assert "trace" not in evaluation


@pytest.mark.parametrize("argv", [
    ["--trace", "--only", "nope"],
    ["--only", "sft"],
])
def test_cli_refuses_a_wrong_only(write, capsys, argv):
    recipe = write(RECIPE)
    assert cli.main(["plan", str(recipe), *argv]) == 2
    err = capsys.readouterr().err
    assert "--only" in err
    if "nope" in argv:
        assert "sft, eval" in err  # the known stages are named


COMPARED = {
    "full-bf16-true": [],
    "full-fp32": ["compute.precision=fp32"],
    "full-bf16-mixed": ["compute.precision=bf16-mixed"],
    "full-bf16-true-checkpointing": ["compute.distributed.activation_checkpointing=true"],
    "lora-bf16-true": ["stages.sft.adapter={type: lora, r: 16}"],
}


@pytest.mark.parametrize("overrides", COMPARED.values(), ids=COMPARED.keys())
def test_analytical_estimate_agrees_with_the_trace(one_thread, write, overrides):
    """The plan's memory_gb within 15% of the trace, per component (a 110M llama, 4x512).

    weights = parameters + autocast copies; optimizer_step = the optimizer's temporaries;
    activations = the most held by activations and backward temporaries at once (the
    plan's figure is the backward's working set); total = the traced peak (+ the plan's
    extra). The plan rounds to 0.01 GiB, so a
    component within 0.01 GiB of the trace agrees whatever its ratio (LoRA's gradients).
    """
    recipe = write(RECIPE.replace("size: small, vocab_size: 2048",
                                  "size: base, vocab_size: 32000")
                   .replace("batch_size: 2, max_seq_len: 128", "batch_size: 4, max_seq_len: 512"))
    plan = compile_recipe(recipe, overrides=overrides, cwd=recipe.parent)
    trace = trace_stage(plan, plan.stage("sft"), cwd=recipe.parent, raise_errors=True)
    assert trace.status == "traced"
    ratios = {k: v for k, v in trace.ratio.items() if v is not None}
    traced = {**trace.traced_gb, "optimizer_step": trace.traced_gb["step_temporaries"],
              "activations": trace.traced_gb["activation_working_set"],
              "total": trace.traced_gb["peak"] + trace.plan_gb.get("extra", 0.0)}
    off = {k: v for k, v in ratios.items()
           if not 0.85 <= v <= 1.15 and abs(traced[k] - trace.plan_gb[k]) > 0.01}
    assert not off, f"traced/plan outside 15%: {off} (all: {ratios}; traced " \
                    f"{trace.traced_gb}, plan {trace.plan_gb})"


def test_plain_plan_does_not_import_the_tracer():
    """`recipe plan` without --trace stays torch-free (tests/test_torch_free.py checks the
    compiler; this checks the CLI's plan path does not reach runtime/memtrace)."""
    script = ("import sys; from llm_recipe import cli; "
              "cli.main(['plan', sys.argv[1], '--json']); "
              "print([m for m in sys.modules if m.startswith(('torch', "
              "'llm_recipe.runtime.memtrace'))])")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    result = subprocess.run([sys.executable, "-c", script, str(recipe)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
