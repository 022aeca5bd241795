"""Resources: where the datasets are, the SAM2 teacher (built where a step runs, lazily), how images are fed,
and the code versions that follow from them. Every field can come from the environment (``npzfix_dagster.env``
reads it, once, when the code location loads; docs/configuration.md lists the variables)."""

import os
from typing import Optional

from dagster import ConfigurableResource

from npzfix_dagster.home import dagster_home


class DatasetRoots(ConfigurableResource):
    """Where the caches live. Partition keys are paths relative to these roots."""

    sa1b_root: Optional[str] = None
    json_root: Optional[str] = None  # default: <stem>.json beside the NPZ dir's parent (the SA-1B layout)
    train_test_root: Optional[str] = None
    preview_dir: Optional[str] = None  # default: $DAGSTER_HOME/npzfix_previews
    shards_root: Optional[str] = None  # training shards, <root>/<sa1b|train_test>/<partition>; default $DAGSTER_HOME

    def require(self, which: str) -> str:
        value = getattr(self, which)
        if not value:
            raise ValueError(f"{which} is not configured: set NPZFIX_{which.upper()} or the resource config")
        return value

    def json_dir_for(self, directory: str) -> Optional[str]:
        """``<json_root>/<shard>`` for ``<sa1b_root>/<shard>/extracted`` (SA-1B keeps each shard's JSON in
        the shard); None (beside the NPZ dir's parent) without a JSON root."""
        if not self.json_root:
            return None
        rel = os.path.relpath(os.path.dirname(directory), self.require("sa1b_root"))
        return os.path.normpath(os.path.join(self.json_root, rel))

    def shards(self, group: str, key: str) -> str:
        """A partition's shard directory (the key is a checked relative path, as for the caches)."""
        root = self.shards_root or os.path.join(dagster_home(), "npzfix_shards")
        return os.path.join(root, group, key)

    def previews(self) -> str:
        if self.preview_dir:
            return self.preview_dir
        return os.path.join(dagster_home(), "npzfix_previews")


class Sam2Teacher(ConfigurableResource):
    """The SAM2 image encoder. Weights from ``weights`` (config from the name, or ``config``);
    ``random_init_seed`` builds a seeded random model for demos and tests (labelled as such everywhere).
    The model is built where the step runs (``steps.FeatureStep``), on the device resolved and leased there."""

    weights: Optional[str] = None
    config: Optional[str] = None
    device: str = "auto"
    gpus: Optional[str] = None
    precision: str = "fp32"
    resolution: Optional[int] = None
    random_init_seed: Optional[int] = None

    def spec(self):
        """The teacher as the core describes it, device and GPUs as configured (resolved and leased where the
        step runs, by ``npzfix_core.teacher.build``)."""
        from npzfix_core.teacher import TeacherSpec

        return TeacherSpec.from_attrs(self)

    def provenance(self):
        """What identifies the features this teacher writes (FeatureProvenance); no model, no torch."""
        from npzfix_core.teacher import provenance

        return provenance(self.spec())


class FeaturePipeline(ConfigurableResource):
    """How images are fed to the teacher. Not part of the teacher: no provenance or code version depends on it
    (a batch of 8 writes the same features as a batch of 1)."""

    batch_size: int = 0  # 0: 1 on CPU, 8 on GPU
    decode_threads: int = 0  # 0: the host's cores - 1 (2..16)


def features_code_version(teacher: Sam2Teacher, store_dtype: str = "keep") -> str:
    """What defines a feature asset's output: teacher config, weights, precision, resolution, storage dtype.

    Read at definitions load, so it must be cheap: weights are identified by name, size and mtime (the
    files themselves record the sha256). A change shows every partition as "code version changed".
    """
    spec = teacher.spec()  # the same spec the run's provenance and model come from
    try:
        config = spec.resolved_config()
    except ValueError:
        config = spec.config or "?"
    if spec.weights:
        try:
            st = os.stat(spec.weights)
            weights = f"{os.path.basename(spec.weights)}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            weights = f"{spec.weights}:missing"
    else:
        weights = f"random-init:{spec.random_init_seed}"
    return f"sam2|{config}|{weights}|{spec.precision}|{spec.input_size}|{store_dtype}"


def edges_code_version(rule: str, kernel_size: int) -> str:
    """What defines the edges asset's output: the rule, its version and the kernel size."""
    from npzfix_core.provenance import EdgeProvenance

    prov = EdgeProvenance.of(rule, kernel_size)
    return f"{prov.rule}|{prov.version}|k{prov.kernel_size}"
