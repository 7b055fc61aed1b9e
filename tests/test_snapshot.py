"""Snapshots: one format for the single file and the Hub directory, old versions still load, and every way a
file can be wrong or hostile is one sentence before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scs_gan.config import to_dict
from scs_gan.errors import UserError
from scs_gan.latents import latents_for_seeds
from scs_gan.models import ModelConfig, build_generator
from scs_gan.snapshot import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    load_generator,
    read_snapshot,
    save_pretrained,
    save_snapshot,
)
from scs_gan.training.config import RunConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V1_FILE, V1_HUB = FIXTURES / "v1-generator-w4.safetensors", FIXTURES / "v1-hub-w4"


def _generator(channels: int = 8, z_dim: int = 16, skip: bool = False):
    model = ModelConfig(z_dim=z_dim)
    model.g.channels, model.g.skip = channels, skip
    torch.manual_seed(0)
    return build_generator(model, 32, 1).eval()


@pytest.mark.parametrize("location", [V1_FILE, V1_HUB], ids=["file", "hub-directory"])
def test_version_1_snapshots_load_and_generate_the_same_images_bit_for_bit(location):
    expected = load_file(str(FIXTURES / "v1-generator-w4-seeds0-7.safetensors"))["images"]
    generator = load_generator(location)
    assert generator.snapshot_info.version == 1
    assert generator.snapshot_info.run_config["model"]["g"]["channels"] == 4
    with torch.no_grad():
        images = generator(latents_for_seeds(range(8), generator.z_dim))
    # the weights are the stored tensors, bit for bit
    stored = load_file(str(V1_FILE if location == V1_FILE else V1_HUB / "model.safetensors"))
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in stored.items())
    # and a generator built from scratch with those weights makes the same images, bit for bit
    fresh = build_generator(ModelConfig(z_dim=32, g=generator.config), 32, 1).eval()
    fresh.load_state_dict(stored)
    with torch.no_grad():
        assert torch.equal(images, fresh(latents_for_seeds(range(8), 32)))
    # the images the version-1 code made (on another CPU, possibly another instruction set) agree to rounding
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_version_1_resaved_as_version_2_generates_the_same_images(tmp_path):
    old = load_generator(V1_FILE)
    save_snapshot(old, tmp_path / "v2.safetensors", old.snapshot_info.run_config, old.snapshot_info.extra)
    save_pretrained(old, tmp_path / "hub")
    z = latents_for_seeds(range(8), old.z_dim)
    with torch.no_grad():
        reference = old(z)
        for location in (tmp_path / "v2.safetensors", tmp_path / "hub"):
            again = load_generator(location)
            assert again.snapshot_info.version == SNAPSHOT_VERSION
            assert again.snapshot_info.extra["kimg"] == 1.5  # carried over by save_pretrained too
            assert torch.equal(again(z), reference)


def test_both_layouts_hold_the_same_header(tmp_path):
    generator = _generator()
    run_config = to_dict(RunConfig())
    save_snapshot(generator, tmp_path / "s.safetensors", run_config, {"kimg": 2.0})
    save_pretrained(generator, tmp_path / "hub", run_config, {"kimg": 2.0})
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        in_file = json.loads(f.metadata()[SNAPSHOT_FORMAT])
    in_dir = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert in_file == in_dir
    assert in_file["format"] == SNAPSHOT_FORMAT and in_file["version"] == SNAPSHOT_VERSION == 2
    expected = {"z_dim": 16, "resolution": 32, "channels": 1, "num_classes": 0, "g": to_dict(generator.config)}
    assert in_file["generator"] == expected
    assert in_file["run_config"] == run_config and in_file["extra"] == {"kimg": 2.0}


@pytest.mark.parametrize("skip", [False, True], ids=["dcgan-topology", "skip-generator"])
def test_round_trip_and_a_run_config_this_version_does_not_know(tmp_path, skip):
    """Only the generator section is parsed strictly: renamed or removed training options do not matter."""
    generator = _generator(skip=skip)
    foreign = {"train": {"a_renamed_option": 3}, "data": {"name": "something-new"}, "whatever": [1, 2]}
    save_snapshot(generator, tmp_path / "s.safetensors", foreign, {"kimg": 1.0})
    loaded = load_generator(tmp_path / "s.safetensors")
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(loaded(z), generator(z))
    assert loaded.snapshot_info.run_config == foreign and loaded.snapshot_info.extra == {"kimg": 1.0}
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert loaded.config.skip is skip and (loaded.to_image is not None) is skip


def _write_v2(path: Path, tensors: dict, header: object) -> Path:
    save_file(tensors, str(path), {"format": "pt", SNAPSHOT_FORMAT: json.dumps(header)})
    return path


def _header_of(generator) -> dict:
    return {
        "format": SNAPSHOT_FORMAT,
        "version": 2,
        "generator": {"z_dim": generator.z_dim, "resolution": 32, "channels": 1, "g": to_dict(generator.config)},
        "run_config": None,
        "extra": {},
    }


def test_a_conditional_snapshot_from_before_class_dim_keeps_an_embedding_as_long_as_the_code(tmp_path):
    """Round 29's conditional snapshots have no ``class_dim`` in their header: their embedding has the code's
    length, whatever the option's default is now."""
    model = ModelConfig(z_dim=16, num_classes=3)
    model.g.channels, model.g.class_dim = 8, 0
    torch.manual_seed(0)
    generator = build_generator(model, 32, 1).eval()
    header = {**_header_of(generator), "generator": {**_header_of(generator)["generator"], "num_classes": 3}}
    for option in ("class_dim", "class_mod", "latent_mod"):
        del header["generator"]["g"][option]
    tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
    loaded = load_generator(_write_v2(tmp_path / "old.safetensors", tensors, header))
    assert loaded.class_dim == 16 and loaded.num_classes == 3
    assert not loaded.config.class_mod and not loaded.config.latent_mod
    z = latents_for_seeds(range(4), 16)
    with torch.no_grad():
        assert torch.equal(loaded(z), generator(z))


def test_bad_files_are_one_sentence(tmp_path):
    generator = _generator()
    tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
    cases: list[tuple[Path, str]] = []
    cases.append((tmp_path / "missing.safetensors", "does not exist"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases.append((tmp_path / "junk.safetensors", "not a readable safetensors file"))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    cases.append((tmp_path / "other.safetensors", "not an scs_gan generator snapshot"))
    cases.append(
        (_write_v2(tmp_path / "v9.safetensors", tensors, {**_header_of(generator), "version": 9}), "version 9")
    )
    cases.append((_write_v2(tmp_path / "list.safetensors", tensors, [1, 2]), "not an scs_gan generator snapshot"))
    listed = {**_header_of(generator), "generator": [1, 2]}
    cases.append((_write_v2(tmp_path / "gen-list.safetensors", tensors, listed), "not a mapping"))
    unknown = _header_of(generator)
    unknown["generator"]["g"]["warp_drive"] = True
    cases.append((_write_v2(tmp_path / "unknown.safetensors", tensors, unknown), "cannot build.*warp_drive"))
    wrong = _header_of(generator)
    wrong["generator"]["g"]["channels"] = 16  # the tensors are for 8
    cases.append((_write_v2(tmp_path / "mismatch.safetensors", tensors, wrong), "does not match the network"))
    nan = {**tensors, "net.0.weight": torch.full_like(tensors["net.0.weight"], float("nan"))}
    cases.append((_write_v2(tmp_path / "nan.safetensors", nan, _header_of(generator)), "non-finite weights"))
    huge = _header_of(generator)
    huge["generator"]["g"]["channels"] = huge["generator"]["g"]["max_channels"] = 100_000
    cases.append((_write_v2(tmp_path / "wide.safetensors", tensors, huge), "more than the"))
    deep = _header_of(generator)
    deep["generator"]["z_dim"] = 10**9
    cases.append((_write_v2(tmp_path / "zdim.safetensors", tensors, deep), "more than the"))
    negative = _header_of(generator)
    negative["generator"]["resolution"] = -32
    cases.append((_write_v2(tmp_path / "negative.safetensors", tensors, negative), "not a positive integer"))
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text("[1, 2]")
    save_file(tensors, str(tmp_path / "hub" / "model.safetensors"))
    cases.append((tmp_path / "hub", "not an scs_gan generator snapshot"))
    (tmp_path / "empty-dir").mkdir()
    cases.append((tmp_path / "empty-dir", "needs config.json and model.safetensors"))
    for path, message in cases:
        with pytest.raises(UserError, match=message) as error:
            load_generator(path)
        assert "\n" not in str(error.value), path


def test_absurd_sizes_are_refused_before_any_allocation(tmp_path):
    """channels 100,000 would need hundreds of GB: the check runs on the meta device, so this returns at once."""
    generator = _generator()
    header = _header_of(generator)
    header["generator"]["g"]["channels"] = 100_000
    header["generator"]["g"]["max_channels"] = 100_000
    path = _write_v2(tmp_path / "wide.safetensors", dict(generator.state_dict()), header)
    with pytest.raises(UserError, match="more than the"):
        read_snapshot(path)


def test_the_cli_reports_a_bad_snapshot_in_one_line(tmp_path, capsys):
    from scs_gan.cli import main

    generator = _generator()
    nan = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in generator.state_dict().items()
    }
    path = _write_v2(tmp_path / "nan.safetensors", nan, _header_of(generator))
    code = main(["generate", "--snapshot", str(path), "--seeds", "0-3", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()
