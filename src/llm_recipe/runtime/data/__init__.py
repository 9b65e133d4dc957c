"""Datasets from a plan: builtin generators, local files, the hub and stage outputs.

=============  ===========================================================================
formats.py     what a row of each format is; row checks with the row number and field
files.py       the defensive, bounded readers of local files (the exact path)
convert.py     a source to one Arrow file: pyarrow's readers, the exact path, the checks
arrow.py       sources, their cache keys and the cached, memory-mapped datasets
split.py       the validation split carved from the training rows
tokenize.py    tokenization machinery: ``datasets.map`` in workers, the content-keyed cache
blocks.py      pretrain: documents tokenized, then packed into blocks (or truncated)
examples.py    sft: rows rendered, tokenized and masked as trl would
stream.py      ``streaming: true``: rows read, tokenized and packed on the fly, resumable
inputs.py      a stage's dataset inputs: source, cache folder, split part, tokenized set
=============  ===========================================================================

A stage reads its datasets through :class:`llm_recipe.runtime.context.StageContext`
(``ctx.dataset(field)``, ``ctx.rows(field)``); the names below stay importable from
``llm_recipe.runtime.data`` for everything that read rows before Arrow.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.runtime.data.files import (
    FORMATS,
    MAX_JSON_BYTES,
    MAX_ROW_BYTES,
    read_file,
    read_json,
    read_jsonl,
)
from llm_recipe.runtime.data.formats import (
    FIELDS,
    PROMPT_TEMPLATE,
    DataError,
    check_rows,
    render_builtin,
)

__all__ = [
    "FIELDS", "FORMATS", "MAX_JSON_BYTES", "MAX_ROW_BYTES", "PROMPT_TEMPLATE", "DataError",
    "check_rows", "load_rows", "read_file", "read_json", "read_jsonl", "render_builtin",
]


def load_rows(name: str, entry: dict[str, Any], *,
              producer_path: str | None = None) -> list[dict[str, Any]]:
    """The rows of dataset ``name`` (a plan ``datasets:`` entry with an absolute ``path``,
    or a stage output), through the Arrow conversion and its checks, as Python dicts.

    No cache: what tokenizer training, benches and tests use outside a stage; a stage
    uses ``ctx.rows`` / ``ctx.dataset``, which cache the conversion.
    """
    from llm_recipe.runtime.data.arrow import Source
    from llm_recipe.runtime.data.arrow import load_rows as arrow_rows

    if producer_path is not None:
        entry = {"format": entry["format"], **({"limit": entry["limit"]}
                                               if entry.get("limit") else {})}
    return arrow_rows(Source(name, entry, producer_path))
