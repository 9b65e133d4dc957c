"""sft examples: rows rendered, tokenized and masked the way trl's SFTTrainer would.

What trl's SFTTrainer (trl 1.x) would build, computed here so that it is cached and
handed to trl already tokenized (``skip_prepare_dataset``): rows rendered
(``render(row)``: prompt/completion, messages or text), eos appended to
non-conversational text, tokenized (messages with the tokenizer's chat template, or
trl's training template with ``{% generation %}`` markers for assistant-only loss),
``labels`` = ids with -100 outside the completion or assistant turns, truncated to
``max_seq_len`` and rows with no label left dropped, or packed best-fit-decreasing with
trl's own ``pack_dataset``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.data.arrow import DATA_FILE
from llm_recipe.runtime.data.tokenize import (
    cached,
    copy_to,
    drop_files,
    map_batched,
    quiet,
    tokenizer_digest,
)


def sft_examples(dataset: Any, tokenizer: Any, *, render: Callable[[dict], dict],
                 render_key: dict[str, Any], completion_only: bool, max_len: int,
                 packing: bool, data_key: str, cache: Path | None, workers: int,
                 log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """(dataset with ``input_ids`` and ``labels`` [+ ``seq_lengths`` packed], info).

    ``render(row)`` is a module-level function (it travels to worker processes) that
    turns a canonical row into ``{prompt, completion}``, ``{messages}`` or ``{text}``;
    ``render_key`` is what decides its output (format, template), for the cache key.
    """
    first = render(dataset[0]) if len(dataset) else {}
    conversational = "messages" in first
    assistant_only = completion_only and conversational
    chat_template = training_template(tokenizer) if assistant_only else None
    key = {"kind": "sft", "data": data_key, "tokenizer": tokenizer_digest(tokenizer),
           "render": render_key, "completion_only": completion_only, "max_seq_len": max_len,
           "packing": packing, "chat_template": chat_template}
    options = {"tokenizer": tokenizer, "render": render, "completion_only": completion_only,
               "assistant_only": assistant_only, "chat_template": chat_template,
               "max_len": max_len, "packing": packing}

    def build(tmp: Path) -> dict[str, Any]:
        from datasets import Features, List, Value

        examples = map_batched(dataset, tokenize_sft, tmp, "examples", workers, digest(key)[:16],
                        fn_kwargs=options, remove_columns=dataset.column_names,
                        features=Features({"input_ids": List(Value("int32")),
                                           "labels": List(Value("int32"))}))
        kept = len(examples)
        if packing:
            from trl.data_utils import pack_dataset

            with quiet():
                packed = pack_dataset(examples, max_len, "bfd", {
                    "cache_file_name": str(tmp / "packed.arrow"),
                    "load_from_cache_file": False, "new_fingerprint": digest(key)[16:32]})
            sequences = copy_to(packed, tmp / DATA_FILE)
            del packed
            drop_files(tmp, "packed")
        else:
            sequences = copy_to(examples, tmp / DATA_FILE)
        del examples
        drop_files(tmp, "examples")
        return {"rows": len(dataset), "kept": kept, "sequences": sequences}

    def describe(info: dict[str, Any]) -> str:
        shape = (f"{info['sequences']:,} packed sequences of {max_len}" if packing
                 else f"{info['sequences']:,} examples of up to {max_len} tokens")
        return f"tokenized {info['rows']:,} rows into {shape}"

    return cached(cache, "sft", key, build, log, describe)


def training_template(tokenizer: Any) -> str | None:
    """The chat template assistant-only loss needs: the tokenizer's own when it marks the
    assistant turns with ``{% generation %}``, else trl's training version of it."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return None
    return get_training_chat_template(tokenizer)


def tokenize_sft(batch: dict[str, list], tokenizer: Any, render: Callable[[dict], dict],
                 completion_only: bool, assistant_only: bool, chat_template: str | None,
                 max_len: int, packing: bool) -> dict[str, list]:
    """A ``datasets.map`` batch of canonical rows -> ``input_ids`` and ``labels``.

    The same steps and calls as trl's SFTTrainer preparation (trl 1.x), so the ids and
    the masked labels are the ones it would train on.
    """
    names = list(batch)
    rows = [render({name: batch[name][i] for name in names})
            for i in range(len(batch[names[0]]))] if names else []
    eos = tokenizer.eos_token
    ids_out: list[list[int]] = []
    labels_out: list[list[int]] = []
    if rows and "prompt" in rows[0]:
        prompts = [r["prompt"] for r in rows]
        completions = [r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos
                       for r in rows]
        prompt_ids = tokenizer(prompts)["input_ids"]
        joined = [p + c for p, c in zip(prompts, completions, strict=True)]
        full_ids = tokenizer(joined)["input_ids"]
        for prompt, full in zip(prompt_ids, full_ids, strict=True):
            start = _common_prefix(prompt, full)
            ids_out.append(full)
            labels_out.append([-100] * start + full[start:] if completion_only else list(full))
    elif rows and "messages" in rows[0]:
        for row in rows:
            out = tokenizer.apply_chat_template(
                row["messages"], tokenize=True, return_dict=True, tools=None,
                chat_template=chat_template, return_assistant_tokens_mask=assistant_only)
            ids = list(out["input_ids"])
            if assistant_only:
                mask = out["assistant_masks"]
                if 1 not in mask:
                    raise RecipeError(
                        "a conversation has no assistant tokens to train on",
                        hint="the chat template must mark assistant turns with "
                        "{% generation %} (or set loss: all)")
                labels = [t if m else -100 for t, m in zip(ids, mask, strict=False)]
            else:
                labels = list(ids)
            ids_out.append(ids)
            labels_out.append(labels)
    elif rows:
        texts = [r["text"] if r["text"].endswith(eos) else r["text"] + eos for r in rows]
        for ids in tokenizer(texts)["input_ids"]:
            ids_out.append(ids)
            labels_out.append(list(ids))
    if not packing:
        pairs = [(i[:max_len], lab[:max_len]) for i, lab in zip(ids_out, labels_out, strict=True)]
        pairs = [(i, lab) for i, lab in pairs if any(t != -100 for t in lab)]
        ids_out = [i for i, _ in pairs]
        labels_out = [lab for _, lab in pairs]
    return {"input_ids": ids_out, "labels": labels_out}


def _common_prefix(ids: list[int], other: list[int]) -> int:
    """Leading tokens two sequences share (where trl starts the completion)."""
    length = 0
    for token, other_token in zip(ids, other, strict=False):
        if token != other_token:
            break
        length += 1
    return length
