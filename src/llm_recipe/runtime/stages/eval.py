"""The eval stage: compare models on one dataset (GSM8K accuracy, exact match, perplexity).

Models are evaluated one at a time and freed before the next is loaded, so comparing
base, SFT and DPO needs the memory of one model, not three. Every example's prompt,
completion, prediction and verdict goes to ``eval.jsonl`` (one line per example per
model, ``jq .correct`` works as in the Abel pipeline's Phase 5) and the report's numbers are
recomputed from those lines, so the two cannot disagree. Scoring rules live in
:mod:`llm_recipe.runtime.metrics` (no torch), generation and likelihoods here.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler.kinds import METRIC_FORMATS
from llm_recipe.compiler.plan import StageInput
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute as compute_rules
from llm_recipe.runtime import metrics as scoring
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.data import PROMPT_TEMPLATE
from llm_recipe.runtime.workspace import atomic_write_json, atomic_write_text

EVAL_FILE = "eval.jsonl"
DEFAULT_TEMPLATES = {"gsm8k": PROMPT_TEMPLATE, "prompt_completion": "{prompt}"}
"""The prompt a model sees when the stage names no template: the one sft trains with."""


def prompt_template(config: EvalConfig, fmt: str) -> str:
    """The template eval prompts are rendered with: the stage's own, else its format's."""
    return config.prompt_template or DEFAULT_TEMPLATES.get(fmt, "{prompt}")


@dataclass(frozen=True)
class EvalConfig:
    """An eval stage's settings, schema defaults filled (also for an absent generation block)."""

    models: tuple[str, ...]
    data: str
    metrics: tuple[str, ...]
    limit: int | None
    prompt_template: str | None
    max_new_tokens: int
    temperature: float
    top_p: float
    batch_size: int
    seed: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EvalConfig:
        from llm_recipe.compiler.schema import fill_defaults, recipe_schema

        gen = fill_defaults(dict(config.get("generation") or {}),
                            recipe_schema()["$defs"]["generation"])
        return cls(models=tuple(config["models"]), data=config["data"],
                   metrics=tuple(config.get("metrics") or ("gsm8k_accuracy",)),
                   limit=config.get("limit"), prompt_template=config.get("prompt_template"),
                   max_new_tokens=int(gen["max_new_tokens"]),
                   temperature=float(gen["temperature"]), top_p=float(gen["top_p"]),
                   batch_size=int(gen["batch_size"]), seed=int(config.get("seed", 0)))

    @property
    def generates(self) -> bool:
        return any(m in scoring.GENERATION_METRICS for m in self.metrics)


def run(ctx: StageContext) -> StageResult:
    """Evaluate every model of the stage on its data; write eval.jsonl and report.json."""
    config = EvalConfig.from_config(ctx.config)
    items = ctx.inputs_under("models")
    fmt = ctx.input("data").format or ""
    _check(ctx, config, items, fmt)
    rows = ctx.rows("data")[: config.limit or None]
    if not rows:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{config.data}' has no rows",
                          hint="check the dataset's source and its n/limit")
    template = prompt_template(config, fmt)
    passes = int(config.generates) + int("perplexity" in config.metrics)
    total = len(items) * len(rows) * passes
    ctx.log.start(total, f"eval {len(items)} model(s) on {len(rows)} examples")
    progress = {"done": 0}
    report_models: dict[str, dict[str, Any]] = {}
    lines: list[dict[str, Any]] = []
    for item in items:
        started = time.monotonic()
        model, tokenizer = ctx.load_model(item, trainable=False)
        try:
            model = _prepare(ctx, model, tokenizer)
            records, values = evaluate(ctx, item.ref, model, tokenizer, rows, fmt, template,
                                       config, progress)
        finally:
            del model, tokenizer
            _free_memory()
        values["seconds"] = round(time.monotonic() - started, 2)
        report_models[item.ref] = values
        lines.extend(records)
        ctx.log.metrics(len(rows), {"model": item.ref, **values}, prefix="eval")
    atomic_write_text(ctx.dir / EVAL_FILE,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    table = [{"model": item.ref, "type": item.type,
              **{m: report_models[item.ref].get(m) for m in config.metrics}} for item in items]
    atomic_write_json(ctx.output_path, {
        "data": config.data, "format": fmt, "examples": len(rows),
        "metrics": list(config.metrics), "models": report_models, "table": table,
        "prompt_template": template if config.generates else None,
        "generation": {"max_new_tokens": config.max_new_tokens,
                       "temperature": config.temperature, "top_p": config.top_p,
                       "batch_size": config.batch_size} if config.generates else None})
    return StageResult(
        metrics={f"{ref}/{m}": v[m] for ref, v in report_models.items() for m in config.metrics},
        key_metric=f"{items[-1].ref}/{config.metrics[0]}")


def evaluate(ctx: StageContext, ref: str, model: Any, tokenizer: Any, rows: list[dict],
             fmt: str, template: str, config: EvalConfig,
             progress: dict[str, int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(eval.jsonl records, report values) of one loaded model."""
    records: list[dict[str, Any]] = [{"model": ref, "index": i} for i in range(len(rows))]
    values: dict[str, Any] = {}
    size = config.batch_size
    if config.generates:
        import torch

        prompts = [scoring.render_prompt(template, row) for row in rows]
        _warn_if_truncated(ctx, ref, model, tokenizer, prompts, config.max_new_tokens)
        torch.manual_seed(config.seed)  # the same sampling stream for every model compared
        correct = 0
        for start in range(0, len(rows), size):
            completions = generate(model, tokenizer, prompts[start:start + size], config)
            for offset, completion in enumerate(completions):
                i = start + offset
                records[i].update(scoring.score_example(fmt, rows[i], completion,
                                                        config.metrics))
                correct += bool(records[i]["correct"])
            done = start + len(completions)
            progress["done"] += len(completions)
            ctx.log.update(progress["done"], model=ref, acc=round(correct / done, 4))
        values.update(scoring.summarize(records, config.metrics))
    if "perplexity" in config.metrics:
        nll_sum, token_count = 0.0, 0
        for start in range(0, len(rows), size):
            batch = [_scored_text(fmt, row, template, tokenizer)
                     for row in rows[start:start + size]]
            for offset, (nll, count) in enumerate(token_nll(model, tokenizer, batch)):
                records[start + offset].update(nll=round(nll / max(count, 1), 4), tokens=count)
                nll_sum, token_count = nll_sum + nll, token_count + count
            progress["done"] += len(batch)
            ctx.log.update(progress["done"], model=ref)
        values.update(perplexity=scoring.perplexity(nll_sum, token_count),
                      nll=nll_sum / max(token_count, 1), tokens=token_count)
    return records, values


def generate(model: Any, tokenizer: Any, prompts: list[str], config: EvalConfig) -> list[str]:
    """Completions of one batch: left-padded, greedy at temperature 0, cut at EOS."""
    return [tokenizer.decode(ids, skip_special_tokens=True)
            for ids, _ in generate_ids(model, tokenizer, prompts,
                                       max_new_tokens=config.max_new_tokens,
                                       temperature=config.temperature, top_p=config.top_p)]


def generate_ids(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0,
                 stop_ids: list[int] | None = None, add_special_tokens: bool = True,
                 streamer: Any = None) -> list[tuple[list[int], bool]]:
    """(new token ids before the first stop token, whether a stop token ended them) per prompt.

    Shared with ``recipe generate`` / ``recipe chat``
    (:mod:`llm_recipe.runtime.generate`), so a prompt gets there the completion eval
    records. Left padding keeps every prompt's last token at the end of the row, where
    decoding continues; with right padding short prompts would continue from pad tokens.
    ``stop_ids`` default to the tokenizer's EOS; ``add_special_tokens=False`` is for
    prompts that already hold them (a rendered chat template).
    """
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    new_tokens = max_new_tokens
    limit = _context_length(model)
    if limit and ids.shape[1] + new_tokens > limit:  # keep within the position embeddings
        keep = max(limit - new_tokens, limit // 2)
        ids, mask = ids[:, -keep:], mask[:, -keep:]
        new_tokens = max(1, limit - ids.shape[1])
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    stops = [tokenizer.eos_token_id] if stop_ids is None else list(stop_ids)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stops[0] if len(stops) == 1 else stops or None,
                             streamer=streamer, **sampling)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), None)
        rows.append((row, False) if cut is None else (row[:cut], True))
    return rows


def token_nll(model: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) of each (context, target): target tokens given context.

    With no context every token but the first is scored (the first has nothing to be
    predicted from, unless the tokenizer adds a BOS). Over-long sequences keep their end.
    """
    import torch

    limit = _context_length(model) or 1 << 30
    seqs: list[tuple[list[int], int]] = []
    for context, target in pairs:
        if context:
            head = tokenizer(context)["input_ids"]
            ids = head + tokenizer(target, add_special_tokens=False)["input_ids"]
            first = max(1, len(head))
        else:
            ids, first = tokenizer(target)["input_ids"], 1
        cut = max(0, len(ids) - limit)
        seqs.append((ids[cut:], max(1, first - cut)))
    width = max(len(ids) for ids, _ in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in seqs])
    scored = torch.zeros(len(seqs), width, dtype=torch.bool)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, (ids, first) in enumerate(seqs):
        scored[row, first:len(ids)] = True
        mask[row, :len(ids)] = 1
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logprobs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        nll = (nll * scored[:, 1:].to(device)).sum(dim=1).tolist()
    return [(value, int(scored[row].sum())) for row, value in enumerate(nll)]


def _scored_text(fmt: str, row: dict[str, Any], template: str, tokenizer: Any) -> tuple[str, str]:
    """What perplexity scores for a row: (context, target)."""
    if fmt == "text":
        return "", row["text"]
    if fmt == "gsm8k":  # the problem as text, as the builtin text rendering writes it
        return "", f"{scoring.render_prompt(template, row)} {row['answer']}"
    if fmt == "prompt_completion":
        return scoring.render_prompt(template, row), row["completion"]
    return "", tokenizer.apply_chat_template(row["messages"], tokenize=False)


def _check(ctx: StageContext, config: EvalConfig, items: list[StageInput], fmt: str) -> None:
    """Refuse what cannot be evaluated before any model is loaded (minutes on real models)."""
    for metric in config.metrics:
        formats = METRIC_FORMATS.get(metric, frozenset())
        if fmt not in formats:
            raise RecipeError(
                f"stage {ctx.stage.name}: metric {metric} cannot be computed on "
                f"'{config.data}' (format {fmt})",
                expected=f"a dataset of format {' or '.join(sorted(formats))}")


def _prepare(ctx: StageContext, model: Any, tokenizer: Any) -> Any:
    """Inference mode on the stage's device, with a pad token for batching."""

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model.to(compute_rules.device(ctx.compute))


def _context_length(model: Any) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _warn_if_truncated(ctx: StageContext, ref: str, model: Any, tokenizer: Any,
                       prompts: list[str], max_new_tokens: int) -> None:
    limit = _context_length(model)
    longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
    if limit and longest + max_new_tokens > limit:
        ctx.log.line(f"[eval] warning: {ref}: prompts of up to {longest} tokens plus "
                     f"max_new_tokens {max_new_tokens} exceed its context of {limit}; "
                     "long prompts are cut from the left and generation is shortened")


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a runtime dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
