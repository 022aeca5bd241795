"""The feature pipeline of one run: discover -> admit (skip check) -> decode + preprocess (threads) -> batched
encoder (the device) -> copy off the device -> locked atomic writes (threads), each stage bounded so memory stays
flat on any dataset size. Decoding the next batch and writing the last one happen while the encoder runs, so the
device does not wait on I/O when the data allows it. ``feature_repair.run_features`` drives it.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

from npzfix_core import adoption, discovery
from npzfix_core import feature_files as files
from npzfix_core.report import FAILED, WOULD_UPDATE, Budget, Outcome
from npzfix_core.requests import FeatureRequest
from npzfix_core.teacher import LazyTeacher, Teacher

log = logging.getLogger("npzfix")


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



class FeatureRun:
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
        self.pending: collections.deque[Future] = collections.deque()  # decode futures -> (files.Loaded, files.FileTask)
        self.writes: collections.deque[Future] = collections.deque()  # write futures -> Outcome
        self.batch_size = req.batch_size
        self.prefetch = 2 * (req.batch_size or 8) + req.decode_threads  # two batches ahead, one image per decode thread
        self.backlog: collections.deque[tuple[discovery.WorkItem, files.FileTask]] = collections.deque()  # decided legacy
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
            ThreadPoolExecutor(self.req.decode_threads, thread_name_prefix="decode") as self.decode_pool,
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
                    self.budget.stop(self.report)
                    return

    def next_item(self, items: Iterator[discovery.WorkItem]) -> tuple[discovery.WorkItem, files.FileTask | None] | None:
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
                pre = files.precheck(item, self.req, self.prov)
                if isinstance(pre, Outcome):
                    self.record(pre)
                    continue
                if pre == files.LEGACY and self.req.legacy == adoption.VERIFY:
                    self.held_dir = os.path.dirname(item.npz)
                    self.held.append(item)
                    continue
                if pre == files.LEGACY and (gone := files.missing(item)) is not None:
                    self.record(gone)
                    continue
                job = self.job(pre)
            device = self.device()
            self.admitted += 1
            stage = self.stage(device)
            load = (item, self.prov.resolution, device, stage, job)
            self.pending.append(self.decode_pool.submit(files.load, *load))
        return True

    def job(self, why: str) -> files.FileTask:
        """Drift samples: among files redone for another teacher or a legacy flag, the 1st, 2nd, 3rd, 5th, 9th,
        17th, ... (spread over the run without knowing its length), at most ``drift_sample``."""
        drift = False
        if why in (files.STALE, files.LEGACY) and not self.req.dry_run:
            i = self.drift_candidates
            self.drift_candidates += 1
            drift = (i < 3 or i & (i - 1) == 0) and self.drift_taken < self.req.drift_sample
            self.drift_taken += drift
        return files.FileTask(self.prov, why, drift)

    def decide_legacy(self) -> None:
        directory, items = self.held_dir, self.held
        self.held_dir, self.held = None, []
        t = time.perf_counter()
        r = self.req
        d = adoption.decide(directory, items, self.lazy, r.tolerance, r.legacy_sample, r.dry_run)
        self.timings.legacy_verify_s += time.perf_counter() - t
        self.report.legacy.append(d.record)
        log.info("legacy files in %s: %d %s (%s)", directory, len(items), d.record["decision"], d.record["why"])
        for outcome in d.left:
            self.record(outcome)
        adopt = files.FileTask(self.prov, files.LEGACY, adopt=d.record.get("evidence"))
        self.backlog.extend((it, adopt) for it in d.adopt)
        self.backlog.extend((it, self.job(files.LEGACY)) for it in d.redo)

    def device(self):
        if self.teacher is None and not self.req.dry_run:
            self.teacher = self.lazy.get()
        return self.teacher.device if self.teacher is not None else None

    def stage(self, device) -> str:
        if device is None:
            return "decode"  # dry run: check and decode, compute nothing
        on = self.req.preprocess_on
        return "pin" if on == "device" or (on == "auto" and device.type != "cpu") else "preprocess"

    def next_batch(self) -> list[files.Loaded]:
        """Whichever images are decoded first: one slow file never holds the device back."""
        if not self.batch_size:
            self.batch_size = 1 if self.teacher is None or self.teacher.device.type == "cpu" else 8
        batch: list[files.Loaded] = []
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
                    args = (loaded.item, loaded.job, loaded.adopt, self.req)
                    self.writes.append(self.write_pool.submit(files.adopt_one, *args))
                elif self.req.dry_run:
                    self.finish(Outcome(loaded.item.npz, WOULD_UPDATE))
                else:
                    batch.append(loaded)
        self.timings.wait_decode_s += time.perf_counter() - t
        return batch
    def encode(self, batch: list[files.Loaded]) -> None:
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
            feats = teacher.encode(x)
            event = None
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.timings.record_gpu(start, end)
                # lands in pinned memory; the writer waits on `event`
                feats = {k: v.to("cpu", non_blocking=True) for k, v in feats.items()}
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
        self.write(batch, feats, event)

    def write(self, batch: list[files.Loaded], feats: dict, event) -> None:
        for i, b in enumerate(batch):
            mine = {k: v[i : i + 1] for k, v in feats.items()}
            args = (b.item, mine, event, self.req, self.prov, b.t0, b.old)
            self.writes.append(self.write_pool.submit(files.write_one, *args))
