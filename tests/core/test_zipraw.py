"""The raw zip layer against the standard library's zipfile: what one writes, the other reads, byte for byte."""

import io
import os
import zipfile

import numpy as np
import pytest

from npzfix_core import zipraw


def test_written_archives_read_back_with_zipfile_and_raw_copies_keep_bytes(tmp_path):
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(zipfile.ZipInfo("kept.npy", (2020, 5, 17, 10, 30, 2)), b"x" * 5000, zipfile.ZIP_DEFLATED)
        zf.writestr("stored.npy", b"abc" * 100, zipfile.ZIP_STORED)
        zf.writestr("ünï.npy", b"unicode name")
    out = tmp_path / "out.zip"
    with open(src, "rb") as s, zipfile.ZipFile(s) as zf, open(out, "wb") as o:
        w = zipraw.RawZipWriter(o)
        for info in zf.infolist():
            w.copy_raw(s, info)
        w.add("new_deflated.npy", [b"\x00" * 4000, b"\x00" * 6000], deflate=True)
        w.add("new_stored.npy", [b"\x01", np.frombuffer(b"\x02", np.uint8)], deflate=False)
        w.close()
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(src) as orig:
        assert zf.testzip() is None
        assert zf.read("kept.npy") == b"x" * 5000 and zf.read("ünï.npy") == b"unicode name"
        assert zf.getinfo("kept.npy").date_time == (2020, 5, 17, 10, 30, 2)
        assert zf.getinfo("kept.npy").compress_size == orig.getinfo("kept.npy").compress_size
        assert zf.read("new_deflated.npy") == b"\x00" * 10000 and zf.read("new_stored.npy") == b"\x01\x02"
        infos = {i.filename: i for i in zf.infolist()}
    fd = os.open(out, os.O_RDONLY)
    try:
        directory = zipraw.read_directory(fd, os.fstat(fd).st_size)
        assert set(directory) == set(infos)
        for name, e in directory.items():
            assert (e.crc, e.compressed_size, e.size, e.offset) == (
                infos[name].CRC,
                infos[name].compress_size,
                infos[name].file_size,
                infos[name].header_offset,
            )
            with zipfile.ZipFile(out) as zf:
                assert zipraw.read_member(fd, e) == zf.read(name)
    finally:
        os.close(fd)


def test_damage_and_unsupported_archives_are_told_apart(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"hello" * 100, zipfile.ZIP_STORED)
        zf.comment = b"a comment"  # zipfile's job: the quick reader steps aside
    fd = os.open(p, os.O_RDONLY)
    try:
        assert zipraw.read_directory(fd, os.fstat(fd).st_size) is None
    finally:
        os.close(fd)
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"hello" * 100, zipfile.ZIP_STORED)
    data = bytearray(p.read_bytes())
    data[40] ^= 0xFF  # inside the member's data
    p.write_bytes(bytes(data))
    fd = os.open(p, os.O_RDONLY)
    try:
        e = zipraw.read_directory(fd, os.fstat(fd).st_size)["a.npy"]
        with pytest.raises(zipraw.ZipRawError, match="CRC"):
            zipraw.read_member(fd, e)
    finally:
        os.close(fd)
    with pytest.raises(zipraw.ZipRawError, match="zip64"):
        w = zipraw.RawZipWriter(io.BytesIO())
        w._header(b"big", zipraw.STORED, 0, zipraw.LIMIT, zipraw.LIMIT, (1980, 1, 1, 0, 0, 0))


def test_kernel_copies_and_copies_by_hand_write_the_same_archive(tmp_path):
    """copy_file_range where the output is a file; read/write where it is not (a BytesIO): same bytes."""
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("big.npy", os.urandom(3 << 20), zipfile.ZIP_STORED)  # several 1 MiB chunks by hand
        zf.writestr("small.npy", b"s" * 10, zipfile.ZIP_DEFLATED)

    def write(o):
        with open(src, "rb") as s, zipfile.ZipFile(s) as zf:
            w = zipraw.RawZipWriter(o)
            for info in zf.infolist():
                w.copy_raw(s, info)
            w.add("new.npy", [b"header", np.arange(1000, dtype=np.float32).view(np.uint8)], deflate=False)
            w.close()

    with open(tmp_path / "out.zip", "wb") as o:
        write(o)
    mem = io.BytesIO()
    write(mem)
    assert (tmp_path / "out.zip").read_bytes() == mem.getvalue()
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert zf.testzip() is None
        assert zf.read("new.npy") == b"header" + np.arange(1000, dtype=np.float32).tobytes()
