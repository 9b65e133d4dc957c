"""Text into blocks, and which blocks each step trains on.

Every phase's stream and every probe set is tokenized once and packed as pretrain packs
text (documents joined with eos, cut into ``train.max_seq_len`` blocks; a short final
remainder dropped unless it is all there is), through the same content-keyed cache
(:func:`llm_recipe.runtime.data.inputs.pretrain_data`), so a resumed or re-run stage, or
a pretrain stage over the same text and tokenizer, does not tokenize again. A phase whose
dataset streams (``streaming: true``) reads only the blocks it trains on: the first
``steps x grad_accum x new rows per batch`` blocks of its packed stream
(:func:`new_blocks`), never the rest of the dataset.

The rows of a step are a function of the seed, the phase and the step alone
(``runtime.epochs.positions``), so a resumed run draws exactly the rows an
uninterrupted one would have: phase ``k``'s new rows are positions of an endless
sequence of epochs over its own blocks, each epoch a shuffle seeded by ``(seed, k,
epoch)``; its replayed rows the same over the pooled blocks of phases ``0..k-1`` with
another seed.
"""

from __future__ import annotations

from typing import Any

import torch


def pack(texts: list[str], tokenizer: Any, size: int) -> list[list[int]]:
    """Blocks of ``size`` token ids of a few texts, in memory (the cached path builds the
    same blocks for a stage's datasets; see runtime.data.blocks.pretrain_reference)."""
    from llm_recipe.runtime.data.blocks import pretrain_reference

    return pretrain_reference(texts, tokenizer, size, packing=True)


def new_blocks(steps: int, grad_accum: int, batch_size: int, n_old: int) -> int:
    """Blocks of its own data a phase trains on: one per new row of every micro-batch.

    With exactly that many blocks, ``runtime.epochs.positions`` draws each of them once,
    in an order shuffled by the seed: what a streamed phase reads.
    """
    return steps * grad_accum * (batch_size - n_old)


def stream_seed(seed: int, phase_idx: int, replay: bool) -> int:
    return (seed * 7_919 + phase_idx * 104_729 + (1 if replay else 0)) % (2**31)


def replay_rows(batch_size: int, replay_ratio: float, phase_idx: int) -> int:
    """Rows of each batch drawn from earlier phases: ``round(ratio x batch)``, at least one
    when the ratio is positive and at most ``batch - 1`` (the current phase always trains);
    0 in phase 0, which has no earlier data."""
    if phase_idx == 0 or replay_ratio <= 0 or batch_size < 2:
        return 0
    return min(batch_size - 1, max(1, round(replay_ratio * batch_size)))


def collate(blocks: list[list[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest block."""
    width = max(len(b) for b in blocks)
    ids = torch.tensor([b + [pad] * (width - len(b)) for b in blocks], dtype=torch.long)
    mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in blocks],
                        dtype=torch.long)
    return ids.to(device), mask.to(device)
