"""`python -m mamba_nb <command>`: the course's pipeline from the command line.

Each command maps one config dataclass (see `config.py`) to flags and calls the
same function a notebook calls; its `--help` shows each setting's explanation, default
and choices, in the config's own words, and the top-level `--help` the course's order.
Nothing here computes anything itself; heavy imports happen inside each command so
`--help` stays instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from mamba_nb import config as C


def _build_dataset(args: argparse.Namespace) -> None:
    from mamba_nb.dataset import build_dataset

    ds = build_dataset(C.from_sources(C.DataConfig, args))
    print(ds.summary())


def _train(args: argparse.Namespace) -> None:
    from mamba_nb.train import train

    train(C.from_sources(C.TrainConfig, args))


def _infill(args: argparse.Namespace) -> None:
    from mamba_nb.infill import infill_cli

    infill_cli(C.from_sources(C.InfillConfig, args), args.prefix_file, args.suffix_file)


def _evaluate(args: argparse.Namespace) -> None:
    from mamba_nb.evaluate import evaluate_cli

    evaluate_cli(C.from_sources(C.EvalConfig, args))


def _merge_lora(args: argparse.Namespace) -> None:
    from mamba_nb.checkpoint import resolve_checkpoint_dir
    from mamba_nb.model import load_checkpoint

    model, tokenizer = load_checkpoint(args.checkpoint)  # base + adapter, merged
    model.save_pretrained(args.out_dir)  # our model in HF's format (the Llama peer: HF's own)
    tokenizer.save_pretrained(args.out_dir)
    print(f"merged {str(resolve_checkpoint_dir(args.checkpoint))!r} into a plain HF model in {args.out_dir!r}")


def _merge_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a LoRA run (its directory, latest/ or a snapshot)")
    p.add_argument("--out-dir", required=True, help="where the merged model goes")


def _convert_fsdp(args: argparse.Namespace) -> None:
    from mamba_nb.fsdp import convert_shards

    out = convert_shards(args.checkpoint, args.out_dir)
    print(f"wrote the weights of {args.checkpoint!r} as a plain HF model in {str(out)!r}")


def _convert_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="an FSDP run (its directory or latest/)")
    p.add_argument("--out-dir", required=True, help="a new directory for the plain HF model")


def _course(args: argparse.Namespace) -> None:
    from mamba_nb.course import run_course

    run_course()


def _reference(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mamba_nb import reference

    if not args.write:
        print(reference.settings_reference(), end="")
        return
    changed = reference.write_all(Path(args.root))
    print("rewrote " + ", ".join(changed) if changed else "the README's reference and the notebooks' quotes were "
          "current")


def _reference_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--write", action="store_true", help="rewrite the README's settings reference and the notebooks' "
                   "quoted comments from config.py (default: print the reference)")
    p.add_argument("--root", default=".", help="the repository to rewrite (default: .)")


def _infill_extra(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s --prefix-file FILE --suffix-file FILE [options]"
    p.add_argument("--prefix-file", required=True, metavar="FILE", help="text before the hole ('-' for stdin)")
    p.add_argument("--suffix-file", required=True, metavar="FILE", help="text after the hole")


# name → (help, config class or None, extra-arguments hook or None, runner)
COMMANDS: dict[str, tuple[str, Optional[type], Optional[Callable], Callable]] = {
    "build-dataset": ("build the Lance token dataset from a corpus", C.DataConfig, None, _build_dataset),
    "train": ("train or fine-tune Mamba with FIM", C.TrainConfig, None, _train),
    "infill": ("fill a hole between a prefix and a suffix", C.InfillConfig, _infill_extra, _infill),
    "evaluate": ("measure a checkpoint's infilling", C.EvalConfig, None, _evaluate),
    "course": ("the whole course headless on the default corpus", None, None, _course),
    "merge-lora": ("write a LoRA run merged into its base as a plain HF model", None, _merge_extra, _merge_lora),
    "convert-fsdp": ("write an FSDP run's sharded weights as a plain HF model", None, _convert_extra, _convert_fsdp),
    "reference": ("print every setting of every command as YAML, explained", None, _reference_extra, _reference),
}

# One example per command, shown in its --help (and the first four in the course's order below).
EXAMPLES = {
    "build-dataset": "python -m mamba_nb build-dataset --source dir --path ~/src/project --out-dir data/project",
    "train": "python -m mamba_nb train --out-dir runs/mine --time-budget-s 600",
    "infill": "python -m mamba_nb infill --checkpoint runs/mine --prefix-file before.py --suffix-file after.py",
    "evaluate": "python -m mamba_nb evaluate --checkpoint runs/mine",
    "course": "python -m mamba_nb course",
    "merge-lora": "python -m mamba_nb merge-lora --checkpoint runs/lora --out-dir runs/lora-merged",
    "convert-fsdp": "python -m mamba_nb convert-fsdp --checkpoint runs/big --out-dir runs/big-hf",
    "reference": "python -m mamba_nb reference --write   # after changing a setting's words in config.py",
}

START = """\
Start here, in the course's order (each step reads what the one before wrote):
  1. build-dataset   python -m mamba_nb build-dataset
                     this Python's standard library -> data/stdlib (--source dir --path DIR: your code)
  2. train           python -m mamba_nb train --out-dir runs/mine --time-budget-s 600
                     600 s of training steps on data/stdlib -> runs/mine (latest/ is an HF model)
  3. infill          python -m mamba_nb infill --checkpoint runs/mine --prefix-file before.py --suffix-file after.py
                     the middle the model writes between the two files
  4. evaluate        python -m mamba_nb evaluate --checkpoint runs/mine
                     held-out lines, the suffix gain, losses and HumanEval, as a table and a JSON file
All four on the course's settings: python -m mamba_nb course (what `make course` runs).
Each command's settings, explained, with defaults: python -m mamba_nb <command> --help"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mamba_nb", description=__doc__.splitlines()[0] + "\n\n" + START,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, (help_, cls, extra, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=f"{help_}.", epilog=f"example: {EXAMPLES[name]}",
                           usage="%(prog)s [--config YAML] [options]" if cls is not None else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if cls is not None:
            C.add_arguments(p, cls)
        if extra is not None:
            extra(p)
    return top


def _is_user_error(e: Exception) -> bool:
    """Bad input rather than a bug: a bad value (ValueError), a missing path, or one of the
    project's own errors (DatasetError, CheckpointError, TrainingError, ...)."""
    return isinstance(e, (ValueError, FileNotFoundError)) or type(e).__module__.startswith("mamba_nb.")


# Commands that train or evaluate: worth an allocator that keeps big blocks (allocator.py).
HEAVY = ("train", "evaluate", "course", "build-dataset")


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command in HEAVY:
        from mamba_nb import allocator

        if argv is None:  # a real command line: safe to re-execute it
            allocator.use_tcmalloc()
        print(allocator.describe(), flush=True)
    try:
        COMMANDS[args.command][3](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # Bad input carries a message that names the bad value and what to do; a traceback
        # would bury it. Bugs keep theirs, and MAMBA_NB_TRACEBACK=1 shows it anyway.
        if not _is_user_error(e) or os.environ.get("MAMBA_NB_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
