"""``recipe data``'s printing and span splitting: plain data in, text out, no torch."""

from __future__ import annotations

import io
import subprocess
import sys

from llm_recipe import data_command
from llm_recipe.runtime.data.preview import Preview, spans


def decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i) for i in ids)


def sft_result(**changes) -> dict:
    ids = [0, 1, 2, 3, 4]
    mask = [0, 0, 1, 1, 0]
    example = {"index": 0, "text": "abcde", "input_ids": ids,
               "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)],
               "loss_mask": mask, "tokens": 5, "in_loss": 2,
               "spans": spans(ids, [bool(m) for m in mask], decode),
               "pieces": ["a", "b", "c", "d", "e"]}
    preview = Preview("sft", "sft", "arith", "tokens", "train", "scratch (models: entry)", 64,
                      [example], ["[data] tokenized 64 rows (cache ab12: reused)"])
    return {**preview.to_json(), **changes}


def test_spans_split_where_the_loss_mask_changes():
    assert spans([0, 1, 2, 3, 4], [False, False, True, True, False], decode) == [
        {"text": "ab", "in_loss": False, "tokens": 2},
        {"text": "cd", "in_loss": True, "tokens": 2},
        {"text": "e", "in_loss": False, "tokens": 1}]
    assert spans([5], [True], decode) == [{"text": "f", "in_loss": True, "tokens": 1}]
    assert spans([], [], decode) == []


def test_plain_output_marks_the_masked_spans():
    out = io.StringIO()
    data_command.write(sft_result(), out, color=False)
    text = out.getvalue()
    assert "\x1b[" not in text
    assert text.splitlines()[:2] == ["stage sft (sft): data arith (first 1 of 64)",
                                     "tokenizer: scratch (models: entry)"]
    assert "-- example 1: 5 tokens, 2 in the loss\n[masked: ab]cd[masked: e]\n" in text


def test_colour_output_styles_instead_of_marking():
    out = io.StringIO()
    data_command.write(sft_result(), out, color=True)
    text = out.getvalue()
    assert "[masked:" not in text and "\x1b[32mcd" in text  # green: in the loss


def test_token_table_lists_every_token_with_its_loss():
    out = io.StringIO()
    data_command.write(sft_result(), out, tokens=True)
    lines = out.getvalue().splitlines()
    start = lines.index("pos  id  token  loss")
    assert lines[start + 1:start + 6] == ["  0   0  'a'    no", "  1   1  'b'    no",
                                          "  2   2  'c'    yes", "  3   3  'd'    yes",
                                          "  4   4  'e'    no"]


def test_views_of_blocks_pairs_and_prompts():
    block = {"index": 1, "tokens": 48, "documents_ended": 2, "spans": [
        {"text": "text", "in_loss": True, "tokens": 48}]}
    assert data_command.title(block, {"shape": "blocks"}) == (
        "-- block 2: 48 tokens, all in the loss, 2 document(s) end in it")
    pair = {"index": 0, "prompt": "Q?", "chosen": " yes</s>", "rejected": " no</s>",
            "prompt_tokens": 3, "chosen_tokens": 2, "rejected_tokens": 2}
    result = {"stage": "dpo", "kind": "dpo", "dataset": "pairs", "shape": "preference",
              "split": "train", "tokenizer": "t", "total": None, "examples": [pair]}
    out = io.StringIO()
    data_command.write(result, out)
    assert "-- pair 1: tokens: prompt 3, chosen 2, rejected 2\nprompt:\nQ?\nchosen:\n" \
           " yes</s>\nrejected:\n no</s>\n" in out.getvalue()
    assert "(first 1)" in out.getvalue()
    prompt = {"index": 0, "variant": "direct", "tokens": 7, "text": "Question: 1+1?",
              "reference": "2"}
    out = io.StringIO()
    data_command.write({**result, "shape": "prompts", "examples": [prompt]}, out)
    assert "-- prompt 1 (direct): 7 tokens\nQuestion: 1+1?\nreference: 2\n" in out.getvalue()


def test_the_command_and_the_preview_module_import_no_torch():
    code = ("import sys, llm_recipe.cli, llm_recipe.data_command, "
            "llm_recipe.runtime.data.preview; "
            "llm_recipe.cli.build_parser(); "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'datasets') "
            "if m in sys.modules]; sys.exit(', '.join(bad) or None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
