"""The continual patch on tiny random models: identity at init, only the patch trains,
teacher/base switching, the output folder round trip and the blocks of each family."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_recipe.errors import RecipeError  # noqa: E402
from llm_recipe.runtime.continual import patch as P  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def gpt2(layers: int = 2) -> object:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16,
                                     n_layer=layers, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def qwen2() -> object:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.Qwen2ForCausalLM(config).eval()


def ids(rows: int = 3, width: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, width), generator=torch.Generator().manual_seed(1))


def logits(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch).logits


def perturb(patches: P.PatchSet, seed: int = 5) -> None:
    """Move every patch parameter away from its start (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in patches.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("make", [gpt2, llama, qwen2], ids=["gpt2", "llama", "qwen2"])
def test_the_initial_patch_computes_exactly_what_the_base_computes(make) -> None:
    model = make()
    batch = ids()
    before = logits(model, batch)
    config = P.patch_config(model, rank=4, layers="all", gate_init=-4.0)
    attachment = P.attach(model, config, seed=3)
    assert P.max_abs_diff(attachment, batch) == 0.0
    assert torch.equal(logits(model, batch), before)  # bit for bit, not just close
    perturb(attachment.patches)
    assert P.max_abs_diff(attachment, batch) > 1e-3  # the hooks do act once it moves
    with attachment.use(None):
        assert torch.equal(logits(model, batch), before)


def test_blocks_are_found_per_family() -> None:
    assert P.find_blocks(gpt2())[0] == "transformer.h"
    assert P.find_blocks(llama())[0] == "model.layers"
    assert P.find_blocks(qwen2())[0] == "model.layers"
    with pytest.raises(RecipeError, match="cannot find the transformer blocks"):
        P.find_blocks(torch.nn.Linear(2, 2))


def test_parameter_count_and_layer_selection() -> None:
    model = gpt2(layers=3)
    config = P.patch_config(model, rank=4, layers=[2, 0, 2], gate_init=-4.0)
    assert config.layers == (0, 2) and config.num_blocks == 3 and config.hidden_size == 16
    patches = P.PatchSet(config)
    d, r = 16, 4
    assert sum(p.numel() for p in patches.parameters()) == 2 * (2 * r * d + d + 2)
    with pytest.raises(RecipeError, match=r"names block\(s\) \[3\]"):
        P.patch_config(model, rank=4, layers=[3], gate_init=0.0)


def test_only_the_patch_gets_gradients_and_the_base_stays_bit_identical() -> None:
    model = gpt2()
    P.freeze_base(model)
    base = {n: p.detach().clone() for n, p in P.base_parameters(model).items()}
    attachment = P.attach(model, P.patch_config(model, 4, "all", -1.0), seed=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in attachment.patches.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    batch = ids()
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in P.base_parameters(model).values())
    for name, param in P.base_parameters(model).items():
        assert torch.equal(param, base[name]), name
    assert attachment.patches.blocks["0"].up.abs().sum() > 0  # the patch did train


def test_gate_init_sets_the_gate_and_the_sidecar_starts_at_zero() -> None:
    patches = P.PatchSet(P.patch_config(gpt2(), 4, "all", -4.0), seed=0)
    block = patches.blocks["1"]
    hidden = torch.randn(2, 5, 16)
    delta, gate = block(hidden)
    assert torch.equal(delta, torch.zeros_like(delta))
    torch.testing.assert_close(gate, torch.full_like(gate, torch.sigmoid(torch.tensor(-4.0))))
    again = P.PatchSet(P.patch_config(gpt2(), 4, "all", -4.0), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(patches.tensors().values(),
                                                 again.tensors().values(), strict=True))


def test_use_switches_to_a_teacher_and_record_collects_every_block() -> None:
    model = gpt2()
    batch = ids()
    attachment = P.attach(model, P.patch_config(model, 4, "all", 0.0), seed=0)
    perturb(attachment.patches, seed=1)
    teacher = P.PatchSet(attachment.patches.config)
    teacher.load_tensors(attachment.patches.tensors())
    student_out = logits(model, batch)
    perturb(attachment.patches, seed=2)
    with attachment.use(teacher):
        assert torch.equal(logits(model, batch), student_out)
    with attachment.record() as records:
        logits(model, batch)
    assert len(records) == 2 and records[0][0].shape == (3, 12, 1)
    assert attachment.records is None


def test_the_output_folder_round_trips_onto_a_fresh_base(tmp_path) -> None:
    model = gpt2()
    batch = ids()
    attachment = P.attach(model, P.patch_config(model, 4, [1], -2.0), seed=0)
    perturb(attachment.patches)
    expected = logits(model, batch)
    P.save_patch_dir(tmp_path / "patch", attachment.patches.tensors(),
                     attachment.patches.config, base="gpt2")
    fresh = gpt2()
    loaded = P.load_patch_dir(fresh, tmp_path / "patch")
    assert torch.equal(logits(fresh, batch), expected)
    assert not any(p.requires_grad for p in fresh.parameters())
    loaded.detach()
    assert P.SUBMODULE not in dict(fresh.named_children())
    assert not torch.equal(logits(fresh, batch), expected)


def test_a_patch_for_another_shape_is_refused(tmp_path) -> None:
    model = gpt2(layers=2)
    attachment = P.attach(model, P.patch_config(model, 4, "all", -2.0), seed=0)
    P.save_patch_dir(tmp_path / "p", attachment.patches.tensors(), attachment.patches.config)
    with pytest.raises(RecipeError, match="made for 2 blocks"):
        P.load_patch_dir(gpt2(layers=3), tmp_path / "p")
    with pytest.raises(RecipeError, match="not a patch folder"):
        P.load_patch_dir(gpt2(), tmp_path)


def test_a_bf16_base_keeps_an_fp32_patch_and_stays_exact_at_init() -> None:
    model = gpt2().to(torch.bfloat16)
    batch = ids()
    attachment = P.attach(model, P.patch_config(model, 4, "all", -4.0), seed=0)
    assert attachment.patches.blocks["0"].up.dtype == torch.float32
    assert P.max_abs_diff(attachment, batch) == 0.0
