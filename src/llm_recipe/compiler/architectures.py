"""Model shapes the compiler can reason about without importing torch.

The plan estimates memory, FLOPs and adapter sizes before anything is downloaded, so it
needs each model's shape: the built-in table ``KNOWN`` for common hub models, a
transformers ``config.json`` for local checkpoints, and the ``init`` presets for models
built from scratch. The runtime builds the real Hugging Face config for ``init`` models
from :func:`from_init`'s output, so the field names here are a contract:

========================  ==========================  =============================
Architecture field        GPT2Config                  Llama/Mistral/Qwen2Config
========================  ==========================  =============================
hidden_size               n_embd                      hidden_size
num_layers                n_layer                     num_hidden_layers
num_heads                 n_head                      num_attention_heads
num_kv_heads              (= num_heads)               num_key_value_heads
intermediate_size         n_inner                     intermediate_size
vocab_size                vocab_size                  vocab_size
max_position              n_positions                 max_position_embeddings
tie_embeddings            (always tied)               tie_word_embeddings
qkv_bias                  (always biased)             attention_bias (llama only)
========================  ==========================  =============================

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass
from typing import Any

FAMILIES = ("gpt2", "llama", "mistral", "qwen2")


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer, enough to count its parameters."""

    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position: int
    tie_embeddings: bool
    qkv_bias: bool
    name: str

    @property
    def head_dim(self) -> int:
        """Width of one attention head (hidden_size / num_heads)."""
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Output width of k_proj and v_proj (grouped-query attention shrinks it)."""
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(module path, in_features, out_features) of the Linear layers of ONE block.

        The paths end with the module names peft matches in ``target_modules``
        (GPT-2 uses transformers' Conv1D, which peft and bitsandbytes treat as Linear).
        """
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        if self.family == "gpt2":
            return [
                ("attn.c_attn", h, 3 * h),
                ("attn.c_proj", h, h),
                ("mlp.c_fc", h, i),
                ("mlp.c_proj", i, h),
            ]
        return [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ]

    def block_parameter_count(self) -> int:
        """Parameters of one transformer block (weights, biases and norms)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        if self.family == "gpt2":
            ln = 2 * h  # LayerNorm: weight + bias
            attn = (3 * h * h + 3 * h) + (h * h + h)
            mlp = (h * i + i) + (i * h + h)
            return 2 * ln + attn + mlp
        attn = 2 * h * h + 2 * h * kv
        if self.qkv_bias:
            attn += h + 2 * kv
        return attn + 3 * h * i + 2 * h  # gated MLP + two RMSNorms

    def parameter_count(self) -> int:
        """Exact parameter count, as ``sum(p.numel() for p in model.parameters())``."""
        h = self.hidden_size
        embed = self.vocab_size * h
        blocks = self.num_layers * self.block_parameter_count()
        if self.family == "gpt2":
            return embed + self.max_position * h + blocks + 2 * h  # wpe, ln_f; head tied
        head = 0 if self.tie_embeddings else self.vocab_size * h
        return embed + blocks + h + head

    def root_parameter_count(self) -> int:
        """Parameters outside the blocks: embeddings, final norm and an untied head.

        With FSDP's transformer-layer auto-wrap these form the root unit, which is
        all-gathered whole (and, in FSDP1, kept gathered from the forward to the backward).
        """
        return self.parameter_count() - self.num_layers * self.block_parameter_count()

    def _biased(self, path: str) -> bool:
        if self.family == "gpt2":
            return True
        return self.qkv_bias and path.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj")

    def largest_linear_parameter_count(self) -> int:
        """The weight of the largest block Linear (what QLoRA dequantises at once)."""
        return max(fan_in * fan_out for _, fan_in, fan_out in self.linear_shapes())

    def largest_layer_parameter_count(self) -> int:
        """The most parameters one module holds itself, as DeepSpeed counts them.

        ``deepspeed.runtime.zero.stage3.model_to_params``: the max over ``model.modules()``
        of ``sum(p.numel() for p in m.parameters(recurse=False))``, so a Linear's weight and
        bias together, and a tied head counted again as the head's own. For large
        vocabularies this is the embedding (vocab x hidden), else the widest MLP Linear.
        """
        h = self.hidden_size
        sizes = [self.vocab_size * h]
        if self.family == "gpt2":
            sizes.append(self.max_position * h)  # wpe
        sizes += [fan_in * fan_out + (fan_out if self._biased(path) else 0)
                  for path, fan_in, fan_out in self.linear_shapes()]
        return max(sizes)

    def matmul_parameter_count(self) -> int:
        """Weights a token is multiplied through: the blocks' Linear layers and the head.

        Embedding lookups are not matmuls: they cost no FLOPs, and autocast makes no
        half-precision copy of them (it does of every Linear, the head included, tied or
        not). Biases and norms are left out (negligible).
        """
        return self.linear_parameter_count() + self.vocab_size * self.hidden_size

    def linear_parameter_count(self) -> int:
        """Weights of the blocks' Linear layers (no biases, no lm_head).

        These are what LoRA 'all-linear' adapts and what 4-bit quantisation packs;
        embeddings, norms, biases and the head stay in 16-bit.
        """
        per_block = sum(fan_in * fan_out for _, fan_in, fan_out in self.linear_shapes())
        return self.num_layers * per_block

    def lora_parameter_count(self, r: int, target_modules: str | list[str]) -> int:
        """Trainable LoRA parameters: r * (in + out) for every targeted Linear.

        ``target_modules`` is 'all-linear' (every block Linear, not lm_head, as peft does)
        or module names matched like peft: a name matches a module path equal to it or
        ending with '.' + name, so 'c_proj' hits both GPT-2 projections and 'mlp.c_proj'
        only one. 'lm_head' adapts the output head. Unknown names count nothing.
        """
        if target_modules == "all-linear":
            names: list[str] | None = None
        elif isinstance(target_modules, str):
            names = [target_modules]
        else:
            names = list(target_modules)
        total = 0
        for path, fan_in, fan_out in self.linear_shapes():
            if names is None or any(_matches(path, n) for n in names):
                total += r * (fan_in + fan_out)
        total *= self.num_layers
        if names is not None and "lm_head" in names:
            total += r * (self.hidden_size + self.vocab_size)
        return total

    def patch_parameter_count(self, rank: int, layers: str | list[int] = "all") -> int:
        """Continual-training patch: per patched block a rank-r sidecar (2*r*h) + gate (h+1)."""
        n = self.num_layers if layers == "all" else len({i for i in layers if i < self.num_layers})
        return n * (2 * rank * self.hidden_size + self.hidden_size + 1)

    def kv_cache_bytes(self, sequences: int, length: int, bytes_per_value: float) -> float:
        """KV cache of generation: 2 (k, v) * layers * kv_dim * tokens * sequences * bytes."""
        return 2.0 * self.num_layers * self.kv_dim * length * sequences * bytes_per_value

    def problems(self) -> list[str]:
        """Shape errors the runtime would hit when building this model."""
        out = []
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            out.append(f"hidden_size {self.hidden_size} is not divisible by heads {self.num_heads}")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            out.append(f"heads {self.num_heads} is not divisible by kv_heads {self.num_kv_heads}")
        if self.family == "gpt2" and self.num_kv_heads != self.num_heads:
            out.append("gpt2 has no grouped-query attention: kv_heads must equal heads")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields plus the derived head_dim and parameter count."""
        d = asdict(self)
        d["head_dim"] = self.head_dim
        d["parameters"] = self.parameter_count()
        return d


def _matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _gpt2(name: str, h: int, layers: int, heads: int) -> Architecture:
    return Architecture("gpt2", h, layers, heads, heads, 4 * h, 50257, 1024, True, True, name)


def _decoder(
    family: str, name: str, h: int, layers: int, heads: int, kv: int, inter: int, vocab: int,
    max_pos: int, tie: bool = False,
) -> Architecture:
    return Architecture(family, h, layers, heads, kv, inter, vocab, max_pos, tie,
                        family == "qwen2", name)


KNOWN: dict[str, Architecture] = {
    a.name: a
    for a in (
        _gpt2("gpt2", 768, 12, 12),  # 124,439,808
        _gpt2("gpt2-medium", 1024, 24, 16),
        _gpt2("gpt2-large", 1280, 36, 20),
        _gpt2("gpt2-xl", 1600, 48, 25),
        _decoder("llama", "llama-2-7b", 4096, 32, 32, 32, 11008, 32000, 4096),  # 6,738,415,616
        _decoder("llama", "llama-2-13b", 5120, 40, 40, 40, 13824, 32000, 4096),
        _decoder("llama", "llama-2-70b", 8192, 80, 64, 8, 28672, 32000, 4096),
        _decoder("mistral", "mistral-7b", 4096, 32, 32, 8, 14336, 32000, 32768),  # 7,241,732,096
        _decoder("llama", "llama-3-8b", 4096, 32, 32, 8, 14336, 128256, 8192),  # 8,030,261,248
        _decoder("llama", "llama-3-70b", 8192, 80, 64, 8, 28672, 128256, 8192),
        _decoder("qwen2", "qwen2-0.5b", 896, 24, 14, 2, 4864, 151936, 131072, tie=True),
        _decoder("qwen2", "qwen2-1.5b", 1536, 28, 12, 2, 8960, 151936, 131072, tie=True),
        _decoder("qwen2", "qwen2-7b", 3584, 28, 28, 4, 18944, 152064, 131072),
    )
}

_ALIASES: dict[str, str] = {
    "gpt2": "gpt2",
    "openai-community/gpt2": "gpt2",
    "openai-community/gpt2-medium": "gpt2-medium",
    "openai-community/gpt2-large": "gpt2-large",
    "openai-community/gpt2-xl": "gpt2-xl",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "meta-llama/Llama-2-13b-chat-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "meta-llama/Llama-2-70b-chat-hf": "llama-2-70b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistral-7b",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-7b",
    "GAIR/Abel-7B-002": "mistral-7b",  # fine-tuned from Mistral-7B-v0.1
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "meta-llama/Llama-3.1-8B": "llama-3-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "meta-llama/Meta-Llama-3-70B-Instruct": "llama-3-70b",
    "Qwen/Qwen2-0.5B": "qwen2-0.5b",
    "Qwen/Qwen2-0.5B-Instruct": "qwen2-0.5b",
    "Qwen/Qwen2.5-0.5B": "qwen2-0.5b",  # same shape as Qwen2-0.5B
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2-0.5b",
    "Qwen/Qwen2-1.5B": "qwen2-1.5b",
    "Qwen/Qwen2-1.5B-Instruct": "qwen2-1.5b",
    "Qwen/Qwen2-7B": "qwen2-7b",
    "Qwen/Qwen2-7B-Instruct": "qwen2-7b",
}

# Keys are lower case: look up with ``HUB_ALIASES.get(hub_id.lower())``.
HUB_ALIASES: dict[str, str] = {k.lower(): v for k, v in _ALIASES.items()}

# Presets for ``init.size``; keys are the schema's init field names, so explicit init
# fields override them one for one.
INIT_SIZES: dict[str, dict[str, int]] = {
    "nano": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64,
             "context_length": 128},
    "tiny": {"hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 256,
             "context_length": 256},
    "small": {"hidden_size": 256, "layers": 4, "heads": 4, "intermediate_size": 1024,
              "context_length": 512},
    "base": {"hidden_size": 768, "layers": 12, "heads": 12, "intermediate_size": 3072,
             "context_length": 1024},
}

DEFAULT_INIT_SIZE = "tiny"
DEFAULT_INIT_VOCAB = 1024


def from_init(init: dict[str, Any], vocab_size: int | None) -> Architecture:
    """The architecture a recipe's ``init:`` block builds (random weights).

    ``size`` picks a preset (default 'tiny') and explicit fields override it;
    ``kv_heads`` defaults to ``heads``; the vocabulary comes from ``init.vocab_size``,
    else ``vocab_size`` (the tokenizer's), else 1024. Embedding tying and attention bias
    follow the transformers config defaults of each family (gpt2: tied, biased; llama:
    untied, no bias; qwen2: untied, q/k/v bias), so the runtime can pass them through.
    The name is 'init-<family>-<size>', with '-custom' when a field was overridden.
    """
    family = init["architecture"]
    if family not in ("gpt2", "llama", "qwen2"):
        raise ValueError(f"init.architecture must be gpt2, llama or qwen2, not {family!r}")
    size = init.get("size") or DEFAULT_INIT_SIZE
    if size not in INIT_SIZES:
        raise ValueError(f"init.size must be one of {', '.join(INIT_SIZES)}, not {size!r}")
    shape = dict(INIT_SIZES[size])
    overridden = any(k in init for k in (*shape, "kv_heads"))
    shape.update({k: init[k] for k in INIT_SIZES[size] if k in init})
    heads = shape["heads"]
    vocab = init.get("vocab_size") or vocab_size or DEFAULT_INIT_VOCAB
    return Architecture(
        family=family,
        hidden_size=shape["hidden_size"],
        num_layers=shape["layers"],
        num_heads=heads,
        num_kv_heads=init.get("kv_heads", heads),
        intermediate_size=shape["intermediate_size"],
        vocab_size=vocab,
        max_position=shape["context_length"],
        tie_embeddings=family == "gpt2",
        qkv_bias=family in ("gpt2", "qwen2"),
        name=f"init-{family}-{size}" + ("-custom" if overridden else ""),
    )


def from_hf_config(config: dict[str, Any], name: str) -> Architecture | None:
    """Read a transformers ``config.json`` dict; None for an unknown model_type or shape."""
    family = config.get("model_type")
    try:
        if family == "gpt2":
            h = int(config["n_embd"])
            heads = int(config["n_head"])
            return Architecture(
                "gpt2", h, int(config["n_layer"]), heads, heads,
                int(config.get("n_inner") or 4 * h), int(config["vocab_size"]),
                int(config.get("n_positions") or config.get("n_ctx") or 1024), True, True, name,
            )
        if family in ("llama", "mistral", "qwen2"):
            heads = int(config["num_attention_heads"])
            return Architecture(
                family,
                int(config["hidden_size"]),
                int(config["num_hidden_layers"]),
                heads,
                int(config.get("num_key_value_heads") or heads),
                int(config["intermediate_size"]),
                int(config["vocab_size"]),
                int(config.get("max_position_embeddings") or 2048),
                bool(config.get("tie_word_embeddings", False)),
                family == "qwen2" or bool(config.get("attention_bias", False)),
                name,
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def lookup(model: dict[str, Any], base_dir: pathlib.Path) -> Architecture | None:
    """The architecture of a recipe ``models:`` entry, or None when it cannot be known.

    Order: an explicit ``architecture`` name from ``KNOWN``; ``init`` (vocabulary from
    ``init.vocab_size``, else the size of the tokenizer it trains, else 1024); ``hub`` through
    ``HUB_ALIASES``; ``path`` through ``<base_dir>/<path>/config.json`` when it exists.
    Never touches the network.
    """
    explicit = model.get("architecture")
    if isinstance(explicit, str) and explicit.lower() in KNOWN:
        return KNOWN[explicit.lower()]
    if isinstance(model.get("init"), dict):
        trained = (model.get("tokenizer") or {}).get("train") or {}
        return from_init(model["init"], trained.get("vocab_size"))
    hub = model.get("hub")
    if isinstance(hub, str):
        alias = HUB_ALIASES.get(hub.lower())
        if alias:
            return KNOWN[alias]
    path = model.get("path")
    if isinstance(path, str):
        config_file = pathlib.Path(base_dir) / path / "config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if isinstance(config, dict):
                return from_hf_config(config, pathlib.Path(path).name or path)
    return None
