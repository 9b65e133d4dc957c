"""Batched generation backends for stages that sample from a policy (rollout).

One small protocol, :class:`Generator`: ``generate(prompts, n, seed)`` returns ``n``
completions per prompt, each with its text and its number of generated tokens. Two
implementations:

- :class:`TransformersGenerator`: ``model.generate`` on the loaded policy, prompts
  left-padded into one batch (so every row continues from its own last token), the KV
  cache on, each prompt repeated ``n`` times the way ``num_return_sequences`` does it,
  and the torch RNG seeded from ``seed`` just before the call, so a batch generated
  again with the same seed is the same batch. The CPU path, and the GPU path without
  vLLM.
- :class:`VllmGenerator`: vLLM's offline ``LLM.generate``, one seeded request per
  prompt with ``n`` samples. vLLM loads weights from a folder or the hub, so an adapter
  policy (or an ``init`` model that exists only in memory) is first merged and saved to
  a temporary folder in the stage directory (:func:`vllm_source`), as the seed merged
  its SFT adapter before collecting rollouts. A stage with several GPUs in one process
  (the local launcher) shards the policy over all of them with vLLM's tensor
  parallelism (:func:`tensor_parallel_size`).

:func:`choose_backend` applies the plan's rule again where the stage runs (``auto``:
vLLM when it is installed, the stage has GPUs and CUDA is visible). vllm and torch are
imported inside functions only.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llm_recipe.compiler.world import inner_launcher
from llm_recipe.errors import RecipeError

if TYPE_CHECKING:
    from llm_recipe.compiler.plan import StageInput
    from llm_recipe.runtime.context import StageContext

SEED_MODULUS = 2**31 - 1
"""Seeds stay below 2**31: vLLM and numpy take 32-bit seeds."""


@dataclass(frozen=True)
class Sampling:
    """How each sample is drawn (the recipe's ``generation`` block)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    """Generated tokens up to and without the end-of-sequence token."""


class Generator(Protocol):
    name: str
    tokenizer: Any
    """The policy's tokenizer (prompts are rendered with its chat template, if any)."""

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Completion]]:
        """``n`` completions for each prompt, in prompt order; the same seed, the same ones."""
        ...

    def close(self) -> None: ...


def batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of question batch ``batch``: a function of the two numbers only,
    so a batch generated again (a damaged checkpoint on resume) comes out the same."""
    raw = hashlib.sha256(f"{seed}:{batch}".encode()).digest()
    return int.from_bytes(raw[:8], "big") % SEED_MODULUS


def choose_backend(wanted: str, gpus: int, *, stage: str = "rollout",
                   vllm_installed: bool | None = None,
                   cuda: bool | None = None) -> tuple[str, str]:
    """(backend, why): the plan's rule, decided again on the machine that runs the stage.

    ``vllm`` asked for explicitly without vLLM or without a GPU is a RecipeError.
    """
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    setting = f"stages.{stage}.generation.backend"
    if wanted == "transformers":
        return "transformers", "transformers generate (as the recipe says)"
    if wanted == "vllm":
        if not vllm_installed:
            raise RecipeError(f"stage {stage}: generation backend vllm is asked for, and "
                              "vLLM is not installed here",
                              hint=f"pip install vllm (on a machine with a GPU), or set "
                              f"{setting}: transformers (or auto)")
        if not gpus or not _cuda_available(cuda):
            raise RecipeError(f"stage {stage}: generation backend vllm needs a GPU, and "
                              + ("the stage has none (compute.gpus_per_node: 0)" if not gpus
                                 else "CUDA sees none on this machine"),
                              hint=f"run it where a GPU is visible, or set {setting}: "
                              "transformers")
        return "vllm", "vLLM (as the recipe says)"
    if not gpus:
        return "transformers", "transformers generate (no GPU: vLLM needs one)"
    if not vllm_installed:
        return "transformers", "transformers generate (vLLM is not installed here)"
    if not _cuda_available(cuda):
        return "transformers", "transformers generate (CUDA sees no GPU here)"
    return "vllm", "vLLM (installed, and the stage has GPUs)"


def _cuda_available(known: bool | None) -> bool:
    if known is not None:
        return known
    import torch

    return bool(torch.cuda.is_available())


def oom_hint(stage: str, per_question: int) -> str:
    return (f"lower stages.{stage}.generation.batch_size: each question brings "
            f"{per_question} sequences (variants x samples_per_variant) into the batch")


# --- transformers -------------------------------------------------------------------


class TransformersGenerator:
    """``model.generate`` on left-padded batches with the KV cache."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, sampling: Sampling) -> None:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.eos_ids = _eos_ids(model, tokenizer)
        self.context = _context_length(model)
        self.truncated = 0
        """Prompts cut from the left to fit the context (see :meth:`encode`)."""

    def encode(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """(input_ids, attention_mask), left-padded; over-long prompts keep their end."""
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            encoded = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        limit = self.context
        if limit and ids.shape[1] + self.sampling.max_new_tokens > limit:
            keep = max(limit - self.sampling.max_new_tokens, limit // 2)
            self.truncated += int((mask.sum(dim=1) > keep).sum())
            ids, mask = ids[:, -keep:], mask[:, -keep:]
        return ids, mask

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Completion]]:
        import torch

        ids, mask = self.encode(prompts)
        new_tokens = self.sampling.max_new_tokens
        if self.context:
            new_tokens = max(1, min(new_tokens, self.context - ids.shape[1]))
        # What num_return_sequences does inside generate, done here so greedy works too.
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=new_tokens, use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                **sampling_kwargs(self.sampling))
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, token in enumerate(row) if token in self.eos_ids), len(row))
            texts.append(Completion(self.tokenizer.decode(row[:cut], skip_special_tokens=True),
                                    cut))
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def close(self) -> None:
        self.model = None
        free_memory()


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """``generate`` keywords: greedy at temperature 0, else temperature and nucleus
    sampling with top-k off (vLLM's default, and the recipe has no top_k)."""
    if sampling.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": 0}


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif isinstance(configured, (list, tuple)):
        found.update(configured)
    return {token for token in found if token is not None}


def _context_length(model: Any) -> int | None:
    config = model.config
    return (getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None))


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- vLLM ---------------------------------------------------------------------------


class VllmGenerator:
    """vLLM's offline engine on ``tensor_parallel_size`` GPUs; one seeded request per
    prompt."""

    name = "vllm"

    def __init__(self, model: str, sampling: Sampling, *, seed: int, dtype: str,
                 revision: str | None = None, tokenizer: str | None = None,
                 tensor_parallel_size: int = 1) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # choose_backend found it; a broken install still fails
            raise RecipeError(f"vLLM does not import here ({exc})",
                              hint="fix the vllm install, or set generation.backend: "
                              "transformers") from None
        self.sampling = sampling
        self.llm = LLM(model=model, tokenizer=tokenizer or model, revision=revision,
                       tokenizer_revision=revision if tokenizer is None else None,
                       dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size)
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = self.tokenizer.eos_token_id

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Completion]]:
        from vllm import SamplingParams

        # Greedy decoding has one answer per prompt: ask n times (older vLLMs refuse n > 1).
        repeat, per_request = (n, 1) if self.sampling.greedy else (1, n)
        requests = [p for p in prompts for _ in range(repeat)]
        params = [SamplingParams(n=per_request, temperature=self.sampling.temperature,
                                 top_p=self.sampling.top_p,
                                 max_tokens=self.sampling.max_new_tokens,
                                 seed=(seed + i) % SEED_MODULUS)
                  for i in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        flat = [Completion(c.text, self._length(list(c.token_ids)))
                for out in outputs for c in out.outputs]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _length(self, tokens: list[int]) -> int:
        """Generated tokens without the EOS that ended them (as the transformers side)."""
        return len(tokens) - 1 if tokens and tokens[-1] == self.eos_id else len(tokens)

    def close(self) -> None:
        self.llm = None
        free_memory()


@contextlib.contextmanager
def vllm_source(ctx: StageContext, item: StageInput) -> Iterator[dict[str, Any]]:
    """``{model, revision, tokenizer}`` for vLLM to load the policy ``item`` from.

    Full weights on disk (a hub or path model entry, a stage's model folder) are read
    where they are. Anything else (an adapter on its base, random ``init`` weights) is
    loaded here, merged and saved to a temporary folder in the stage directory, which is
    removed afterwards (and swept by the executor if a kill leaves it).
    """
    direct = _on_disk(ctx, item)
    if direct is not None:
        yield direct
        return
    folder = ctx.dir / f".vllm-policy.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        started = time.monotonic()
        model, tokenizer = ctx.load_model(item)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        del model
        free_memory()
        ctx.log.line(f"[rollout] policy {item.ref} merged and saved for vLLM in "
                     f"{time.monotonic() - started:.0f}s")
        yield {"model": str(folder), "revision": None, "tokenizer": str(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _on_disk(ctx: StageContext, item: StageInput) -> dict[str, Any] | None:
    if item.type != "model":
        return None
    entry = ctx.plan.models.get(item.ref)
    if entry is None:  # a stage that produced full weights
        path = ctx.path(ctx.plan.stage(item.ref).output.path)
        return {"model": str(path), "revision": None, "tokenizer": str(path)}
    if "init" in entry or entry.get("tokenizer") or entry.get("trust_remote_code"):
        return None
    if "path" in entry:
        return {"model": str(ctx.path(entry["path"])), "revision": None, "tokenizer": None}
    return {"model": entry["hub"], "revision": entry.get("revision"), "tokenizer": None}


def tensor_parallel_size(compute: dict[str, Any]) -> int:
    """GPUs one vLLM engine shards the policy over: all of ``compute.gpus_per_node`` when
    the stage runs as one process (the local launcher, which sees every GPU of the node);
    1 under a multi-process launcher (torchrun, accelerate), where each process has its
    own GPU. vLLM needs this many GPUs visible, and the model's attention heads must
    divide evenly among them."""
    if inner_launcher(compute) != "local":
        return 1
    return max(int(compute.get("gpus_per_node") or 0), 1)


def open_vllm(ctx: StageContext, source: dict[str, Any], sampling: Sampling,
              seed: int) -> VllmGenerator:
    from llm_recipe.runtime import compute as compute_rules

    return VllmGenerator(source["model"], sampling, seed=seed,
                         dtype=compute_rules.compute_dtype(ctx.compute),
                         revision=source["revision"], tokenizer=source["tokenizer"],
                         tensor_parallel_size=tensor_parallel_size(ctx.compute))

