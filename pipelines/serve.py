"""Serve the whole-pipeline deployment to a Prefect server: ``python -m pipelines.serve``.

Run it in the repository (the served runs execute ``dvc exp run`` there) with
``PREFECT_API_URL`` pointing at the server. The deployment's default parameters are this
repository's ``params.yaml``; runs are triggered from the UI or with
``prefect deployment run cmt-pipeline/cmt-pipeline``. One run at a time: DVC locks the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cmt.config import ConfigError, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="cmt-pipeline", help="deployment name")
    parser.add_argument(
        "--params", default="params.yaml", help="default parameters of the deployment"
    )
    args = parser.parse_args(argv)
    try:
        defaults = load_params(args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from prefect.deployments.runner import EntrypointType

    from pipelines.pipeline import REPO_ENV, cmt_pipeline

    os.environ[REPO_ENV] = str(Path.cwd().resolve())  # inherited by every served run
    cmt_pipeline.serve(
        name=args.name,
        parameters={"params": defaults.model_dump(mode="json")},
        description="The CMT pipeline (DVC stages run as Prefect flows) as a DVC experiment.",
        tags=["cmt"],
        limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
