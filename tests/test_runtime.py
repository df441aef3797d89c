"""Device resolution and CUDA numerics (runtime.py, tracking.py), on CPU-only machines: GPUs are faked by replacing
torch.cuda's availability, count and device properties; the flags are real torch switches (settable on any build)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from esper_exp import runtime
from esper_exp.tracking import Tracker, read_run_json


@pytest.fixture
def gpus(monkeypatch):
    """gpus(n): this process sees n CUDA devices (0: CUDA absent)."""

    def fake(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return fake


@pytest.fixture
def torch_flags(monkeypatch):
    """Set every pinned switch to the opposite of what pinning chooses (so a test can fail), restore them after."""
    m, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    has_fp16_acc = hasattr(torch._C, "_set_cublas_allow_fp16_accumulation")
    saved = (m.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision(),
             m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction,
             m.allow_fp16_accumulation if has_fp16_acc else None, torch.are_deterministic_algorithms_enabled(),
             cudnn.deterministic, cudnn.benchmark, torch.get_num_threads())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    m.allow_tf32, cudnn.allow_tf32 = True, True
    torch.set_float32_matmul_precision("high")
    m.allow_bf16_reduced_precision_reduction = m.allow_fp16_reduced_precision_reduction = True
    if has_fp16_acc:
        m.allow_fp16_accumulation = True
    yield
    (m.allow_tf32, cudnn.allow_tf32, precision, m.allow_bf16_reduced_precision_reduction,
     m.allow_fp16_reduced_precision_reduction, fp16_acc, det, cudnn.deterministic, cudnn.benchmark, threads) = saved
    torch.set_float32_matmul_precision(precision)
    if has_fp16_acc:
        m.allow_fp16_accumulation = fp16_acc
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ device resolution
@pytest.mark.parametrize("name,job_num,expected", [
    ("cuda", None, "cuda:0"),  # torch.cuda.set_device rejects a device without an index
    ("cuda", 0, "cuda:0"),
    ("cuda", 4, "cuda:1"),  # sweep job i on k GPUs: GPU i mod k
    ("auto", None, "cuda:0"),
    ("auto", 5, "cuda:2"),
    ("cuda:2", 7, "cuda:2"),  # a named GPU wins over the job number
    ("cpu", 3, "cpu"),
])
def test_cuda_resolves_to_an_indexed_gpu(gpus, name, job_num, expected):
    gpus(3)
    device = runtime.resolve_device(name, job_num)
    assert device == torch.device(expected)
    assert device.type == "cpu" or device.index is not None


@pytest.mark.parametrize("name", ["cuda:3", "cuda:x", "cuda:-1", "cuda:"])
def test_a_gpu_this_machine_lacks_is_one_clear_line(gpus, name):
    gpus(3)
    with pytest.raises(ValueError) as e:
        runtime.resolve_device(name)
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg and "cuda:0, cuda:1, cuda:2" in msg and "cuda:3," not in msg


def test_without_cuda_auto_is_cpu_and_cuda_is_refused(gpus):
    gpus(0)
    assert runtime.resolve_device("auto", 4) == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available; allowed here: auto, cpu"):
            runtime.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_esper_train_device_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "esper_exp.train", "device=cuda", "tracking.wandb.mode=disabled",
                           f"hydra.run.dir={tmp_path / 'x'}"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDA is not available" in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------ pinned numerics
def test_prepare_pins_cuda_numerics_before_the_device_is_set(gpus, torch_flags, monkeypatch):
    gpus(2)
    seen = {}

    def set_device(device):  # the first CUDA context of a fresh process: the workspace config must already be set
        seen["device"] = device
        seen["cublas"] = runtime.os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        seen["tf32"] = torch.backends.cuda.matmul.allow_tf32

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    runtime.prepare(1, runtime.resolve_device("cuda", 3), deterministic=True, threads=1)
    assert seen == {"device": torch.device("cuda", 1), "cublas": ":4096:8", "tf32": False}
    flags = runtime.cuda_flags()
    assert flags["matmul_allow_tf32"] is False and flags["cudnn_allow_tf32"] is False
    assert flags["float32_matmul_precision"] == "highest"
    assert flags["allow_bf16_reduced_precision_reduction"] is False
    assert flags["allow_fp16_reduced_precision_reduction"] is False
    assert flags["allow_fp16_accumulation"] in (False, None)  # None: a torch without the switch
    assert flags["deterministic_algorithms"] and flags["cudnn_deterministic"] and not flags["cudnn_benchmark"]
    assert flags["cublas_workspace_config"] == ":4096:8"


def test_pinning_keeps_a_workspace_config_already_set_and_follows_deterministic(torch_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    flags = runtime.pin_cuda_numerics(deterministic=False)
    assert flags["cublas_workspace_config"] == ":16:8"
    assert not flags["deterministic_algorithms"] and flags["cudnn_benchmark"]
    assert not flags["matmul_allow_tf32"] and not flags["allow_bf16_reduced_precision_reduction"]


def test_a_cpu_run_leaves_the_cuda_switches_alone(torch_flags):
    runtime.prepare(1, torch.device("cpu"), deterministic=True, threads=1)
    assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is True
    assert torch.get_float32_matmul_precision() == "high"
    assert "CUBLAS_WORKSPACE_CONFIG" not in runtime.os.environ


# ------------------------------------------------------------------------------------------ run.json
def _config(*overrides):
    return OmegaConf.to_container(make_cfg("env=cartpole", *overrides), resolve=True)


@pytest.fixture
def fake_gpu(gpus, monkeypatch):
    gpus(1)
    props = SimpleNamespace(name="Fake GPU 80GB", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: props.name)


def test_run_json_of_a_cuda_member_records_flags_versions_and_layout(tmp_path, fake_gpu, torch_flags):
    pinned = runtime.pin_cuda_numerics(deterministic=True)
    group = {"size": 3, "member_index": 2, "members": ["a", "b", str(tmp_path)]}
    Tracker(tmp_path, _config("device=cuda"), torch.device("cuda", 0), group=group).finish("completed")
    info = read_run_json(tmp_path)
    cuda = info["cuda"]
    assert info["device"] == "Fake GPU 80GB" and cuda["gpu"] == "Fake GPU 80GB" and cuda["capability"] == "9.0"
    assert cuda["flags"] == pinned
    assert (cuda["layout"]["group_size"], cuda["layout"]["member_index"]) == (3, 2)
    assert "layout" in cuda["layout"]["note"]
    for key in ("driver", "cuda_driver_api", "cuda_runtime", "cublas", "cudnn"):
        assert key in cuda  # a version, or 'unavailable (...)' where this machine has no such library
    assert isinstance(cuda["cublas"], str) and cuda["cublas"]
    json.dumps(info)  # plain JSON


def test_run_json_of_a_cpu_run_has_no_cuda_block(tmp_path):
    Tracker(tmp_path, _config("device=cpu"), torch.device("cpu")).finish("completed")
    info = read_run_json(tmp_path)
    assert "cuda" not in info and info["device"].startswith("cpu")


def test_a_run_resumed_under_another_layout_keeps_the_previous_cuda_block(tmp_path, fake_gpu, torch_flags):
    runtime.pin_cuda_numerics(deterministic=True)
    config = _config("device=cuda")
    first = {"size": 2, "member_index": 0, "members": [str(tmp_path), "b"]}
    Tracker(tmp_path, config, torch.device("cuda", 0), group=first).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, torch.device("cuda", 0), resume_at=(0, 0), group=first).finish("interrupted")
    assert "cuda_before_resume" not in read_run_json(tmp_path)  # same GPU, flags and layout: nothing to keep
    second = {"size": 3, "member_index": 1, "members": ["a", str(tmp_path), "c"]}
    Tracker(tmp_path, config, torch.device("cuda", 0), resume_at=(0, 0), group=second).finish("completed")
    info = read_run_json(tmp_path)
    assert info["cuda"]["layout"]["group_size"] == 3
    assert [b["layout"]["group_size"] for b in info["cuda_before_resume"]] == [2]
