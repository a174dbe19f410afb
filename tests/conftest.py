"""Shared fixtures: tiny caption shards built on the fly, and the real-data root."""

from __future__ import annotations

import io
import os

# Tests never reach a model hub: local folders only (a hub lookup here hangs in retries, not fails).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import random
from typing import Callable, List

import pytest
from PIL import Image

from captiondata.config import default_data_root
from captiondata.records import Record
from captiondata.writer import ShardWriter


def jpeg_bytes(seed: int, size: int = 16) -> bytes:
    """A small random JPEG."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def noise_jpeg(seed: int, size: int = 40) -> bytes:
    """A JPEG of random pixels (one crop of it differs from another, unlike a flat colour)."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_records(n: int, prefix: str = "s") -> List[Record]:
    """n valid records with distinct keys, an original and one recaption each."""
    return [
        Record(
            key=f"{prefix}{i:05d}",
            image=jpeg_bytes(i),
            original=f"alt text {i}",
            recaptions=[f"a dense recaption of sample {i}"],
            references=[f"reference {i} a", f"reference {i} b"],
        )
        for i in range(n)
    ]


@pytest.fixture
def shard_factory(tmp_path) -> Callable[..., str]:
    """Write records into shards under tmp_path; returns a glob spec of the shards."""

    def make(records: List[Record], per_shard: int = 10, prefix: str = "train", folder: str = "shards") -> str:
        out = tmp_path / folder
        writer = ShardWriter(str(out), prefix, max_count=per_shard)
        writer.write_all(records)
        writer.close()
        return str(out / f"{prefix}-*.tar")

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: on a shared 2-core machine two spinning OpenMP threads stall each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root() -> str:
    """The shared real-data folder ($RECAP_DATA_ROOT or ../shared/data)."""
    return os.path.abspath(default_data_root())


# CI sets RECAP_HARNESS_STRICT=1 (.ci/run): then an absent real-data root ends the run with one line, and an absent
# real-data folder or declared test dependency fails its test instead of skipping it. Elsewhere they skip, with the
# reason in the summary (``-rs`` in pyproject's addopts).
STRICT = os.environ.get("RECAP_HARNESS_STRICT", "") not in ("", "0")


def pytest_configure(config) -> None:
    """Strict mode: stop before collecting anything when the real-data root is absent (one line on stderr, pytest's
    usage-error status 4). The cross-process sha256 memo goes to a folder of this run, never the user's cache."""
    import tempfile

    os.environ.setdefault("RECAP_SHA256_MEMO", os.path.join(tempfile.mkdtemp(prefix="sha256-memo-"), "memo.sqlite3"))
    root = os.path.abspath(default_data_root())
    if STRICT and not os.path.isdir(root):
        raise pytest.UsageError(f"RECAP_HARNESS_STRICT=1: the real-data root {root} is absent; set RECAP_DATA_ROOT")


def require_real(path: str) -> None:
    """Skip (with the reason) when a real-data folder is absent; fail instead under RECAP_HARNESS_STRICT=1."""
    if not os.path.isdir(path):
        message = f"real data folder {path} is absent; set RECAP_DATA_ROOT"
        if STRICT:
            pytest.fail(f"RECAP_HARNESS_STRICT=1: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def require_module(name: str, install: str):
    """Import a declared test dependency: skip with ``install`` as the reason when it is missing, fail under
    RECAP_HARNESS_STRICT=1 (a declared dependency missing in CI is a packaging bug, not an optional component)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        message = f"{name} is not importable ({error}); {install}"
        if STRICT:
            pytest.fail(f"RECAP_HARNESS_STRICT=1: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    """A tiny random-weight LLaVA saved once per session (tests/tiny_vlm.py: save_tiny_vlm)."""
    from tiny_vlm import save_tiny_vlm

    return save_tiny_vlm(str(tmp_path_factory.mktemp("tiny_vlm")))


@pytest.fixture(autouse=True)
def no_handlers_on_closed_streams():
    """Hydra's job logging (tests that call ``pipeline.cli.main``) attaches handlers to the stream pytest captured for
    that test; later tests would log into the closed stream ("I/O operation on closed file"). Drop such handlers."""
    import logging

    yield
    for logger in [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)


def free_port() -> int:
    """An unused local TCP port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_vlm(tiny_vlm):
    """``transformers serve`` (the OpenAI-compatible server) on a loopback port with the tiny VLM preloaded; yields its
    base URL. Shared by the recaption backends' and the VLM judge's tests."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            tiny_vlm,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"transformers serve did not start: {server.stdout.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
