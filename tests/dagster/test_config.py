"""One source of truth per flag: the Dagster run config mirrors the core requests (names and defaults), and
both front doors build the same request."""

import dataclasses
import os

import pytest

from npzfix_core.cli import build_parser
from npzfix_core.requests import EdgeRequest, FeatureRequest
from npzfix_core.settings import Settings
from npzfix_dagster.config import (
    DAGSTER_DEFAULTS,
    FROM_RESOURCES,
    RENAMED,
    SAMPLE_LIST_RENAMED,
    SAMPLE_LIST_UNUSED,
    EdgesConfig,
    FeaturesConfig,
    SampleListConfig,
    edge_request,
    feature_request,
)
from npzfix_dagster.resources import FeaturePipeline, Sam2Teacher


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("request_type, config_type", [(EdgeRequest, EdgesConfig), (FeatureRequest, FeaturesConfig)])
def test_dagster_config_mirrors_the_request(request_type, config_type):
    """Every request field is run config (same name or RENAMED, same default unless DAGSTER_DEFAULTS says
    why) or set from the partition / resources (FROM_RESOURCES): a new field cannot be forgotten silently."""
    config_fields = config_type.model_fields
    differ = DAGSTER_DEFAULTS.get(request_type, {})
    for f in dataclasses.fields(request_type):
        if f.name in FROM_RESOURCES[request_type]:
            assert RENAMED.get(f.name, f.name) not in config_fields or f.name == "tolerance", f.name
            continue
        name = RENAMED.get(f.name, f.name)
        assert name in config_fields, f"{request_type.__name__}.{f.name} has no run config field"
        if f.name not in differ:
            assert config_fields[name].default == _default(f), f.name


def test_the_sample_list_config_mirrors_the_request(tmp_path):
    """The sample-list job's run config is held to FeatureRequest too: every field is run config (same default),
    set by resources, or not used by a sample list, with the reason (SAMPLE_LIST_UNUSED)."""
    config_fields = SampleListConfig.model_fields
    for f in dataclasses.fields(FeatureRequest):
        name = SAMPLE_LIST_RENAMED.get(f.name, f.name)
        if f.name in FROM_RESOURCES[FeatureRequest] and f.name not in ("samples", "npz_dirs"):
            assert name not in config_fields, f.name
        elif f.name in SAMPLE_LIST_UNUSED:
            assert name not in config_fields, f"{f.name} is run config after all: drop it from SAMPLE_LIST_UNUSED"
        else:
            assert name in config_fields, f"FeatureRequest.{f.name} has no sample-list run config field"
            if f.name not in ("samples",):
                assert config_fields[name].default == _default(f) or (name, config_fields[name].default) == (
                    "npz_dirs",
                    [],
                ), f.name
    from npzfix_dagster.config import sample_list_request

    config = SampleListConfig(samples="list.txt", npz_dirs=[str(tmp_path)], max_images=5, durable=False)
    req = sample_list_request(config, Sam2Teacher(random_init_seed=0, device="cpu"), FeaturePipeline())
    assert (req.mode, req.samples, req.npz_dirs, req.max_files, req.durable) == (
        "samples",
        "list.txt",
        (str(tmp_path),),
        5,
        False,
    )
    args = build_parser().parse_args(
        ["features", "--samples", "list.txt", "--npz-dirs", str(tmp_path), "--max-images", "5", "--no-fsync"]
        + ["--random-init", "0", "--device", "cpu", "--workers", str(req.decode_threads)]
    )
    from npzfix_core.requests import teacher_spec_from_args

    cli = FeatureRequest.from_args(args, "samples", teacher_spec_from_args(args), Settings.from_env(os.environ))
    assert cli == req  # both front doors build the same sample-list request


def test_a_cli_run_and_a_dagster_run_build_the_same_request(tmp_path):
    ap = build_parser()
    d = str(tmp_path)
    env = Settings.from_env(os.environ)  # what both front doors read when a run starts
    one_dir = ["--no-recursive", "--sort-by", "name"]  # what a partition is, and its order
    args = ap.parse_args(["edges", "--npz-dir", d, "--kernel-size", "5", "--workers", "3", *one_dir])
    cli = EdgeRequest.from_args(args, env)
    dagster = edge_request(EdgesConfig(kernel_size=5, workers=3), d, None)
    assert cli == dagster and cli.worker_processes == 3  # the old flag and config name keep working
    assert cli.skip_if_processed and cli.set_flag  # the original tool's defaults, on both sides
    flags = ["--worker-processes", "0", "--no-edge-flag", "--no-skip-if-processed", "--order", "mtime", "--reverse"]
    args = ap.parse_args(["edges", "--npz-dir", d, "--no-recursive", *flags, "--only-mtime-after", "17.5"])
    config = EdgesConfig(
        worker_processes=0, set_edge_flag=False, skip_if_processed=False, order="mtime", reverse=True,
        only_mtime_after=17.5,
    )  # fmt: skip
    assert EdgeRequest.from_args(args, env) == edge_request(config, d, None)
    original = ap.parse_args(["edges", "--npz-dir", d, "--json-dir", d, "--max-files", "0", "--no-set-edge-flag"])
    req = EdgeRequest.from_args(original, env)  # the original tool's own command line and defaults
    got = (req.recursive, req.order, req.skip_if_processed, req.set_flag, req.max_files)
    assert got == (True, "mtime", True, False, 0)

    teacher = Sam2Teacher(random_init_seed=0, resolution=128, device="cpu")
    pipeline = FeaturePipeline(batch_size=2, decode_threads=3)
    flags = ["--random-init", "0", "--resolution", "128", "--device", "cpu", "--batch-size", "2", "--workers", "3"]
    flags += ["--legacy", "verify", "--min-cosine", "0.99", "--max-files", "7"]
    args = ap.parse_args(["features", "--root", d, *flags])
    from npzfix_core.requests import teacher_spec_from_args

    cli = FeatureRequest.from_args(args, "bulk", teacher_spec_from_args(args), env)
    config = FeaturesConfig(legacy="verify", min_cosine=0.99, max_files=7)
    dagster = feature_request(config, teacher, pipeline, "bulk", d)
    assert dataclasses.replace(dagster, recursive=True) == cli  # a partition is its own directory only
    assert cli.decode_threads == 3 and cli.tolerance.min_cosine == 0.99


def test_edge_defaults_are_read_from_the_environment_when_a_run_starts_not_at_import(tmp_path, monkeypatch):
    d = str(tmp_path)
    for kernel, workers in ((None, None), ("5", "0"), ("7", "6")):
        for name, value in (("NPZFIX_EDGE_KERNEL", kernel), ("NPZFIX_EDGE_WORKERS", workers)):
            monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
        req = edge_request(EdgesConfig(), d, None)
        assert (req.kernel_size, req.worker_processes) == (int(kernel or 3), int(workers or 1))
    assert edge_request(EdgesConfig(kernel_size=3, worker_processes=2), d, None).kernel_size == 3  # config wins
    monkeypatch.setenv("NPZFIX_EDGE_WORKERS", "eight")
    with pytest.raises(ValueError, match="NPZFIX_EDGE_WORKERS='eight' is not a valid int"):
        edge_request(EdgesConfig(), d, None)


def test_requests_validate_themselves(tmp_path):
    with pytest.raises(ValueError, match="--kernel-size"):
        EdgeRequest(str(tmp_path), kernel_size=0).validate()
    with pytest.raises(ValueError, match="--sort-by"):
        EdgeRequest(str(tmp_path), order="size").validate()
    with pytest.raises(FileNotFoundError):
        EdgeRequest(str(tmp_path / "gone")).validate()
    with pytest.raises(ValueError, match="--decode-threads"):
        FeatureRequest("bulk", root=str(tmp_path), decode_threads=0).validate()


def test_the_code_location_is_named_npzfix_under_dg_dagster_dev_and_the_workspace():
    """Not after the checkout's folder (``clone``, ``main``), which is what ``dg dev`` shows by default."""
    import pathlib
    import tomllib

    import yaml
    from dagster_dg_core.context import DgContext

    repo = pathlib.Path(__file__).resolve().parent.parent.parent
    assert DgContext.for_project_environment(repo, {}).code_location_name == "npzfix"
    assert tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["dagster"]["code_location_name"] == "npzfix"
    workspace = yaml.safe_load((repo / "workspace.yaml").read_text())
    assert [e["python_module"]["location_name"] for e in workspace["load_from"]] == ["npzfix"]


def test_failure_tables_put_the_file_name_first_and_the_directory_once():
    from npzfix_dagster.metadata import files_table

    ext = "/data/sa1b/sa_000001/extracted"
    rows = [{"path": f"{ext}/sa_{i}_features.npz", "status": "failed", "reason": "r"} for i in (1, 2)]
    table = files_table(rows, ["status", "reason"])
    assert table.splitlines()[0] == "in `/data/sa1b/sa_000001/extracted`:"
    assert table.splitlines()[2] == "| file | status | reason |"
    assert table.splitlines()[4] == "| sa_1_features.npz | failed | r |"
    mixed = files_table([*rows, {"path": "/elsewhere/x.npz", "status": "failed", "reason": "r"}], ["status", "reason"])
    assert mixed.splitlines()[0] == "| file | status | reason | directory |"
    assert "| x.npz | failed | r | /elsewhere |" in mixed


def test_pipeline_settings_are_a_resource_of_their_own_not_the_teachers(monkeypatch):
    """Batch size and decode threads change how fast features come, never which: not in the teacher, its
    provenance or the code version."""
    from npzfix_dagster.env import pipeline_from_env, teacher_from_env
    from npzfix_dagster.resources import features_code_version

    monkeypatch.setenv("NPZFIX_RANDOM_INIT_SEED", "0")
    before = features_code_version(teacher_from_env())
    monkeypatch.setenv("NPZFIX_BATCH_SIZE", "4")
    monkeypatch.setenv("NPZFIX_DECODE_THREADS", "3")
    assert pipeline_from_env() == FeaturePipeline(batch_size=4, decode_threads=3)
    assert features_code_version(teacher_from_env()) == before
    assert not {"batch_size", "decode_workers"} & set(Sam2Teacher.model_fields)
    monkeypatch.setenv("NPZFIX_DECODE_THREADS", "many")
    with pytest.raises(ValueError, match="NPZFIX_DECODE_THREADS='many' is not a valid int"):
        pipeline_from_env()
