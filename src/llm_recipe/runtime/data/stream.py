"""``streaming: true``: text read, tokenized and packed on the fly, never materialised.

A streamed dataset is a ``datasets.IterableDataset``: local files through the defensive
readers of :mod:`.files` (one row at a time, the same checks and messages as a converted
file), builtins through their generator, hub datasets through ``datasets``' own streaming.
Its ``text`` is tokenized and packed by a batched ``map`` (:func:`pack_stream`): each
batch of :data:`STREAM_BATCH` documents is joined with eos and cut into ``max_seq_len``
blocks; a batch's remainder shorter than a block is dropped, unless the batch made no
full block, when it is kept as one short block (so even a tiny stream trains). Packing
per batch rather than over the whole dataset is what makes the stream resumable from a
position: every block is a function of one batch of rows.

**Resume.** :class:`ResumableStream` hands blocks to the trainer's data loader from an
endless sequence of passes over the stream (a stream shorter than the run starts over)
and keeps the ``state_dict()`` of the ``IterableDataset`` after each block it handed out
(a bounded window, covering what the loader fetches ahead). At a checkpoint at step
``k``, the trainer has consumed exactly ``k x batch x grad_accum x processes`` blocks (the
loader's batches are always full: the sequence never ends), and
:func:`stream_callback` writes the state after that many blocks to
``checkpoint-k/stream_state.json``. A resumed run restores it and continues with the
next block an uninterrupted run would have trained on; the trainer's own data skipping
(which would read and tokenize the consumed part again) is turned off. A checkpoint
whose state fell out of the window records only the count, and the stream is skipped
forward block by block on resume: slower, still exact.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_recipe.runtime.data import files
from llm_recipe.runtime.data.arrow import Source
from llm_recipe.runtime.data.formats import DataError, check_row, rename, render_builtin

STREAM_BATCH = 1000
"""Documents per tokenize-and-pack batch of a stream."""
STATE_FILE = "stream_state.json"
STATE_FORMAT = 1


def stream_rows(spec: str) -> Iterator[dict[str, Any]]:
    """``{"text"}`` rows of a local file or builtin, checked one at a time (the generator
    ``IterableDataset.from_generator`` runs; ``spec`` is JSON so that datasets does not
    take a list in it for shards)."""
    data = json.loads(spec)
    source = Source(data["name"], data["entry"], data.get("producer_path"))
    entry = source.entry
    located = source.file
    if located is not None:
        rows: Iterator[dict[str, Any]] = files.iter_rows(*located)
    else:
        raw = builtin_rows(entry)
        rows = (render_builtin(r, entry["builtin"], source.format) for r in raw)
    columns = entry.get("columns") or {}
    limit = entry.get("limit")
    for number, row in enumerate(rows, start=1):
        if limit is not None and number > limit:
            return
        row = rename(row, columns)
        check_row(row, number, source.format, source.where)
        yield {"text": row["text"]}


def builtin_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    from llm_recipe.runtime import builtin

    return builtin.generate(entry["builtin"], split=entry.get("split", "train"),
                            n=entry.get("n"), seed=entry.get("seed", 0))


def source_stream(source: Source) -> Any:
    """The ``IterableDataset`` of a source's ``{"text"}`` rows, in file order."""
    from datasets import IterableDataset

    if "hub" in source.entry and source.file is None:
        return _hub_stream(source)
    spec = json.dumps({"name": source.name, "entry": source.entry,
                       "producer_path": source.producer_path})
    return IterableDataset.from_generator(stream_rows, gen_kwargs={"spec": spec})


def _hub_stream(source: Source) -> Any:
    from llm_recipe.runtime.models import hub_error, prepare_hub_environment

    prepare_hub_environment()
    import datasets

    entry = source.entry
    try:
        stream = datasets.load_dataset(entry["hub"], entry.get("subset"),
                                       split=entry.get("split", "train"),
                                       revision=entry.get("revision"), streaming=True)
    except (OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise hub_error("dataset", source.name, entry["hub"], entry.get("revision"),
                        exc) from exc
    column = (entry.get("columns") or {}).get("text", "text")
    if entry.get("limit"):
        stream = stream.take(int(entry["limit"]))
    return stream.map(lambda row: {"text": row[column]}, remove_columns=None).select_columns(
        ["text"])


def pack_stream(batch: dict[str, list], tokenizer: Any, eos: int | None,
                size: int) -> dict[str, list]:
    """One batch of documents -> blocks of ``size`` ids (see the module doc)."""
    texts = [t for t in batch["text"] if t and t.strip()]
    if not texts:
        return {"input_ids": []}
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    full = len(stream) // size
    blocks = [stream[i * size:(i + 1) * size] for i in range(full)]
    if not blocks:
        blocks = [stream]
    return {"input_ids": blocks}


def packed_stream(source: Source, tokenizer: Any, size: int) -> Any:
    """The stream of ``size``-token blocks of a source (an ``IterableDataset``)."""
    return pack(source_stream(source), tokenizer, size)


def pack(rows: Any, tokenizer: Any, size: int) -> Any:
    """A stream of ``{"text"}`` rows as a stream of ``size``-token blocks."""
    return rows.map(
        pack_stream, batched=True, batch_size=STREAM_BATCH, remove_columns=["text"],
        fn_kwargs={"tokenizer": tokenizer, "eos": tokenizer.eos_token_id, "size": size})


def mixed_stream(sources: list[Source], planned: dict[str, Any]) -> Any:
    """The ``{"text"}`` rows of a mixture of streams (compiler/mixtures.py, by weight):
    ``interleave_datasets`` over the members' streams, each read in order, a member drawn
    with its proportion at each row (seeded) until the stopping rule ends the pass. Its
    ``state_dict()`` holds every member's position and the generator's, so a resumed run
    continues exactly (see :class:`ResumableStream`)."""
    from datasets import Features, Value, interleave_datasets

    text = Features({"text": Value("string")})
    streams = [source_stream(source) for source in sources]
    streams = [s if s.features is None or s.features == text else s.cast(text)
               for s in streams]
    return interleave_datasets(streams, probabilities=[m["proportion"] for m in
                                                       planned["mixture"]],
                               seed=int(planned["seed"]),
                               stopping_strategy=planned["stopping"])


def _torch_iterable() -> type:
    from torch.utils.data import IterableDataset

    return IterableDataset


class ResumableStream:
    """Blocks for the trainer from endless passes over a stream, restartable at any block
    it handed out (see the module doc). A torch ``IterableDataset`` (made by :func:`make`).
    """

    def __init__(self, open_stream: Callable[[], Any], what: str,
                 state: dict[str, Any] | None = None, window: int = 4096) -> None:
        self.open_stream = open_stream
        self.what = what
        self.start = state
        self.consumed = 0
        self.snapshots: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=window)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start, self.start = self.start, None
        passes = int(start["pass"]) if start else 0
        self.consumed = int(start["consumed"]) if start else 0
        skip = self.consumed if start and start.get("source") is None else 0
        self.snapshots.clear()
        while True:
            stream = self.open_stream()
            if start and start.get("source") is not None:
                stream.load_state_dict(start["source"])
            start = None
            yielded = False
            try:
                for example in stream:
                    yielded = True
                    if skip:
                        skip -= 1
                        continue
                    self.consumed += 1
                    self.snapshots.append((self.consumed, {
                        "format": STATE_FORMAT, "consumed": self.consumed, "pass": passes,
                        "source": stream.state_dict()}))
                    yield {"input_ids": example["input_ids"]}
            except DataError:
                raise
            except Exception as exc:  # a reader's failure, named (never an Arrow traceback)
                raise DataError(f"{self.what}: the stream failed ({files._short(exc)})",
                                hint="check the dataset; a local file's errors name the "
                                "line") from exc
            if not yielded:
                raise DataError(f"{self.what} has no text to stream",
                                hint="check the dataset (format: text, a 'text' column)")
            passes += 1

    def state_at(self, consumed: int) -> dict[str, Any]:
        """The state to resume after ``consumed`` blocks; the count alone when it fell out
        of the window (resume then skips forward)."""
        for count, state in reversed(self.snapshots):
            if count == consumed:
                return state
        return {"format": STATE_FORMAT, "consumed": consumed, "pass": 0, "source": None}


def make(open_stream: Callable[[], Any], what: str, state: dict[str, Any] | None = None,
         window: int = 4096) -> Any:
    """A :class:`ResumableStream` that is a torch ``IterableDataset`` (torch is imported
    here, not at module import, like every runtime module)."""
    base = _torch_iterable()
    cls = type("ResumableTorchStream", (ResumableStream, base), {})
    return cls(open_stream, what, state, window)


def read_state(checkpoint: Path) -> dict[str, Any] | None:
    """The stream state a checkpoint recorded, or None (a run that did not stream)."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text("utf-8"))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not a stream state this version can resume from",
                        hint="run the stage again with --force")
    return state


def stream_callback(stream: ResumableStream, checkpoints: Path, per_step: int) -> Any:
    """A TrainerCallback that writes the stream's state into each checkpoint as it is saved
    (before the checkpoint's files are recorded: put it before the checkpoint callback)."""
    from transformers import TrainerCallback

    from llm_recipe.runtime.workspace import atomic_write_json

    class StreamCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = checkpoints / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / STATE_FILE,
                                  stream.state_at(state.global_step * per_step))

    return StreamCallback()


def first_blocks(open_rows: Callable[[], Any], where: str, tokenizer: Any, size: int,
                 count: int) -> list[list[int]]:
    """The first ``count`` blocks of a packed stream (``open_rows()`` opens its ``{"text"}``
    rows; passes repeat when the stream is shorter): what a streamed continual phase trains
    on, read no further."""
    blocks: list[list[int]] = []
    while len(blocks) < count:
        before = len(blocks)
        for example in pack(open_rows(), tokenizer, size):
            blocks.append(list(example["input_ids"]))
            if len(blocks) == count:
                break
        if len(blocks) == before:
            raise DataError(f"{where} has no text to stream",
                            hint="check the dataset (format: text, a 'text' column)")
    return blocks
