"""Training shards: the tar files the student reads, kept in step with the caches, rebuilt only where a member changed.

vfmkd's ``create_sa1b_tar_shards.py`` packs ``<stem>_features.npz`` + ``<stem>.jpg`` pairs, ``shard_size`` per
``sa1b_shard_NNNNN.tar``, from the sorted pair list, and skips every shard that exists: a repaired NPZ never reaches
training, and a directory that gains files shifts every later shard. Here a manifest (Parquet, one row per member)
assigns each stem to a shard once and records what each member was when its shard was written (sizes, mtimes and
the provenance npzfix stamped); a run rebuilds exactly the shards whose members changed, were added or removed, or
whose file is missing. Shards are written to a temp name and renamed: a killed run leaves every shard old or new.
The tar holds each file's own bytes (a pickled member inside an NPZ travels untouched).
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from npzfix_core import discovery, store
from npzfix_core.provenance import EDGE_KEYS, FEATURE_KEYS
from npzfix_core.shard_manifest import MANIFEST, ManifestError, _write_manifest, read_manifest  # noqa: F401 (API)
from npzfix_core.temps import TMP_MARKER

log = logging.getLogger("npzfix")

DEFAULT_SHARD_SIZE = 1000  # the user's tool's --shard-size default
SHARD_NAME = "sa1b_shard_{:05d}.tar"
# why a shard is rebuilt (members per reason in the report)
NEW, NPZ_CHANGED, IMAGE_CHANGED, REMOVED, MISSING_SHARD = "new", "npz_changed", "image_changed", "removed", "missing"


@dataclass(frozen=True)
class Member:
    """One pair as found now: names in the shard are the NPZ's own name and ``<stem><image ext>``."""

    stem: str
    npz: str
    image: str


@dataclass
class ShardReport:
    out: str
    shard_size: int
    dry_run: bool = False
    members: int = 0
    shards: int = 0
    kept: int = 0
    rebuilt: list[dict[str, Any]] = field(default_factory=list)  # shard, name, members, reasons, bytes
    new: int = 0  # shards that did not exist before
    reasons: dict[str, int] = field(default_factory=dict)  # members per reason, over rebuilt shards
    unpaired: list[str] = field(default_factory=list)  # stems with an NPZ but no image
    bytes_written: int = 0
    seconds: float = 0.0
    commands: list[dict[str, Any]] = field(default_factory=list)  # the per-shard command's runs (Dagster)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would rebuild" if self.dry_run else "rebuilt"
        lines = [
            f"npzfix shards{' (dry run)' if self.dry_run else ''}: {self.members} members in {self.shards} shards "
            f"of {self.shard_size}; {verb} {len(self.rebuilt)} ({self.new} new), kept {self.kept}; "
            f"{self.bytes_written / 2**20:.1f} MiB written in {self.seconds:.1f} s",
        ]
        if self.reasons:
            lines.append("members by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())))
        for r in self.rebuilt[:20]:
            why = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
            lines.append(f"  {r['name']}: {r['members']} members ({why})")
        if len(self.rebuilt) > 20:
            lines.append(f"  ... and {len(self.rebuilt) - 20} more")
        if self.unpaired:
            lines.append(f"{len(self.unpaired)} NPZ without an image left out, e.g. {self.unpaired[0]}")
        return "\n".join(lines)


def pairs(npz_dir: str, image_dir: str | None = None) -> tuple[list[Member], list[str]]:
    """The NPZs directly in ``npz_dir`` with their images (``<image_dir>/<stem>.<ext>``, else beside the NPZ or in
    its parent), sorted by stem; and the stems without an image."""
    members, unpaired = [], []
    listings = discovery.Listings(discovery.IMAGE_EXTS)
    for path in discovery.iter_npz(npz_dir):
        stem = discovery.stem_of(os.path.basename(path)) or ""
        image = discovery.find_image(path, image_dir, listings)
        if image is None:
            unpaired.append(stem)
        else:
            members.append(Member(stem, path, image))
    return members, unpaired


def provenance_digest(npz: str) -> str:
    """What npzfix recorded on the file (feature and edge flags and provenance), as a short digest."""
    try:
        flags = store.read_flags(npz, (*FEATURE_KEYS, *EDGE_KEYS))
    except (store.NpzError, OSError) as exc:
        return f"unreadable:{type(exc).__name__}"
    text = "|".join(f"{k}={flags[k].tobytes().hex()}" for k in sorted(flags))
    return f"{zlib.crc32(text.encode()):08x}"


def _state(m: Member) -> dict[str, Any]:
    ns, ist = os.stat(m.npz), os.stat(m.image)
    return {
        "stem": m.stem,
        "npz": os.path.basename(m.npz),
        "image": os.path.basename(m.image),
        "npz_size": ns.st_size,
        "npz_mtime_ns": ns.st_mtime_ns,
        "provenance": provenance_digest(m.npz),
        "image_size": ist.st_size,
        "image_mtime_ns": ist.st_mtime_ns,
    }


def where(out: str, stem: str) -> dict[str, Any] | None:
    """Which shard holds ``stem`` (its manifest row, with the shard's file name); None when none does."""
    row = read_manifest(out).get(stem)
    if row is None:
        return None
    return {**row, "shard_file": os.path.join(out, SHARD_NAME.format(int(row["shard"])))}


def assign(members: list[Member], known: dict[str, dict[str, Any]], shard_size: int) -> dict[str, int]:
    """stem -> shard: known stems keep theirs; new stems (sorted) fill the last shard, then open new ones."""
    present = {m.stem for m in members}
    shard_of = {s: int(r["shard"]) for s, r in known.items() if s in present}
    counts: dict[int, int] = {}
    for s in shard_of.values():
        counts[s] = counts.get(s, 0) + 1
    last = max([int(r["shard"]) for r in known.values()], default=-1)
    if last < 0:
        last = 0
    for m in sorted((m for m in members if m.stem not in shard_of), key=lambda m: m.stem):
        while counts.get(last, 0) >= shard_size:
            last += 1
        shard_of[m.stem] = last
        counts[last] = counts.get(last, 0) + 1
    return shard_of


def _write_shard(path: str, members: list[Member]) -> tuple[int, list[dict[str, Any]]]:
    """The shard as a temp file renamed into place; returns its size and each member's state as written (from
    the descriptor the bytes were read through, so a file replaced meanwhile is seen as changed next time)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}{TMP_MARKER}{os.getpid()}")
    rows = []
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, bufsize=4 << 20) as tar:
            for m in members:
                row = {"stem": m.stem}
                for key, src, arcname in (
                    ("npz", m.npz, os.path.basename(m.npz)),
                    ("image", m.image, m.stem + os.path.splitext(m.image)[1]),
                ):
                    with open(src, "rb") as f:
                        info = tar.gettarinfo(arcname=arcname, fileobj=f)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, f)
                        row[f"{key}_size"], row[f"{key}_mtime_ns"] = info.size, os.fstat(f.fileno()).st_mtime_ns
                row.update(npz=os.path.basename(m.npz), image=os.path.basename(m.image))
                row["provenance"] = provenance_digest(m.npz)
                rows.append(row)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size, rows


def sweep(out: str) -> None:
    """Temp shards and manifests of a killed run."""
    with os.scandir(out) as it:
        for e in it:
            if e.name.startswith(".") and TMP_MARKER in e.name and e.is_file():
                os.unlink(e.path)
                log.warning("removed a partial shard of an interrupted run: %s", e.path)


def _reasons(
    out: str, members: list[Member], known: dict, shard_of: dict[str, int], by_shard: dict[int, list[Member]]
) -> dict[int, dict[str, int]]:
    """shard -> {reason: members}, for every shard to rebuild: a member new, removed, or whose NPZ or image
    changed since the manifest recorded it, or a shard file that is missing."""
    why: dict[int, dict[str, int]] = {}

    def mark(shard: int, reason: str) -> None:
        why.setdefault(shard, {})
        why[shard][reason] = why[shard].get(reason, 0) + 1

    present = {m.stem for m in members}
    for stem, row in known.items():
        if stem not in present:
            mark(int(row["shard"]), REMOVED)
    for m in members:
        row = known.get(m.stem)
        if row is None:
            mark(shard_of[m.stem], NEW)
            continue
        now = _state(m)
        if (now["npz_size"], now["npz_mtime_ns"], now["provenance"]) != (
            row["npz_size"], row["npz_mtime_ns"], row["provenance"]
        ) or now["npz"] != row["npz"]:  # fmt: skip
            mark(shard_of[m.stem], NPZ_CHANGED)
        elif (now["image_size"], now["image_mtime_ns"], now["image"]) != (
            row["image_size"], row["image_mtime_ns"], row["image"]
        ):  # fmt: skip
            mark(shard_of[m.stem], IMAGE_CHANGED)
    for shard in by_shard:
        if not os.path.exists(os.path.join(out, SHARD_NAME.format(shard))) and shard not in why:
            mark(shard, MISSING_SHARD)
    return why


def sync(
    npz_dir: str, out: str, image_dir: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, dry_run: bool = False
) -> ShardReport:
    """Bring the shards under ``out`` up to date with ``npz_dir``; the report says what was rebuilt and why."""
    if shard_size < 1:
        raise ValueError("--shard-size must be >= 1")
    if not os.path.isdir(npz_dir):
        raise FileNotFoundError(f"NPZ directory {npz_dir} does not exist")
    t0 = time.perf_counter()
    report = ShardReport(out, shard_size, dry_run)
    members, report.unpaired = pairs(npz_dir, image_dir)
    known = read_manifest(out) if os.path.isdir(out) else {}
    if not dry_run:
        os.makedirs(out, exist_ok=True)
        sweep(out)
    shard_of = assign(members, known, shard_size)
    by_shard: dict[int, list[Member]] = {}
    for m in members:
        by_shard.setdefault(shard_of[m.stem], []).append(m)
    why = _reasons(out, members, known, shard_of, by_shard)
    present = {m.stem for m in members}
    rows = {stem: dict(row) for stem, row in known.items() if stem in present}
    report.members, report.shards = len(members), len(by_shard)
    for shard in sorted(why):
        path = os.path.join(out, SHARD_NAME.format(shard))
        content = sorted(by_shard.get(shard, []), key=lambda m: m.stem)
        existed = os.path.exists(path)
        entry = {"shard": shard, "name": os.path.basename(path), "members": len(content), "reasons": why[shard]}
        for reason, n in why[shard].items():
            report.reasons[reason] = report.reasons.get(reason, 0) + n
        if not dry_run:
            if content:
                size, written = _write_shard(path, content)
                for r in written:
                    rows[r["stem"]] = {**r, "shard": shard}
            else:  # every member removed: the shard goes
                size = 0
                if existed:
                    os.unlink(path)
            entry["bytes"] = size
            report.bytes_written += size
            _write_manifest(out, rows.values())  # after each shard: a killed run redoes only what it had not done
        report.new += not existed
        report.rebuilt.append(entry)
    report.kept = len([s for s in by_shard if s not in why])
    if not dry_run and not why and not os.path.exists(os.path.join(out, MANIFEST)):
        _write_manifest(out, rows.values())
    report.seconds = time.perf_counter() - t0
    return report
