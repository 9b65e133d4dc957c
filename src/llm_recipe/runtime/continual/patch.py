"""The patch: a gated low-rank sidecar per transformer block of a frozen causal LM.

For block ``l`` with output hidden state ``h`` (one vector of width ``d`` per token)::

    g(h)     = sigmoid(w_g . h + b_g)                  gate, a scalar per token
    delta(h) = s * g(h) * U act(D h)                   D: r x d, U: d x r, act = GELU
    h'       = h + delta(h)                            what the next block sees

Trainable per block: ``down`` (D), ``up`` (U), ``gate_weight`` (w_g), ``gate_bias``
(b_g) and ``scale`` (s, the coupling scale). At initialisation U = 0, w_g = 0,
b_g = ``patch.gate_init`` and s = 1, so delta is exactly 0 and the patched model
computes bit for bit what the base computes (``h + 0 == h`` in floating point); D is
drawn from N(0, 1/d) with a generator seeded by the stage's seed, so gradients reach
it once U moves. A negative ``gate_init`` starts the gate nearly off
(sigmoid(-4) ~ 0.018); a large positive one (10) forces it on, which with zero
regularisers is plain fine-tuning of the same sidecar. Parameters: ``2 r d + d + 2``
per block (GPT-2 small, rank 16: 12 x 25,346 = 304k floats, 1.2 MB in fp32).

The patch is kept in fp32 whatever the base's dtype: delta is computed from ``h`` cast
to fp32 and cast back before the addition.

Patches are attached by forward hooks on the blocks (:class:`Attachment`), found by
:func:`find_blocks` for GPT-2 (``transformer.h``), Llama/Qwen2/Mistral
(``model.layers``), GPT-NeoX (``gpt_neox.layers``) and OPT-like decoders
(``model.decoder.layers``). The patch set is also registered on the model as the
submodule ``continual_patch``, so ``model.to(device)`` moves it with the base; the base's
own parameters are those whose names do not start with ``continual_patch.``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_recipe.errors import RecipeError

SUBMODULE = "continual_patch"
"""The name the patch set is registered under on the patched model."""
PATCH_FILE = "patch.safetensors"
CONFIG_FILE = "patch_config.json"
FORMAT = "llm-recipe-patch/1"

BLOCK_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers")
"""Where causal LMs keep their transformer blocks (an nn.ModuleList), tried in order."""


@dataclass(frozen=True)
class PatchConfig:
    """The shape of a patch set: which blocks, how wide, what rank, the gate's start."""

    layers: tuple[int, ...]
    hidden_size: int
    rank: int
    gate_init: float
    num_blocks: int
    blocks: str
    """Where the blocks are in the model (one of :data:`BLOCK_PATHS`)."""
    model_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers), "format": FORMAT,
                "activation": "gelu",
                "equation": "h' = h + s * sigmoid(w_g . h + b_g) * U gelu(D h)"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatchConfig:
        return cls(layers=tuple(int(i) for i in data["layers"]),
                   hidden_size=int(data["hidden_size"]), rank=int(data["rank"]),
                   gate_init=float(data["gate_init"]), num_blocks=int(data["num_blocks"]),
                   blocks=str(data["blocks"]), model_type=data.get("model_type"))


def find_blocks(model: Any) -> tuple[str, nn.ModuleList]:
    """(path, blocks) of a causal LM's transformer blocks; a clear error for others."""
    for path in BLOCK_PATHS:
        found: Any = model
        for part in path.split("."):
            found = getattr(found, part, None)
            if found is None:
                break
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    raise RecipeError(
        f"cannot find the transformer blocks of {type(model).__name__}",
        expected=f"a causal LM with its blocks at one of: {', '.join(BLOCK_PATHS)}",
        hint="GPT-2, Llama, Qwen2, Mistral, GPT-NeoX and OPT-like models are supported")


def patch_config(model: Any, rank: int, layers: str | list[int] | tuple[int, ...],
                 gate_init: float) -> PatchConfig:
    """The patch shape for ``model``: ``layers`` is 'all' or block indices."""
    path, blocks = find_blocks(model)
    count = len(blocks)
    if layers == "all":
        chosen = tuple(range(count))
    else:
        chosen = tuple(sorted({int(i) for i in layers}))
        outside = [i for i in chosen if i >= count]
        if outside:
            raise RecipeError(f"patch.layers names block(s) {outside}, and the model has "
                              f"{count} blocks (0-{count - 1})",
                              hint="use 'all' or indices below the number of blocks")
    hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
    return PatchConfig(layers=chosen, hidden_size=int(hidden), rank=int(rank),
                       gate_init=float(gate_init), num_blocks=count, blocks=path,
                       model_type=getattr(model.config, "model_type", None))


class BlockPatch(nn.Module):
    """One block's patch: ``delta(h) = s * sigmoid(w_g . h + b_g) * U gelu(D h)``."""

    def __init__(self, hidden: int, rank: int, gate_init: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, hidden))
        self.up = nn.Parameter(torch.zeros(hidden, rank))
        self.gate_weight = nn.Parameter(torch.zeros(hidden))
        self.gate_bias = nn.Parameter(torch.full((1,), float(gate_init)))
        self.scale = nn.Parameter(torch.ones(1))
        with torch.no_grad():
            self.down.normal_(0.0, hidden ** -0.5, generator=generator)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(delta, gate) for hidden states ``[..., d]``: delta ``[..., d]``, gate ``[..., 1]``,
        both in the patch's dtype (fp32)."""
        x = hidden.to(self.up.dtype)
        gate = torch.sigmoid(x @ self.gate_weight.unsqueeze(-1) + self.gate_bias)
        delta = self.scale * gate * (nn.functional.gelu(x @ self.down.t()) @ self.up.t())
        return delta, gate


class PatchSet(nn.Module):
    """The patches of every selected block, keyed by block index (``blocks.<i>.<name>``)."""

    def __init__(self, config: PatchConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(int(seed))
        self.blocks = nn.ModuleDict({
            str(i): BlockPatch(config.hidden_size, config.rank, config.gate_init, generator)
            for i in config.layers})

    def tensors(self) -> dict[str, torch.Tensor]:
        """A copy of every parameter on the CPU (what a ledger entry holds)."""
        return {name: p.detach().to("cpu", copy=True).contiguous()
                for name, p in self.named_parameters()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Overwrite every parameter with ``tensors`` exactly (same names, shapes, dtypes)."""
        own = dict(self.named_parameters())
        if set(own) != set(tensors):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise RecipeError(f"the patch does not fit: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
        with torch.no_grad():
            for name, param in own.items():
                value = tensors[name]
                if value.shape != param.shape:
                    raise RecipeError(f"the patch does not fit: {name} has shape "
                                      f"{tuple(value.shape)}, the model's {tuple(param.shape)}")
                param.copy_(value.to(param.dtype))

    def frozen(self) -> PatchSet:
        for param in self.parameters():
            param.requires_grad_(False)
        return self


class Attachment:
    """Forward hooks that add the active patch set's delta to each patched block's output.

    ``patches`` (the student) is active by default and registered on the model as
    :data:`SUBMODULE`. :meth:`use` switches to another patch set (a teacher) or to none
    (the base) for a forward pass; :meth:`record` collects each block's ``(gate, delta)``
    during one for the regularisers.
    """

    def __init__(self, model: Any, patches: PatchSet) -> None:
        path, blocks = find_blocks(model)
        if SUBMODULE in model._modules:
            raise RecipeError("this model already carries a patch",
                              hint="load a fresh copy of the base for each patch")
        if path != patches.config.blocks or len(blocks) != patches.config.num_blocks:
            raise RecipeError(
                f"the patch was made for {patches.config.num_blocks} blocks at "
                f"{patches.config.blocks}; this model has {len(blocks)} at {path}",
                hint="apply a patch to the base it was trained on")
        self.model = model
        self.patches = patches
        self.active: PatchSet | None = patches
        self.records: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        model.add_module(SUBMODULE, patches)
        self.handles = [blocks[i].register_forward_hook(self._hook(str(i)))
                        for i in patches.config.layers]

    def _hook(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            patches = self.active
            if patches is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            delta, gate = patches.blocks[key](hidden)
            if self.records is not None:
                self.records.append((gate, delta))
            patched = hidden + delta.to(hidden.dtype)
            return (patched, *output[1:]) if isinstance(output, tuple) else patched

        return hook

    @contextlib.contextmanager
    def use(self, patches: PatchSet | None) -> Iterator[None]:
        """Run forward passes with ``patches`` (None: the bare base) instead of the student."""
        before, self.active = self.active, patches
        try:
            yield
        finally:
            self.active = before

    @contextlib.contextmanager
    def record(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Collect ``(gate, delta)`` of every patched block during the forward passes inside."""
        self.records = []
        try:
            yield self.records
        finally:
            self.records = None

    def detach(self) -> None:
        """Remove the hooks and the submodule: the model is the bare base again."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if SUBMODULE in self.model._modules:
            del self.model._modules[SUBMODULE]


def attach(model: Any, config: PatchConfig, seed: int) -> Attachment:
    """Attach a freshly initialised patch set (delta = 0) on ``model``'s device."""
    device = next(model.parameters()).device
    return Attachment(model, PatchSet(config, seed).to(device))


def base_parameters(model: Any) -> dict[str, torch.Tensor]:
    """The base model's own parameters (the patch's excluded), by name."""
    return {name: p for name, p in model.named_parameters()
            if not name.startswith(SUBMODULE + ".")}


def freeze_base(model: Any) -> None:
    for param in base_parameters(model).values():
        param.requires_grad_(False)


def max_abs_diff(attachment: Attachment, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 patches: PatchSet | None = None) -> float:
    """max |logits(base + patches) - logits(base)| on a batch: 0 for an initial patch.

    ``patches`` defaults to the attachment's student.
    """
    model = attachment.model
    with torch.no_grad():
        with attachment.use(None):
            base = model(input_ids=input_ids, attention_mask=attention_mask).logits
        with attachment.use(patches or attachment.patches):
            patched = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return float((patched.float() - base.float()).abs().max())


# ------------------------------------------------------------------------ the output


def save_patch_dir(folder: Path, tensors: dict[str, torch.Tensor], config: PatchConfig,
                   **info: Any) -> None:
    """Write ``patch.safetensors`` (tensors, the config in its header) and
    ``patch_config.json`` (the config and ``info``: base, phases, the ledger commit)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    described = {**config.to_json(), **info}
    save_file(tensors, str(folder / PATCH_FILE),
              metadata={"format": FORMAT, "patch_config": json.dumps(config.to_json())})
    (folder / CONFIG_FILE).write_text(json.dumps(described, indent=2, sort_keys=True) + "\n",
                                      "utf-8")


def read_patch_dir(folder: Path) -> tuple[PatchConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of a patch folder written by :func:`save_patch_dir`."""
    from safetensors.torch import load_file

    config_path, tensor_path = folder / CONFIG_FILE, folder / PATCH_FILE
    if not config_path.is_file() or not tensor_path.is_file():
        raise RecipeError(f"{folder} is not a patch folder",
                          expected=f"{CONFIG_FILE} and {PATCH_FILE}",
                          hint="it is the output of a continual stage")
    data = json.loads(config_path.read_text("utf-8"))
    if data.get("format") != FORMAT:
        raise RecipeError(f"{config_path}: unknown patch format {data.get('format')!r}",
                          expected=FORMAT)
    return PatchConfig.from_json(data), load_file(str(tensor_path))


def load_patch_dir(model: Any, folder: Path) -> Attachment:
    """Apply the patch in ``folder`` to ``model`` (its frozen base): hooks attached, patch
    frozen, on the model's device. The model then computes base + patch."""
    config, tensors = read_patch_dir(folder)
    hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
    if int(hidden) != config.hidden_size:
        raise RecipeError(f"the patch in {folder} is for hidden size {config.hidden_size}; "
                          f"the base has {hidden}", hint="apply a patch to its own base")
    patches = PatchSet(config)
    patches.load_tensors(tensors)
    device = next(model.parameters()).device
    freeze_base(model)
    return Attachment(model, patches.frozen().to(device))
