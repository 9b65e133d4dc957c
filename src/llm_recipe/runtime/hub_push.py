"""``push_to_hub``: upload a completed stage's output to the Hugging Face Hub.

The push comes after the stage, never inside it: the output is complete and its
manifest written first, so a push that fails (no network here, a bad token, a full
quota) costs nothing already done. It is recorded in ``<stage dir>/push.json``
(repository, branch, commit, the output's sha256 from the manifest, or the error), and
``recipe run`` pushes again whenever that record does not say this output went to this
repository: a fresh stage is not trained again, only uploaded. A failed push is a row of
the run summary and makes ``recipe run`` exit 1 after everything else ran.

The token is read from the environment when the push runs (``token: ${env:HF_TOKEN}``;
the compiler refuses a token written inline) and never written: not in the plan, the
record, the log or an error message (masked as ``****`` if a library repeats it).
Offline (the hub does not answer, or ``HF_HUB_OFFLINE=1``) the push fails at once with
a message that names the repository, instead of after the client's retries.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import read_json, read_manifest
from llm_recipe.runtime.integrity import stage_path
from llm_recipe.runtime.workspace import atomic_write_json

RECORD = "push.json"
ENV_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")


class PushError(Exception):
    """Why a push did not happen, in words for the user (never holding the token)."""


def settings(stage: StagePlan) -> dict[str, Any] | None:
    value = stage.config.get("push_to_hub")
    return value if isinstance(value, dict) else None


def record(stage: StagePlan, root: Path) -> dict[str, Any] | None:
    """The stage's push record, when it is about the output its manifest describes."""
    data = read_json(stage_path(root, stage.dir) / RECORD)
    manifest = read_manifest(stage_path(root, stage.dir))
    if not isinstance(data, dict) or manifest is None:
        return None
    output = manifest.get("output") or {}
    return data if data.get("output_sha256") == output.get("sha256") else None


def pending(stage: StagePlan, root: Path) -> bool:
    """Whether a complete stage's output still has to go to its repository."""
    wanted = settings(stage)
    manifest = read_manifest(stage_path(root, stage.dir))
    if wanted is None or manifest is None or manifest.get("status") != "complete":
        return False
    done = record(stage, root)
    return not (done and done.get("status") == "pushed" and done.get("repo") == wanted["repo"]
                and done.get("revision") == wanted.get("revision"))


def push(plan: Plan, stage: StagePlan, root: Path, log: Any = None) -> dict[str, Any]:
    """Upload the stage's output; write and return the record (status pushed or failed)."""
    wanted = settings(stage) or {}
    directory = stage_path(root, stage.dir)
    manifest = read_manifest(directory) or {}
    repo, revision = wanted.get("repo", ""), wanted.get("revision")
    result: dict[str, Any] = {
        "repo": repo, "revision": revision, "private": bool(wanted.get("private", True)),
        "stage": stage.name, "fingerprint": stage.fingerprint,
        "output": stage.output.path, "output_sha256": (manifest.get("output") or {}).get("sha256"),
        "at": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds"),
    }
    token: str | None = None
    try:
        token = _token(wanted)
        result.update(status="pushed", **_upload(stage_path(root, stage.output.path), wanted,
                                                 token, plan, stage))
    except PushError as exc:
        result.update(status="failed", error=_mask(str(exc), token))
    except Exception as exc:  # the hub client's many errors: said, never raised
        text = _mask(f"{type(exc).__name__}: {exc}", token).splitlines()
        result.update(status="failed", error=text[0] if text else type(exc).__name__)
    atomic_write_json(directory / RECORD, result)
    if log is not None:
        log.line(describe(stage, result))
    return result


def describe(stage: StagePlan, result: dict[str, Any]) -> str:
    """One line for the log, the summary and stderr."""
    where = result["repo"] + (f"@{result['revision']}" if result.get("revision") else "")
    if result.get("status") == "pushed":
        return f"pushed the output of stage {stage.name} to the Hub: {where} " \
               f"(commit {str(result.get('commit') or '')[:12]})"
    return (f"cannot push the output of stage {stage.name} to the Hub repository {where}: "
            f"{result.get('error')}. The stage is complete and its output kept at "
            f"{stage.output.path}; `recipe run` pushes it again when the hub is reachable")


def _token(wanted: dict[str, Any]) -> str | None:
    """The token a ``${env:NAME}`` reference names, read now; None: huggingface_hub's own."""
    value = wanted.get("token")
    if not value:
        return None
    match = ENV_REF.match(str(value))
    if match is None:  # the compiler refuses this; a hand-edited plan must not leak it
        raise PushError("push_to_hub.token must be a ${env:NAME} reference")
    token = os.environ.get(match.group(1))
    if not token:
        raise PushError(f"the environment variable {match.group(1)} (push_to_hub.token) is "
                        "not set")
    return token


def _upload(output: Path, wanted: dict[str, Any], token: str | None, plan: Plan,
            stage: StagePlan) -> dict[str, Any]:
    from llm_recipe.runtime.models import hub_reachable

    if not hub_reachable():
        raise PushError("the Hugging Face Hub cannot be reached from here (no network, or "
                        "HF_HUB_OFFLINE=1)")
    if not output.exists():
        raise PushError(f"the output {stage.output.path} is missing")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo, revision = wanted["repo"], wanted.get("revision")
    api.create_repo(repo, private=bool(wanted.get("private", True)), exist_ok=True,
                    repo_type="model")
    if revision:
        api.create_branch(repo, branch=revision, exist_ok=True)
    message = (f"{plan.recipe['name']}/{stage.name} ({stage.kind}), stage fingerprint "
               f"{stage.fingerprint[:12]}")
    if output.is_dir():
        info = api.upload_folder(repo_id=repo, folder_path=str(output), revision=revision,
                                 commit_message=message)
    else:
        info = api.upload_file(repo_id=repo, path_or_fileobj=str(output),
                               path_in_repo=output.name, revision=revision,
                               commit_message=message)
    return {"commit": getattr(info, "oid", None), "url": getattr(info, "commit_url", None)}


def _mask(text: str, token: str | None) -> str:
    return text.replace(token, "****") if token else text
