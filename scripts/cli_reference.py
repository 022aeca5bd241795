"""Regenerate docs/cli.md from the parser: ``.venv/bin/python scripts/cli_reference.py > docs/cli.md``.

The last column (the original tool's flag) comes from ``ORIGINAL`` below; ``tests/e2e/test_docs.py`` checks that every
flag of the parser is in the file.
"""

import argparse

from npzfix_core.cli import build_parser
from npzfix_tools.cli import add_partitions

HEAD = """# Command line: every flag

`npzfix COMMAND --help` says the same; `tests/e2e/test_docs.py` fails if a flag of the parser is missing here
(regenerate: `.venv/bin/python scripts/cli_reference.py > docs/cli.md`). The last column names the flag of the
original tool it replaces (`ClClForGitHub/vfmkd`, `tools/core/fix/` and `tools/core/data/`); the table of
the originals in [operations.md](operations.md) says where npzfix differs on purpose. Exit status: 0 nothing failed, 1 some files failed or the
directory vanished mid-run, 2 usage error, 128+N stopped by signal N (summary and report still written).
"""

ORIGINAL = {
    ("edges", "--npz-dir"): "update_edge_maps_from_npz.py `--npz-dir`",
    ("edges", "--json-dir"): "`--json-dir` (required there)",
    ("edges", "--kernel-size"): "`--kernel-size`",
    ("edges", "--max-files"): "`--max-files`",
    ("edges", "--skip-if-processed"): "`--skip-if-processed` (on there too)",
    ("edges", "--no-skip-if-processed"): "`--no-skip-if-processed`",
    ("edges", "--set-edge-flag"): "`--set-edge-flag` (on there too)",
    ("edges", "--no-set-edge-flag"): "`--no-set-edge-flag` (kept the old flag there)",
    ("edges", "--sort-by"): "`--sort-by` (mtime there too)",
    ("edges", "--reverse"): "`--reverse`",
    ("edges", "--only-mtime-after"): "`--only-mtime-after`",
    ("features", "--root"): "bulk_fix_npz_features.py `--root`",
    ("features", "--samples"): "fix_npz_features_inplace.py `--samples`",
    ("features", "--npz-dirs"): "fix_npz_features_inplace.py `--npz-dirs`",
    ("features", "--extracted-dirs"): "fix_train_test_npz.py `--extracted-dirs`",
    ("features", "--weights"): "`--weights` (all three; the same default)",
    ("features", "--device"): "fix_train_test_npz.py `--device` (`cuda:4` there)",
    ("features", "--max-files"): "bulk / train-test `--max-files` (0 = no limit)",
    ("features", "--max-images"): "fix_npz_features_inplace.py `--max-images` (0 = no limit)",
    ("features", "--log"): "`--log` (required there)",
    ("shards", "--npz-dir"): "create_sa1b_tar_shards.py `--features-dir`",
    ("shards", "--image-dir"): "`--images-dir`",
    ("shards", "--out"): "`--output-dir`",
    ("shards", "--shard-size"): "`--shard-size` (1000 there too)",
}


def default_of(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreFalseAction):
        return "-"
    if isinstance(action, argparse._StoreTrueAction):
        return "on" if action.default else "off"
    if action.default in (None, argparse.SUPPRESS):
        return "-"
    return f"`{action.default}`"


def main() -> None:
    print(HEAD)
    ap = build_parser(add_partitions)
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        print(f"## `npzfix {name}`\n")
        print("| flag | default | meaning | the original's |")
        print("|---|---|---|---|")
        for a in parser._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in a.option_strings) or f"`{a.dest.upper()}` (positional)"
            first = a.option_strings[0] if a.option_strings else ""
            meaning = (a.help or "").replace("|", "/")
            print(f"| {flags} | {default_of(a)} | {meaning} | {ORIGINAL.get((name, first), '')} |")
        print()


if __name__ == "__main__":
    main()
