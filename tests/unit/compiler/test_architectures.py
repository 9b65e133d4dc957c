"""Architecture table, parameter counts, LoRA counts and lookups (no torch needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_recipe.compiler.architectures import (
    HUB_ALIASES,
    INIT_SIZES,
    KNOWN,
    Architecture,
    from_hf_config,
    from_init,
    lookup,
)

# Published totals (sum of p.numel() of the transformers models).
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "mistral-7b": 7_241_732_096,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "qwen2-0.5b": 494_032_768,
    "qwen2-1.5b": 1_543_714_304,
    "qwen2-7b": 7_615_616_512,
}


def tiny_llama(**over: object) -> Architecture:
    """h=64, 2 layers, 4 heads (head_dim 16), 2 kv heads (kv_dim 32), MLP 256, vocab 1000."""
    fields = dict(family="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=256, vocab_size=1000, max_position=128,
                  tie_embeddings=False, qkv_bias=False, name="tiny")
    fields.update(over)
    return Architecture(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "total"), sorted(PUBLISHED.items()))
def test_known_totals_match_published_counts(name: str, total: int) -> None:
    assert KNOWN[name].parameter_count() == total


def test_table_is_complete_and_named_by_key() -> None:
    assert set(KNOWN) == set(PUBLISHED)
    for name, arch in KNOWN.items():
        assert arch.name == name
        assert arch.problems() == []


def test_tiny_llama_count_by_hand() -> None:
    a = tiny_llama()
    embed = 1000 * 64
    block = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256 + 2 * 64
    assert a.parameter_count() == embed + 2 * block + 64 + embed
    assert tiny_llama(tie_embeddings=True).parameter_count() == embed + 2 * block + 64


def test_qwen2_adds_qkv_biases() -> None:
    plain = tiny_llama()
    biased = tiny_llama(family="qwen2", qkv_bias=True)
    assert biased.parameter_count() - plain.parameter_count() == 2 * (64 + 32 + 32)


def test_linear_count_excludes_head_embeddings_and_norms() -> None:
    a = tiny_llama()
    per_block = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 256 * 3
    assert a.linear_parameter_count() == 2 * per_block
    gpt2 = KNOWN["gpt2"]
    assert gpt2.linear_parameter_count() == 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072)


def test_lora_counts_by_hand() -> None:
    a = tiny_llama()
    r = 8
    q, k, v, o = r * (64 + 64), r * (64 + 32), r * (64 + 32), r * (64 + 64)
    mlp = 3 * r * (64 + 256)
    assert a.lora_parameter_count(r, ["q_proj", "v_proj"]) == 2 * (q + v)
    assert a.lora_parameter_count(r, "all-linear") == 2 * (q + k + v + o + mlp)
    assert a.lora_parameter_count(r, ["self_attn.k_proj"]) == 2 * k
    assert a.lora_parameter_count(r, ["lm_head"]) == r * (64 + 1000)
    assert a.lora_parameter_count(r, ["nothing_like_this"]) == 0


def test_lora_counts_match_peft_reports() -> None:
    # peft's print_trainable_parameters for these well-known setups
    assert KNOWN["gpt2"].lora_parameter_count(8, ["c_attn"]) == 294_912
    assert KNOWN["llama-2-7b"].lora_parameter_count(8, ["q_proj", "v_proj"]) == 4_194_304
    assert KNOWN["mistral-7b"].lora_parameter_count(16, "all-linear") == 41_943_040


def test_gpt2_c_proj_matches_both_projections_unless_qualified() -> None:
    g = KNOWN["gpt2"]
    both = g.lora_parameter_count(4, ["c_proj"])
    attn_only = g.lora_parameter_count(4, ["attn.c_proj"])
    mlp_only = g.lora_parameter_count(4, ["mlp.c_proj"])
    assert attn_only == 12 * 4 * (768 + 768)
    assert mlp_only == 12 * 4 * (3072 + 768)
    assert both == attn_only + mlp_only


def test_patch_count() -> None:
    g = KNOWN["gpt2"]
    per_block = 2 * 8 * 768 + 768 + 1
    assert g.patch_parameter_count(8) == 12 * per_block
    assert g.patch_parameter_count(8, [0, 1, 1]) == 2 * per_block


def test_kv_cache_bytes() -> None:
    m = KNOWN["mistral-7b"]  # 8 kv heads x 128
    assert m.kv_cache_bytes(1, 1, 2) == 2 * 32 * 8 * 128 * 2


def test_to_dict_is_json() -> None:
    d = KNOWN["qwen2-0.5b"].to_dict()
    assert json.loads(json.dumps(d))["parameters"] == 494_032_768
    assert d["head_dim"] == 64 and d["num_kv_heads"] == 2


def test_hub_aliases_point_into_table() -> None:
    assert all(v in KNOWN for v in HUB_ALIASES.values())
    assert all(k == k.lower() for k in HUB_ALIASES)
    assert HUB_ALIASES["gair/abel-7b-002"] == "mistral-7b"
    assert HUB_ALIASES["qwen/qwen2.5-0.5b-instruct"] == "qwen2-0.5b"
    assert HUB_ALIASES["meta-llama/llama-3.1-8b"] == "llama-3-8b"


def test_from_init_defaults_to_tiny() -> None:
    a = from_init({"architecture": "llama"}, None)
    tiny = INIT_SIZES["tiny"]
    assert (a.hidden_size, a.num_layers, a.num_heads, a.intermediate_size, a.max_position) == (
        tiny["hidden_size"], tiny["layers"], tiny["heads"], tiny["intermediate_size"],
        tiny["context_length"])
    assert a.num_kv_heads == a.num_heads
    assert a.vocab_size == 1024
    assert a.name == "init-llama-tiny"
    assert not a.tie_embeddings and not a.qkv_bias


def test_from_init_overrides_and_vocab_precedence() -> None:
    init = {"architecture": "qwen2", "size": "small", "hidden_size": 128, "kv_heads": 2}
    a = from_init(init, 5000)
    assert a.hidden_size == 128 and a.num_layers == 4 and a.num_kv_heads == 2
    assert a.vocab_size == 5000 and a.qkv_bias and a.name == "init-qwen2-small-custom"
    assert from_init({**init, "vocab_size": 300}, 5000).vocab_size == 300
    g = from_init({"architecture": "gpt2", "size": "nano"}, None)
    assert g.tie_embeddings and g.qkv_bias and g.hidden_size == 32


def test_seed_tiny_profile_llama_by_hand() -> None:
    a = from_init({"architecture": "llama", "hidden_size": 64, "layers": 2}, None)
    block = 4 * 64 * 64 + 3 * 64 * 256 + 2 * 64
    assert a.parameter_count() == 1024 * 64 * 2 + 2 * block + 64


def test_from_init_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match=r"init\.architecture"):
        from_init({"architecture": "mamba"}, None)


def test_problems_report_bad_shapes() -> None:
    assert tiny_llama(num_heads=3).problems()
    assert tiny_llama(num_kv_heads=3).problems()


def test_from_hf_config() -> None:
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
            "n_positions": 1024, "vocab_size": 50257}
    assert from_hf_config(gpt2, "x").parameter_count() == 124_439_808
    mistral = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
               "vocab_size": 32000, "max_position_embeddings": 32768,
               "tie_word_embeddings": False}
    a = from_hf_config(mistral, "abel")
    assert a is not None and a.name == "abel" and a.parameter_count() == 7_241_732_096
    assert from_hf_config({"model_type": "t5"}, "x") is None
    assert from_hf_config({"model_type": "llama"}, "broken") is None


def test_lookup_order(tmp_path: Path) -> None:
    assert lookup({"hub": "someone/private", "architecture": "Mistral-7B"}, tmp_path) is KNOWN[
        "mistral-7b"]
    assert lookup({"hub": "GAIR/Abel-7B-002"}, tmp_path) is KNOWN["mistral-7b"]
    assert lookup({"hub": "OPENAI-COMMUNITY/GPT2"}, tmp_path) is KNOWN["gpt2"]
    assert lookup({"init": {"architecture": "gpt2"}}, tmp_path).family == "gpt2"
    assert lookup({"hub": "someone/private"}, tmp_path) is None
    assert lookup({"path": "missing"}, tmp_path) is None


def test_lookup_reads_local_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "ckpt" / "qwen"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
        "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True}))
    a = lookup({"path": "ckpt/qwen"}, tmp_path)
    assert a is not None and a.name == "qwen"
    assert a.parameter_count() == 494_032_768
    (model_dir / "config.json").write_text("{not json")
    assert lookup({"path": "ckpt/qwen"}, tmp_path) is None


def test_modules_do_not_import_torch() -> None:
    code = ("import sys, llm_recipe.compiler.architectures, llm_recipe.compiler.estimate;"
            "bad = {'torch', 'transformers', 'peft', 'trl'} & set(sys.modules);"
            "sys.exit(sorted(bad) or 0)")
    src = Path(__file__).resolve().parents[3] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(src)}, check=False)
    assert result.returncode == 0, result.stderr
