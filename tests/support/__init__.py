"""What many tests share, as plain functions and constants (fixtures live in ``tests/conftest.py``): the CLI, real
files on disk made by the shipped synth module, byte-level comparisons, the independent SAM2 reference."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
import zlib

import numpy as np


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
NPZFIX = os.path.join(BIN, "npzfix")

SMALL_SIZES = ((120, 180), (1, 1), (37, 300), (256, 256), (300, 257), (64, 40))

# The small random-init teacher of the value-check tests (verify, adoption): as a spec, as CLI flags, built.
SMALL_RES = 128
SMALL_TEACHER_FLAGS = ("--random-init", 0, "--resolution", SMALL_RES, "--device", "cpu")


def small_spec(seed: int = 0):
    from npzfix_core.teacher import TeacherSpec

    return TeacherSpec(random_init_seed=seed, resolution=SMALL_RES, device="cpu")


SMALL_SPEC = small_spec()


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def raw_members(path) -> dict[str, bytes]:
    """Member name -> stored (possibly compressed) bytes, to prove members were carried over untouched."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            n, e = np.frombuffer(f.read(4), "<u2")
            f.seek(info.header_offset + 30 + int(n) + int(e))
            out[info.filename] = f.read(info.compress_size)
    return out


EDGE_OWNED = frozenset({"edge_64x64", "edge_32x32", "edge_256x256", "edge_flag", "edge_version", "edge_provenance"})
FEATURE_OWNED = frozenset({"P4_S16", "P5_S32", "IMAGE_EMB_S16", "feature_flag", "feature_provenance"})


def assert_carried(path, before: dict[str, bytes], owned: frozenset[str]) -> int:
    """Every member npzfix does not own is unchanged: the same stored bytes (so the same compression), and, for
    pickled members, equal after ``np.load(allow_pickle=True)`` here in the test (never in npzfix); the file's
    compression is kept. Returns how many members were compared."""
    import io

    after = raw_members(path)
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        methods = {i.compress_type for i in infos.values()}
    n = 0
    for name, raw in before.items():
        if name[:-4] in owned:
            continue
        assert after.get(name) == raw, f"{path}: member {name} changed"
        if infos[name].compress_type == zipfile.ZIP_DEFLATED:
            raw = zlib.decompress(raw, -15)
        if b"'descr': '|O'" in raw[:128]:
            old = np.load(io.BytesIO(raw), allow_pickle=True)
            with np.load(path, allow_pickle=True) as z:
                new = z[name[:-4]]
            assert old.shape == new.shape
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(old.flat, new.flat))
        n += 1
    assert len(methods) == 1, f"{path}: mixed compression {methods}"
    return n


def reference_model_of(seed, ckpt=None):
    """SAM2 built straight from sam2 (seeded random init, or a checkpoint), P5 kept: the independent reference."""
    import sam2  # noqa: F401
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    return build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt,
        device="cpu",
        hydra_overrides_extra=["++model.image_encoder.scalp=0"],
    )


def reference_features(model, image_path, res=256):
    """Straightforward per-image path, the originals': cv2.imread + BGR->RGB -> ToTensor -> Resize(antialias) ->
    Normalize -> image_encoder."""
    import cv2
    import torch
    import torch.nn.functional as F

    img = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div(255)
    x = F.interpolate(x[None], size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        fpn = model.image_encoder(x)["backbone_fpn"]
    return fpn[2].numpy(), fpn[3].numpy()


def run_cli(*args, check_rc=None, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([NPZFIX, *map(str, args)], capture_output=True, text=True, **kw)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout + p.stderr
    return p


def temp_files(directory) -> list[str]:
    return [n for n in os.listdir(directory) if ".npzfix-tmp-" in n]


WRONG_KINDS = ("noise", "wrong_image", "bgr", "resolution", "checkpoint")


def image_of(npz: str) -> str:
    """The JPEG synth writes for an NPZ: in the shard, the parent of ``extracted``."""
    stem = os.path.basename(npz).split("_features")[0].replace("_sam2", "")
    return os.path.join(os.path.dirname(os.path.dirname(npz)), stem + ".jpg")


def set_features_as_written(npz: str, arrays: dict) -> None:
    """Put ``arrays`` in the file under its provenance record, re-sealed over them: as if npzfix had written
    them (or, for wrong values, a record that lies: only recomputing can tell)."""
    import json

    from npzfix_core import outputs, provenance, store

    old = store.read_flags(npz, ["feature_provenance"]).get("feature_provenance")
    if old is None:
        store.update(npz, arrays)
        return
    record = json.loads(str(old))

    def reseal(crcs):
        record["crc32"] = provenance.seal(crcs, outputs.feature_names())
        return {"feature_provenance": np.array(json.dumps(record, sort_keys=True))}

    store.update(npz, arrays, remove={"feature_provenance"}, seal=reseal)


def set_features(npz: str, p4: np.ndarray, p5: np.ndarray, legacy: bool = False) -> None:
    """Overwrite a file's features in place under a record that now lies: its flag and provenance kept, the seal
    redone over the new arrays (so only recomputing can tell); ``legacy``: flag them as the original tool did
    (feature_flag, no provenance)."""
    from npzfix_core import store

    arrays = {"P4_S16": p4.astype(np.float32), "P5_S32": p5.astype(np.float32)}
    if "IMAGE_EMB_S16" in store.inspect(npz):
        arrays["IMAGE_EMB_S16"] = arrays["P4_S16"]
    if legacy:
        arrays["feature_flag"] = np.array(1, np.uint8)
        store.update(npz, arrays, remove={"feature_provenance"})
        return
    set_features_as_written(npz, arrays)


def plant_wrong_features(npzs: list[str], res: int, legacy: bool = False) -> dict[str, str]:
    """The five kinds of wrong features a value check must catch, one per file of ``npzs[:5]``: N(0,1) noise,
    another image's features, the image read as BGR, another input resolution, another checkpoint (seed 1).
    Returns npz -> kind."""
    from npzfix_core.images import load_rgb
    from npzfix_core.teacher import TeacherSpec, build
    from npzfix_core.verify import encode_images

    def enc(spec, img):
        got = encode_images(build(spec), [img])[0]
        return got["P4_S16"], got["P5_S32"]

    rng = np.random.default_rng(0)
    planted = {}
    for npz, kind in zip(npzs, WRONG_KINDS):
        img = load_rgb(image_of(npz))
        if kind == "noise":
            p4 = rng.standard_normal((1, 256, res // 16, res // 16))
            p5 = rng.standard_normal((1, 256, res // 32, res // 32))
        elif kind == "wrong_image":
            p4, p5 = enc(TeacherSpec(random_init_seed=0, resolution=res), load_rgb(image_of(npzs[-1])))
        elif kind == "bgr":
            p4, p5 = enc(TeacherSpec(random_init_seed=0, resolution=res), np.ascontiguousarray(img[:, :, ::-1]))
        elif kind == "resolution":
            p4, p5 = enc(TeacherSpec(random_init_seed=0, resolution=res + 32), img)
        else:
            p4, p5 = enc(TeacherSpec(random_init_seed=1, resolution=res), img)
        set_features(npz, p4, p5, legacy)
        planted[npz] = kind
    return planted
