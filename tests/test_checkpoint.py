"""Weights files: round trip, atomic writes, refusing files medrefine did not write."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medrefine import __version__
from medrefine.checkpoint import file_sha256, load_state, read_info, save_weights, unwrap
from medrefine.errors import InputError
from medrefine.models.registry import SegModelConfig, build_seg_model

CFG = SegModelConfig(
    name="unet",
    encoder="scratch",
    in_channels=1,
    widths=(4, 8, 8, 8, 8),
    decoder_widths=(8, 8, 4, 4),
)


class _Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside
    def __init__(self, inner):
        super().__init__()
        self.module = inner


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_seg_model(CFG)
    info = {"kind": "coarse", "model": CFG.to_dict(), "nested": {"a": [1, 2]}}
    path = save_weights(tmp_path / "sub" / "w.safetensors", model, info)
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]  # no temp left
    got = read_info(path)
    assert got == {**json.loads(json.dumps(info)), "medrefine_version": __version__}
    state = load_state(path)
    ref = model.state_dict()
    assert set(state) == set(ref)
    for k, v in ref.items():
        assert torch.equal(state[k], v), k
    rebuilt = build_seg_model(SegModelConfig.from_dict(got["model"]))
    rebuilt.load_state_dict(state)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, nn.Linear(2, 2), {"kind": "a"})
    first = file_sha256(path)
    save_weights(path, nn.Linear(2, 2), {"kind": "b"})
    assert read_info(path)["kind"] == "b" and file_sha256(path) != first
    assert len(file_sha256(path)) == 64


def test_wrapped_models_save_bare_keys(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3))
    assert unwrap(_Wrapper(_Wrapper(model))) is model
    path = save_weights(tmp_path / "w.safetensors", _Wrapper(model), {"kind": "x"})
    assert set(load_state(path)) == {"0.weight", "0.bias"}


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_info(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a weights file at all", b"\x00" * 64])
def test_refuses_non_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="safetensors"):
        read_info(path)
    with pytest.raises(InputError):
        load_state(path)


def test_refuses_a_pickle_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(InputError, match="not a safetensors"):
        read_info(path)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_refuses_safetensors_without_medrefine_metadata(tmp_path, metadata):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(InputError, match="no medrefine metadata"):
        read_info(path)


def test_damaged_metadata_is_an_input_error(tmp_path):
    path = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"medrefine": "{not json"})
    with pytest.raises(InputError):
        read_info(path)


def test_weights_that_do_not_fit_their_config_give_input_error(tmp_path):
    from medrefine.checkpoint import load_into
    from medrefine.models.registry import SegModelConfig, build_seg_model

    small = SegModelConfig(encoder="scratch", widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 4))
    other = SegModelConfig(encoder="scratch", widths=(4, 4, 4, 4, 4), decoder_widths=(4, 4, 4, 4))
    path = save_weights(tmp_path / "w.safetensors", build_seg_model(small), {"kind": "coarse"})
    with pytest.raises(InputError, match="do not fit"):
        load_into(build_seg_model(other), path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_get_the_umask_mode_like_every_output(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = save_weights(tmp_path / "w.safetensors", nn.Linear(2, 2), {"kind": "test"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
