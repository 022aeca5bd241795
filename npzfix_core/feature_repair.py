"""Bulk, sample-list and train/test modes as one function: recompute P4/P5 with the SAM2 teacher, batched and overlapped.

Stages, each bounded so memory stays flat on any dataset size:
  discovery -> skip check (tiny reads) -> decode + preprocess (thread pool)
  -> batched encoder (the device) -> copy off the device -> locked atomic
  writes (thread pool).
Decoding the next batch and writing the last one happen while the encoder
runs, so the device does not wait on I/O when the data allows it.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Union

import numpy as np

from npzfix_core import adoption, discovery, store
from npzfix_core.devices import usable_cpus
from npzfix_core.images import load_rgb
from npzfix_core.provenance import FEATURE_KEYS, FeatureProvenance, FeatureState, stored_teacher
from npzfix_core.report import (
    ADOPTED,
    FAILED,
    MISSING,
    SKIPPED_DONE,
    SKIPPED_LEGACY,
    UPDATED,
    WOULD_UPDATE,
    Budget,
    Outcome,
    Progress,
    RunReport,
    outcome_for,
)
from npzfix_core.teacher import LazyTeacher, Teacher, TeacherSpec
from npzfix_core.verify import KeyMatch, Tolerance, compare, drift_summary

log = logging.getLogger("npzfix")

BULK, SAMPLES, TRAIN_TEST = "bulk", "samples", "train_test"  # root scan | image list | <split>/extracted dirs
MODES = (BULK, SAMPLES, TRAIN_TEST)
STORE_DTYPES = ("keep", "float32", "float16")


def default_decode_workers() -> int:
    """A GPU wants an image every few ms and a 1500x2250 JPEG takes ~20 ms of a core, so use the CPUs this
    process may use (a container's limit, not the node's core count), one left to the main loop."""
    return max(2, min(usable_cpus() - 1, 16))


@dataclass(frozen=True)
class FeatureRequest:
    mode: str  # one of MODES
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    root: str | None = None
    recursive: bool = True  # bulk: the whole tree under root, or only root's own files (a Dagster partition)
    samples: str | None = None
    npz_dirs: tuple[str, ...] = ()
    extracted_dirs: tuple[str, ...] = ()
    max_files: int | None = None
    batch_size: int = 0  # 0: auto, 1 on the CPU (batching only adds cache pressure there), 8 on a GPU
    workers: int = field(default_factory=default_decode_workers)  # decode threads
    writers: int = 4
    store_dtype: str = "keep"
    force: bool = False
    dry_run: bool = False
    durable: bool = True
    preprocess_on: str = "auto"  # auto: decode threads on a CPU teacher, the device (batched) on a GPU
    legacy: str = adoption.SKIP  # files flagged by the original tool: skip | verify (then adopt or redo) | redo
    legacy_sample: int = 4  # legacy files recomputed per directory before adopting the rest
    drift_sample: int = 8  # files redone for another teacher whose old features are compared with the new
    tolerance: Tolerance = field(default_factory=Tolerance)

    @property
    def sets_flag(self) -> bool:
        return self.mode != SAMPLES

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.preprocess_on not in ("auto", "device", "workers"):
            raise ValueError("preprocess_on must be auto, device or workers")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"--store-dtype must be one of {STORE_DTYPES}")
        if self.batch_size < 0 or self.workers < 1 or self.writers < 1:
            raise ValueError("--batch-size must be >= 0 (0: auto), --workers and --writers >= 1")
        if self.legacy not in adoption.POLICIES:
            raise ValueError(f"--legacy must be one of {adoption.POLICIES}")
        if self.legacy != adoption.SKIP and not self.sets_flag:
            raise ValueError("--legacy goes with --root or --extracted-dirs: a sample list redoes every file anyway")
        if self.legacy_sample < 1 or self.drift_sample < 0:
            raise ValueError("--legacy-sample must be >= 1 and --drift-sample >= 0")
        self.tolerance.validate()
        given, flag = {
            BULK: (self.root, "--root"),
            SAMPLES: (self.samples, "--samples"),
            TRAIN_TEST: (self.extracted_dirs, "--extracted-dirs"),
        }[self.mode]
        if not given:
            raise ValueError(f"mode {self.mode} needs {flag}")
        for d in {BULK: [self.root], TRAIN_TEST: list(self.extracted_dirs)}.get(self.mode, []):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"directory {d} does not exist")
        if self.mode == SAMPLES and not os.path.isfile(self.samples):
            raise FileNotFoundError(f"sample list {self.samples} does not exist")


def items_for(req: FeatureRequest) -> Iterator[discovery.WorkItem]:
    if req.mode == BULK:
        return discovery.bulk_items(req.root, req.recursive)
    if req.mode == TRAIN_TEST:
        return discovery.train_test_items(req.extracted_dirs)
    return discovery.sample_items(req.samples, list(req.npz_dirs))


FRESH, STALE, LEGACY = "fresh", "stale", "legacy"  # why a file needs work: not done, another teacher's, legacy


def precheck(item: discovery.WorkItem, req: FeatureRequest, prov: FeatureProvenance) -> Outcome | str:
    """The outcome of an item that needs no compute (done, legacy skipped, missing, unreadable), else why it
    needs work (FRESH, STALE or LEGACY; a legacy file's source is looked at only once it is to be redone).

    Done first, sources second: a done file needs no image, so a shard whose JPEGs were deleted after
    extraction is reported as done, not as thousands of missing sources.
    """
    why = FRESH
    try:
        if item.npz is not None and req.sets_flag and not req.force:
            state = prov.state(store.read_flags(item.npz, FEATURE_KEYS))
            if state is FeatureState.DONE:
                return Outcome(item.npz, SKIPPED_DONE)
            if state is FeatureState.LEGACY:
                if req.legacy == adoption.SKIP:
                    return Outcome(item.npz, SKIPPED_LEGACY, "flagged by the original tool (no provenance)")
                return LEGACY
            why = STALE if state is FeatureState.STALE else FRESH
    except Exception as exc:
        return outcome_for(item.npz, exc)
    return missing(item) or why


def missing(item: discovery.WorkItem) -> Outcome | None:
    if item.problem or item.npz is None or item.source is None:
        return Outcome(item.npz or item.source or item.stem, MISSING, item.problem or "missing source")
    return None


def fit(value: np.ndarray, existing: store.MemberInfo | None, store_dtype: str, key: str) -> np.ndarray:
    """The new array in the layout the file already uses for ``key`` (shape and dtype), or float32 (1,256,H,W)."""
    dtype = (
        np.dtype(np.float32) if store_dtype == "float32" else np.dtype(np.float16) if store_dtype == "float16" else None
    )
    if existing is None:
        return value.astype(dtype or np.float32, copy=False)
    if int(np.prod(existing.shape)) != value.size:
        raise store.NpzError(
            f"existing {key} has shape {existing.shape}, the teacher gives {value.shape}: "
            "wrong --resolution for this cache?"
        )
    if dtype is None:
        dtype = existing.dtype if existing.dtype.kind == "f" else np.dtype(np.float32)
    return value.reshape(existing.shape).astype(dtype, copy=False)


def write_features(
    npz: str, p4: np.ndarray, p5: np.ndarray, req: FeatureRequest, prov: FeatureProvenance
) -> store.UpdateResult:
    """Merge P4/P5 (and IMAGE_EMB_S16, flag, provenance) into the NPZ under its lock."""
    record = prov.record(req.mode)

    def prepare(existing: dict[str, store.MemberInfo]) -> dict[str, np.ndarray]:
        arrays = {
            "P4_S16": fit(p4, existing.get("P4_S16"), req.store_dtype, "P4_S16"),
            "P5_S32": fit(p5, existing.get("P5_S32"), req.store_dtype, "P5_S32"),
        }
        if req.mode == SAMPLES or "IMAGE_EMB_S16" in existing:
            arrays["IMAGE_EMB_S16"] = fit(p4, existing.get("IMAGE_EMB_S16"), req.store_dtype, "IMAGE_EMB_S16")
        if req.sets_flag:
            arrays["feature_flag"] = np.array(1, dtype=np.uint8)
        arrays["feature_provenance"] = record
        return arrays

    return store.update(npz, prepare=prepare, durable=req.durable)


@dataclass
class _Loaded:
    item: discovery.WorkItem
    image: object = None  # preprocessed tensor (3, R, R), or a uint8 HxWx3 tensor for the device to preprocess
    error: Outcome | None = None
    t0: float = 0.0
    busy: float = 0.0
    old: dict | None = None  # drift sample: the features the file held, and what wrote them
    adopt: tuple[int, int, int] | None = None  # a legacy file fit to be stamped as it is: its identity
    job: "_Job | None" = None


def _load(item: discovery.WorkItem, resolution: int, device, stage: str, job: "_Job") -> _Loaded:
    """Check the NPZ, decode the image, then (stage) stop, preprocess here (CPU), or pin for the device.

    An adoption candidate is examined instead (structure, still legacy) and decoded only if it must be redone.
    """
    t0 = time.perf_counter()
    try:
        if job.adopt is not None:
            try:
                loaded = _Loaded(item, t0=t0, adopt=adoption.adoptable(item.npz, job.prov), job=job)
                loaded.busy = time.perf_counter() - t0
                return loaded
            except adoption.NotAdoptable as exc:
                log.warning("legacy file %s is redone, not adopted: %s", item.npz, exc)
                if (gone := missing(item)) is not None:
                    return _Loaded(item, error=gone, t0=t0)
        old = _old_features(item.npz) if job.drift else None
        store.inspect(item.npz)  # fail before spending the encoder on an unwritable file
        img = load_rgb(item.source)
        if stage == "decode":
            loaded = _Loaded(item, None, t0=t0)
        elif stage == "preprocess":
            from npzfix_core.images import preprocess

            loaded = _Loaded(item, preprocess([img], resolution, device)[0], t0=t0)
        else:
            import torch

            t = torch.from_numpy(img)
            loaded = _Loaded(item, t.pin_memory() if torch.cuda.is_available() else t, t0=t0)
        loaded.old = old
    except Exception as exc:
        loaded = _Loaded(item, error=outcome_for(item.npz, exc), t0=t0)
    loaded.busy = time.perf_counter() - t0
    return loaded


def _old_features(npz: str) -> dict:
    """What a drift-sampled file held before it is redone; an unreadable old array is drift too."""
    try:
        flags = store.read_flags(npz, FEATURE_KEYS)
        has_record, stored = stored_teacher(flags)
        was = "the original tool (no provenance)" if not has_record else stored.describe() if stored else "?"
        return {"was": was, "arrays": store.read_arrays(npz, ("P4_S16", "P5_S32"))}
    except Exception as exc:
        return {"was": "unreadable", "arrays": {}, "error": str(exc)}


@dataclass(frozen=True)
class _Job:
    """What is to be done with one admitted file, beside its item."""

    prov: FeatureProvenance
    why: str = FRESH
    drift: bool = False  # compare its old features with the new
    adopt: dict | None = None  # the directory's adoption evidence: stamp rather than recompute


def _write(
    item: discovery.WorkItem, p4, p5, event, req: FeatureRequest, prov: FeatureProvenance, t0: float, old
) -> tuple[Outcome, float, dict | None]:
    """The file's outcome, the seconds this writer spent on it, and the drift measured (drift samples)."""
    start = time.perf_counter()
    drift = None
    try:
        if event is not None:
            event.synchronize()  # the device-to-host copy was queued asynchronously
        new = {"P4_S16": p4.numpy(), "P5_S32": p5.numpy()}
        if old is not None:
            drift = {"path": item.npz, "was": old["was"], "matches": _drift(old["arrays"], new)}
        write_features(item.npz, new["P4_S16"], new["P5_S32"], req, prov)
        outcome = Outcome(item.npz, UPDATED, seconds=time.perf_counter() - t0)
    except Exception as exc:
        outcome = outcome_for(item.npz, exc)
    return outcome, time.perf_counter() - start, drift


def _drift(old: dict, new: dict) -> list:
    out = []
    for key, value in new.items():
        try:
            out.append(compare(key, old[key], value))
        except (KeyError, ValueError):  # absent or of another size: nothing like the new features
            out.append(KeyMatch(key, -1.0, math.nan, math.nan))
    return out


def _adopt(item: discovery.WorkItem, job: _Job, seen, req: FeatureRequest) -> tuple[Outcome, float, None]:
    start = time.perf_counter()
    try:
        adoption.adopt(item.npz, job.prov, req.mode, job.adopt, seen, req.durable)
        outcome = Outcome(item.npz, ADOPTED, "verified sample of its directory")
    except adoption.NotAdoptable as exc:
        outcome = Outcome(item.npz, SKIPPED_LEGACY, f"not adopted: {exc}")
    except Exception as exc:
        outcome = outcome_for(item.npz, exc)
    return outcome, time.perf_counter() - start, None


@dataclass
class Timings:
    """Where the time went; ``encoder_s`` / wall time is how busy the device was kept.

    On a GPU the encoder runs asynchronously, so its time is read from CUDA events once they complete.
    """

    encoder_s: float = 0.0
    wait_decode_s: float = 0.0
    wait_write_s: float = 0.0  # the main loop held back because writers fell behind
    decode_busy_s: float = 0.0  # summed over decode threads: NPZ check, decode, CPU preprocessing or pinning
    write_busy_s: float = 0.0  # summed over writer threads: NPZ merge, fsync
    legacy_verify_s: float = 0.0  # recomputing legacy samples (--legacy verify), main loop
    batches: int = 0
    images: int = 0
    _gpu: collections.deque = field(default_factory=collections.deque, repr=False)

    def record_gpu(self, start, end) -> None:
        self._gpu.append((start, end))

    def drain(self, wait: bool = False) -> None:
        while self._gpu and (wait or self._gpu[0][1].query()):
            start, end = self._gpu.popleft()
            end.synchronize()
            self.encoder_s += start.elapsed_time(end) / 1000.0

    def summary(self) -> dict:
        self.drain(wait=True)
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


TeacherSource = Union[Teacher, LazyTeacher, Callable[[], Teacher], None]


class _Pipeline:
    """discover -> admit -> decode -> encode -> write, each stage bounded so memory stays flat.

    Decoding the next batch and writing the last happen while the encoder runs; the teacher is built only when
    the first file needs it, so runs with nothing to do never load a model. With ``--legacy verify`` a
    directory's legacy files are held until the scan leaves the directory, then a sample decides: they come
    back as files to stamp (adopt) or to redo.
    """

    def __init__(self, req: FeatureRequest, teacher: LazyTeacher, report, bar):
        self.req, self.lazy, self.prov, self.report, self.bar = req, teacher, teacher.provenance, report, bar
        self.teacher: Teacher | None = None
        self.budget = Budget(req.max_files)
        self.timings = Timings()
        self.admitted = self.finished = 0
        self.pending: collections.deque[Future] = collections.deque()  # decode futures -> (_Loaded, _Job)
        self.writes: collections.deque[Future] = collections.deque()  # write futures -> Outcome
        self.batch_size = req.batch_size
        self.prefetch = 2 * (req.batch_size or 8) + req.workers  # two batches ahead, one image per decode thread
        self.backlog: collections.deque[tuple[discovery.WorkItem, _Job]] = collections.deque()  # decided legacy
        self.held_dir: str | None = None  # legacy files of the directory being scanned, until it is left
        self.held: list[discovery.WorkItem] = []
        self.drift_candidates = self.drift_taken = 0
        self.drift: list[dict] = []

    # bookkeeping
    def record(self, outcome: Outcome) -> None:
        self.report.add(outcome)
        self.bar.step(self.report)

    def finish(self, outcome: Outcome) -> None:
        self.finished += 1
        self.record(outcome)

    def written(self) -> None:
        outcome, busy, drift = self.writes.popleft().result()
        self.timings.write_busy_s += busy
        if drift is not None:
            self.drift.append(drift)
        self.finish(outcome)

    def budget_left(self) -> bool:
        return self.budget.allows(self.report, self.admitted - self.finished)

    # stages
    def run(self, items: Iterable[discovery.WorkItem]) -> None:
        items = iter(items)
        exhausted = False
        with (
            ThreadPoolExecutor(self.req.workers, thread_name_prefix="decode") as self.decode_pool,
            ThreadPoolExecutor(self.req.writers, thread_name_prefix="write") as self.write_pool,
        ):
            while True:
                exhausted = exhausted or not self.admit(items)
                while self.writes and self.writes[0].done():
                    self.written()
                self.timings.drain()
                if self.pending:
                    batch = self.next_batch()
                    if batch:
                        self.encode(batch)
                    t = time.perf_counter()
                    while len(self.writes) > 2 * self.batch_size:  # writers fell behind: backpressure
                        self.written()
                    self.timings.wait_write_s += time.perf_counter() - t
                elif self.writes:
                    self.written()  # may free budget for more files
                elif exhausted:
                    return
                else:
                    self.report.stopped_early = self.budget.reason
                    return

    def next_item(self, items: Iterator[discovery.WorkItem]) -> tuple[discovery.WorkItem, _Job | None] | None:
        """The next decided legacy file, else the next scanned one; leaving a directory decides its legacy files."""
        if self.backlog:
            return self.backlog.popleft()
        item = next(items, None)
        directory = os.path.dirname(item.npz) if item is not None and item.npz else None
        if self.held and (item is None or directory != self.held_dir):
            self.decide_legacy()
            if item is None:
                return self.backlog.popleft() if self.backlog else None
        return None if item is None else (item, None)

    def admit(self, items: Iterator[discovery.WorkItem]) -> bool:
        """Skip-check items and hand those with work to the decoders; False once items are exhausted."""
        while len(self.pending) < self.prefetch and self.budget_left():
            nxt = self.next_item(items)
            if nxt is None:
                return False
            item, job = nxt
            if job is None:
                pre = precheck(item, self.req, self.prov)
                if isinstance(pre, Outcome):
                    self.record(pre)
                    continue
                if pre == LEGACY and self.req.legacy == adoption.VERIFY:
                    self.held_dir = os.path.dirname(item.npz)
                    self.held.append(item)
                    continue
                if pre == LEGACY and (gone := missing(item)) is not None:
                    self.record(gone)
                    continue
                job = self.job(pre)
            device = self.device()
            self.admitted += 1
            stage = self.stage(device)
            self.pending.append(self.decode_pool.submit(_load, item, self.prov.resolution, device, stage, job))
        return True

    def job(self, why: str) -> _Job:
        """Drift samples: among files redone for another teacher or a legacy flag, the 1st, 2nd, 3rd, 5th, 9th,
        17th, ... (spread over the run without knowing its length), at most ``drift_sample``."""
        drift = False
        if why in (STALE, LEGACY) and not self.req.dry_run:
            i = self.drift_candidates
            self.drift_candidates += 1
            drift = (i < 3 or i & (i - 1) == 0) and self.drift_taken < self.req.drift_sample
            self.drift_taken += drift
        return _Job(self.prov, why, drift)

    def decide_legacy(self) -> None:
        directory, items = self.held_dir, self.held
        self.held_dir, self.held = None, []
        t = time.perf_counter()
        d = adoption.decide(
            directory, items, self.lazy, self.req.tolerance, self.req.legacy_sample, dry_run=self.req.dry_run
        )
        self.timings.legacy_verify_s += time.perf_counter() - t
        self.report.legacy.append(d.record)
        log.info("legacy files in %s: %d %s (%s)", directory, len(items), d.record["decision"], d.record["why"])
        for outcome in d.left:
            self.record(outcome)
        adopt = _Job(self.prov, LEGACY, adopt=d.record.get("evidence"))
        self.backlog.extend((it, adopt) for it in d.adopt)
        self.backlog.extend((it, self.job(LEGACY)) for it in d.redo)

    def device(self):
        if self.teacher is None and not self.req.dry_run:
            self.teacher = self.lazy.get()
        return self.teacher.device if self.teacher is not None else None

    def stage(self, device) -> str:
        if device is None:
            return "decode"  # dry run: check and decode, compute nothing
        on = self.req.preprocess_on
        return "pin" if on == "device" or (on == "auto" and device.type != "cpu") else "preprocess"

    def next_batch(self) -> list[_Loaded]:
        """Whichever images are decoded first: one slow file never holds the device back."""
        if not self.batch_size:
            self.batch_size = 1 if self.teacher is None or self.teacher.device.type == "cpu" else 8
        batch: list[_Loaded] = []
        t = time.perf_counter()
        while self.pending and len(batch) < self.batch_size:
            done = [f for f in self.pending if f.done()] or list(wait(self.pending, return_when=FIRST_COMPLETED).done)
            for f in done[: self.batch_size - len(batch)]:
                self.pending.remove(f)
                loaded = f.result()
                self.timings.decode_busy_s += loaded.busy
                if loaded.error is not None:
                    self.finish(loaded.error)
                elif loaded.adopt is not None:
                    self.writes.append(self.write_pool.submit(_adopt, loaded.item, loaded.job, loaded.adopt, self.req))
                elif self.req.dry_run:
                    self.finish(Outcome(loaded.item.npz, WOULD_UPDATE))
                else:
                    batch.append(loaded)
        self.timings.wait_decode_s += time.perf_counter() - t
        return batch
    def encode(self, batch: list[_Loaded]) -> None:
        """One forward pass; an out-of-memory batch is split, any other error fails the batch's files only."""
        import torch

        from npzfix_core.images import preprocess

        teacher = self.teacher
        t = time.perf_counter()
        cuda = teacher.device.type == "cuda"
        try:
            if batch[0].image.dtype == torch.uint8:  # decoded only: preprocess on the device, as a batch
                x = preprocess([b.image for b in batch], teacher.resolution, teacher.device)
            else:
                x = torch.stack([b.image for b in batch])
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                start.record()
            p4, p5 = teacher.encode(x)
            event = None
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.timings.record_gpu(start, end)
                p4 = p4.to("cpu", non_blocking=True)  # lands in pinned memory; the writer waits on `event`
                p5 = p5.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record()
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                self.finish(Outcome(batch[0].item.npz, FAILED, "encoder: out of GPU memory for a single image"))
                return
            log.warning("out of GPU memory on a batch of %d: splitting it", len(batch))
            torch.cuda.empty_cache()
            half = len(batch) // 2
            self.encode(batch[:half])
            self.encode(batch[half:])
            return
        except Exception as exc:  # the batch fails, the run goes on
            log.exception("encoder failed on a batch of %d", len(batch))
            for b in batch:
                self.finish(Outcome(b.item.npz, FAILED, f"encoder: {type(exc).__name__}: {exc}"))
            return
        if not cuda:
            self.timings.encoder_s += time.perf_counter() - t
        self.timings.batches += 1
        self.timings.images += len(batch)
        self.write(batch, p4, p5, event)

    def write(self, batch: list[_Loaded], p4, p5, event) -> None:
        for i, b in enumerate(batch):
            args = (b.item, p4[i : i + 1], p5[i : i + 1], event, self.req, self.prov, b.t0, b.old)
            self.writes.append(self.write_pool.submit(_write, *args))


def run_features(req: FeatureRequest, teacher: TeacherSource = None, progress: bool = True) -> RunReport:
    """Recompute features for every item of the request's layout; per-file problems land in the report.

    ``teacher``: a built ``Teacher``; a ``LazyTeacher`` (shared with the checks that follow); a factory called
    only once some file needs a model (Dagster's resource resolves and leases the device there); or None to
    build one from ``req.teacher`` likewise.
    """
    req.validate()
    lazy = as_lazy(teacher, req.teacher)
    prov = lazy.provenance
    report = RunReport(
        f"features ({req.mode})",
        provenance=prov.as_dict(),
        request={k: v for k, v in asdict(req).items() if k != "teacher"},
        dry_run=req.dry_run,
    )
    if prov.random_init:
        report.warnings.append("randomly initialised teacher: not real SAM2 features (demo/test only)")
    bar = Progress(None, f"features {req.mode}", enabled=progress)
    items = items_for(req) if req.dry_run else _sweeping(items_for(req))
    pipeline = _Pipeline(req, lazy, report, bar)
    try:
        pipeline.run(items)
    finally:
        bar.close()
    report.timings = pipeline.timings.summary()
    if pipeline.drift_candidates:
        report.drift = drift_summary(pipeline.drift, pipeline.drift_candidates)
    return report.finish()


def as_lazy(teacher: TeacherSource, spec: TeacherSpec) -> LazyTeacher:
    if isinstance(teacher, LazyTeacher):
        return teacher
    if isinstance(teacher, Teacher):
        return LazyTeacher(teacher)
    return LazyTeacher(spec, factory=teacher)


def _sweeping(items: Iterable[discovery.WorkItem]) -> Iterator[discovery.WorkItem]:
    """Pass items through, removing stale temp files of killed writers in each NPZ directory on first sight
    (lazily: a scan of millions of files never waits for a separate sweeping pass)."""
    swept: set[str] = set()
    for item in items:
        d = os.path.dirname(item.npz) if item.npz else None
        if d is not None and d not in swept:
            swept.add(d)
            for p in store.sweep_stale_temps(d):
                log.warning("removed a temp file left by an interrupted write: %s", p)
        yield item
