"""Lockfiles at the edges (paths, hub lookups, package versions) and through the CLI:
``recipe lock``, the drift line of ``recipe plan``, ``recipe run --locked``."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from llm_recipe import cli, lockfile
from llm_recipe.compiler.lock import HubRef
from llm_recipe.errors import RecipeError

COMMIT = "5f91d94bd9cd7190a9f3216ff93cd1dd95f2c7be"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here reaches the hub: lookups that are not replaced fail at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def run(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_lock_paths_sit_beside_the_recipe_one_per_profile_combination() -> None:
    assert lockfile.lock_path(Path("recipes/abel.yaml")) == Path("recipes/abel.lock.yaml")
    assert lockfile.lock_path(Path("recipes/abel.yaml"), ["tiny"]) == Path(
        "recipes/abel.tiny.lock.yaml")
    assert lockfile.lock_path(Path("r.yml"), ["tiny", "ppo"]) == Path("r.tiny.ppo.lock.yml")
    assert lockfile.is_lockfile("recipes/abel.tiny.lock.yaml")
    assert not lockfile.is_lockfile("recipes/abel.yaml")
    assert lockfile.relock_command("my recipe.yaml", ["tiny"]) == (
        "recipe lock 'my recipe.yaml' -p tiny")


def test_package_versions_are_read_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(name: str) -> str:
        if name == "trl":
            raise lockfile.metadata.PackageNotFoundError(name)
        return f"{name}-1"

    monkeypatch.setattr(lockfile.metadata, "version", version)
    versions = lockfile.package_versions()
    assert versions["torch"] == "torch-1" and versions["trl"] is None


def _fake_hub(monkeypatch: pytest.MonkeyPatch, answer) -> list:
    calls: list = []

    class FakeApi:
        def model_info(self, repo_id, *, revision=None, timeout=None):
            calls.append(("model", repo_id, revision, timeout))
            return answer() if callable(answer) else types.SimpleNamespace(sha=answer)

        def dataset_info(self, repo_id, *, revision=None, timeout=None):
            calls.append(("dataset", repo_id, revision, timeout))
            return types.SimpleNamespace(sha=answer)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return calls


def test_hub_commit_asks_the_hub_with_a_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = _fake_hub(monkeypatch, COMMIT)
    assert lockfile.hub_commit(HubRef("models.m", "model", "org/m", "main")) == COMMIT
    assert lockfile.hub_commit(HubRef("datasets.d", "dataset", "org/d", None)) == COMMIT
    assert calls == [("model", "org/m", "main", lockfile.HUB_TIMEOUT_S),
                     ("dataset", "org/d", None, lockfile.HUB_TIMEOUT_S)]


def test_hub_commit_failures_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def fail():
        raise ConnectionError("Name or service not known\nmore detail")

    _fake_hub(monkeypatch, fail)
    with pytest.raises(lockfile.HubUnavailable, match=r"^ConnectionError: Name or service not "
                                                      r"known$"):
        lockfile.hub_commit(HubRef("models.m", "model", "org/m", "main"))


def test_offline_means_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_hub(monkeypatch, COMMIT)
    with pytest.raises(lockfile.HubUnavailable, match="HF_HUB_OFFLINE"):
        lockfile.hub_commit(HubRef("models.m", "model", "org/m", "main"))
    assert calls == []


def test_resolve_commits_asks_once_per_repository_and_warns_per_reference() -> None:
    asked = []

    def lookup(ref: HubRef) -> str:
        asked.append(ref.key)
        if ref.repo == "org/down":
            raise lockfile.HubUnavailable("timed out")
        return COMMIT

    refs = [HubRef("datasets.train", "dataset", "org/d", None),
            HubRef("datasets.test", "dataset", "org/d", None),
            HubRef("models.m", "model", "org/down", "main"),
            HubRef("models.pinned", "model", "org/p", "0" * 40)]
    commits, warnings = lockfile.resolve_commits(refs, lookup)
    assert asked == ["datasets.train", "models.m"]
    assert commits == {"datasets.train": COMMIT, "datasets.test": COMMIT, "models.m": None,
                       "models.pinned": "0" * 40}
    assert warnings == ["models.m: org/down@main not resolved to a commit (timed out); "
                        "locked as unpinned"]
    assert lockfile.resolve_commits(refs[:1], None) == ({"datasets.train": None}, [])


def test_recipe_lock_writes_the_file_beside_the_recipe(run, write, minimal,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write(minimal + "profiles:\n  tiny:\n    stages.sft.train.max_steps: 2\n", "r/demo.yaml")
    monkeypatch.setattr(lockfile, "hub_commit", lambda ref: COMMIT)
    code, out, err = run("lock", "r/demo.yaml", "-p", "tiny")
    assert (code, err) == (0, "")
    assert out == "wrote r/demo.tiny.lock.yaml (1 stages; hub: 1 of 1 pinned to a commit)\n"
    text = Path("r/demo.tiny.lock.yaml").read_text("utf-8")
    assert text.startswith("# Written by `recipe lock r/demo.yaml -p tiny`: do not edit.\n")
    assert f"commit: {COMMIT}" in text and "max_steps: 2" in text
    assert run("lock", "r/demo.yaml", "-p", "tiny")[0] == 0
    assert Path("r/demo.tiny.lock.yaml").read_text("utf-8") == text  # byte-identical


def test_recipe_lock_offline_records_unpinned_with_a_warning(run, write, minimal) -> None:
    write(minimal)
    code, out, err = run("lock", "recipe.yaml")
    assert code == 0 and "hub: 0 of 1 pinned" in out
    assert err == ("warning: models.base: sshleifer/tiny-gpt2@main not resolved to a commit "
                   "(HF_HUB_OFFLINE is set); locked as unpinned\n")
    assert "commit: null" in Path("recipe.lock.yaml").read_text("utf-8")


def test_recipe_plan_says_when_the_lock_is_out_of_date(run, write, minimal) -> None:
    write(minimal)
    assert "lock" not in json.loads(run("plan", "recipe.yaml", "--json")[1])["extra"]
    run("lock", "recipe.yaml")
    code, out, _ = run("plan", "recipe.yaml")
    assert code == 0 and "lock recipe.lock.yaml: up to date" in out
    assert json.loads(run("plan", "recipe.yaml", "--json")[1])["extra"]["lock"] == {
        "file": "recipe.lock.yaml", "state": "current", "drift": [],
        "unpinned": ["models.base"]}
    write(minimal.replace("lr: 1e-4", "lr: 3e-4"))
    code, out, _ = run("plan", "recipe.yaml")
    assert code == 0
    line = " ".join(out[out.index("warning: recipe.lock.yaml"):].split())
    assert line.startswith("warning: recipe.lock.yaml is out of date: stage sft: train.lr "
                           "0.0001 -> 0.0003; re-runs sft (")
    lock = json.loads(run("plan", "recipe.yaml", "--json")[1])["extra"]["lock"]
    assert lock["state"] == "drifted"
    assert [(d["what"], d["name"], d.get("path")) for d in lock["drift"]] == [
        ("config", "sft", "train.lr"), ("fingerprint", "sft", None)]


def test_a_broken_lock_does_not_stop_a_plan(run, write, minimal) -> None:
    write(minimal)
    Path("recipe.lock.yaml").write_text("stages: [\n", "utf-8")
    code, out, _ = run("plan", "recipe.yaml")
    assert code == 0 and "warning: cannot read the lock" in out
    lock = json.loads(run("plan", "recipe.yaml", "--json")[1])["extra"]["lock"]
    assert (lock["file"], lock["state"]) == ("recipe.lock.yaml", "unreadable")
    assert run("run", "recipe.yaml", "--locked", "--dry-run")[0] == 2


def test_run_locked_refuses_a_drifted_recipe_and_lists_the_drift(run, write, minimal) -> None:
    write(minimal)
    assert run("lock", "recipe.yaml")[0] == 0
    code, _, err = run("run", "recipe.yaml", "--locked", "--dry-run")
    assert code == 0, err
    write(minimal.replace("lr: 1e-4", "lr: 3e-4"))
    code, out, err = run("run", "recipe.yaml", "--locked", "--dry-run")
    assert (code, out) == (2, "")
    assert err.startswith("recipe.yaml:19:11: error: the recipe has drifted from its lock "
                          "recipe.lock.yaml (2 differences)\n")
    assert "  - stage sft: train.lr 0.0001 -> 0.0003  (recipe.yaml:19:11)\n" in err
    assert "  - stage sft: fingerprint changed (own config: train.lr)  (recipe.lock.yaml:" in err
    assert "hint: review the change (`recipe diff`), then accept it with " \
           "`recipe lock recipe.yaml`" in err
    assert not Path("outputs").exists()  # nothing planned to disk, nothing ran


def test_run_locked_names_a_package_that_changed(run, write, minimal,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write(minimal)
    run("lock", "recipe.yaml")
    versions = lockfile.package_versions()
    monkeypatch.setattr(lockfile, "package_versions", lambda: {**versions, "torch": "9.9.9"})
    code, _, err = run("run", "recipe.yaml", "--locked", "--dry-run")
    assert code == 2
    assert f"  - package torch: {versions['torch']} -> 9.9.9  (recipe.lock.yaml:" in err


def test_run_locked_without_a_lock_exits_2(run, write, minimal) -> None:
    write(minimal)
    code, _, err = run("run", "recipe.yaml", "--locked", "--dry-run")
    assert code == 2
    assert err.startswith("recipe.yaml:1:1: error: recipe.yaml has no lock: recipe.lock.yaml "
                          "does not exist\n")
    assert "hint: write it with `recipe lock recipe.yaml`" in err


def test_run_locked_checks_a_branch_on_the_hub(run, write, minimal,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write(minimal)
    monkeypatch.setattr(lockfile, "hub_commit", lambda ref: COMMIT)
    run("lock", "recipe.yaml")
    monkeypatch.setattr(lockfile, "hub_commit", lambda ref: "0" * 40)
    code, _, err = run("run", "recipe.yaml", "--locked", "--dry-run")
    assert code == 2
    assert (f"  - hub models.base: sshleifer/tiny-gpt2@main is now commit {'0' * 40} "
            f"(locked: {COMMIT})") in err


def test_validate_skips_lockfiles(run, write, minimal) -> None:
    write(minimal)
    run("lock", "recipe.yaml")
    code, out, _ = run("validate", "recipe.yaml", "recipe.lock.yaml")
    assert code == 0
    assert "skip recipe.lock.yaml (a lockfile: recipe lock writes it)" in out


def test_read_lock_refuses_what_is_not_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock.yaml"
    path.write_text("name: not a lock\n", "utf-8")
    with pytest.raises(RecipeError, match="not a lockfile"):
        lockfile.read_lock(path, "x.lock.yaml")


def test_plan_with_a_lock_and_diff_import_no_training_library(write, minimal,
                                                              tmp_path: Path) -> None:
    import subprocess
    import sys

    write(minimal)
    script = (
        "import sys\n"
        "from llm_recipe import cli\n"
        "assert cli.main(['lock', 'recipe.yaml']) == 0\n"
        "assert cli.main(['plan', 'recipe.yaml', '--json']) == 0\n"
        "assert cli.main(['diff', 'recipe.yaml', 'recipe.yaml']) == 0\n"
        "heavy = ('torch', 'transformers', 'peft', 'trl', 'accelerate', 'datasets')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
