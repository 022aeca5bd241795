"""The ``npzfix`` flags: one parser per command; argparse dests are the request fields they set.

Defaults that come from the environment (``--device``, ``--gpus``) are read when the parser is built, by the
command that runs, never at import.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Mapping


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


MAX_FILES_HELP = "update at most this many files (skipped ones don't count; 0: no limit, the default)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", help="append progress and errors to this file (a report is written beside it)")
    p.add_argument("--report", help="write the run report here as JSON, and failures as CSV beside it")
    p.add_argument("--dry-run", action="store_true", help="compute and check everything, write nothing")
    p.add_argument(
        "--no-fsync",
        dest="durable",
        action="store_false",
        help="skip fsync after each write (faster on slow disks; a crash may lose recent updates)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="every log line on the terminal too")


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="SAM2 checkpoint (e.g. sam2.1_hiera_base_plus.pt); config follows from its name")
    p.add_argument("--config", help="SAM2 config, e.g. configs/sam2.1/sam2.1_hiera_b+.yaml")
    p.add_argument(
        "--random-init",
        dest="random_init_seed",
        type=int,
        metavar="SEED",
        help="seeded random teacher, for demos and tests only",
    )
    p.add_argument("--device", default=os.environ.get("NPZFIX_DEVICE", "auto"), help="cpu | cuda | cuda:N | auto")
    p.add_argument(
        "--gpus",
        default=os.environ.get("NPZFIX_GPUS"),
        help="allowed GPUs, e.g. 1,2,4,5,6,7 (default $NPZFIX_GPUS, else all)",
    )
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--resolution", type=int, help="encoder input side (default the model's, 1024)")


def _tolerance_flags(p: argparse.ArgumentParser) -> None:
    from npzfix_core.verify import Tolerance

    t = Tolerance()
    p.add_argument(
        "--min-cosine", type=float, default=t.min_cosine, help=f"per key, stored vs teacher (default {t.min_cosine})"
    )
    p.add_argument(
        "--max-rel-error",
        type=float,
        default=t.max_rel_error,
        help=f"per key, max |stored - teacher| / max |teacher| (default {t.max_rel_error})",
    )


def _edge_rule_flags(p: argparse.ArgumentParser, kernel_help: str) -> None:
    from npzfix_core import edge_rules

    p.add_argument("--kernel-size", type=_positive, default=None, help=kernel_help)
    p.add_argument(
        "--edge-rule",
        dest="rule",
        choices=sorted(edge_rules.RULES),
        default=edge_rules.DEFAULT,
        help="the edge rule (recorded in provenance; npzfix_core/edge_rules.py)",
    )


def _edge_selection_flags(e: argparse.ArgumentParser) -> None:
    """Which files an edges run takes, in which order: the original tool's flags."""
    e.add_argument(
        "--sort-by",
        "--order",
        dest="order",
        choices=("name", "mtime"),
        default="mtime",
        help="processing order (default mtime, oldest first, as the original; --order is npzfix's old name)",
    )
    e.add_argument("--reverse", action="store_true", help="reverse the order (with mtime: newest first)")
    e.add_argument(
        "--only-mtime-after", type=float, metavar="EPOCH", help="only NPZs modified after this time (epoch seconds)"
    )
    e.add_argument(
        "--no-recursive",
        dest="recursive",
        action="store_false",
        help="only the NPZs directly in --npz-dir (default: its whole tree, as the original's rglob)",
    )
    e.add_argument("--glob", help="only NPZ file names matching this pattern")


def _add_edges(sub, run: Callable[[argparse.Namespace], int]) -> None:
    e = sub.add_parser("edges", help="rebuild edge maps, Method B unless --edge-rule (update_edge_maps_from_npz.py)")
    e.add_argument("--npz-dir", required=True, help="the NPZ directory (its whole tree unless --no-recursive)")
    e.add_argument("--json-dir", help="where <stem>.json live (default: the NPZ dir, then its parent)")
    _edge_rule_flags(e, "the morphological gradient kernel (default: the rule's, 3 for Method B)")
    e.add_argument("--max-files", type=_non_negative, help=MAX_FILES_HELP)
    e.add_argument(
        "--skip-if-processed",
        dest="skip_if_processed",
        action="store_true",
        default=True,
        help="skip files flagged by this rule with this kernel size (the default; stale versions are redone)",
    )
    e.add_argument(
        "--no-skip-if-processed", dest="skip_if_processed", action="store_false", help="redo flagged files too"
    )
    e.add_argument(
        "--set-edge-flag",
        dest="set_flag",
        action="store_true",
        default=True,
        help="write edge_flag=1, edge_version (B_v1 for Method B) and provenance (the default)",
    )
    e.add_argument(
        "--no-set-edge-flag",
        "--no-edge-flag",
        dest="set_flag",
        action="store_false",
        help="write edge maps only; an earlier flag and provenance are removed (they would vouch for other edges)",
    )
    e.add_argument(
        "--retry-killed",
        action="store_true",
        help="also try files that killed a worker process in an earlier run (skipped by default)",
    )
    _edge_selection_flags(e)
    e.add_argument(
        "--worker-processes",
        "--workers",
        dest="worker_processes",
        type=_non_negative,
        default=1,
        help="worker processes (0: one per usable CPU, container limits kept); --workers is the old name",
    )
    _common(e)
    e.set_defaults(fn=run)


def _add_features(sub, run: Callable[[argparse.Namespace], int]) -> None:
    f = sub.add_parser(
        "features", help="recompute SAM2 P4/P5 (bulk_fix / fix_npz_features_inplace / fix_train_test_npz)"
    )
    f.add_argument("--root", help="bulk: scan this root recursively; sets feature_flag=1")
    f.add_argument("--samples", help="sample list: image paths, one per line; sets no flag")
    f.add_argument("--npz-dirs", help="sample list: comma-separated dirs searched for NPZs not beside their image")
    f.add_argument("--extracted-dirs", help="train/test: comma-separated <split>/extracted dirs; sets feature_flag=1")
    _teacher_flags(f)
    f.add_argument("--batch-size", type=int, default=0, help="images per encoder call (default: 1 on CPU, 8 on GPU)")
    f.add_argument(
        "--decode-threads",
        "--workers",
        dest="decode_threads",
        type=_positive,
        help="image decode threads (default: the host's cores - 1, 2..16); --workers is the old name",
    )
    f.add_argument("--writers", type=_positive, default=4, help="NPZ writer threads")
    f.add_argument("--max-files", type=_non_negative, help=MAX_FILES_HELP)
    f.add_argument("--max-images", type=_non_negative, help="the sample-list name for --max-files")
    f.add_argument(
        "--store-dtype",
        choices=("keep", "float32", "float16"),
        default="keep",
        help="keep: an existing key keeps its shape and dtype; new keys are float32 (1,256,H,W)",
    )
    f.add_argument("--force", action="store_true", help="redo files already flagged (same teacher or legacy)")
    f.add_argument(
        "--legacy",
        choices=("skip", "verify", "redo"),
        default="skip",
        help="files flagged by the original tool (no provenance): skip them (the original behaviour); verify a "
        "sample per directory, then adopt them all (stamp provenance) or redo them all; or redo them",
    )
    f.add_argument("--legacy-sample", type=_positive, default=4, help="legacy files recomputed per directory")
    f.add_argument(
        "--drift-sample",
        type=_non_negative,
        default=8,
        help="files redone for another teacher (or a legacy flag) whose old and new features are compared",
    )
    _tolerance_flags(f)
    _common(f)
    f.set_defaults(fn=run)


def _add_check(sub, run: Callable[[argparse.Namespace], int]) -> None:
    c = sub.add_parser("check", help="check a sample of a directory's files (keys, shapes, values, flags, provenance)")
    c.add_argument("kind", choices=("edges", "features"))
    c.add_argument("--npz-dir", required=True)
    c.add_argument("--sample", type=_positive, help="files to check (default 16 edges, 8 features; all when >= the count)")
    c.add_argument("--seed", type=int, default=0)
    _edge_rule_flags(c, "edges: the kernel the files should carry (default: the rule's)")
    c.add_argument("--json-dir", help="edges: where <stem>.json live (sampled files are recomputed exactly)")
    _teacher_flags(c)
    _tolerance_flags(c)
    c.add_argument("--image-dir", help="features: where the images are (default: beside the NPZ, then its parent)")
    c.add_argument("--no-flag", action="store_true", help="features: files of a sample list carry no feature_flag")
    c.add_argument(
        "--structure-only", action="store_true", help="features: skip the recompute (keys, shapes, flags only)"
    )
    c.set_defaults(fn=run, log=None, verbose=False)


def _add_shards(sub, run: Callable[[argparse.Namespace], int]) -> None:
    sh = sub.add_parser(
        "shards", help="tar shards for training (create_sa1b_tar_shards.py), rebuilt only where a member changed"
    )
    sh.add_argument("action", nargs="?", choices=("build", "where"), default="build", help="build (default) | where")
    sh.add_argument("stem", nargs="?", help="where: the image id to look up, e.g. sa_61713")
    sh.add_argument("--npz-dir", "--features-dir", dest="npz_dir", help="the NPZ directory (one partition)")
    sh.add_argument(
        "--image-dir", "--images-dir", dest="image_dir", help="images (default: beside the NPZ, then its parent)"
    )
    sh.add_argument("--out", "--output-dir", dest="out", required=True, help="shard directory (manifest.parquet)")
    sh.add_argument("--shard-size", type=_positive, default=1000, help="pairs per shard (1000, as the original)")
    sh.add_argument("--dry-run", action="store_true", help="say which shards would be rebuilt and why; write nothing")
    sh.set_defaults(fn=run, log=None, report=None, verbose=False)


def _add_synth(sub, run: Callable[[argparse.Namespace], int]) -> None:
    s = sub.add_parser("synth", help="generate a seeded SA-1B-like dataset (JPEG, JSON, NPZ)")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=_positive, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sizes", default="1500x2250", help="HxW[,HxW...] cycled over images")
    s.add_argument("--masks", type=int, default=100)
    s.add_argument("--states", help="comma list of NPZ states, cycled (default: all)")
    s.add_argument("--feature-hw", type=_positive, default=64, help="P4 side of the stored features")
    s.add_argument("--extracted", default="extracted")
    s.add_argument(
        "--compressed", action="store_true", help="every file deflated with box prompts (default: 1 in 4, as in real caches)"
    )
    s.set_defaults(fn=run)


def build_parser(
    commands: Mapping[str, Callable[[argparse.Namespace], int]], add_commands: Callable[[Any], None] | None = None
) -> argparse.ArgumentParser:
    """The ``npzfix`` parser, each command run by ``commands[name]``; ``add_commands(subparsers)`` adds the
    commands of another layer (``partitions``)."""
    from npzfix_core import __version__

    ap = argparse.ArgumentParser(prog="npzfix", description="Keep SAM2 feature / edge NPZ caches correct.")
    ap.add_argument("--version", action="version", version=f"npzfix {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, add in (
        ("edges", _add_edges),
        ("features", _add_features),
        ("check", _add_check),
        ("shards", _add_shards),
        ("synth", _add_synth),
    ):
        add(sub, commands[name])
    if add_commands is not None:
        add_commands(sub)
    return ap
