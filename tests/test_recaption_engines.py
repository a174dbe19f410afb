"""The recaption engines and network backends on real components: Ray Data with two local CPU actors, and the openai
backend against ``transformers serve`` started on loopback, behind a proxy that injects 429, 500 and timeout faults."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request

from recaption_helpers import captions, members, write_input

from captiondata.config import project_layout
from recaption.config import OpenAIEndpoint, RecaptionConfig
from recaption.stage import recaption_data

PIXELS = 10**8


def test_ray_data_actor_pool_gives_the_same_captions_as_one_process(tmp_path, tiny_vlm):
    from recaption.ray_data import recaption_with_ray

    spec = write_input(str(tmp_path / "in"), 10, per_shard=2)
    cfg = RecaptionConfig(
        name="llava",
        backend="hf",
        model=tiny_vlm,
        max_new_tokens=6,
        batch_size=2,
        num_workers=0,
        engine="ray",
        ray_actors=2,
    )
    stats = recaption_with_ray({"train": spec}, str(tmp_path / "ray"), cfg, project_layout(), PIXELS)["train"]
    recaption_data({"train": spec}, str(tmp_path / "one"), cfg, project_layout(), PIXELS)
    assert stats["shards"] == 5 and stats["with_recaption"] == 10 and stats["images_per_s"] > 0
    assert captions(str(tmp_path / "ray" / "train-*.tar")) == captions(str(tmp_path / "one" / "train-*.tar"))
    assert sorted(members(str(tmp_path / "ray" / "train-*.tar"))) == sorted(members(spec))


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards POSTs to the real server; the first requests get the scripted faults instead."""

    def __init__(self, upstream: str, faults: list) -> None:
        self.upstream, self.faults, self.seen = upstream, list(faults), []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), FaultHandler)


class FaultHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            fault = self.server.faults.pop(0) if self.server.faults else None
            self.server.seen.append(fault)
        if fault == "timeout":
            time.sleep(3.0)  # longer than the client's timeout
            return self._reply(504, b"{}")
        if fault in (429, 500, 503):
            return self._reply(
                fault, json.dumps({"error": {"message": f"injected {fault}"}}).encode(), retry_after=fault == 429
            )
        request = urllib.request.Request(
            self.server.upstream + self.path.removeprefix("/v1"),
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            self._reply(answer.status, answer.read())

    def _reply(self, status: int, payload: bytes, retry_after: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(payload)


def test_openai_backend_through_a_real_server_with_injected_faults(tmp_path, tiny_vlm, served_vlm):
    spec = write_input(str(tmp_path / "in"), 4, per_shard=4)
    local = RecaptionConfig(name="llava", backend="hf", model=tiny_vlm, max_new_tokens=6, batch_size=1, num_workers=0)
    recaption_data({"train": spec}, str(tmp_path / "local"), local, project_layout(), PIXELS)
    proxy = FaultProxy(served_vlm + "/v1", faults=[429, 500, "timeout", 503])
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        endpoint = OpenAIEndpoint(
            base_url=f"http://127.0.0.1:{proxy.server_address[1]}/v1",
            concurrency=1,
            max_retries=4,
            backoff_s=0.05,
            timeout_s=2.0,
        )
        remote = RecaptionConfig(
            name="llava",
            backend="openai",
            model=tiny_vlm,
            max_new_tokens=6,
            batch_size=4,
            num_workers=0,
            openai=endpoint,
        )
        stats = recaption_data({"train": spec}, str(tmp_path / "served"), remote, project_layout(), PIXELS)["train"]
        assert (
            proxy.seen[:4] == [429, 500, "timeout", 503] and len(proxy.seen) == 8
        )  # four faults retried, four answers
        assert stats["failed_total"] == 0
        # greedy decoding through HTTP equals the same model in process
        assert captions(str(tmp_path / "served" / "train-*.tar")) == captions(str(tmp_path / "local" / "train-*.tar"))
        # a server that keeps failing: every retry spent, each sample counted as a server error, none dropped
        proxy.faults = [500] * 100
        endpoint_once = OpenAIEndpoint(
            base_url=endpoint.base_url, concurrency=2, max_retries=1, backoff_s=0.05, timeout_s=2.0
        )
        failing = RecaptionConfig(
            name="llava",
            backend="openai",
            model=tiny_vlm,
            max_new_tokens=6,
            batch_size=4,
            num_workers=0,
            openai=endpoint_once,
        )
        stats = recaption_data({"train": spec}, str(tmp_path / "down"), failing, project_layout(), PIXELS)["train"]
        assert stats["failed"] == {"server_error": 4} and sorted(
            members(str(tmp_path / "down" / "train-*.tar"))
        ) == sorted(members(spec))
    finally:
        proxy.shutdown()
