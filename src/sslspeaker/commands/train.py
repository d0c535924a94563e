"""`sslspeaker train`."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    if args.list:
        print_methods_and_encoders()
        print_recipes()
        return 0
    if not args.config or not args.out:
        raise ValueError("train needs CONFIG and --out RUN_DIR (or --list)")
    from ..config import load_config
    from ..training.trainer import train

    if args.resume and args.force:
        raise ValueError("train: --resume continues the run in --out, --force starts it over: give one")
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, args.out, resume=args.resume, max_minutes=args.max_minutes, force=args.force,
                   overrides=args.overrides)
    print(json.dumps(result))
    return 0


def print_methods_and_encoders() -> None:
    """Each registered method with its description and its options (default, help), then the encoders."""
    from ..methods import list_methods, method_options
    from ..models import list_encoders

    print("methods (set with method.name=NAME, options with method.options.OPTION=VALUE):")
    for name, doc in list_methods().items():
        print(f"  {name:14s} {doc}")
        for opt in method_options(name):
            print(f"      {opt.name:28s} {opt.default!r:>10}  {opt.help}")
    print("encoders: " + ", ".join(list_encoders()))


def recipe_summary(path) -> tuple[str, str]:
    """(kind, description) of a packaged recipe: kind "pipeline" (a ``stages`` list), "demo" (a ``demo``
    section) or "train"; the description is its first comment line."""
    from ..config import load_yaml

    text = path.read_text()
    tree = load_yaml(text) or {}
    kind = "pipeline" if "stages" in tree else "demo" if "demo" in tree else "train"
    first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
    return kind, first


def print_recipes() -> None:
    """The packaged recipes by kind, each with its first comment line: ``sslspeaker train NAME`` runs one."""
    from ..config import packaged_recipes, recipe_folder

    rows = [(name, *recipe_summary(path)) for name, path in packaged_recipes().items()]
    for kind, how in (("train", "sslspeaker train NAME --out RUN_DIR"), ("pipeline", "sslspeaker pipeline NAME --out DIR"),
                      ("demo", "sslspeaker demo")):
        print(f"{kind} recipes ({how}; files in {recipe_folder()}):" if kind != "demo" else "demo recipe (sslspeaker demo):")
        for name, _, about in (r for r in rows if r[1] == kind):
            print(f"  {name:32s} {about[:96]}")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an encoder from a recipe: train CONFIG [key=value ...] --out RUN_DIR")
    p.add_argument("config", nargs="?", help="a YAML recipe file, or the name of a packaged recipe "
                                             "(e.g. moco_speechocean762; train --list names them)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32")
    p.add_argument("--out", help="run folder (checkpoints, logs, resolved config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint; overrides "
                   "given with it may change train.epochs, logging, checkpoint and validation options")
    p.add_argument("--force", action="store_true",
                   help="start a new run over the one in --out (the old run is moved to --out/replaced-STAMP/)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after M minutes")
    p.add_argument("--list", action="store_true", help="list the registered methods (with their options), the encoders and the packaged recipes")
    p.set_defaults(func=run)
