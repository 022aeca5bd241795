"""Builds the SAM2 teacher: checkpoint name -> config, all four FPN levels kept, strict load, device.

Like sam2's own ``build_sam.py``, this module knows where weights and configs
come from and nothing about the dataset; ``feature_repair`` runs what it builds.
torch and sam2 are imported here only, and only when a teacher is built.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass

from npzfix_core.provenance import FeatureProvenance
from npzfix_core.settings import Settings

log = logging.getLogger("npzfix")

# sam2 1.1.0 configs drop the lowest-resolution FPN level (scalp: 1), which is P5.
KEEP_ALL_LEVELS = "++model.image_encoder.scalp=0"
_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
PRECISIONS = ("fp32", "bf16", "fp16")


class TeacherError(ValueError):
    """The teacher cannot be built as asked; the message says what to change."""


def config_for_checkpoint(weights: str) -> str:
    """``sam2.1_hiera_base_plus.pt`` -> ``configs/sam2.1/sam2.1_hiera_b+.yaml`` (also the ``sam2_hiera_*`` family)."""
    name = os.path.basename(weights)
    m = re.search(r"(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|large)", name)
    if not m:
        raise TeacherError(f"cannot tell the SAM2 config from checkpoint name {name!r}; pass --config")
    family, size = m.group(1), _SIZES[m.group(2)]
    return f"configs/{family}/{family}_hiera_{size}.yaml"


def file_digest(path: str) -> str:
    """sha256 prefix of a checkpoint; cached per (path, size, mtime) since it is asked for per run and per check."""
    st = os.stat(path)
    return _digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


SAM2_INPUT = 1024  # the image size every SAM2 config is trained at


@dataclass(frozen=True)
class TeacherSpec:
    weights: str | None = None
    config: str | None = None
    random_init_seed: int | None = None
    device: str = "cpu"  # as asked: cpu | cuda | cuda:N | auto, resolved (and leased) when the model is built
    precision: str = "fp32"
    resolution: int | None = None  # None: the model's own (SAM2_INPUT)
    gpus: str | None = None  # the allowed GPUs ("1,2,4,5,6,7"); None: every visible one

    @property
    def input_size(self) -> int:
        return self.resolution or SAM2_INPUT

    @classmethod
    def from_attrs(cls, source: object) -> TeacherSpec:
        """From anything holding the teacher's fields under their names: parsed CLI flags, the Dagster
        resource. One place, so a new teacher field reaches both front doors."""
        from dataclasses import fields

        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    def resolved_config(self) -> str:
        if self.config:
            return self.config
        if self.weights:
            return config_for_checkpoint(self.weights)
        return "configs/sam2.1/sam2.1_hiera_t.yaml"

    def validate(self) -> None:
        if self.weights is None and self.random_init_seed is None:
            raise TeacherError("no teacher weights: pass --weights PATH (or --random-init SEED for a demo/test model)")
        if self.weights is not None and self.random_init_seed is not None:
            raise TeacherError("--weights and --random-init are exclusive")
        if self.weights is not None and not os.path.isfile(self.weights):
            raise TeacherError(
                f"weights file {self.weights} does not exist (pass --weights PATH, or --random-init SEED for a "
                "demo/test model)"
            )
        if self.precision not in PRECISIONS:
            raise TeacherError(f"--precision must be one of {PRECISIONS}")
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 32):
            raise TeacherError("--resolution must be a multiple of 32, at least 64")
        from npzfix_core import devices  # DeviceError: the device or GPU list cannot be used as written

        devices.check_device(self.device)
        allow = devices.allowed_gpus(self.gpus)
        if allow is not None and self.device.startswith("cuda:") and int(self.device[5:]) not in allow:
            raise devices.DeviceError(f"{self.device} is not in the allowed GPUs {allow} (NPZFIX_GPUS / --gpus)")


@dataclass
class Teacher:
    """The image encoder on its device, plus what it takes to say which teacher wrote a file."""

    encoder: object  # sam2 ImageEncoder
    device: object  # torch.device
    resolution: int
    precision: str
    provenance: FeatureProvenance

    def encode(self, batch) -> dict:
        """Normalised float batch (B, 3, R, R) on the device -> {key: float32 (B, C, R/stride, R/stride)} on the
        device, one entry per computed row of ``outputs.FEATURES``."""
        import torch

        from npzfix_core import outputs

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        keys = outputs.computed()
        with torch.inference_mode():
            if dtype is None:
                out = self.encoder(batch)
            else:
                with torch.autocast(self.device.type, dtype=dtype):
                    out = self.encoder(batch)
            fpn = out["backbone_fpn"]
            if len(fpn) <= max(k.level for k in keys):
                raise AssertionError(f"encoder returned {len(fpn)} FPN levels; P5 needs 4 (scalp must be 0)")
            # autocast returns the lowest level in bf16: cast explicitly
            got = {k.name: fpn[k.level].float() for k in keys}
        for k in keys:
            if tuple(got[k.name].shape[1:]) != k.shape(self.resolution)[1:]:
                shapes = " ".join(f"{n} {tuple(v.shape)}" for n, v in got.items())
                raise AssertionError(f"unexpected feature shapes {shapes} at {self.resolution}")
        return got


def provenance(spec: TeacherSpec) -> FeatureProvenance:
    """What identifies the features a teacher writes; computed without torch (dry runs, skip checks)."""
    spec.validate()
    return FeatureProvenance(
        config=spec.resolved_config(),
        weights=f"random-init:{spec.random_init_seed}"
        if spec.weights is None
        else f"sha256:{file_digest(spec.weights)}",
        precision=spec.precision,
        resolution=spec.input_size,
    )


def _load_strictly(model, path: str, config: str) -> None:
    """sam2's checkpoint load (``torch.load(weights_only=True)["model"]``, every key matched), with each way
    it can fail told apart by type: sam2's own raises a bare RuntimeError after logging the keys."""
    import pickle

    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TeacherError(f"cannot load checkpoint {path} with weights_only=True: {exc}") from exc
    except (RuntimeError, EOFError, OSError) as exc:  # torch: not a zip / truncated archive
        raise TeacherError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise TeacherError(f"checkpoint {path} has no 'model' entry (expected a sam2 checkpoint)")
    stored, own = raw["model"], model.state_dict()
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    reshaped = [k for k in own if k in stored and tuple(stored[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise TeacherError(
            f"checkpoint {path} does not match {config} strictly ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(reshaped)} of another shape, e.g. {example})"
        )
    model.load_state_dict(stored)


def build(spec: TeacherSpec, settings: Settings | None = None) -> Teacher:
    """The one way a teacher is made (CLI, Dagster step, Slurm job, checks): the device resolved as the spec asks
    (``auto``: a free allowed GPU, else the CPU) and leased for this process (``settings``: how long to wait for
    a lease, where leases live), then the encoder built: seeded random init, or a checkpoint loaded strictly with
    ``weights_only=True``."""
    spec.validate()
    import sam2  # noqa: F401  (initialises Hydra with sam2's config module; must come first)
    import torch
    from sam2.build_sam import build_sam2

    from npzfix_core import devices

    settings = settings or Settings()
    resolved = devices.resolve(spec.device, spec.gpus, wait_s=settings.gpu_lease_wait_s, lease_dir=settings.gpu_lease_dir)
    if resolved != spec.device:
        log.info("teacher device %s (asked: %s)", resolved, spec.device)
    device = devices.to_torch_device(resolved)
    config = spec.resolved_config()
    prov = provenance(spec)
    if spec.random_init_seed is not None:
        torch.manual_seed(spec.random_init_seed)
        log.warning(
            "TEACHER IS RANDOMLY INITIALISED (seed %d): features are NOT SAM2 features; demo/test only",
            spec.random_init_seed,
        )
    from hydra.errors import MissingConfigException

    try:
        # build on the CPU, then load and move: sam2 defaults to "cuda"
        model = build_sam2(config, ckpt_path=None, device="cpu", hydra_overrides_extra=[KEEP_ALL_LEVELS])
    except MissingConfigException as exc:
        raise TeacherError(f"unknown SAM2 config {config!r}") from exc
    if spec.weights is not None:
        _load_strictly(model, spec.weights, config)
    encoder = model.image_encoder
    del model  # never hand a scalp=0 model to SAM2ImagePredictor: keep only the encoder
    encoder.to(device).eval()
    log.info("teacher %s (%s) on %s, %s, input %d", config, prov.weights, device, spec.precision, prov.resolution)
    return Teacher(encoder, device, prov.resolution, spec.precision, prov)


class LazyTeacher:
    """One teacher for a run and its checks: provenance known at once (no torch), the model built (device
    resolved and leased, ``build``) the first time something needs it, so a run with nothing to do holds no GPU.
    ``factory`` replaces ``build`` (tests). The built model must say the same provenance as the spec: files are
    stamped with one, computed with the other, and a disagreement would label features with the wrong teacher."""

    def __init__(self, source: "Teacher | TeacherSpec", settings: Settings | None = None, factory=None):
        if isinstance(source, Teacher):
            self._teacher, self.provenance, self._spec = source, source.provenance, None
        else:
            self._teacher, self.provenance, self._spec = None, provenance(source), source
        self._settings, self._factory = settings, factory

    @property
    def built(self) -> bool:
        return self._teacher is not None

    def get(self) -> Teacher:
        if self._teacher is None:
            t = self._factory() if self._factory is not None else build(self._spec, self._settings)
            if not t.provenance.same_teacher(self.provenance):
                raise TeacherError(
                    f"the teacher built ({t.provenance.describe()}) is not the one requested "
                    f"({self.provenance.describe()})"
                )
            self._teacher = t
        return self._teacher
