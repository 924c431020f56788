"""Command lines shared by the benchmark scripts: their own flags before `--`, training-config
overrides after it, and the config resolved exactly as the training CLI resolves it."""

from __future__ import annotations

import argparse

import ml_collections


def parser_and_overrides(doc: str, prog: str, argv: list[str]):
    """(an ArgumentParser whose help is `doc`, the script's own arguments, the overrides)."""
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(doc.split("\n\n")[1:]))
    return parser, own, overrides


def load_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config file with `--config.x=y` overrides applied, as `wavjepa_jax.train` sees it."""
    from absl import flags
    from ml_collections import config_flags
    argv = ["benchmark", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=values, lock_config=True,
                                    sys_argv=argv)  # The overrides it must accept.
    values(argv)
    return values.config
