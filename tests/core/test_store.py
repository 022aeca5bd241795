"""The NPZ store: members carried over byte for byte, atomic, locked, never damaging a file."""

import errno
import fcntl
import multiprocessing as mp
import os
import stat
import zipfile

import numpy as np
import pytest
from tests.support import raw_members, sha, temp_files

from npzfix_core import store


def _make(path, compressed=False, **extra):
    arrays = {
        "P4_S16": np.arange(2 * 256 * 4, dtype=np.float32).reshape(2, 256, 4),
        "half": np.ones((3, 3), np.float16),
        "count": np.array(7, np.int64),
        "name": np.array("hello"),
        **extra,
    }
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_update_carries_other_members_byte_for_byte(tmp_path, compressed):
    p = tmp_path / "a_features.npz"
    arrays = _make(p, compressed)
    os.chmod(p, 0o640)
    before = raw_members(p)
    res = store.update(p, {"edge_64x64": np.ones((64, 64), np.uint8), "count": np.array(8, np.int64)})
    assert set(res.written) == {"edge_64x64", "count"}
    after = raw_members(p)
    for name in ("P4_S16.npy", "half.npy", "name.npy"):
        assert after[name] == before[name]
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    with np.load(p, allow_pickle=False) as z:
        assert int(z["count"]) == 8 and z["edge_64x64"].sum() == 64 * 64
        np.testing.assert_array_equal(z["P4_S16"], arrays["P4_S16"])
        assert z["half"].dtype == np.float16 and str(z["name"]) == "hello"
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None
        want = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        assert zf.getinfo("edge_64x64.npy").compress_type == want
    assert temp_files(tmp_path) == []


def test_only_if_present(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    res = store.update(
        p, {"x": np.zeros(2), "edge_256x256": np.zeros((256, 256), np.uint8)}, only_if_present={"edge_256x256"}
    )
    assert res.written == ("x",)
    _make(p, edge_256x256=np.ones((256, 256), np.uint8))
    res = store.update(p, {"edge_256x256": np.zeros((256, 256), np.uint8)}, only_if_present={"edge_256x256"})
    assert res.written == ("edge_256x256",)
    assert not store.read_arrays(p, ["edge_256x256"])["edge_256x256"].any()


def test_inspect_and_lazy_reads(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    info = store.inspect(p)
    assert info["P4_S16"].shape == (2, 256, 4) and info["P4_S16"].dtype == np.float32
    got = store.read_arrays(p, ["count", "absent"])
    assert list(got) == ["count"] and int(got["count"]) == 7


def _bad_files(tmp_path):
    good = tmp_path / "good_features.npz"
    _make(good)
    trunc = tmp_path / "trunc_features.npz"
    data = good.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    notzip = tmp_path / "notzip_features.npz"
    notzip.write_bytes(b"this is not a zip file at all" * 10)
    badnpy = tmp_path / "badnpy_features.npz"
    with zipfile.ZipFile(badnpy, "w") as zf:
        zf.writestr("P4_S16.npy", b"not an npy header")
    return {"truncated": trunc, "not a zip": notzip, "damaged member": badnpy}


def test_bad_files_are_refused_and_left_unchanged(tmp_path):
    for what, p in _bad_files(tmp_path).items():
        digest = sha(p)
        with pytest.raises(store.NpzError) as ei:
            store.update(p, {"edge_flag": np.array(1, np.uint8)})
        assert str(ei.value), what
        assert sha(p) == digest, what
    assert temp_files(tmp_path) == []


class _Boom:
    """Unpickling this would run code: the test fails if any npzfix read ever unpickles a member."""

    def __reduce__(self):
        return (os.abort, ())


@pytest.mark.parametrize("compressed", [False, True])
def test_pickled_members_are_carried_byte_for_byte_and_never_unpickled(tmp_path, compressed):
    p = tmp_path / "sa_1_features.npz"
    masks = np.array([(np.arange(12).reshape(3, 4) % 2).astype(np.uint8)], dtype=object)  # vfmkd's `masks`
    _make(p, compressed, masks=masks, box_prompts_meta=np.array(["strategy_A"], dtype=object))
    with zipfile.ZipFile(p, "a") as zf:  # a member whose unpickling would abort the process
        buf = __import__("io").BytesIO()
        np.save(buf, np.array([_Boom()], dtype=object), allow_pickle=True)
        zf.writestr("trap.npy", buf.getvalue())
    before = raw_members(p)
    info = store.inspect(p)
    assert info["masks"].carried and info["box_prompts_meta"].carried and info["trap"].carried
    assert not info["P4_S16"].carried and info["masks"].shape == (1, 3, 4)
    store.update(p, {"edge_64x64": np.ones((64, 64), np.uint8)})
    after = raw_members(p)
    for name in ("masks.npy", "box_prompts_meta.npy", "trap.npy", "P4_S16.npy"):
        assert after[name] == before[name]
    every = store.read_arrays(p)  # all that npzfix may read: pickled members are left out
    assert "masks" not in every and "trap" not in every and every["edge_64x64"].sum() == 64 * 64
    assert int(store.read_flags(p, ["count", "masks_absent"])["count"]) == 7
    for read in (store.read_arrays, store.read_flags):  # asked for by name: that read fails, naming the member
        with pytest.raises(store.NpzError, match="masks.npy.*pickle"):
            read(p, ["masks"])
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None
        want = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        assert zf.getinfo("edge_64x64.npy").compress_type == want
    with zipfile.ZipFile(p) as zf, zipfile.ZipFile(tmp_path / "no_trap.npz", "w") as out:
        for i in zf.infolist():
            if i.filename != "trap.npy":
                out.writestr(i, zf.read(i))
    with np.load(tmp_path / "no_trap.npz", allow_pickle=True) as z:  # the test (not npzfix) may unpickle
        assert np.array_equal(np.asarray(z["masks"][0], np.uint8), np.asarray(masks[0], np.uint8))
        assert list(z["box_prompts_meta"]) == ["strategy_A"]
    assert temp_files(tmp_path) == []


def test_disk_full_during_write_leaves_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "a_features.npz"
    _make(p)
    digest = sha(p)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.zipraw.RawZipWriter, "add", full)
    with pytest.raises(OSError) as ei:
        store.update(p, {"edge_flag": np.array(1, np.uint8)})
    assert ei.value.errno == errno.ENOSPC
    assert sha(p) == digest and temp_files(tmp_path) == []


def _writer(path, key, n):
    for i in range(n):
        store.update(path, {key: np.array(i, np.int64)}, durable=False)


def test_concurrent_writers_never_lose_each_others_keys(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(p), f"k{j}", 40)) for j in range(3)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    got = store.read_arrays(p)
    assert [int(got[f"k{j}"]) for j in range(3)] == [39, 39, 39]
    assert got["P4_S16"].shape == (2, 256, 4)


def test_sweep_removes_only_dead_writers_temps(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    q = tmp_path / "b_features.npz"
    _make(q)
    stale = tmp_path / f".a_features.npz{store.TMP_MARKER}dead"
    stale.write_bytes(b"half written")
    orphan = tmp_path / f".gone_features.npz{store.TMP_MARKER}x"
    orphan.write_bytes(b"x")
    live = tmp_path / f".b_features.npz{store.TMP_MARKER}live"
    live.write_bytes(b"being written")
    fd = os.open(q, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holds b's lock
    try:
        removed = store.sweep_stale_temps(tmp_path)
    finally:
        os.close(fd)
    assert sorted(os.path.basename(r) for r in removed) == sorted([stale.name, orphan.name])
    assert live.exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_flags_fast_path_agrees_and_detects_damage(tmp_path, compressed):
    p = tmp_path / "a_features.npz"
    _make(
        p,
        compressed,
        edge_flag=np.array(1, np.uint8),
        edge_version=np.array("B_v1"),
        fortran=np.asfortranarray(np.arange(6).reshape(2, 3)),
    )
    keys = ["edge_flag", "edge_version", "count", "fortran", "absent"]
    fast, slow = store.read_flags(p, keys), store.read_arrays(p, keys)
    assert fast.keys() == slow.keys()
    for k in fast:
        assert fast[k].dtype == slow[k].dtype
        np.testing.assert_array_equal(fast[k], slow[k])
    if not compressed:  # flip a byte inside the stored edge_flag data: the CRC must catch it
        data = bytearray(p.read_bytes())
        with zipfile.ZipFile(p) as zf:
            info = zf.getinfo("edge_flag.npy")
        data[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0xFF
        p.write_bytes(bytes(data))
        with pytest.raises(store.NpzError, match="CRC"):
            store.read_flags(p, ["edge_flag"])
    np.savez(p, edge_flag=np.array([None], dtype=object))
    with pytest.raises(store.NpzError, match="pickle"):
        store.read_flags(p, ["edge_flag"])


def test_randomised_updates_agree_with_numpy(tmp_path):
    """Random keys (unicode too), dtypes, shapes, stored or deflated files, merged updates: np.load sees
    exactly the expected arrays after every update, and zipfile finds every CRC intact."""
    rng = np.random.default_rng(0)
    dtypes = [np.uint8, np.int64, np.float16, np.float32, np.float64, np.bool_, "<U7", np.complex64]

    def arr():
        dt = dtypes[rng.integers(len(dtypes))]
        shape = tuple(int(v) for v in rng.integers(0, 5, rng.integers(0, 4)))
        if dt == "<U7":
            return np.array(["ab", "çé", "x"][: max(1, int(np.prod(shape)) % 3)])
        a = rng.standard_normal(shape) * 10
        return np.asfortranarray(a.astype(dt)) if a.ndim == 2 and rng.random() < 0.3 else a.astype(dt)

    for trial in range(12):
        p = tmp_path / f"f{trial}_features.npz"
        expected = {f"k{i}": arr() for i in range(int(rng.integers(1, 6)))}
        expected["ünï"] = arr()
        (np.savez_compressed if trial % 2 else np.savez)(p, **expected)
        for _ in range(4):
            new = {f"k{int(rng.integers(0, 8))}": arr() for _ in range(int(rng.integers(1, 4)))}
            store.update(p, new, durable=False)
            expected.update(new)
            with zipfile.ZipFile(p) as zf:
                assert zf.testzip() is None
            with np.load(p, allow_pickle=False) as z:
                assert sorted(z.files) == sorted(expected)
                for k, v in expected.items():
                    assert z[k].dtype == v.dtype and z[k].shape == v.shape
                    np.testing.assert_array_equal(z[k], v)
            flags = store.read_flags(p, list(expected))
            for k, v in flags.items():
                np.testing.assert_array_equal(v, expected[k])


def test_nothing_in_a_data_directory_blocks_or_stops_the_sweep(tmp_path):
    """Issue 12 #3, #6: a FIFO named like an NPZ, a directory named like a temp: no hang, no crash."""
    os.mkfifo(tmp_path / "f_features.npz")
    (tmp_path / f".f_features.npz{store.TMP_MARKER}old").write_bytes(b"x")
    (tmp_path / f".d_features.npz{store.TMP_MARKER}somedir").mkdir()
    _make(tmp_path / "d_features.npz")
    removed = store.sweep_stale_temps(tmp_path)  # would block forever opening the FIFO
    assert [os.path.basename(p) for p in removed] == [f".f_features.npz{store.TMP_MARKER}old"]
    assert (tmp_path / f".d_features.npz{store.TMP_MARKER}somedir").is_dir()
    with pytest.raises(store.NpzError, match="not a regular file"):
        store.read_flags(tmp_path / "f_features.npz", ["edge_flag"])
    with pytest.raises(store.NpzError, match="not a regular file"):
        store.update(tmp_path / "f_features.npz", {"a": np.zeros(1)})


def test_a_lock_held_elsewhere_is_waited_for_within_a_bound(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    before = sha(p)
    holder = os.open(p, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's writer (flock locks are per open file description)
    try:
        with pytest.raises(store.NpzError, match=f"locked by pid {os.getpid()} for over"):
            with store.locked(p, timeout=0.3):
                pass
        with pytest.raises(store.NpzError, match="locked"):
            store.update(p, {"x": np.zeros(1)}, lock_timeout_s=0.2)
    finally:
        os.close(holder)
    assert sha(p) == before
    store.update(p, {"x": np.zeros(1)})


def test_names_up_to_name_max_can_be_updated_and_their_temps_swept(tmp_path):
    """Issue 12 #9: the temp name ('.<name>.npzfix-tmp-XXXXXXXX') must fit NAME_MAX too."""
    for name in ("a" * 241 + "_features.npz", "ü" * 100 + "_features.npz"):
        p = tmp_path / name
        assert len(os.fsencode(name)) <= 255
        _make(p)
        store.update(p, {"edge_flag": np.array(1, np.uint8)})
        assert store.read_flags(p, ["edge_flag"])["edge_flag"] == 1
        stale = tmp_path / (store.temp_prefix(name) + "killed0")
        assert len(os.fsencode(stale.name)) <= 255
        stale.write_bytes(b"half")
        assert store.sweep_stale_temps(tmp_path) == [str(stale)]
    assert temp_files(tmp_path) == []


def test_temps_beside_a_symlinked_npz_target_are_swept(tmp_path):
    """Issue 12 #8: temps are created beside the target, outside the run's directory; the next update of
    that target removes them (under its lock, any such temp is a killed writer's)."""
    outside, run_dir = tmp_path / "store", tmp_path / "extracted"
    outside.mkdir()
    run_dir.mkdir()
    _make(outside / "a_features.npz")
    os.symlink(outside / "a_features.npz", run_dir / "a_features.npz")
    stale = outside / f".a_features.npz{store.TMP_MARKER}killed"
    stale.write_bytes(b"600 MB of half a zip")
    store.update(run_dir / "a_features.npz", {"edge_flag": np.array(1, np.uint8)})
    assert not stale.exists() and os.path.islink(run_dir / "a_features.npz")
    assert store.read_flags(outside / "a_features.npz", ["edge_flag"])["edge_flag"] == 1


def test_an_update_keeps_mode_owner_and_xattrs_and_leaves_hard_links_alone(tmp_path):
    p = tmp_path / "a_features.npz"
    _make(p)
    os.chmod(p, 0o640)
    if os.geteuid() == 0:
        os.chown(p, 1234, 5678)
    try:
        os.setxattr(p, "user.npzfix_test", b"kept")
        has_xattr = True
    except OSError:
        has_xattr = False  # the file system has none
    link = tmp_path / "other_name.npz"
    os.link(p, link)
    old = sha(link)
    store.update(p, {"edge_flag": np.array(1, np.uint8)})
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    if has_xattr:
        assert os.getxattr(p, "user.npzfix_test") == b"kept"
    assert sha(link) == old and os.stat(link).st_ino != st.st_ino  # documented: the link keeps the old file
