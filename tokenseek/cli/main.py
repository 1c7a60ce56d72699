"""The ``tokenseek`` command: one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import torch

from tokenseek.errors import TokenSeekError

# Subcommand modules register themselves; a missing optional module only hides its command.
_COMMANDS = ("train", "score", "eval", "export", "bench", "plan", "visualize", "experiment")


def _version_text() -> str:
    """tokenseek's version and those of the libraries whose behaviour it depends on (for bug reports)."""
    from importlib.metadata import PackageNotFoundError, version

    from tokenseek import __version__

    def installed(name: str) -> str:
        if name == "torch":  # with its build (+cu130, +cpu), which the package metadata may leave out
            import torch

            return torch.__version__
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "transformers", "peft", "accelerate", "trl"))
    return f"tokenseek {__version__} ({libraries})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenseek", description="Memory-efficient fine-tuning by instance-aware token ditching.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    parser.add_argument("--version", action="version", version=_version_text(), help="show the versions of tokenseek and the libraries it drives")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"tokenseek.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tokenseek.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tokenseek.cli.config import normalise_flag

    return build_parser().parse_args([normalise_flag(a) for a in (sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tokenseek").setLevel(logging.INFO)
    if not args.verbose:
        import warnings

        import transformers

        # Library chatter ("Loading weights" bars, deprecation notes) would bury our own
        # progress bars and one-line errors; -v brings it back.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    try:
        from tokenseek.cli.common import check_shared_args

        check_shared_args(args)  # before any slow work, whichever command borrowed them
        return int(args.func(args) or 0)
    except TokenSeekError as exc:
        if args.verbose:
            raise
        print(f"tokenseek: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenseek: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except (MemoryError, torch.OutOfMemoryError):
        print(
            "tokenseek: error: out of memory: lower --ratio (`tokenseek plan --budget SIZE` finds the largest that fits), "
            "--max-length or --batch-size",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
