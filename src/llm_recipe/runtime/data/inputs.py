"""A stage's dataset inputs: plan input -> source -> cached Arrow -> split -> tokenized.

The glue between :class:`llm_recipe.runtime.context.StageContext` and the data modules:
which source a plan input names (a mixture: its members, mixed by :mod:`.mixture`),
where the stage's caches live
(``<workspace>/.cache``), which part of the rows a field means when the stage carves its
validation rows from its data (``validation_split``: ``data`` is the training part,
``validation`` the held-out part), and the tokenized datasets the training kinds feed
their trainers, each logged in ``train.log``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.data import arrow, blocks, examples, mixture, split, stream, tokenize
from llm_recipe.runtime.data.formats import DataError

if TYPE_CHECKING:
    from llm_recipe.compiler.plan import StageInput
    from llm_recipe.runtime.context import StageContext


def cache_root(ctx: StageContext) -> Path:
    """``<workspace>/.cache``: where converted and tokenized datasets are kept."""
    return ctx.path(ctx.plan.workspace) / ".cache"


def source_of(ctx: StageContext, item: StageInput) -> arrow.Source:
    """The source a dataset input names: a ``datasets:`` entry or a stage's output file."""
    if item.producer is not None:
        return arrow.Source(item.ref, {"format": item.format or "text"},
                            producer_path=str(ctx.path(item.path or "")))
    return entry_source(ctx, item.ref)


def entry_source(ctx: StageContext, name: str) -> arrow.Source:
    """The source of a ``datasets:`` entry, its path made absolute."""
    entry = dict(ctx.plan.datasets[name])
    if "path" in entry:
        entry["path"] = str(ctx.path(entry["path"]))
    return arrow.Source(name, entry)


def mixture_of(ctx: StageContext, item: StageInput) -> dict[str, Any] | None:
    """The planned mixture a dataset input names, or None (see compiler/mixtures.py)."""
    entry = ctx.plan.datasets.get(item.ref) if item.producer is None else None
    return entry if entry is not None and "mixture" in entry else None


def validation_split(ctx: StageContext) -> dict[str, Any] | None:
    """The stage's ``validation_split`` with its seed (the stage's seed when left out)."""
    spec = ctx.config.get("validation_split")
    if not spec:
        return None
    seed = spec.get("seed")
    return {"size": spec["size"], "seed": int(ctx.config.get("seed", 0) if seed is None else seed)}


def has_validation(ctx: StageContext) -> bool:
    """Whether the stage evaluates on validation rows: its own dataset or a split."""
    return ctx.has_input("validation") or validation_split(ctx) is not None


def is_streaming(ctx: StageContext, field: str) -> bool:
    """Whether a dataset input is read as a stream (``streaming: true`` on its entry)."""
    if not ctx.has_input(field):
        return False
    item = ctx.input(field)
    return item.producer is None and bool(ctx.plan.datasets.get(item.ref, {}).get("streaming"))


def load(ctx: StageContext, field: str) -> tuple[Any, str]:
    """(dataset, content key) of a dataset input; with a validation split, ``data`` is the
    training part and ``validation`` the held-out part."""
    spec = validation_split(ctx)
    carved = spec is not None and field in ("data", "validation") and not ctx.has_input(
        "validation")
    item = ctx.input("data" if carved else field)
    if is_streaming(ctx, item.field):
        raise DataError(f"stage {ctx.stage.name}: '{item.ref}' streams and cannot be read "
                        "whole", hint="remove streaming: true from the dataset")
    planned = mixture_of(ctx, item)
    if planned is None:
        dataset, key = _arrow(ctx, source_of(ctx, item), item.fingerprint)
    else:
        members = [_arrow(ctx, entry_source(ctx, m["data"]), m["fingerprint"])
                   for m in planned["mixture"]]
        dataset, _ = mixture.mix(item.ref, planned, [d for d, _ in members], ctx.log.line)
        key = mixture.mixture_key(planned, [k for _, k in members])
    rows = len(dataset)
    if not carved:
        return dataset, key
    assert spec is not None
    held = split.check_split(rows, spec["size"], f"stage {ctx.stage.name}: '{item.ref}'")
    train_rows, validation_rows = split.split_indices(rows, spec["size"], spec["seed"])
    part = validation_rows if field == "validation" else train_rows
    if field == "data":
        ctx.log.line(f"[data] validation split: {held:,} of {rows:,} rows held out "
                     f"({split.describe(spec, item.ref)})")
    key = digest({"data": key, "split": spec, "part": field})
    return dataset.select(part, keep_in_memory=True), key


def _arrow(ctx: StageContext, source: arrow.Source, fingerprint: str) -> tuple[Any, str]:
    """(memory-mapped rows, content key) of one source through the Arrow cache, logged."""
    loaded = arrow.load(source, fingerprint, cache_root(ctx), ctx.log.line)
    how = "reused" if loaded.reused else f"built in {loaded.seconds:.1f} s"
    ctx.log.line(f"[data] {source.name}: {len(loaded.dataset):,} rows as Arrow "
                 f"(cache {loaded.key[:8]}: {how})")
    return loaded.dataset, loaded.key


def rows(ctx: StageContext, field: str) -> list[dict[str, Any]]:
    """The rows of a dataset input as Python dicts (small consumers: eval, prompts)."""
    dataset, _ = load(ctx, field)
    return dataset.to_list()


def pretrain_data(ctx: StageContext, field: str, tokenizer: Any, size: int,
                  packing: bool) -> tuple[Any, dict[str, Any]]:
    """(tokenized dataset, info) of a text input for pretrain, cached (see blocks)."""
    dataset, key = load(ctx, field)
    return blocks.pretrain_sequences(
        dataset, tokenizer, size=size, packing=packing, data_key=key, cache=cache_root(ctx),
        workers=tokenize.workers_of(ctx.compute), log=ctx.log.line)


def sft_data(ctx: StageContext, field: str, tokenizer: Any, **options: Any) -> tuple[Any, dict]:
    """(tokenized dataset, info) of an sft input, cached (see examples.sft_examples)."""
    dataset, key = load(ctx, field)
    return examples.sft_examples(dataset, tokenizer, data_key=key, cache=cache_root(ctx),
                                 workers=tokenize.workers_of(ctx.compute), log=ctx.log.line,
                                 **options)


def text_stream(ctx: StageContext, field: str, tokenizer: Any, size: int,
                state: dict[str, Any] | None, window: int) -> Any:
    """The resumable stream of packed blocks of a streamed text input (see stream)."""
    item = ctx.input(field)
    open_rows, _ = _rows_stream(ctx, item)
    planned = mixture_of(ctx, item)
    what = f" mixture of {describe_shares(planned)}," if planned else ""
    ctx.log.line(f"[data] {item.ref}: streamed,{what} tokenized and packed on the fly in "
                 f"blocks of {size}" + (f", resuming after block {state['consumed']:,}"
                                        if state else ""))
    return stream.make(lambda: stream.pack(open_rows(), tokenizer, size),
                       f"stage {ctx.stage.name}: '{item.ref}'", state, window)


def first_blocks(ctx: StageContext, field: str, tokenizer: Any, size: int,
                 count: int) -> list[list[int]]:
    """The first ``count`` packed blocks of a streamed input, cached by content like the
    tokenized datasets (a resumed or re-run stage does not read the stream again)."""
    import pyarrow as pa

    item = ctx.input(field)
    open_rows, data_key = _rows_stream(ctx, item)
    key = {"kind": "stream-head", "data": data_key,
           "tokenizer": tokenize.tokenizer_digest(tokenizer), "max_seq_len": size,
           "blocks": count, "batch": stream.STREAM_BATCH}

    def build(tmp: Path) -> dict[str, Any]:
        blocks = stream.first_blocks(open_rows, f"stage {ctx.stage.name}: '{item.ref}'",
                                     tokenizer, size, count)
        table = pa.table({"input_ids": pa.array(blocks, pa.list_(pa.int32()))})
        with pa.ipc.new_stream(str(tmp / arrow.DATA_FILE), table.schema) as writer:
            writer.write_table(table)
        return {"rows": count, "sequences": len(blocks)}

    dataset, _ = tokenize.cached(
        cache_root(ctx), "stream", key, build, ctx.log.line,
        lambda info: f"streamed the first {info['sequences']:,} blocks of {size} of {item.ref}")
    return [list(ids) for ids in dataset["input_ids"]]


def _rows_stream(ctx: StageContext, item: StageInput) -> tuple[Callable[[], Any], str]:
    """(a function opening the ``{"text"}`` rows of a streamed input, its content key):
    one source's stream, or a mixture's members interleaved (``stream.mixed_stream``)."""
    planned = mixture_of(ctx, item)
    if planned is None:
        source = source_of(ctx, item)
        return (lambda: stream.source_stream(source)), digest(
            arrow.dataset_key(source, item.fingerprint))
    sources = [entry_source(ctx, m["data"]) for m in planned["mixture"]]
    keys = [digest(arrow.dataset_key(s, m["fingerprint"]))
            for s, m in zip(sources, planned["mixture"], strict=True)]
    return (lambda: stream.mixed_stream(sources, planned)), mixture.mixture_key(planned, keys)


def describe_shares(planned: dict[str, Any]) -> str:
    """``70% web + 30% books (seed 0, first_exhausted)``: a streamed mixture in the log."""
    shares = " + ".join(f"{m['proportion'] * 100:.3g}% {m['data']}" for m in planned["mixture"])
    return f"{shares} (seed {planned['seed']}, {planned['stopping']})"
