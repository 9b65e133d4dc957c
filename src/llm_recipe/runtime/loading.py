"""Load what a stage input names: a models: entry, a stage's model, an adapter on its base.

Lineage is already resolved by the compiler: an adapter input carries the name of its
base (a models: entry or a stage that produced full weights), so loading is a walk
down that chain, never a guess from folder contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.chat_templates import is_jinja, template_text
from llm_recipe.compiler.fingerprint import digest, entry_fingerprint
from llm_recipe.compiler.plan import StageInput
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute as compute_rules
from llm_recipe.runtime.cache import cache_problem, publish

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext

TOKENIZER_TRAINER_VERSION = 1
"""Bump when models.train_tokenizer changes what it builds: old cache entries then miss."""


def load_input_model(ctx: StageContext, item: StageInput, *, trainable: bool) -> tuple[Any, Any]:
    """(model, tokenizer) for a model, adapter or patch input of the stage."""
    if item.type == "model":
        return load_named_model(ctx, item.ref)
    if item.type == "adapter":
        from peft import PeftModel

        base, _ = load_named_model(ctx, item.base or "")
        adapter_dir = ctx.path(item.path or "")
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
        return model, _auto_tokenizer(adapter_dir)
    if item.type == "patch":
        # A continual stage's output on a fresh copy of its frozen base (lineage names it).
        from llm_recipe.runtime.continual.patch import load_patch_dir

        model, tokenizer = load_named_model(ctx, item.base or "")
        load_patch_dir(model, ctx.path(item.path or ""))
        return model, tokenizer
    raise RecipeError(f"stage {ctx.stage.name}: cannot load {item.type} '{item.ref}' here")


def load_reward_model(ctx: StageContext, item: StageInput) -> tuple[Any, Any]:
    """(reward model, tokenizer) for an input that names a reward model, e.g. ppo's
    ``reward.model``: frozen, in eval mode, a sequence classifier with one score
    (``model(**batch).logits[:, 0]``) whose tokenizer has a pad token (``config.pad_token_id``
    set to it, which the classifier needs to find each row's last token).

    Accepted: a reward_model stage's output, full weights or an adapter on its base (the
    adapter carries the trained score head), or a models: entry that is a one-label sequence
    classifier (a hub reward model). trl's RewardTrainer scored ``prompt + completion +
    eos``; score text the same way (``stages.reward_model.score_texts`` does).
    """
    if item.producer is not None:
        kind = ctx.plan.stage(item.producer).kind
        if kind != "reward_model":
            raise RecipeError(
                f"stage {ctx.stage.name}: '{item.ref}' is the output of a {kind} stage, not a "
                "reward model", hint="train one with a reward_model stage and name that stage")
    elif item.ref in ctx.plan.models:
        _check_classifier_entry(ctx, item.ref)
    model, tokenizer = sequence_classifier(ctx, item, trainable=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tokenizer


def sequence_classifier(ctx: StageContext, item: StageInput, *,
                        trainable: bool) -> tuple[Any, Any]:
    """(one-score sequence classifier, tokenizer) for a model or adapter input.

    Full weights that are a causal LM get a new score head (seeded by the caller's RNG);
    an adapter is loaded on its base as a classifier: a reward model's adapter restores its
    trained score head, a causal LM's adapter (sft's) is continued as a classifier whose
    score head is trained and saved with it (peft's modules_to_save). The tokenizer gets a
    pad token (its eos when it has none) and the model's ``pad_token_id`` follows it.
    """
    if item.type == "model":
        model, tokenizer = _named_classifier(ctx, item.ref)
    elif item.type == "adapter":
        from peft import PeftConfig, PeftModel

        base, tokenizer = _named_classifier(ctx, item.base or "")
        adapter_dir = ctx.path(item.path or "")
        config = PeftConfig.from_pretrained(str(adapter_dir))
        if config.task_type == "SEQ_CLS":  # a reward model's adapter, with its score head
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
        else:
            model = _causal_adapter_as_classifier(base, config, adapter_dir, trainable)
        tokenizer = _auto_tokenizer(adapter_dir)
    else:
        raise RecipeError(f"stage {ctx.stage.name}: cannot load {item.type} '{item.ref}' as a "
                          "sequence classifier", hint="name a model or an adapter")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RecipeError(f"the tokenizer of '{item.ref}' has neither a pad nor an eos "
                              "token", hint="use a tokenizer with an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _causal_adapter_as_classifier(base: Any, config: Any, adapter_dir: Path,
                                  trainable: bool) -> Any:
    """A causal LM's adapter (sft's) on a classifier base: the same LoRA weights, as a
    classification adapter whose score head (the base's, new) is trained and saved too."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    config.task_type = "SEQ_CLS"  # peft keeps the score head in modules_to_save
    config.inference_mode = not trainable
    model = get_peft_model(base, config)
    # The file has no score head: start from the model's own state (the new head) and
    # overwrite every adapter weight with the file's.
    saved = load_peft_weights(str(adapter_dir))
    state = {**get_peft_model_state_dict(model), **saved}
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected or len(state) != len(get_peft_model_state_dict(model)):
        raise RecipeError(f"the adapter in {adapter_dir} does not fit its base as a classifier "
                          f"(unexpected weights: {', '.join(unexpected[:3]) or 'none'})")
    return model


def _named_classifier(ctx: StageContext, name: str) -> tuple[Any, Any]:
    """Full weights by name (as :func:`load_named_model`) as a one-label sequence classifier."""
    from transformers import AutoModelForSequenceClassification

    from llm_recipe.runtime import models

    dtype = _dtype(ctx)
    if name in ctx.plan.models:
        entry = ctx.plan.models[name]
        tokenizer = tokenizer_for(ctx, name)
        if "init" in entry:
            causal = models.init_model(entry["init"], tokenizer, seed=ctx.plan.recipe["seed"],
                                       dtype=dtype, attn_implementation=_attn(ctx))
            fit_tokenizer(ctx, name, causal, tokenizer)
            return _as_classifier(causal), tokenizer
        models.prepare_hub_environment()
        model = models._from_pretrained(AutoModelForSequenceClassification, "model", name,
                                        _rooted(ctx, entry), ctx.root, dtype=dtype, num_labels=1,
                                        attn_implementation=_attn(ctx))
        fit_tokenizer(ctx, name, model, tokenizer)
        return model, tokenizer
    producer = ctx.plan.stage(name)
    if producer.output.type != "model":
        raise RecipeError(f"'{name}' produced {producer.output.type}, not full weights")
    path = ctx.path(producer.output.path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=dtype, num_labels=1, attn_implementation=_attn(ctx))
    return model, _auto_tokenizer(path)


def _as_classifier(causal: Any) -> Any:
    """A causal LM in memory (an ``init`` model) as a one-label classifier on its backbone."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(causal.base_model.state_dict())
    return model.to(causal.dtype)


def _check_classifier_entry(ctx: StageContext, name: str) -> None:
    """A models: entry used as a reward model must be a one-label sequence classifier."""
    entry = ctx.plan.models[name]
    hint = ("train a reward model with a reward_model stage (model: " + name + ") and name "
            "that stage, or name a hub reward model (a sequence classifier with one label)")
    if "init" in entry:
        raise RecipeError(f"stage {ctx.stage.name}: '{name}' has random init weights, not a "
                          "trained reward model", hint=hint)
    from transformers import AutoConfig

    from llm_recipe.runtime import models

    models.prepare_hub_environment()
    config = models._from_pretrained(AutoConfig, "model", name, _rooted(ctx, entry), ctx.root)
    classifier = any(a.endswith("ForSequenceClassification")
                     for a in getattr(config, "architectures", None) or [])
    if not classifier or getattr(config, "num_labels", None) != 1:
        raise RecipeError(f"stage {ctx.stage.name}: '{name}' is not a reward model "
                          f"(architectures {config.architectures}, {config.num_labels} labels)",
                          expected="a sequence classifier with one label", hint=hint)


def load_named_model(ctx: StageContext, name: str) -> tuple[Any, Any]:
    """Full weights by name: a models: entry, or the output of a stage that made a model."""
    from llm_recipe.runtime import models

    dtype = _dtype(ctx)
    if name in ctx.plan.models:
        entry = ctx.plan.models[name]
        if "init" in entry:
            tokenizer = tokenizer_for(ctx, name)
            model = models.init_model(entry["init"], tokenizer, seed=ctx.plan.recipe["seed"],
                                      dtype=dtype, attn_implementation=_attn(ctx))
        else:
            tokenizer = tokenizer_for(ctx, name)
            model = models.load_pretrained(name, _rooted(ctx, entry), ctx.root, dtype=dtype,
                                           attn_implementation=_attn(ctx))
        fit_tokenizer(ctx, name, model, tokenizer)
        return model, tokenizer
    producer = ctx.plan.stage(name)
    path = ctx.path(producer.output.path)
    if producer.output.type != "model":
        raise RecipeError(f"'{name}' produced {producer.output.type}, not full weights")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                 attn_implementation=_attn(ctx))
    return model, _auto_tokenizer(path)


def tokenizer_for(ctx: StageContext, name: str) -> Any:
    """The tokenizer of models: entry ``name``: its own, a named one, or trained (cached),
    with the entry's chat template and special tokens applied."""
    from llm_recipe.runtime.tokenizer_setup import customize

    spec = ctx.plan.models[name].get("tokenizer") or {}
    tokenizer = _source_tokenizer(ctx, name, spec)
    added = customize(tokenizer, spec)
    if spec.get("chat_template") or added:
        template = spec.get("chat_template")
        shown = ("a custom chat template" if template and is_jinja(template)
                 else f"chat template {template}" if template else "its chat template")
        ctx.log.line(f"tokenizer {name}: {shown}"
                     + (f", added {', '.join(added)}" if added else ""))
    return tokenizer


def _source_tokenizer(ctx: StageContext, name: str, spec: dict[str, Any]) -> Any:
    """The tokenizer where ``spec`` says it comes from (none of hub/path/train: the
    model's own)."""
    from llm_recipe.runtime import models

    entry = ctx.plan.models[name]
    if not any(key in spec for key in ("hub", "path", "train")):
        return models.load_tokenizer(name, _rooted(ctx, entry), ctx.root)
    if "train" not in spec:
        return models.load_tokenizer(name, _rooted(ctx, spec), ctx.root)
    key = tokenizer_cache_key(ctx.plan.datasets, spec, ctx.root)
    folder = ctx.path(ctx.plan.workspace) / ".cache" / "tokenizers" / f"{name}-{digest(key)[:16]}"
    problem = cache_problem(folder)
    if problem is None:
        ctx.log.line(f"tokenizer {name}: cached ({folder.name})")
        return _auto_tokenizer(folder)
    if folder.exists():
        ctx.log.line(f"tokenizer {name}: the cache {folder} is damaged ({problem}); rebuilding")
    from llm_recipe.runtime.data import load_rows

    data_name = spec["train"]["data"]
    rows = load_rows(data_name, _rooted(ctx, ctx.plan.datasets[data_name]))
    tokenizer = models.train_tokenizer(
        [text for row in rows for text in row_texts(row)],
        vocab_size=spec["train"]["vocab_size"], min_frequency=spec["train"]["min_frequency"],
        chat_template=template_text(spec["chat_template"]) if spec.get("chat_template")
        else None)
    ctx.log.line(f"tokenizer {name}: trained on {data_name} ({len(tokenizer)} tokens), "
                 f"cached as {folder.name}")
    from llm_recipe.runtime.distributed import is_main

    if is_main():  # every rank trains the same tokenizer; one publishes it
        publish(folder, key, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return tokenizer


def fit_tokenizer(ctx: StageContext, name: str, model: Any, tokenizer: Any) -> None:
    """A models: entry's weights grown to its tokenizer (tokens the spec added)."""
    from llm_recipe.runtime.tokenizer_setup import fit_embeddings

    fit_embeddings(model, tokenizer, ctx.plan.models[name].get("tokenizer"), ctx.log)


def tokenizer_cache_key(datasets: dict[str, Any], spec: dict[str, Any],
                        root: Path) -> dict[str, Any]:
    """Everything a trained tokenizer depends on: its spec (vocabulary size, minimum
    frequency, chat template, data name), the training data's *content* fingerprint
    (a local file's bytes, a hub id and revision, a builtin generator's spec, its
    columns and limit) and the versions of the code that trains it."""
    from importlib import metadata

    data_entry = datasets[spec["train"]["data"]]
    return {"spec": spec, "data": entry_fingerprint(data_entry, root),
            "trainer": TOKENIZER_TRAINER_VERSION, "tokenizers": metadata.version("tokenizers")}


def row_texts(row: dict[str, Any]) -> list[str]:
    """Every piece of text in a row, whatever its format (for tokenizer training)."""
    out: list[str] = []
    for value in row.values():
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(m["content"] for m in value if isinstance(m, dict) and "content" in m)
    return out


def _rooted(ctx: StageContext, entry: dict[str, Any]) -> dict[str, Any]:
    """An entry whose relative ``path`` is made absolute against the working directory."""
    if "path" not in entry:
        return entry
    return {**entry, "path": str(ctx.path(entry["path"]))}


def _auto_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _dtype(ctx: StageContext) -> Any:
    """The load dtype of the stage's precision mode; the mode is logged once per stage."""
    import torch

    line = compute_rules.describe_precision(ctx.compute)
    if getattr(ctx, "_precision_logged", None) != line:
        ctx.log.line(line)
        ctx._precision_logged = line  # type: ignore[attr-defined]
    return getattr(torch, compute_rules.torch_dtype(ctx.compute))


def _attn(ctx: StageContext) -> str:
    """compute.attn_implementation, checked (flash_attention_2 needs flash_attn)."""
    return compute_rules.attn_implementation(ctx.compute)
