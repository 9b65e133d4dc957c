"""A model's ``tokenizer:`` settings applied at run time: chat template, special tokens.

``chat_template`` installs a named template from :mod:`llm_recipe.compiler.chat_templates`
(or the recipe's Jinja text) and adds the control tokens it is built from when the
tokenizer lacks them (``<|im_start|>`` on a freshly trained BPE): each becomes one id,
so the model can learn to emit the end-of-turn token and trl's assistant-only loss can
find it. ``special_tokens`` sets pad/eos/bos/unk and adds ``additional`` ones.

A tokenizer that grew needs a model that grew with it: :func:`fit_embeddings` resizes the
input and output embeddings of a model loaded for the tokenizer (hub, path or init
weights), with the new rows drawn from a fixed seed, so every load of the same base
gives the same rows (an adapter trained on them finds them again at eval time), and
points the model's pad/eos/bos ids at the tokenizer's. Everything a stage writes carries
the grown tokenizer and weights, so downstream stages load them as they are.

transformers is only touched through the objects passed in; importing this is cheap.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.chat_templates import control_tokens, template_text

SPECIAL_KEYS = ("pad", "eos", "bos", "unk")
RESIZE_SEED = 0
"""Seed of the rows a resize adds (the same rows on every load of the same base)."""


def customize(tokenizer: Any, spec: dict[str, Any] | None) -> list[str]:
    """Apply a ``tokenizer:`` spec's chat template and special tokens; the tokens added.

    Idempotent: a tokenizer that already has them (a cached or saved one) is unchanged.
    """
    spec = spec or {}
    special = spec.get("special_tokens") or {}
    template = spec.get("chat_template")
    vocab = tokenizer.get_vocab()
    added: list[str] = []
    named = {f"{key}_token": special[key] for key in SPECIAL_KEYS if special.get(key)}
    changed = {k: v for k, v in named.items() if getattr(tokenizer, k, None) != v}
    if changed:
        added += [v for v in changed.values() if v not in vocab]
        tokenizer.add_special_tokens(changed)
    extra = [t for t in (*control_tokens(template), *(special.get("additional") or []))
             if t not in tokenizer.get_vocab()]
    extra = list(dict.fromkeys(extra))
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
        added += extra
    if template:
        tokenizer.chat_template = template_text(template)
    return added


def fit_embeddings(model: Any, tokenizer: Any, spec: dict[str, Any] | None,
                   log: Any = None) -> bool:
    """Grow ``model``'s embeddings to ``len(tokenizer)`` when the tokenizer has more ids
    than the model has rows; True when it resized. When the spec sets special tokens (or
    the model grew), the model's and its generation config's pad/eos/bos ids follow the
    tokenizer's; otherwise a hub model keeps its own (Llama 3 stops on several ids)."""
    embeddings = model.get_input_embeddings()
    rows = int(embeddings.weight.shape[0]) if embeddings is not None else None
    resized = False
    if rows is not None and len(tokenizer) > rows:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RESIZE_SEED)
            model.resize_token_embeddings(len(tokenizer))
        resized = True
        if log is not None:
            log.line(f"tokenizer has {len(tokenizer)} tokens, the model {rows} embeddings: "
                     f"resized to {len(tokenizer)} (new rows from seed {RESIZE_SEED})")
    if not (resized or (spec or {}).get("special_tokens")):
        return resized
    for holder in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for key in ("pad", "eos", "bos"):
            token_id = getattr(tokenizer, f"{key}_token_id", None)
            if holder is not None and token_id is not None:
                setattr(holder, f"{key}_token_id", token_id)
    return resized
