"""Tokenizers and models built for real with tokenizers/transformers (no network)."""

import time

import pytest

from llm_recipe.compiler.architectures import from_init
from llm_recipe.runtime.builtin import corpus
from llm_recipe.runtime.models import (
    HubUnreachableError,
    hub_reachable,
    init_model,
    load_pretrained,
    train_tokenizer,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([r["text"] for r in corpus(500)], vocab_size=400)


def test_trained_tokenizer_round_trips_and_has_specials(tokenizer):
    text = "Ada has 3 apples. 3 + 4 = 7."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert len(tokenizer) == 400
    assert tokenizer.pad_token and tokenizer.eos_token
    assert tokenizer.pad_token != tokenizer.eos_token
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    chat = tokenizer.apply_chat_template(turns, tokenize=False)
    assert chat.endswith("ok" + tokenizer.eos_token)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_init_model_has_the_parameter_count_the_plan_estimates(tokenizer, family):
    init = {"architecture": family, "size": "nano", "context_length": 64}
    model = init_model(init, tokenizer, seed=0)
    built = sum(p.numel() for p in model.parameters())
    assert built == from_init(init, len(tokenizer)).parameter_count()
    again = init_model(init, tokenizer, seed=0)
    first = next(iter(model.state_dict().values()))
    assert first.equal(next(iter(again.state_dict().values())))


def test_hub_model_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    # An unreachable endpoint and an empty cache make this offline on any machine.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    hub_reachable.cache_clear()
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        load_pretrained("abel", {"hub": "GAIR/Abel-7B-002", "revision": "main"}, tmp_path)
    assert time.monotonic() - start < 30
    message = caught.value.render()
    assert "GAIR/Abel-7B-002" in message and "no network is reachable" in message
