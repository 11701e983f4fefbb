"""``cmt`` command line: thin wrappers over the library, configured by ``params.yaml``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, cast

import yaml

from cmt.config import ConfigError, Params, load_params, preset_names
from cmt.failure import report


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["pretrain.lr=1e-3", "compare.seeds=[0]"]`` -> dotted overrides with YAML values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.lr=1e-3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:  # also a tag such as !!python/object, which is refused
            problem = str(err).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not plain YAML ({problem})") from None
    return out


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--params``, ``--preset`` and repeatable ``--set``: how every command gets its config."""
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--preset",
        choices=preset_names(),
        help="apply presets/<PRESET>.yaml on top of the params file (switches the benchmark)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set pretrain.lr=1e-3 (repeatable)",
    )


def params_from_args(args: argparse.Namespace) -> Params:
    """The validated config of ``--params`` with the ``--preset`` and ``--set`` overrides."""
    return load_params(args.params, parse_sets(args.set), args.preset)


def cmd_generate(args: argparse.Namespace) -> None:
    from cmt.benchmarks import make_benchmark

    data = params_from_args(args).data
    out = Path(args.out or f"data/{data.name}")
    summary = make_benchmark(data).build_datasets(out, Path(args.behaviour))
    print(json.dumps(summary, indent=2))


def cmd_behaviour(args: argparse.Namespace) -> None:
    """Train (or resume) the benchmark's behaviour learner and commit-ready publish it."""
    from cmt.behaviour.committed import publish_progress, train_and_publish
    from cmt.benchmarks import make_benchmark

    data = params_from_args(args).data
    bench = make_benchmark(data)
    family, sac = getattr(bench, "family", None), getattr(data, "sac", None)
    if family is None or sac is None:
        raise ConfigError(f"data.benchmark={data.benchmark} has no trained behaviour policies")
    checkpoint_dir = Path(args.checkpoints) / family.name
    if args.save_progress:
        print(publish_progress(family, sac, data.seed, checkpoint_dir))
        return
    command = shlex.join(["python", "-m", "cmt.cli", *sys.argv[1:]])
    episodes = int(cast(Any, data).reference_episodes)  # every MuJoCo data section has it
    out = train_and_publish(
        family, sac, data.seed, episodes, checkpoint_dir, command, not args.quiet
    )
    print(out)


def cmd_compare(args: argparse.Namespace) -> None:
    from cmt.compare import run_comparison

    params = params_from_args(args)
    run_comparison(params, args.out, args.data, not args.quiet, args.behaviour)
    print((Path(args.out) / "results.md").read_text())
    print(f"results: {Path(args.out) / 'results.md'} (also .json, .png)")


def cmd_export_minari(args: argparse.Namespace) -> None:
    """Write a dataset file as a Minari dataset (``cmt.data.minari_export``)."""
    from cmt.data.minari_export import export_file
    from cmt.data.sources import check_minari_id

    try:
        check_minari_id(args.dataset_id)
    except ValueError as err:
        raise ConfigError(f"--dataset-id: {err}") from None
    path = export_file(
        args.file,
        args.dataset_id,
        env_id=args.env_id,
        root=args.root,
        author=args.author,
        data_format=args.data_format,
        force=args.force,
    )
    print(f"Minari dataset {args.dataset_id!r} written to {path}")


CHECK_MARK = "params valid\n"
"""What ``cmt config --check FILE`` writes: always the same bytes, so the stages DVC orders
after it do not rerun because it did."""


def cmd_config(args: argparse.Namespace) -> None:
    """Print the validated configuration, or the JSON schema with every field's description;
    with ``--check FILE``, only validate and write the mark ``FILE``."""
    if args.schema:
        print(json.dumps(Params.model_json_schema(), indent=2))
    elif args.check:
        from cmt.atomic import write_text

        params_from_args(args)
        write_text(args.check, CHECK_MARK)
    else:
        print(yaml.safe_dump(params_from_args(args).model_dump(mode="json"), sort_keys=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_config_options(p)
        p.set_defaults(fn=fn)
        return p

    p = add("generate", cmd_generate, "Build the benchmark's offline datasets.")
    p.add_argument("--out", default=None, help="output directory (default: data/<name>)")
    p.add_argument(
        "--behaviour",
        default="outputs/sac",
        help="root of trained behaviour policies' checkpoints (default: %(default)s)",
    )
    p = add(
        "behaviour",
        cmd_behaviour,
        "Train (or resume) a MuJoCo benchmark's behaviour policies and write them to "
        "behaviour/<env or family>/ for committing (docs/behaviour.md).",
    )
    p.add_argument(
        "--checkpoints",
        default="outputs/sac",
        help="root of the learners' resumable checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--save-progress",
        action="store_true",
        help="only copy the learner's current state to behaviour/<name>/learner.pt",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = add("compare", cmd_compare, "Run the method comparison and write the results table.")
    p.add_argument("--out", default="outputs/compare", help="output directory")
    p.add_argument("--data", default=None, help="dataset directory (default: OUT/data)")
    p.add_argument(
        "--behaviour",
        default="outputs/sac",
        help="root of trained behaviour policies' checkpoints (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_export_minari(sub)
    p = add("config", cmd_config, "Show the validated configuration.")
    p.add_argument("--schema", action="store_true", help="print the JSON schema instead")
    p.add_argument(
        "--check",
        metavar="FILE",
        help="only validate, and write FILE (the mark of dvc.yaml's check stage)",
    )
    return parser


def add_export_minari(sub: Any) -> None:
    """``cmt export-minari FILE --dataset-id ID``: no config, the file says everything."""
    from cmt.data.sources import MINARI_FORMATS

    text = "Write a dataset file (data/<name>/train.hdf5) as a Minari dataset."
    p = sub.add_parser("export-minari", help=text, description=text)
    p.add_argument("file", help="a single-task dataset file this project wrote")
    p.add_argument(
        "--dataset-id",
        required=True,
        help="Minari dataset id, (namespace/)name-v<N>, e.g. cmt/hopper/medium-v0",
    )
    p.add_argument(
        "--root",
        default=None,
        help="Minari datasets root (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)",
    )
    p.add_argument(
        "--env-id", default=None, help="Gymnasium env id (default: the env_id the file records)"
    )
    p.add_argument("--author", default=None, help="author the dataset records")
    p.add_argument(
        "--data-format",
        choices=MINARI_FORMATS,
        default="hdf5",
        help="Minari storage (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace a dataset of that id")
    p.set_defaults(fn=cmd_export_minari)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # one line; a traceback only in the log file it names
        report(f"cmt-{args.command}", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
