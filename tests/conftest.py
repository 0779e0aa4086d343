"""Fixtures shared by every test module: tiny models made on the spot and a real S3 server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.common.tiny_model import make_tiny_model
from pipelines.loopback import ServerThread

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "distill_pipeline.yaml"  # the committed, compiled pipeline


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` measure the GPU paths (speed, memory at real sizes); every path they take also
    runs on the CPU in a test of its own. Without CUDA a run leaves them out unless its `-m` names them,
    so no selection of the CPU tests ends in skips for want of a GPU."""
    import torch

    if torch.cuda.is_available() or "gpu" in (config.getoption("markexpr") or ""):
        return
    on_gpu = [item for item in items if item.get_closest_marker("gpu")]
    if on_gpu:
        config.hook.pytest_deselected(items=on_gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(autouse=True)
def fresh_accelerate_precision():
    """Each train run in this process sets its own mixed precision: a stage runs once per pod, but a test
    process runs it many times, and accelerate keeps the first run's precision process-wide."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init tiny Qwen2 student (no warm-up): for tests of mechanics, not of learning."""
    path = tmp_path_factory.mktemp("tiny-student")
    make_tiny_model("tiny://qwen2?warmup_steps=0", path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A wider tiny Qwen2 with the student's tokenizer: a local teacher for logit distillation tests."""
    path = tmp_path_factory.mktemp("tiny-teacher")
    make_tiny_model("tiny://qwen2?warmup_steps=0&hidden=192&layers=3&heads=6&kv_heads=2&seed=1", path)
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto in server mode) on loopback, reached through boto3 like any S3.

    Sets AWS_ENDPOINT_URL and dummy credentials for the session, creates bucket 'distill'.
    """
    import boto3

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test-access-key",
        AWS_SECRET_ACCESS_KEY="test-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
    )
    deadline = time.time() + 30
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket="distill")
            break
        except Exception:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto S3 server did not start") from None
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def vendored_schemas() -> Path:
    """The upstream CRDs the project's Kubernetes objects are validated against (Trainer, KServe): the
    workspace's shared/vendor beside the checkout, or KFP_DISTILL_VENDOR; never a copy in this repository."""
    candidates = [
        os.environ.get("KFP_DISTILL_VENDOR", ""),
        Path(__file__).resolve().parents[2] / "shared" / "vendor",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "README.md").is_file():
            return Path(candidate)
    pytest.skip("the vendored CRDs (shared/vendor) are not beside this checkout; set KFP_DISTILL_VENDOR")


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path) -> str:
    """A store of this test alone, on the local disk and (a second run of the test) in S3 through moto;
    child processes inherit the AWS_* variables s3_endpoint sets."""
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://distill/{tmp_path.name}"
    return str(tmp_path / "store")


@pytest.fixture(scope="session")
def vendor_dir() -> Path:
    return vendored_schemas()


def approve_hosts(monkeypatch, *urls: str) -> None:
    """Approve the origins of `urls` (the tests' loopback servers) for API keys, as an administrator
    does through the ConfigMap distill-approved-hosts (components/common/approved_hosts.py)."""
    from components.common.approved_hosts import APPROVED_HOSTS_ENV

    monkeypatch.setenv(APPROVED_HOSTS_ENV, ",".join(urls))


@pytest.fixture(scope="module")
def kserve_schema(vendor_dir) -> dict:
    """The vendored KServe v0.20 InferenceService schema (v1beta1)."""
    crd = yaml.safe_load(
        (vendor_dir / "kserve-v0.20.0" / "serving.kserve.io_inferenceservices.yaml").read_text()
    )
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The fake Kubernetes API on loopback, reached through a kubeconfig, as from outside a cluster."""
    from tests.packaging.fake_kubernetes import FakeKubernetes

    fake = FakeKubernetes(workdir=tmp_path / "pods")
    with ServerThread(fake.app()) as server:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
            "users": [{"name": "pipeline", "user": {"token": fake.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "pipeline"}}],
            "current-context": "fake",
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield fake
        fake.shutdown()


def run_command(*args: str, env: dict[str, str] | None = None, limit_s: float = 30) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m <args>` run from the repository root, timed."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=max(120, 2 * limit_s),
    )
    assert time.monotonic() - started < limit_s, "the command took too long"
    return result.returncode, result.stdout, result.stderr
