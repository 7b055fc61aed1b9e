"""FID/KID with the real TF-Inception weights: documented values, sanity, cache, processes, offline errors."""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from scs_gan.data import DataConfig, build_dataset, to_float
from scs_gan.errors import UserError
from scs_gan.images import to_uint8
from scs_gan.metrics import weights as W
from scs_gan.metrics.evaluate import Evaluator, describe
from scs_gan.metrics.frechet import frechet_distance
from scs_gan.metrics.inception import InceptionFeatures, make_fid, make_kid
from scs_gan.metrics.protocol import parse_metric
from scs_gan.models import ModelConfig, build_generator
from scs_gan.snapshot import save_snapshot
from scs_gan.training.config import RunConfig
from tests.launch import launch_failure, two_process_launch


@pytest.fixture(scope="module")
def fid_state():
    state, source = W.resolve_fid_weights(allow_download=False)
    return state, source


@pytest.fixture(scope="module")
def evaluator(fid_state, tmp_path_factory):
    os.environ["SCS_GAN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    dataset = build_dataset(DataConfig(max_images=500))
    yield Evaluator(dataset, *fid_state)
    del os.environ["SCS_GAN_CACHE"]


def test_weights_reproduce_torchmetrics_documented_fid_example(fid_state):
    assert W.fid64_fingerprint(fid_state[0]) == pytest.approx(12.6388, abs=5e-5)


def test_metric_names_carry_their_protocol():
    spec = parse_metric("fid2k_full")
    assert (spec.kind, spec.num_fake, spec.num_real) == ("fid", 2000, None)
    spec = parse_metric("kid1.5k_500")
    assert (spec.kind, spec.num_fake, spec.num_real) == ("kid", 1500, 500)
    for bad in ("fid", "fid2k", "is50k_full", "fid1_full"):
        with pytest.raises(UserError):
            parse_metric(bad)


def test_fid_of_a_set_against_itself_is_zero_and_rises_with_noise_as_torchmetrics_says(evaluator):
    images = evaluator.dataset.images[:24]
    clean = evaluator.features(images)
    values = []
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.0, 0.02, 0.1):
        noisy = to_uint8(to_float(images) + sigma * torch.randn(images.shape, generator=gen))
        values.append(frechet_distance(clean, evaluator.features(noisy)))
    assert abs(values[0]) < 1e-6  # exact: torchmetrics' eigendecomposition leaves up to 1e-2 of rounding here
    assert all(a < b for a, b in itertools.pairwise(values)), values
    assert values[1] > 1
    fid = make_fid()
    fid.update(clean, real=True)
    fid.update(evaluator.features(noisy), real=False)
    assert float(fid.compute()) == pytest.approx(values[2], rel=1e-5, abs=1e-2)


def test_real_feature_cache_is_hit_and_invalidated(evaluator, tmp_path, monkeypatch):
    seen = []
    forward = evaluator.features.forward
    monkeypatch.setattr(evaluator.features, "forward", lambda images: seen.append(len(images)) or forward(images))
    first = evaluator.real_features(30)
    assert not evaluator.last_cache_hit and sum(seen) == 30
    again = evaluator.real_features(30)
    assert evaluator.last_cache_hit and torch.equal(first, again)
    assert sum(seen) == 30  # the hit ran no image through Inception
    evaluator.real_features(20)  # another N: another entry
    assert not evaluator.last_cache_hit
    other = Evaluator(build_dataset(DataConfig(max_images=400)), evaluator.features.net.state_dict(), "test")
    other.real_features(30)  # another dataset fingerprint
    assert not other.last_cache_hit
    files = list((Path(os.environ["SCS_GAN_CACHE"]) / "fid").glob("reals-*.safetensors"))
    assert len(files) == 3


def test_evaluate_records_say_how_they_were_computed(evaluator):
    torch.manual_seed(0)
    model = ModelConfig()
    model.g.channels = 4
    generator = build_generator(model, 32, 1)
    results = evaluator.evaluate(generator, model.z_dim, ["fid12_12", "kid12_12"], {"kimg": 1.0})
    fid, kid = results["fid12_12"], results["kid12_12"]
    assert fid["value"] > 50 and kid["value"] > 0 and kid["subset_size"] == 12
    assert "std" not in kid and "+-" not in describe(kid)  # every 12-image subset of 12 images is the same set
    assert fid["num_fake"] == 12 and fid["num_real"] == 12 and fid["feature"] == 2048
    assert fid["dataset"] == evaluator.dataset.fingerprint and "frechet_distance" in fid["implementation"]
    assert "torchmetrics" in kid["implementation"]
    assert "antialias=False" in fid["implementation"] and fid["kimg"] == 1.0
    again = evaluator.evaluate(generator, model.z_dim, ["fid12_12"])
    assert again["fid12_12"]["value"] == pytest.approx(fid["value"], rel=1e-9)  # seeds 0..11, always


def test_two_processes_give_the_same_result_as_one(tmp_path, fid_weights_file):
    config = RunConfig()
    config.model.g.channels = 4
    config.data.max_images = 200
    torch.manual_seed(0)
    snapshot = tmp_path / "snap.safetensors"
    save_snapshot(build_generator(config.model, 32, 1), snapshot, config, {"kimg": 0.0})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCS_GAN_CACHE": str(tmp_path / "cache"), W.ENV_VAR: fid_weights_file}
    args = ["-m", "scs_gan", "metrics", "--snapshot", str(snapshot), "--metrics", "fid10_10,kid10_10"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [*two_process_launch(), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**env, "ACCELERATE_USE_CPU": "true", "SCS_GAN_CACHE": str(tmp_path / "cache2")},
    )
    assert two.returncode == 0, launch_failure(two)
    a = json.loads(one.stdout.strip().splitlines()[-1])["results"]
    b = json.loads(two.stdout.strip().splitlines()[-1])["results"]
    assert b["fid10_10"]["processes"] == 2 and a["fid10_10"]["processes"] == 1
    for name in ("fid10_10", "kid10_10"):
        assert b[name]["value"] == pytest.approx(a[name]["value"], rel=1e-5, abs=1e-6)


def test_missing_weights_offline_give_one_clear_sentence_without_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(W, "_fid_helper_file", lambda: None)  # as if the [fid] extra were not installed

    lookups = []

    def offline(*args, **kwargs):
        lookups.append(args[0])
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(UserError, match=r"no FID Inception weights are available offline: install them with"):
        W.resolve_fid_weights()
    assert len(lookups) == len(set(lookups)) <= 1  # at most one failed lookup: nothing retries or waits


def test_explicit_weights_file_and_hub_file(tmp_path, monkeypatch, fid_state):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in fid_state[0].items()}, str(path))
    state, source = W.resolve_fid_weights(str(path))
    assert source == f"file {path}" and W.weights_id(state) == W.weights_id(fid_state[0])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / W.HUB_FILENAME
    hub.parent.mkdir(parents=True)
    torch.save(fid_state[0], hub)  # torch-fidelity's file format: a plain state dict
    state, source = W.resolve_fid_weights()
    assert source.startswith("torch hub cache") and W.weights_id(state) == W.weights_id(fid_state[0])
    hub.write_bytes(pickle.dumps({"weights": object()}))
    with pytest.raises(UserError, match="cannot read FID weights"):
        W.resolve_fid_weights()


def test_restricted_reader_refuses_code_in_a_torchscript_archive(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    pickle.dump({"x": Evil()}, buffer, protocol=2)
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("m/data.pkl", buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match=r"refusing (posix|os)\.system"):
        W.read_torchscript_tensors(archive)


def test_kid_reports_a_spread_only_where_its_subsets_differ():
    """kid<N>_<M> draws subsets of min(1000, N, M) from each set: smaller than one of the sets, they differ
    and their spread means something; as large as both, every subset is both sets and the spread is
    rounding, so the record leaves it out."""
    generator = torch.Generator().manual_seed(0)
    reals, fakes = torch.randn(40, 2048, generator=generator), 1.2 * torch.randn(40, 2048, generator=generator)
    host = Evaluator.__new__(Evaluator)
    host.device = torch.device("cpu")
    same, std_same = host._compute(parse_metric("kid20_20"), reals[:20], fakes[:20])
    _, std_more = host._compute(parse_metric("kid20_40"), reals, fakes[:20])
    assert std_same is None and std_more is not None and std_more > 1e-6
    # computed once, not for 100 identical subsets: the value torchmetrics gives with all 100
    kid = make_kid(2048, subset_size=20)
    kid.update(reals[:20], real=True)
    kid.update(fakes[:20], real=False)
    torch.manual_seed(0)
    assert same == pytest.approx(float(kid.compute()[0]), rel=1e-5)


def test_folded_batch_norms_give_the_published_networks_features(fid_state):
    """Every conv + batch norm of the Inception is folded into one convolution for speed; the features stay
    those of the published network (to float rounding) and the state dict keeps the published weights."""
    state = fid_state[0]
    folded, plain = InceptionFeatures(state, batch=4), InceptionFeatures(state, batch=4, fold=False)
    assert folded.folded == 94 and plain.folded == 0
    assert folded.state_dict().keys() == plain.state_dict().keys()
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = folded(images), plain(images)
    assert (a - b).abs().max() <= 1e-4 * b.abs().max() and not torch.equal(a, b)
