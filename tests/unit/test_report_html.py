"""``recipe report`` on workspaces laid out by hand (no torch, no browser): escaping, the
continual ledger, the lineage layout, the missing extra, and a workspace left untouched.

The browser test of a real run is tests/integration/test_report.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llm_recipe import cli
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.plan_types import Plan

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

pytest.importorskip("matplotlib", reason="the report extra: pip install 'llm-recipe[report]'")

HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = "\"><img src=x onerror=alert(2)>"


@pytest.fixture
def run(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def continual_workspace(root: Path) -> Plan:
    """The continual recipe's tiny profile, its stage as a run leaves it: metrics rows per
    step over two phases, probe rows, and a ledger with every kind of entry."""
    plan = compile_recipe(ROOT / "recipes/continual_gpt2.yaml", profiles=["tiny"], cwd=root)
    directory = root / plan.stage("continual").dir
    rows: list[dict[str, Any]] = []
    for step in range(1, 61):
        phase = "wikitext" if step <= 30 else f"imdb {HOSTILE}"
        rows.append({"step": step, "phase": "train", "loss": 4.0 - step * 0.03 + (step % 7) * 0.02,
                     "kl": 0.01, "continual_phase": phase, "phase_idx": int(step > 30)})
        if step % 10 == 0:
            rows.append({"step": step, "phase": "probe", "wikitext": 3.5 - step * 0.01,
                         "imdb": 3.9 - step * 0.005, "verdict": "good",
                         "continual_phase": phase})
    write_rows(directory / "metrics.jsonl", rows)
    ledger = [{"name": "000_wikitext_start", "type": "start", "phase": "wikitext", "step": 0,
               "metrics": {"wikitext": 3.6, "imdb": 3.95}},
              {"name": "000_wikitext_good_step000000010", "type": "good", "phase": "wikitext",
               "step": 10, "metrics": {"wikitext": 3.4}},
              {"name": "000_wikitext_rollback_step000000020", "type": "rollback",
               "phase": "wikitext", "step": 20, "metrics": {"wikitext": 3.9}},
              {"name": "000_wikitext_commit", "type": "commit", "phase": "wikitext", "step": 30,
               "metrics": {"wikitext": 3.2}},
              {"name": f"001_{HOSTILE}_good", "type": "good", "phase": HOSTILE_ATTR,
               "step": 40, "metrics": {}}]
    write_rows(directory / "ledger" / "index.jsonl", ledger)
    return plan


def test_report_shows_the_continual_ledger_on_the_loss_curve(tmp_path: Path) -> None:
    from llm_recipe.report_html import build_report

    plan = continual_workspace(tmp_path)
    html = build_report(plan, tmp_path)
    block = html.split('data-stage="continual"', 1)[1].split('<section id="evaluation">')[0]
    svg = block.split('<div class="chart loss-curve">', 1)[1].split("</svg>", 1)[0]
    # The curve, the probes (dashed) and a legend entry per ledger mark type.
    for text in ("train loss", "probe wikitext", "probe imdb", ">start<", ">good<",
                 ">rollback<", ">commit<", ">wikitext<"):
        assert text in svg, text
    rows = re.findall(r'<tr data-type="(\w+)">', block)
    assert rows == ["start", "good", "rollback", "commit", "good"]
    assert "1 start</span>" in block and "2 good</span>" in block
    assert "1 rollback</span>" in block and "1 commit</span>" in block


def test_report_escapes_every_workspace_and_recipe_string(tmp_path: Path) -> None:
    from llm_recipe.report_html import build_report

    plan = continual_workspace(tmp_path)
    report = tmp_path / plan.stage("eval_imdb").output.path
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({
        "data": HOSTILE_ATTR, "examples": 3, "metrics": ["perplexity", HOSTILE],
        "models": {HOSTILE: {"perplexity": 12.5}, "gpt2": {"perplexity": 30.1}},
        "table": [{"model": HOSTILE}, {"model": "gpt2"}]}))
    html = build_report(plan, tmp_path)
    assert HOSTILE not in html and HOSTILE_ATTR not in html
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=alert(2)" in html  # as text, inside an escaped string
    assert html.count("<svg") == html.count("</svg>") >= 2


def test_report_shows_an_eval_gate(tmp_path: Path) -> None:
    from llm_recipe.report_html import build_report

    plan = compile_recipe(ROOT / "recipes/quickstart.yaml", cwd=tmp_path)
    stage = plan.stage("eval")
    directory = tmp_path / stage.dir
    directory.mkdir(parents=True)
    (tmp_path / stage.output.path).write_text(json.dumps({
        "data": "arith_test", "examples": 100, "metrics": ["gsm8k_accuracy"],
        "models": {"pretrain": {"gsm8k_accuracy": 0.0, "correct": 0, "total": 100},
                   "sft": {"gsm8k_accuracy": 0.46, "correct": 46, "total": 100}}}))
    size = (tmp_path / stage.output.path).stat().st_size
    gate = {"passed": False, "metric": "sft/gsm8k_accuracy", "value": 0.46, "threshold": 0.5,
            "message": "sft/gsm8k_accuracy = 0.46, needs >= 0.5"}
    (directory / "manifest.json").write_text(json.dumps({
        "status": "complete", "fingerprint": stage.fingerprint, "config": stage.config,
        "metrics": {"sft/gsm8k_accuracy": 0.46}, "key_metric": "sft/gsm8k_accuracy",
        "output": {"type": "report", "path": stage.output.path,
                   "files": {"report.json": {"size": size, "sha256": "x"}}},
        "gate": gate}))
    plan = compile_recipe(ROOT / "recipes/quickstart.yaml", cwd=tmp_path)  # status: now
    html = build_report(plan, tmp_path)
    assert '<tr data-stage="eval" data-state="gate_failed">' in html
    assert ('<p class="gate failed">gate failed: sft/gsm8k_accuracy = 0.46, needs &gt;= 0.5</p>'
            in html)
    assert "46.0% (46/100)" in html and "0.0% (0/100)" in html


def test_report_of_a_local_dataset_with_markup_in_its_path(tmp_path: Path, run) -> None:
    data = tmp_path / "data" / "<i onclick=x>rows.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        recipe: 1
        name: local
        models:
          base: {hub: sshleifer/tiny-gpt2, revision: main}
        datasets:
          rows: {path: "data/<i onclick=x>rows.jsonl", format: gsm8k}
        stages:
          sft: {kind: sft, model: base, data: rows, train: {max_steps: 2}}
        """))
    code, out, err = run("report", "r.yaml", "-o", "out/r.html")
    assert (code, err) == (0, ""), err
    assert out.startswith("wrote out/r.html (")
    html = (tmp_path / "out" / "r.html").read_text()
    assert "<i onclick" not in html and "&lt;i onclick=x&gt;rows.jsonl" in html


def test_lineage_layout_of_the_abel_pipeline() -> None:
    from llm_recipe.report_html.graph import lineage_layout

    plan = compile_recipe(ROOT / "recipes/abel.yaml", profiles=["tiny"], cwd=ROOT)
    layout = lineage_layout(plan)
    names = [n.id for n in layout.nodes]
    assert set(plan.stage(s.name).name for s in plan.stages) <= set(names)
    assert layout.crossings == 0
    column = {n.id: n.x for n in layout.nodes}
    for stage in plan.stages:  # every input is to the left of its consumer
        for item in stage.inputs:
            assert column[item.ref] < column[stage.name], (item.ref, stage.name)
    boxes = [(n.x, n.y, n.x + n.w, n.y + n.h) for n in layout.nodes]
    for i, a in enumerate(boxes):  # no two nodes overlap, and all are inside the picture
        assert a[0] >= 0 and a[2] <= layout.width and a[1] >= 0 and a[3] <= layout.height
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    labels = {(e.source, e.target): e.label for e in layout.edges}
    assert labels[("sft", "eval")] == "models" and labels[("sft", "dpo")] == "policy, reference"


def test_long_histories_are_thinned(tmp_path: Path) -> None:
    from llm_recipe.report_html.charts import Chart, Series, render_svg, thin

    steps = list(range(50_000))
    kept, values = thin(steps, [float(s) for s in steps])
    assert len(kept) <= 1501 and kept[0] == 0 and kept[-1] == 49_999 and values == kept
    svg = render_svg(Chart([Series("train loss", "train", [float(s) for s in steps],
                                   [1.0 / (1 + s) for s in steps])]), salt="t")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and len(svg) < 200_000
    assert "<!DOCTYPE" not in svg and "<metadata>" not in svg


def test_report_without_matplotlib_names_the_extra(run, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from llm_recipe.report_html import charts

    monkeypatch.setattr(charts, "available", lambda: False)
    (tmp_path / "r.yaml").write_text((ROOT / "recipes/quickstart.yaml").read_text())
    code, out, err = run("report", "r.yaml", "-o", "r.html")
    assert (code, out) == (1, "")
    assert "matplotlib, which is not installed" in err
    assert "pip install 'llm-recipe[report]'" in err
    assert not (tmp_path / "r.html").exists()


def test_report_reads_the_workspace_without_torch_and_changes_nothing(tmp_path: Path) -> None:
    plan = continual_workspace(tmp_path)
    (tmp_path / "c.yaml").write_text((ROOT / "recipes/continual_gpt2.yaml").read_text())
    workspace = tmp_path / plan.workspace
    before = {p: p.stat().st_mtime_ns for p in workspace.rglob("*")}
    script = textwrap.dedent(f"""
        import json, sys
        from llm_recipe.cli import main
        assert main(["report", "c.yaml", "-p", "tiny", "-o", "report.html"]) == 0
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert {p: p.stat().st_mtime_ns for p in workspace.rglob("*")} == before
    assert (tmp_path / "report.html").stat().st_size > 10_000
