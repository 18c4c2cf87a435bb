"""``saescope <step>``: the command-line entry point of the training pipeline.

Each step lives in its own module that exposes ``add_parser(subparsers)``; the parser it adds sets
``func`` to the function that runs the step and ``step`` to the step name. Steps register with
:func:`saescope.train.cli.add_step`, so their options are the fields of their config dataclass.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, is_optional): a module that is missing its optional dependencies does not break the rest
STEP_MODULES = [
    "saescope.train.extract",
    "saescope.train.fit",
    "saescope.train.evaluate",
    "saescope.train.convert",
    "saescope.train.hub",
    "saescope.train.pipeline",
    "saescope.train.exemplars",
    "saescope.train.indices",
    "saescope.train.bundle",
    "saescope.train.default_bundle",
    "saescope.train.steer_eval",
    "saescope.train.probes",
    "saescope.train.ood_eval",
    "saescope.train.ontology",
    "saescope.train.diffusion",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saescope",
        description="saescope: extract vision-transformer activations, train and evaluate "
        "sparse autoencoders, and publish them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'saescope <step> --help' for the options of a step.",
    )
    sub = parser.add_subparsers(dest="step", metavar="<step>")
    for name in STEP_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("saescope.train."):
                continue  # step not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # user errors: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
