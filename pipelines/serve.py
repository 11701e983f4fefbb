"""Serve the whole-pipeline deployments to a Prefect server: ``python -m pipelines.serve``.

Run it in the repository (the served runs execute ``dvc exp run`` there) with
``PREFECT_API_URL`` pointing at the server. It serves ``cmt-pipeline/cmt-pipeline``, whose
defaults are the committed ``params.yaml`` (``git show HEAD:params.yaml``, not whatever the last
experiment left in the workspace) and whose ``preset`` field picks a dataset, and one
deployment per preset, ``cmt-pipeline/<preset>``, whose form holds that preset's values with
its own ``data`` fields. Runs are triggered from the UI or with
``prefect deployment run cmt-pipeline/<deployment>``. One run at a time: DVC locks the
repository.

Each deployment's form is the flow's parameter schema made specific to its benchmark: the
``data`` section as the benchmark's own fields (the UI shows a discriminated union only as raw
JSON), and methods, backbones, the registered method and the return target limited to what
the benchmark accepts. The server enforces the schema, so a bad value is refused when the run
is submitted.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cmt.config import ConfigError, Params, apply_preset, load_params, parse_params, preset_names
from cmt.methods import backbones_for

DESCRIPTION = "The CMT pipeline (DVC stages run as Prefect flows) as a DVC experiment"


def committed_params(path: str | Path = "params.yaml") -> Params:
    """``path`` as committed at ``HEAD`` (an experiment leaves its own values in the
    workspace's file), else the file as it is (no git, or not committed yet)."""
    path = Path(path)
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:./{path.name}"],
            cwd=path.resolve().parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        shown = None
    if shown is None or shown.returncode != 0:
        return load_params(path)
    try:
        raw = yaml.safe_load(shown.stdout) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"HEAD:{path}: not valid YAML: {err}") from None
    return parse_params(raw, f"HEAD:{path}")


def _restrict(prop: dict[str, Any], values: list[str]) -> None:
    """Limit a string field, or the items of a list field, to ``values``."""
    target = prop["items"] if prop.get("type") == "array" else prop
    target["enum"] = list(values)


def _referenced(schema: dict[str, Any]) -> set[str]:
    """The definitions reachable from the schema's properties."""
    found: set[str] = set()
    todo: list[Any] = [schema["properties"]]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            name = ref.rsplit("/", 1)[-1] if ref.startswith("#/definitions/") else ""
            if name and name not in found:
                found.add(name)
                todo.append(schema["definitions"][name])
            todo.extend(v for k, v in node.items() if k != "$ref")
        elif isinstance(node, list):
            todo.extend(node)
    return found


def form_schema(base: dict[str, Any], params: Params, with_preset: bool) -> dict[str, Any]:
    """The flow's parameter schema ``base`` for a deployment whose defaults are ``params``:
    the data section as ``params.data``'s own fields, the choices limited to its benchmark,
    and the ``preset`` field only where ``with_preset``."""
    schema = copy.deepcopy(base)
    defs = schema["definitions"]
    data = params.data
    section = type(data).__name__
    described = defs["Params"]["properties"]["data"].get("description", "")
    defs["Params"]["properties"]["data"] = {
        "$ref": f"#/definitions/{section}",
        "title": "Data",
        "description": f"{described} This deployment's benchmark: {data.benchmark}.",
    }
    _restrict(defs[section]["properties"]["benchmark"], [data.benchmark])
    methods = list(data.methods)
    compare = defs["CompareConfig"]["properties"]
    _restrict(compare["methods"], methods)
    _restrict(compare["backbones"], backbones_for(tuple(methods)))
    _restrict(defs["TrackingConfig"]["properties"]["registered_method"], methods)
    _restrict(defs["EvaluateConfig"]["properties"]["target_return"], list(data.target_returns))
    top = schema["properties"]
    for prop in top.values():  # docstring lines, joined for the form
        prop["description"] = " ".join(prop.get("description", "").split())
    top["params"]["default"] = params.model_dump(mode="json")
    top["overrides"]["default"] = {}
    if not with_preset:
        del schema["properties"]["preset"]
    keep = _referenced(schema)
    schema["definitions"] = {k: v for k, v in defs.items() if k in keep}
    return schema


def deployments(defaults: Params, name: str, presets: list[str]) -> list[Any]:
    """The main deployment ``name`` (``defaults``, a preset field) and one per preset."""
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.utilities.callables import ParameterSchema, parameter_schema

    from pipelines.pipeline import cmt_pipeline

    base = parameter_schema(cmt_pipeline).model_dump()
    raw = defaults.model_dump(mode="json")
    plans = [(name, defaults, True, f"{DESCRIPTION}: params.yaml, or a preset.")]
    for preset in presets:
        params = parse_params(apply_preset(raw, preset), f"preset {preset}")
        about = f"{DESCRIPTION}: preset {preset} ({params.data.benchmark})."
        plans.append((preset, params, False, about))
    out = []
    for deployment_name, params, with_preset, about in plans:
        deployment = cmt_pipeline.to_deployment(
            name=deployment_name,
            parameters={"params": params.model_dump(mode="json"), "overrides": {}},
            description=about,
            tags=["cmt"],  # a run of the main deployment may pick another dataset
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        assert isinstance(deployment, RunnerDeployment)  # called outside an event loop
        # The form of this deployment (the server validates runs against it): no public
        # argument sets a deployment's schema apart from its flow's.
        schema = form_schema(base, params, with_preset)
        deployment._parameter_openapi_schema = ParameterSchema(**schema)
        out.append(deployment)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="cmt-pipeline", help="main deployment name")
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="default parameters (as committed at HEAD, else the file)",
    )
    parser.add_argument(
        "--preset",
        action="append",
        choices=preset_names(),
        help="serve a deployment for this preset (repeatable; default: every preset)",
    )
    args = parser.parse_args(argv)
    try:
        defaults = committed_params(args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from prefect import serve

    from pipelines.pipeline import REPO_ENV

    os.environ[REPO_ENV] = str(Path.cwd().resolve())  # inherited by every served run
    serve(*deployments(defaults, args.name, args.preset or preset_names()), limit=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
