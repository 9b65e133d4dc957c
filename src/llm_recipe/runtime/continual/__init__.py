"""Continual training of a frozen causal LM through small gated patches (the continual
GPT-2 project).

The base model never changes. Each selected transformer block gets a patch, a gated
low-rank sidecar added to the block's output (:mod:`.patch`). Phases train the patches
on one data stream each, with replay of earlier phases' data, KL to the previous
phase's committed patch and regularisers that keep the patch local (:mod:`.losses`).
Probes measure held-out loss per domain; a regression rolls the patch back to the last
good snapshot (:mod:`.run`). Every snapshot is a patch-only safetensors file in the
stage's ledger (:mod:`.ledger`); the optimizer and progress live in resumable
checkpoints (:mod:`.state`).

- ``patch.py``: the patch equation, its modules, attaching them to a model by forward
  hooks, the output folder (``patch.safetensors`` + ``patch_config.json``);
- ``losses.py``: the loss terms (new, old, kl, gate, patch, scale) and the schedule;
- ``data.py``: packing text into blocks, the deterministic batch order of every step;
- ``ledger.py``: ``<stage dir>/ledger/``, its entries, their names and the index;
- ``state.py``: checkpoints for exact resume (optimizer, RNG, progress);
- ``trainer.py``: the order of a run: phases, fresh start and resume, the output;
- ``run.py``: one run's state and its step: losses, probes and rollback, logging,
  checkpoints.

The modules import torch at the top (the patch is an ``nn.Module``); only the
continual stage and the loader's patch branch import them, inside functions, so planning
never does.
"""
