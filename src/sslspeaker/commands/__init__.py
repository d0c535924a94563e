"""One module per sub-command: each has ``add_parser(subparsers)`` and sets ``func``."""

COMMANDS = ("prepare", "synth", "train", "evaluate", "embed", "verify", "export", "demo", "pseudolabel", "pipeline",
            "plot", "shard")
