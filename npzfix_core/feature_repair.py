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
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Union

import numpy as np

from npzfix_core import discovery, store
from npzfix_core import teacher as teacher_mod
from npzfix_core.devices import usable_cpus
from npzfix_core.images import load_rgb
from npzfix_core.provenance import FEATURE_KEYS, FeatureProvenance, FeatureState
from npzfix_core.report import (
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
from npzfix_core.teacher import Teacher, TeacherSpec

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


def precheck(item: discovery.WorkItem, req: FeatureRequest, prov: FeatureProvenance) -> Outcome | None:
    """Outcome for items that need no compute (done, legacy-flagged, missing, unreadable), else None.

    Done first, sources second: a done file needs no image, so a shard whose JPEGs were deleted after
    extraction is reported as done, not as thousands of missing sources.
    """
    try:
        if item.npz is not None and req.sets_flag and not req.force:
            state = prov.state(store.read_flags(item.npz, FEATURE_KEYS))
            if state is FeatureState.LEGACY:
                return Outcome(item.npz, SKIPPED_LEGACY, "flagged by the original tool (no provenance)")
            if state is FeatureState.DONE:
                return Outcome(item.npz, SKIPPED_DONE)
    except Exception as exc:
        return outcome_for(item.npz, exc)
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


def _load(item: discovery.WorkItem, resolution: int, device, stage: str) -> _Loaded:
    """Check the NPZ, decode the image, then (stage) stop, preprocess here (CPU), or pin for the device."""
    t0 = time.perf_counter()
    try:
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
    except Exception as exc:
        loaded = _Loaded(item, error=outcome_for(item.npz, exc), t0=t0)
    loaded.busy = time.perf_counter() - t0
    return loaded


def _write(
    item: discovery.WorkItem, p4, p5, event, req: FeatureRequest, prov: FeatureProvenance, t0: float
) -> tuple[Outcome, float]:
    """The file's outcome, and the seconds this writer spent on it."""
    start = time.perf_counter()
    try:
        if event is not None:
            event.synchronize()  # the device-to-host copy was queued asynchronously
        write_features(item.npz, p4.numpy(), p5.numpy(), req, prov)
        outcome = Outcome(item.npz, UPDATED, seconds=time.perf_counter() - t0)
    except Exception as exc:
        outcome = outcome_for(item.npz, exc)
    return outcome, time.perf_counter() - start


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


TeacherSource = Union[Teacher, Callable[[], Teacher], None]


class _Pipeline:
    """discover -> admit -> decode -> encode -> write, each stage bounded so memory stays flat.

    Decoding the next batch and writing the last happen while the encoder runs; the teacher is built (from
    the factory) only when the first file needs it, so runs with nothing to do never load a model.
    """

    def __init__(self, req: FeatureRequest, prov: FeatureProvenance, teacher: TeacherSource, report, bar):
        self.req, self.prov, self.report, self.bar = req, prov, report, bar
        self.teacher: Teacher | None = teacher if isinstance(teacher, Teacher) else None
        self._factory = teacher if callable(teacher) and self.teacher is None else None
        self.budget = Budget(req.max_files)
        self.timings = Timings()
        self.admitted = self.finished = 0
        self.pending: collections.deque[Future] = collections.deque()  # decode futures -> _Loaded
        self.writes: collections.deque[Future] = collections.deque()  # write futures -> Outcome
        self.batch_size = req.batch_size
        self.prefetch = 2 * (req.batch_size or 8) + req.workers  # two batches ahead, one image per decode thread

    # bookkeeping
    def record(self, outcome: Outcome) -> None:
        self.report.add(outcome)
        self.bar.step(self.report)

    def finish(self, outcome: Outcome) -> None:
        self.finished += 1
        self.record(outcome)

    def written(self) -> None:
        outcome, busy = self.writes.popleft().result()
        self.timings.write_busy_s += busy
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

    def admit(self, items: Iterator[discovery.WorkItem]) -> bool:
        """Skip-check items and hand those with work to the decoders; False once items are exhausted."""
        while len(self.pending) < self.prefetch and self.budget_left():
            item = next(items, None)
            if item is None:
                return False
            pre = precheck(item, self.req, self.prov)
            if pre is not None:
                self.record(pre)
                continue
            device = self.device()
            self.admitted += 1
            self.pending.append(self.decode_pool.submit(_load, item, self.prov.resolution, device, self.stage(device)))
        return True

    def device(self):
        if self.teacher is None and not self.req.dry_run:
            self.teacher = self._factory() if self._factory else teacher_mod.build(self.req.teacher)
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
            args = (b.item, p4[i : i + 1], p5[i : i + 1], event, self.req, self.prov, b.t0)
            self.writes.append(self.write_pool.submit(_write, *args))


def run_features(req: FeatureRequest, teacher: TeacherSource = None, progress: bool = True) -> RunReport:
    """Recompute features for every item of the request's layout; per-file problems land in the report.

    ``teacher``: a built ``Teacher``, or a factory called only once some file needs a model (Dagster's
    resource resolves and leases the device there), or None to build one from ``req.teacher`` likewise.
    """
    req.validate()
    prov = teacher.provenance if isinstance(teacher, Teacher) else teacher_mod.provenance(req.teacher)
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
    pipeline = _Pipeline(req, prov, teacher, report, bar)
    try:
        pipeline.run(items)
    finally:
        bar.close()
    report.timings = pipeline.timings.summary()
    return report.finish()


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
