"""The ``npzfix`` command: parse flags, build the request the core takes, print the report, exit.

Exit status: 0 nothing failed, 1 some files failed (all others were processed),
2 usage errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("npzfix")


class UsageError(Exception):
    pass


def _writable_file(flag: str, path: str | None) -> None:
    """A --log/--report path must name files we can create: refused before any work (exit 2), not after."""
    if not path:
        return
    base = path[:-5] if path.endswith(".json") else path
    for name in [path] if flag == "--log" else [base + ".json", base + ".csv"]:
        if os.path.isdir(name):
            raise UsageError(f"{flag} {path}: {name} is a directory")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot create files under {probe}")


def _setup_logging(log_path: str | None, verbose: bool = False) -> None:
    root = logging.getLogger("npzfix")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    err.setLevel(logging.WARNING if sys.stderr.isatty() and not verbose else logging.INFO)
    root.addHandler(err)
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        fh = logging.FileHandler(log_path, encoding="utf-8", errors="surrogateescape")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False


def _finish(report, args) -> int:
    """Summary first, then the report file: a report that cannot be written is said as such (exit 1 after a
    clean run), never hiding what the run did."""
    print(report.summary())
    if report.interrupted:
        said = f"npzfix: interrupted ({report.interrupted}); every file is either untouched or fully updated"
        print(said, file=sys.stderr)
    base = args.report or (os.path.splitext(args.log)[0] + ".report" if args.log else None)
    if base:
        try:
            j, c = report.write(base)
            print(f"report: {j} (failures: {c})")
        except OSError as exc:
            print(f"npzfix: the run finished as above, but its report was not written: {exc}", file=sys.stderr)
            return max(report.exit_code, 1)
    return report.exit_code


def _settings():
    """The environment's settings, read once here and carried by the request (the core reads no environment)."""
    from npzfix_core.settings import Settings

    try:
        return Settings.from_env(os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_edges(args) -> int:
    from npzfix_core.edge_repair import run_edges
    from npzfix_core.requests import EdgeRequest

    if args.json_dir and not os.path.isdir(args.json_dir):
        raise UsageError(f"--json-dir {args.json_dir} is not a directory")
    req = EdgeRequest.from_args(args, _settings())
    try:
        req.validate()
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    return _finish(run_edges(req), args)


def cmd_features(args) -> int:
    from npzfix_core import devices
    from npzfix_core.feature_repair import run_features
    from npzfix_core.requests import BULK, SAMPLES, TRAIN_TEST, FeatureRequest, teacher_spec_from_args
    from npzfix_core.teacher import TeacherError

    modes = [m for m, v in ((BULK, args.root), (SAMPLES, args.samples), (TRAIN_TEST, args.extracted_dirs)) if v]
    if len(modes) != 1:
        raise UsageError("give exactly one of --root (bulk), --samples (sample list), --extracted-dirs (train/test)")
    if args.npz_dirs and modes[0] != SAMPLES:
        raise UsageError("--npz-dirs goes with --samples")
    settings = _settings()
    try:
        req = FeatureRequest.from_args(args, modes[0], teacher_spec_from_args(args), settings)
        req.validate()
    except (TeacherError, devices.DeviceError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        report = run_features(req)
    except (TeacherError, devices.DeviceError) as exc:  # found only once a file needed the teacher
        raise UsageError(str(exc)) from exc
    return _finish(report, args)


def cmd_check(args) -> int:
    """Sampled content check of a directory, as the Dagster asset checks do (exit 1 on any problem): edges are
    recomputed exactly; features are recomputed with the teacher and compared within a tolerance."""
    from npzfix_core import discovery, checks

    if not os.path.isdir(args.npz_dir):
        raise UsageError(f"--npz-dir {args.npz_dir} is not a directory")
    n = args.sample or (16 if args.kind == "edges" else 8)
    paths = checks.sample(discovery.npz_in_dir(args.npz_dir), n, args.seed)
    if args.kind == "edges":
        res = checks.check_edges(paths, args.kernel_size, args.json_dir, n, _settings().max_pixels, args.rule)
    else:
        res = _check_features(args, paths)
    for pr in res.problems:
        print(f"  {pr['path']}: {pr['problem']} -> {pr['remedy']}")
    if res.verification is not None:
        v = res.verification
        cos = ", ".join(f"{k} {c:.6f}" for k, c in v.min_cosine.items())
        print(
            f"verified by value: {v.verified} recomputed, {v.matched} matched; min cosine {cos or '-'}; "
            f"{v.seconds:.1f} s"
        )
    if res.carried:
        carried = ", ".join(f"{k} in {n}" for k, n in sorted(res.carried.items()))
        print(f"pickled members carried, not inspected: {carried}")
    print(f"npzfix check {args.kind}: {res.checked} file(s) checked, {len(res.problems)} problem(s)")
    return 0 if res.passed else 1


def _check_features(args, paths):
    from npzfix_core import devices, checks
    from npzfix_core.requests import teacher_spec_from_args, tolerance_from_args
    from npzfix_core.teacher import LazyTeacher, TeacherError, provenance

    if args.weights is None and args.random_init_seed is None:
        raise UsageError("check features recomputes sampled files: pass the teacher (--weights or --random-init)")
    try:
        tol = tolerance_from_args(args)
        if args.structure_only:
            print("npzfix check features: --structure-only: values are NOT verified", file=sys.stderr)
            prov = provenance(teacher_spec_from_args(args))
            return checks.check_features(paths, provenance=prov, needs_flag=not args.no_flag)
        teacher = LazyTeacher(teacher_spec_from_args(args), _settings())
        return checks.check_features(
            paths,
            teacher,
            needs_flag=not args.no_flag,
            tolerance=tol,
            image_dir=args.image_dir,
        )
    except (TeacherError, devices.DeviceError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def cmd_synth(args) -> int:
    from npzfix_core import synth

    sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(","))
    states = tuple(args.states.split(",")) if args.states else synth.STATES
    bad = [s for s in states if s not in synth.ALL_STATES]
    if bad or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise UsageError(f"bad --states {bad} or --sizes {args.sizes} (HxW,HxW; states from {synth.ALL_STATES})")
    spec = synth.SynthSpec(
        n=args.n,
        seed=args.seed,
        sizes=sizes,
        masks=args.masks,
        states=states,
        feature_hw=args.feature_hw,
        extracted=args.extracted,
        compressed=args.compressed,
    )
    res = synth.generate(args.out, spec)
    print(f"wrote {len(res.npz)} images, JSONs and NPZs under {res.root}")
    return 0


def cmd_shards(args) -> int:
    from npzfix_core import shards

    if args.action == "where":
        if not args.stem:
            raise UsageError("npzfix shards where STEM --out DIR")
        row = shards.where(args.out, args.stem)
        if row is None:
            print(f"{args.stem}: in no shard of {args.out}")
            return 1
        print(f"{args.stem}: {row['shard_file']} (members {row['npz']}, {row['image']})")
        return 0
    if not args.npz_dir:
        raise UsageError("npzfix shards needs --npz-dir (and --out)")
    try:
        report = shards.sync(args.npz_dir, args.out, args.image_dir, args.shard_size, args.dry_run)
    except shards.ManifestError as exc:
        print(f"npzfix shards: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # a member or the output directory: said, not a traceback; finished shards stay
        print(f"npzfix shards: stopped: {exc}; every shard is old or new, the next run goes on", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


COMMANDS = {"edges": cmd_edges, "features": cmd_features, "check": cmd_check, "synth": cmd_synth, "shards": cmd_shards}


def build_parser(add_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The ``npzfix`` parser; ``add_commands(subparsers)`` adds the commands of another layer (``partitions``)."""
    from npzfix_core import parser

    return parser.build_parser(COMMANDS, add_commands)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does (summary, report, every file untouched or fully updated)."""
    import signal

    from npzfix_core.errors import Interrupted

    def stop(signum, frame):
        raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    ap = parser or build_parser()
    args = ap.parse_args(argv)
    _stop_on_signals()
    try:
        _writable_file("--log", getattr(args, "log", None))
        _writable_file("--report", getattr(args, "report", None))
        _setup_logging(getattr(args, "log", None), getattr(args, "verbose", False))
        return args.fn(args)
    except UsageError as exc:
        print(f"npzfix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from npzfix_core.errors import interruption

        name = interruption(exc)
        print(f"npzfix: interrupted ({name}); every file is either untouched or fully updated", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", 2))


if __name__ == "__main__":
    sys.exit(main())
