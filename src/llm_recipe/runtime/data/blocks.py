"""Pretrain sequences: documents tokenized in worker processes, then packed in one pass.

Each document's ids get eos after it; then they are either packed (the documents' ids
concatenated and cut into ``max_seq_len`` blocks; a short final remainder dropped unless
it is all there is) or kept one truncated sequence per document: exactly
:func:`pretrain_reference` (the list version, kept for small data and tests), built by
:func:`pretrain_sequences` for data of any size. Tokenizing is ``datasets.map`` over
``compute.data_workers`` processes (from 10,000 rows); packing is one pass with numpy
over the tokenized documents, read batch by batch, so memory stays at one batch of
documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.data.arrow import DATA_FILE
from llm_recipe.runtime.data.tokenize import (
    cached,
    drop_files,
    map_batched,
    tokenizer_digest,
)


def pretrain_reference(texts: list[str], tokenizer: Any, size: int,
                       packing: bool) -> list[list[int]]:
    """Token id sequences to train on, as lists: packed blocks, or one truncated sequence
    per row (what :func:`pretrain_sequences` builds for large data, identically).

    Each document ends with eos, so the model learns where text stops and, when
    packed, that what follows eos is unrelated. A packed final remainder shorter than a
    block is dropped, unless it is all there is.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    docs = [list(ids) + ([eos] if eos is not None else []) for ids in encoded]
    if not packing:
        return [doc[:size] for doc in docs]
    stream = [token for doc in docs for token in doc]
    blocks = [stream[i:i + size] for i in range(0, len(stream), size)]
    if len(blocks) > 1 and len(blocks[-1]) < size:
        blocks.pop()
    return blocks


def tokenize_documents(batch: Any, tokenizer: Any, eos: int | None) -> Any:
    """A ``datasets.map`` batch of text rows (an Arrow table) -> each non-blank
    document's ids with eos (an Arrow table).

    Arrow in and out, and the tokenizer's Rust backend called directly when it is given
    (the ids are the ones ``tokenizer(texts, add_special_tokens=True)`` returns): no
    Python dicts between the file and the tokenizer, so a worker spends its time
    tokenizing, and a worker needs only ``tokenizers`` to unpickle it.
    """
    import pyarrow as pa

    texts = [t for t in batch.column("text").to_pylist() if t and t.strip()]
    if hasattr(tokenizer, "encode_batch"):  # the Rust backend (``tokenizer.backend_tokenizer``)
        encoded = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=True)]
    else:
        encoded = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    if eos is not None:
        for ids in encoded:
            ids.append(eos)
    return pa.table({"input_ids": pa.array(encoded, pa.list_(pa.int32()))})


def pretrain_sequences(dataset: Any, tokenizer: Any, *, size: int, packing: bool,
                       data_key: str, cache: Path | None, workers: int,
                       log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """(dataset with ``input_ids``, info) for a pretrain stage, cached by content."""
    key = {"kind": "pretrain", "data": data_key, "tokenizer": tokenizer_digest(tokenizer),
           "max_seq_len": size, "packing": packing, "eos": tokenizer.eos_token_id}

    def build(tmp: Path) -> dict[str, Any]:
        from datasets import Features, List, Value

        docs = map_batched(dataset.select_columns(["text"]).with_format("arrow"),
                    tokenize_documents, tmp, "documents", workers, digest(key)[:16],
                    fn_kwargs={"tokenizer": getattr(tokenizer, "backend_tokenizer", None)
                               or tokenizer, "eos": tokenizer.eos_token_id},
                    remove_columns=["text"],
                    features=Features({"input_ids": List(Value("int32"))}))
        info = _pack_file(docs, tmp / DATA_FILE, size, packing)
        info["rows"] = len(dataset)
        del docs
        drop_files(tmp, "documents")
        return info

    def describe(info: dict[str, Any]) -> str:
        shape = (f"{info['sequences']:,} blocks of {size}" if packing
                 else f"{info['sequences']:,} sequences of up to {size} tokens")
        return f"tokenized {info['rows']:,} rows into {shape}"

    return cached(cache, "pretrain", key, build, log, describe)


def _pack_file(docs: Any, target: Path, size: int, packing: bool) -> dict[str, Any]:
    """Write packed blocks (or truncated documents) of tokenized documents to ``target``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
    writer = pa.ipc.new_stream(str(target), schema)
    carry = np.empty(0, dtype=np.int32)
    sequences = tokens = documents = 0
    try:
        for batch in _read_batches(docs):
            column = batch.column(0)
            documents += len(column)
            if not packing:
                cut = pc.list_slice(column, 0, size)
                if len(cut):
                    writer.write_batch(pa.RecordBatch.from_arrays([cut.cast(schema[0].type)],
                                                                  schema=schema))
                    sequences += len(cut)
                    tokens += int(pc.sum(pc.list_value_length(cut)).as_py() or 0)
                continue
            values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            data = np.concatenate([carry, values]) if carry.size else values
            full = len(data) // size
            if full:
                _write_blocks(writer, schema, data[:full * size], size)
                sequences += full
                tokens += full * size
            carry = data[full * size:].copy()
        if packing and carry.size and sequences == 0:  # shorter than one block: keep it all
            _write_blocks(writer, schema, carry, len(carry))
            sequences, tokens = 1, len(carry)
    finally:
        writer.close()
    return {"documents": documents, "sequences": sequences, "tokens": tokens}


def _read_batches(dataset: Any) -> Iterator[Any]:
    """A map's output, batch by batch, read from its files rather than memory-mapped: a
    pass over GiBs of token ids must not leave them all resident in this process."""
    import pyarrow as pa

    names = [f["filename"] for f in dataset.cache_files]
    if not names or dataset._indices is not None:
        yield from dataset.data.to_batches()
        return
    for name in names:
        with pa.OSFile(name) as handle:
            yield from pa.ipc.open_stream(handle)


def _write_blocks(writer: Any, schema: Any, values: Any, size: int) -> None:
    import numpy as np
    import pyarrow as pa

    count = len(values) // size
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * size, pa.int32())
    blocks = pa.ListArray.from_arrays(offsets, pa.array(values, pa.int32()))
    writer.write_batch(pa.RecordBatch.from_arrays([blocks], schema=schema))
