"""``saescope <step>``: the command-line entry point of the training pipeline.

Each step lives in its own module that exposes ``add_parser(subparsers)``; the parser it adds sets
``func`` to the function that runs the step and ``step`` to the step name. Steps register with
:func:`saescope.train.cli.add_step`, so their options are the fields of their config dataclass.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from saescope.train.cli import USER_ERRORS

# the step modules; one whose own module is missing (not written yet) is left out
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
    "saescope.train.feature_labels",
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
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise  # a bug: keep its traceback
        print(f"error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


def user_error_message(err: BaseException) -> str | None:
    """The one line to print for a user error (bad input, missing file, a Hub id that cannot be
    fetched), or None for anything else.

    Hub failures raised without a wrapper (:func:`saescope.core.hub_errors.hub_access`) still
    become one line saying what to do; a multi-line message is joined into one.
    """
    from saescope.core.hub_errors import HubAccessError, classify, hub_message, repo_from_error

    if isinstance(err, HubAccessError):
        message = str(err)
    elif classify(err) is not None and (
        repo_from_error(err)[1] is not None or not isinstance(err, USER_ERRORS)
    ):
        message = hub_message(err) or str(err)
    elif isinstance(err, USER_ERRORS):
        message = str(err)
    else:
        return None
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
