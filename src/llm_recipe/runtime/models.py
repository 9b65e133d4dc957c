"""Models and tokenizers from a plan's ``models:`` entries: hub, local path or init.

transformers is imported inside the functions, so importing this module is cheap.
The init path builds the transformers config from the same
:class:`~llm_recipe.compiler.architectures.Architecture` the plan's estimate used,
so the parameter count the plan printed is the one that trains.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llm_recipe.compiler.architectures import Architecture, from_init
from llm_recipe.errors import RecipeError

SPECIAL_TOKENS = {"pad": "<|pad|>", "eos": "<|endoftext|>", "bos": "<|startoftext|>"}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""A minimal chat template with generation markers, so trl can mask non-assistant turns."""


class HubUnreachableError(RecipeError):
    """A hub model or dataset is needed, is not cached, and the hub cannot be reached."""


def hub_error(kind: str, name: str, hub_id: str, revision: str | None, cause: Exception):
    at = f" at revision {revision}" if revision else ""
    return HubUnreachableError(
        f"cannot load {kind} '{name}' ({hub_id}{at}) from the Hugging Face Hub: "
        f"no network is reachable from here and it is not in the local cache",
        expected="a reachable hub, a cached copy, or a local path",
        hint=f"download it where there is network (huggingface-cli download {hub_id}) and "
        f"point `path:` at it, or use the recipe's tiny profile; ({type(cause).__name__})",
    )


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connect; cached for the process.

    Checked once up front so an offline machine fails (or loads from the cache) at
    once instead of sitting through the hub client's retries.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def prepare_hub_environment() -> None:
    """Put the Hugging Face clients in offline mode when the hub is unreachable.

    Call before loading anything: cached models and datasets still load, missing ones
    fail at once with :func:`hub_error` instead of after minutes of retries.
    """
    if hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2,
                    chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, with pad/eos/bos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"], bos_token=SPECIAL_TOKENS["bos"])
    fast.chat_template = chat_template or CHAT_TEMPLATE
    return fast


def hf_config(arch: Architecture, tokenizer: Any | None = None) -> Any:
    """The transformers config of an architecture: an ``init`` one, or one the plan knows
    (``recipe plan --trace`` builds hub models such as Mistral-7B from it)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    special: dict[str, Any] = {}
    if tokenizer is not None:
        special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "bos_token_id": tokenizer.bos_token_id}
    if arch.family == "gpt2":
        return GPT2Config(vocab_size=arch.vocab_size, n_positions=arch.max_position,
                          n_embd=arch.hidden_size, n_layer=arch.num_layers, n_head=arch.num_heads,
                          n_inner=arch.intermediate_size, tie_word_embeddings=True, **special)
    config_class = {"llama": LlamaConfig, "mistral": MistralConfig,
                    "qwen2": Qwen2Config}[arch.family]
    return config_class(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
                        num_key_value_heads=arch.num_kv_heads,
                        intermediate_size=arch.intermediate_size,
                        max_position_embeddings=arch.max_position,
                        tie_word_embeddings=arch.tie_embeddings, **special)


def init_model(init: dict[str, Any], tokenizer: Any, seed: int, *, dtype: Any = None,
               attn_implementation: str | None = None) -> Any:
    """Random weights for an ``init`` block, reproducible from ``seed``.

    The weights are drawn in fp32 (the same numbers whatever the precision) and then cast
    to ``dtype`` when one is given (bf16-true trains them in bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    arch = from_init(init, len(tokenizer))
    torch.manual_seed(seed)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(hf_config(arch, tokenizer), **extra)
    return model if dtype is None else model.to(dtype)


def load_pretrained(name: str, entry: dict[str, Any], base_dir: Path, **kwargs: Any) -> Any:
    """``from_pretrained`` for a hub or path entry, with a clear error when offline."""
    prepare_hub_environment()
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, "model", name, entry, base_dir, **kwargs)


def load_tokenizer(name: str, entry: dict[str, Any], base_dir: Path) -> Any:
    prepare_hub_environment()
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, "tokenizer", name, entry, base_dir)


def _from_pretrained(cls: Any, kind: str, name: str, entry: dict[str, Any], base_dir: Path,
                     **kwargs: Any) -> Any:
    if "path" in entry:
        path = base_dir / entry["path"]
        if not path.exists():
            raise RecipeError(f"{kind} '{name}': {entry['path']} does not exist",
                              hint="build it with an earlier stage or fix the path")
        return cls.from_pretrained(str(path), **kwargs)
    hub_id, revision = entry["hub"], entry.get("revision")
    try:
        return cls.from_pretrained(hub_id, revision=revision,
                                   trust_remote_code=entry.get("trust_remote_code", False),
                                   **kwargs)
    except OSError as exc:
        text = str(exc).lower()
        if any(s in text for s in ("connect", "offline", "resolve", "network", "couldn't find")):
            raise hub_error(kind, name, hub_id, revision, exc) from exc
        raise
