"""Property tests: no mutation of a valid recipe makes the compiler crash.

Whatever a user writes, ``compile_recipe`` either returns a plan or raises a
:class:`RecipeError` that renders with a location; the CLI never exits 1 (the
internal-error code). Mutations work on the data (delete, replace, rename, insert,
re-type a value) and on the text (truncate, insert random characters, duplicate a
line), starting from the valid golden cases. Derandomized, so CI is reproducible;
``RECIPE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` searches deeper.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_recipe import cli
from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError, RecipeErrors

CASES = Path(__file__).parent / "cases" / "valid"
SEEDS = {
    path.parent.name: path.read_text("utf-8")
    for path in sorted(CASES.glob("*/recipe.yaml"))
    if not (path.parent / "base.yaml").exists()
}
EXAMPLES = int(os.environ.get("RECIPE_FUZZ_EXAMPLES", "150"))
"""Examples per property; raise it for a deeper local run (RECIPE_FUZZ_EXAMPLES=5000)."""
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["sft", "base", "math", "${vars.x}", "${env:X}", "yes", "1e-4", "null"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.text(max_size=12) | st.sampled_from(["kind", "<<", "extends", "profiles", "vars", "lrr"])


def _paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*path, index))


def _parent(data: Any, path: tuple) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_data(draw: st.DrawFn) -> str:
    """A seed recipe with 1-3 structural mutations, dumped back to YAML."""
    data = copy.deepcopy(yaml.safe_load(SEEDS[draw(st.sampled_from(sorted(SEEDS)))]))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(data, path), path[-1]
        op = draw(st.sampled_from(["delete", "replace", "rename", "insert", "retype"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif op == "insert":
            target = parent if isinstance(parent, dict) else data
            target[draw(keys)] = draw(values)
        elif op == "retype":
            value = parent[last]
            parent[last] = draw(st.sampled_from([[value], {"x": value}, str(value), None, 0, True]))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A seed recipe's text, truncated, with characters inserted or a line duplicated."""
    text = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    op = draw(st.sampled_from(["truncate", "insert", "duplicate", "replace_char"]))
    if op == "truncate":
        raw = text.encode("utf-8")
        return raw[: draw(st.integers(0, len(raw)))].decode("utf-8", errors="ignore")
    if op == "duplicate":
        lines = text.splitlines(keepends=True)
        index = draw(st.integers(0, len(lines) - 1))
        return "".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    at = draw(st.integers(0, len(text)))
    noise = draw(
        st.text(min_size=1, max_size=6)
        | st.sampled_from(["\t", ":", "- ", "&a ", "*a", "!!python/name:os.system ", "{", "]", "#"])
    )
    if op == "insert":
        return text[:at] + noise + text[at:]
    return text[:at] + noise + text[at + len(noise) :]


def _compile(text: str, overrides: tuple[str, ...] = ()) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "recipe.yaml"
        path.write_text(text, "utf-8")
        try:
            compile_recipe(path, overrides=overrides, cwd=Path(directory)).to_json()
        except RecipeError as error:
            error.render()
            error.to_dict()
            for single in error.errors if isinstance(error, RecipeErrors) else [error]:
                assert single.location is not None, single.render()


@SETTINGS
@given(mutated_data())
def test_data_mutations_raise_only_recipe_errors(text: str) -> None:
    _compile(text)


@SETTINGS
@given(mutated_text())
def test_text_mutations_raise_only_recipe_errors(text: str) -> None:
    _compile(text)


SET_PATHS = [
    "seed",
    "name",
    "description",
    "vars.x",
    "stages.sft.train.lr",
    "stages.sft.train",
    "stages.sft.kind",
    "stages.sft.adapter",
    "stages.sft",
    "models.base",
    "models.base.hub",
    "datasets.math.n",
    "compute.env.HF_TOKEN",
    "stages.eval.models[0]",
    "stages.nope.kind",
]


@SETTINGS
@given(
    st.lists(
        st.tuples(st.sampled_from(SET_PATHS) | st.text(max_size=10), st.text(max_size=12))
        | st.text(max_size=20).map(lambda text: (text, None)),
        min_size=1,
        max_size=3,
    )
)
def test_random_overrides_raise_only_recipe_errors(sets: list[tuple[str, str | None]]) -> None:
    overrides = tuple(key if value is None else f"{key}={value}" for key, value in sets)
    _compile(SEEDS["minimal_sft"], overrides)


@settings(SETTINGS, max_examples=max(EXAMPLES * 2 // 5, 1))
@given(mutated_data() | mutated_text(), st.booleans())
def test_cli_never_exits_with_an_internal_error(text: str, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "recipe.yaml"
        path.write_text(text, "utf-8")
        out, err = io.StringIO(), io.StringIO()
        argv = ["plan", str(path), *(["--json"] if as_json else [])]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        assert code in (0, 2), err.getvalue()
        if code == 2:
            assert "Traceback" not in err.getvalue()
            assert (out if as_json else err).getvalue()
