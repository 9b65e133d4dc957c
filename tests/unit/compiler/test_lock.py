"""compiler/lock.py: the lock document, its text, and drift between two locks (no I/O)."""

from __future__ import annotations

from pathlib import Path

import yaml

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.load import load_text
from llm_recipe.compiler.lock import (
    PACKAGES,
    build_lock,
    compare_locks,
    hub_refs,
    known_commit,
    lock_text,
    summary,
    unpinned,
)

VERSIONS = {"accelerate": "1.15.0", "datasets": "5.2.0", "peft": "0.21.2",
            "torch": "2.13.0", "transformers": "5.24.0", "trl": "1.16.0"}
COMMIT = "5f91d94bd9cd7190a9f3216ff93cd1dd95f2c7be"

PIPELINE = """\
recipe: 1
name: locked
seed: 3
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
    n: 64
  test:
    hub: openai/gsm8k
    subset: main
    split: test
    format: gsm8k
stages:
  sft:
    kind: sft
    model: base
    data: math
    train:
      max_steps: 10
      lr: 1.0e-4
  eval:
    kind: eval
    models: [base, sft]
    data: test
    metrics: [gsm8k_accuracy]
"""

# The same recipe, every mapping written in another order (stages too).
REORDERED = """\
name: locked
recipe: 1
stages:
  eval:
    metrics: [gsm8k_accuracy]
    data: test
    models: [base, sft]
    kind: eval
  sft:
    train:
      lr: 1.0e-4
      max_steps: 10
    data: math
    model: base
    kind: sft
datasets:
  test:
    format: gsm8k
    split: test
    subset: main
    hub: openai/gsm8k
  math:
    n: 64
    format: gsm8k
    builtin: arithmetic
models:
  base:
    revision: main
    hub: sshleifer/tiny-gpt2
seed: 3
"""


def _lock(path: Path, *, packages=None, commits=None, **compile_args) -> dict:
    plan = compile_recipe(path, cwd=path.parent, **compile_args)
    return build_lock(plan, recipe_file=path.name, packages=packages or VERSIONS,
                      commits=commits or {}, version="0.1.0", schema="urn:llm-recipe:recipe:1")


def test_the_lock_is_byte_identical_twice(write) -> None:
    path = write(PIPELINE)
    first = lock_text(_lock(path), "recipe lock recipe.yaml")
    assert first == lock_text(_lock(path), "recipe lock recipe.yaml")
    assert "time" not in first.lower() and "host" not in first.lower()


def test_reordering_keys_in_the_recipe_changes_nothing(write) -> None:
    one = lock_text(_lock(write(PIPELINE, "a/recipe.yaml")), "recipe lock recipe.yaml")
    two = lock_text(_lock(write(REORDERED, "b/recipe.yaml")), "recipe lock recipe.yaml")
    assert one == two


def test_the_lock_holds_what_was_resolved(write) -> None:
    lock = _lock(write(PIPELINE), commits={"models.base": COMMIT})
    assert set(lock["stages"]) == {"sft", "eval"}
    sft = lock["stages"]["sft"]
    assert sft["config"]["train"]["lr"] == 0.0001
    assert sft["config"]["train"]["lr_scheduler"]  # schema defaults filled
    assert sft["inputs"]["model"]["ref"] == "base" and len(sft["fingerprint"]) == 64
    assert lock["hub"]["models.base"] == {"type": "model", "repo": "sshleifer/tiny-gpt2",
                                          "revision": "main", "commit": COMMIT}
    assert lock["hub"]["datasets.test"]["commit"] is None  # unresolved: unpinned
    assert unpinned(lock) == ["datasets.test"]
    assert lock["packages"] == VERSIONS and set(PACKAGES) == set(VERSIONS)
    assert (lock["llm_recipe"], lock["plan_format"], lock["schema"]) == (
        "0.1.0", 1, "urn:llm-recipe:recipe:1")


def test_text_is_sorted_yaml_that_reads_back_to_the_same_lock(write) -> None:
    lock = _lock(write(PIPELINE))
    text = lock_text(lock, "recipe lock recipe.yaml")
    assert text.startswith("# Written by `recipe lock recipe.yaml`")
    top = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
    assert top == sorted(top)
    assert yaml.safe_load(text) == lock
    # read the way lockfile.read_lock does: the recipe loader (YAML 1.2 core)
    assert compare_locks(load_text(text, "recipe.lock.yaml").data, lock) == []


def test_a_changed_learning_rate_names_the_stage_and_the_key(write) -> None:
    path = write(PIPELINE)
    locked = _lock(path)
    current = _lock(path, overrides=["stages.sft.train.lr=3e-4"])
    drifts = compare_locks(locked, current)
    config = [d for d in drifts if d.what == "config"]
    assert [(d.name, d.path, d.old, d.new) for d in config] == [("sft", "train.lr", 0.0001,
                                                                  0.0003)]
    assert config[0].recipe_path == ("stages", "sft", "train", "lr")
    assert config[0].describe() == "stage sft: train.lr 0.0001 -> 0.0003"
    fingerprints = {d.name: d.detail for d in drifts if d.what == "fingerprint"}
    assert fingerprints == {"sft": "own config: train.lr", "eval": "upstream: sft"}
    assert "stage sft: train.lr 0.0001 -> 0.0003" in summary(drifts)
    assert "re-runs sft, eval" in summary(drifts)
    assert summary(drifts, limit=0) == "and 1 more; re-runs sft, eval"


def test_a_changed_package_version_names_the_package(write) -> None:
    path = write(PIPELINE)
    drifts = compare_locks(_lock(path), _lock(path, packages={**VERSIONS, "torch": "2.14.0",
                                                              "trl": None}))
    assert [(d.what, d.name, d.old, d.new) for d in drifts] == [
        ("package", "torch", "2.13.0", "2.14.0"), ("package", "trl", "1.16.0", None)]
    assert drifts[0].describe() == "package torch: 2.13.0 -> 2.14.0"
    assert drifts[1].describe() == "package trl: 1.16.0 -> (none)"
    assert drifts[0].lock_path == ("packages", "torch")


def test_a_branch_that_moved_on_the_hub_drifts_only_when_both_commits_are_known(write) -> None:
    path = write(PIPELINE)
    locked = _lock(path, commits={"models.base": COMMIT})
    moved = _lock(path, commits={"models.base": "0" * 40})
    drifts = compare_locks(locked, moved)
    assert [(d.what, d.name, d.path) for d in drifts] == [
        ("revision", "models.base", "sshleifer/tiny-gpt2@main")]
    assert compare_locks(locked, _lock(path)) == []  # offline: the commit is not known now


def test_entries_added_and_removed_stages_and_versions_drift(write) -> None:
    path = write(PIPELINE)
    locked = _lock(path)
    bigger = write(PIPELINE.replace("n: 64", "n: 128") + """\
  eval_math:
    kind: eval
    models: [sft]
    data: math
    metrics: [gsm8k_accuracy]
""", "b/recipe.yaml")
    drifts = compare_locks(locked, _lock(bigger))
    said = [d.describe() for d in drifts]
    assert "datasets.math: n 64 -> 128" in said
    assert "stage eval_math: added since the lock" in said
    assert "stage sft: fingerprint changed (input changed: datasets.math)" in said
    newer = {**_lock(path), "llm_recipe": "0.2.0"}
    assert [d.describe() for d in compare_locks(locked, newer)] == ["llm-recipe: 0.1.0 -> 0.2.0"]
    gone = {**locked, "stages": {"sft": locked["stages"]["sft"]}}
    assert "stage eval: in the lock, no longer in the recipe" in [
        d.describe() for d in compare_locks({**locked}, gone)]


def test_hub_refs_and_known_commits(write) -> None:
    plan = compile_recipe(write(PIPELINE.replace("revision: main", f"revision: {COMMIT}")))
    refs = hub_refs(plan)
    assert [(r.key, r.type, r.repo, r.revision) for r in refs] == [
        ("models.base", "model", "sshleifer/tiny-gpt2", COMMIT),
        ("datasets.test", "dataset", "openai/gsm8k", None)]
    assert known_commit(COMMIT) == COMMIT
    assert known_commit("main") is None and known_commit(None) is None


def test_multi_line_strings_are_blocks_that_read_back_exactly(write) -> None:
    templates = ['"Q: {question}\\n\\nA: Let\'s think.\\n"', '"Q: {question}  \\n#### A:"',
                 '"  indented\\nthen: colon # hash\\n\\n\\n"']
    for index, template in enumerate(templates):
        path = write(PIPELINE.replace("    data: math\n    train:",
                                      f"    data: math\n    prompt_template: {template}\n"
                                      "    train:"), f"t{index}/recipe.yaml")
        lock = _lock(path)
        text = lock_text(lock, "recipe lock recipe.yaml")
        read = load_text(text, "recipe.lock.yaml").data
        assert read["stages"]["sft"]["config"]["prompt_template"] == yaml.safe_load(template)
        assert compare_locks(read, lock) == []
    assert "prompt_template: |" in lock_text(_lock(write(PIPELINE.replace(
        "    data: math\n    train:", '    data: math\n    prompt_template: "a\\nb"\n'
        "    train:"), "t9/recipe.yaml")), "x")
