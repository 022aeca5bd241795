"""The teacher is built as asked or refused with a reason that says what to change, told apart by exception
type (never by message text): an unknown config, a file that is not a checkpoint, a checkpoint without a
``model`` entry, one that does not match the config."""

import pytest
import torch

from npzfix_core.teacher import TeacherError, TeacherSpec, build

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _spec(weights, config=TINY):
    return TeacherSpec(weights=str(weights), config=config, resolution=128)


def test_each_way_a_teacher_cannot_be_built_is_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"x")
    with pytest.raises(TeacherError, match="unknown SAM2 config 'configs/nope.yaml'"):
        build(_spec(junk, "configs/nope.yaml"))
    with pytest.raises(TeacherError, match="with weights_only=True"):
        build(_spec(junk))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(TeacherError, match="cannot load checkpoint"):
        build(_spec(empty))
    torch.save({"x": 1}, tmp_path / "nomodel.pt")
    with pytest.raises(TeacherError, match="has no 'model' entry"):
        build(_spec(tmp_path / "nomodel.pt"))
    model = build(TeacherSpec(random_init_seed=0, config=TINY, resolution=128)).encoder
    sd = {f"image_encoder.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "encoder_only.pt")  # no decoder / memory keys
    with pytest.raises(TeacherError, match=r"does not match .* strictly \(\d+ missing, 0 unexpected, 0 of another"):
        build(_spec(tmp_path / "encoder_only.pt"))
