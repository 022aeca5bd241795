"""The edge-rule registry (``npzfix_core.edge_rules``): a rule is one entry; the run, provenance, the check, the
schedule's "done" rule and the Dagster code version follow it by name. Shown with a throwaway rule."""

import json
import os

import numpy as np
import pytest

from npzfix_core import checks, edge_repair, edge_rules, layouts, store, synth
from npzfix_core.edges import method_b, parse_sa1b
from npzfix_core.provenance import EdgeProvenance, State
from npzfix_core.report import UPDATED
from npzfix_core.requests import EdgeRequest


def _thick(ann, kernel_size, sizes):
    """A throwaway rule: Method B with a kernel two wider."""
    return method_b(ann, kernel_size + 2, sizes)


THICK = edge_rules.EdgeRule("thick_v0", "T_v0", "Thick B", _thick, default_kernel=1)


def test_the_registry_names_what_it_holds():
    assert edge_rules.get("method_b").version == "B_v1" and edge_rules.get("method_b").default_kernel == 3
    rule, kernel = edge_rules.legacy_of("B_v1")  # the original tool's flag
    assert (rule.name, kernel) == ("method_b", 3) and edge_rules.legacy_of("B_v2") is None
    with pytest.raises(edge_rules.UnknownRule, match="unknown edge rule 'method_c': one of method_b"):
        edge_rules.get("method_c")
    with pytest.raises(ValueError, match="unknown edge rule"):
        EdgeRequest("/tmp", rule="method_c").validate()
    assert EdgeRequest("/tmp").kernel_size == 3  # no kernel given: the rule's default


def test_adding_a_rule_is_one_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(edge_rules.RULES, THICK.name, THICK)
    res = synth.generate(tmp_path / "d", synth.SynthSpec(n=3, seed=1, sizes=((90, 120), (64, 64), (120, 80))))
    req = EdgeRequest(os.path.join(res.root, "extracted"), rule=THICK.name)
    assert req.kernel_size == 1  # the rule's own default
    for item in layouts.edge_items(req.npz_dir, None, "name", None):
        if item.source is None:
            continue
        assert edge_repair.process_one(item.npz, item.source, req).status == UPDATED
        with open(item.source, "rb") as f:
            want = method_b(parse_sa1b(json.loads(f.read())), 3)
        got = store.read_arrays(item.npz)
        np.testing.assert_array_equal(got["edge_64x64"], want[64])
        np.testing.assert_array_equal(got["edge_32x32"], want[32])
        assert str(got["edge_version"]) == "T_v0"
        record = json.loads(str(got["edge_provenance"]))
        assert (record["rule"], record["version"], record["kernel_size"]) == ("thick_v0", "T_v0", 1)
        flags = store.read_flags(item.npz, ("edge_flag", "edge_version", "edge_provenance"))
        assert req.provenance().state(flags) is State.DONE
        assert EdgeProvenance.of("method_b").state(flags) is State.STALE  # another rule: a default run redoes it
        assert EdgeProvenance.of(THICK.name, 2).state(flags) is State.STALE  # another kernel too

    done = [it.npz for it in layouts.edge_items(req.npz_dir, None, "name", None) if it.source is not None]
    assert checks.check_edges(done, None, rule=THICK.name).passed
    other = checks.check_edges(done, 3)
    assert not other.passed and "do not say Method B with kernel 3" in other.problems[0]["problem"]

    from npzfix_dagster.resources import edges_code_version

    assert edges_code_version(THICK.name, 1) == "thick_v0|T_v0|k1" != edges_code_version("method_b", 3)


def test_the_rule_is_run_config_and_environment(tmp_path, monkeypatch):
    from npzfix_dagster import env
    from npzfix_dagster.config import EdgesConfig, edge_request

    monkeypatch.setitem(edge_rules.RULES, THICK.name, THICK)
    monkeypatch.delenv("NPZFIX_EDGE_KERNEL", raising=False)
    assert edge_request(EdgesConfig(), str(tmp_path), None).rule == "method_b"
    req = edge_request(EdgesConfig(rule=THICK.name), str(tmp_path), None)
    assert (req.rule, req.kernel_size) == (THICK.name, 1)
    monkeypatch.setenv("NPZFIX_EDGE_RULE", THICK.name)
    assert env.default_edge_provenance() == EdgeProvenance(1, THICK.name, "T_v0")
    assert edge_request(EdgesConfig(), str(tmp_path), None).rule == THICK.name
