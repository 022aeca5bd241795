"""The reference tables stay true: every flag of the parser is in docs/cli.md, every NPZFIX_* variable the code
reads is in docs/configuration.md."""

import argparse
import os
import re

from npzfix_core.cli import build_parser
from npzfix_tools.cli import add_partitions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def test_every_flag_is_in_the_cli_reference():
    doc = _read("docs", "cli.md")
    ap = build_parser(add_partitions)
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in sub.choices.items():
        if f"## `npzfix {name}`" not in doc:
            missing.append(f"npzfix {name}")
        for action in parser._actions:
            missing += [f"{name} {o}" for o in action.option_strings if o not in ("-h", "--help") and f"`{o}`" not in doc]
    assert not missing, missing


def test_every_environment_variable_read_is_in_the_configuration_table():
    table = _read("docs", "configuration.md")
    read = set()
    for pkg in ("npzfix_core", "npzfix_dagster", "npzfix_tools"):
        for name in os.listdir(os.path.join(REPO, pkg)):
            if name.endswith(".py"):
                read |= set(re.findall(r"NPZFIX_[A-Z0-9_]*[A-Z0-9]\b", _read(pkg, name)))
    read -= {"NPZFIX_SLURM"}  # the prefix of NPZFIX_SLURM_* in prose
    assert read and not [v for v in sorted(read) if f"`{v}`" not in table]
