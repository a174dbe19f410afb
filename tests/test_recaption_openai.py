"""The recaption ``openai`` backend against a scripted chat-completions server on 127.0.0.1: permanent answers (401,
403, 404, an unknown model) stop the stage at once with one line, the preflight makes one real request before anything
is built, transient answers are retried after ``backoff_s``, doubling, or after ``Retry-After``, and what still fails
is a counted ``server_error`` the next run retries."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest
from chat_server import ChatServer
from conftest import free_port
from PIL import Image
from recaption_helpers import captions, write_input

from captiondata.config import project_layout
from harness_infra.errors import ConfigError
from recaption.backends.openai_api import EndpointRefused, backoff_delay, retry_after_s
from recaption.captioner import Item, build_captioner
from recaption.config import OpenAIEndpoint, RecaptionConfig
from recaption.preflight import preflight
from recaption.shards import read_done
from recaption.stage import recaption_data

PIXELS = 10**8
CAPTION = "a small square picture"
BAD_KEY = (
    401,
    {
        "error": {
            "message": "Incorrect API key provided: sk-wrong.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    },
    {},
)
FORBIDDEN = (403, {"error": {"message": "Project does not have access", "type": "invalid_request_error"}}, {})
NO_MODEL_404 = (
    404,
    {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "code": 404}},
    {},
)  # vLLM
NO_MODEL_400 = (
    400,
    {"error": {"message": "Invalid model name passed in model=nope", "type": "BadRequestError"}},
    {},
)  # LiteLLM
NO_ROUTE = (404, {"detail": "Not Found"}, {})  # FastAPI: base_url without /v1


@pytest.fixture
def server():
    srv = ChatServer(lambda image, text: CAPTION).start()
    yield srv
    srv.shutdown()


def openai_cfg(url: str, **endpoint) -> RecaptionConfig:
    settings = {"concurrency": 2, "max_retries": 3, "backoff_s": 0.2, "timeout_s": 5.0, **endpoint}
    return RecaptionConfig(
        name="llava",
        backend="openai",
        model="nope",
        max_new_tokens=8,
        batch_size=4,
        num_workers=0,
        openai=OpenAIEndpoint(base_url=url, **settings),
    )


@pytest.mark.parametrize(
    "answer,hint",
    [
        (BAD_KEY, "check the key in $OPENAI_API_KEY"),
        (FORBIDDEN, "check the key"),
        (NO_MODEL_404, "check recaption.model"),
        (NO_MODEL_400, "check recaption.model"),
        (NO_ROUTE, "check recaption.openai.base_url"),
    ],
)
def test_a_permanent_answer_stops_the_stage_at_once_in_one_line(tmp_path, server, answer, hint):
    spec = write_input(str(tmp_path / "in"), 8, per_shard=4)
    server.always = answer
    with pytest.raises(EndpointRefused) as info:
        recaption_data({"train": spec}, str(tmp_path / "out"), openai_cfg(server.url), project_layout(), PIXELS)
    message = str(info.value)
    assert (
        "\n" not in message
        and f"HTTP {answer[0]}" in message
        and server.url in message
        and "'nope'" in message
        and hint in message
    )
    assert isinstance(info.value, ConfigError)  # the CLI prints it as "error: <line>", exit 2
    assert 1 <= len(server.seen) <= 2  # the requests already in flight (concurrency 2), not 8 samples x 4 tries
    assert not glob.glob(str(tmp_path / "out" / "*.json")) and not glob.glob(
        str(tmp_path / "out" / "*.tar")
    )  # nothing recorded


def test_a_refusal_wakes_a_request_waiting_to_retry(server):
    """One request waits out a 429 (backoff_s = 1 s) while the other gets a 401: the waiting one gives up at once and
    never retries."""
    server.faults, server.always = [(429, {"error": {"message": "slow down"}}, {})], BAD_KEY
    image = Image.new("RGB", (16, 16), (90, 90, 90))
    captioner = build_captioner(openai_cfg(server.url, backoff_s=1.0))
    started = time.monotonic()
    with pytest.raises(EndpointRefused, match="HTTP 401"):
        captioner.caption([Item("a", image), Item("b", image)])
    assert time.monotonic() - started < 0.8
    time.sleep(1.5)  # past the 429's back-off: a retry would have arrived by now
    assert len(server.seen) == 2


def test_a_model_question_in_a_400_is_not_mistaken_for_a_bad_item(tmp_path, server):
    """A 400 that is not about the model is one item's failure (server_error), not a reason to stop."""
    spec = write_input(str(tmp_path / "in"), 2, per_shard=2)
    server.faults = [(400, {"error": {"message": "image too large", "type": "BadRequestError"}}, {})]
    stats = recaption_data(
        {"train": spec}, str(tmp_path / "out"), openai_cfg(server.url, concurrency=1), project_layout(), PIXELS
    )["train"]
    assert (
        stats["failed"] == {"server_error": 1} and stats["with_recaption"] == 1 and len(server.seen) == 2
    )  # no retry of a 400


def test_preflight_makes_one_request_and_fails_in_one_line_before_anything_is_built(tmp_path, server):
    good = openai_cfg(server.url)
    preflight(good)
    preflight(good)  # the CLI validates before launching and again in the job: the second check asks nothing
    assert len(server.seen) == 1 and server.bodies[0]["max_tokens"] == 1 and server.bodies[0]["model"] == "nope"
    refused = ChatServer(lambda image, text: CAPTION, always=BAD_KEY).start()
    try:
        with pytest.raises(EndpointRefused) as info:
            preflight(openai_cfg(refused.url))
        assert "\n" not in str(info.value) and "HTTP 401" in str(info.value) and len(refused.seen) == 1
        from pipeline.overrides import compose_config

        with pytest.raises(EndpointRefused):
            compose_config(
                [
                    "+experiment=clip_smoke",
                    "+recaption=openai",
                    f"recaption.openai.base_url={refused.url}",
                    "run.stages=[data,recaption]",
                    f"run.out_root={tmp_path / 'runs'}",
                ]
            )
        assert not os.path.exists(tmp_path / "runs") and len(refused.seen) == 2
    finally:
        refused.shutdown()
    with pytest.raises(ConfigError, match="cannot be reached .* after 1 retries; is the server running") as info:
        preflight(openai_cfg(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff_s=0.05))
    assert "\n" not in str(info.value)


def test_evals_run_prints_the_refusal_in_one_line_and_builds_nothing(tmp_path, server):
    server.always = NO_MODEL_404
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evals.run",
            "+experiment=clip_smoke",
            "+recaption=openai",
            "recaption.model=nope",
            f"recaption.openai.base_url={server.url}",
            "run.stages=[data,recaption]",
            f"run.out_root={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "HTTP 404" in lines[0] and "'nope'" in lines[0] and "does not exist" in lines[0], (
        done.stderr[-2000:]
    )
    assert len(server.seen) == 1 and not os.path.exists(tmp_path / "runs")


def test_transient_answers_wait_backoff_s_then_double_and_retry_after_wins(server):
    image = Image.new("RGB", (16, 16), (90, 90, 90))
    busy = (429, {"error": {"message": "slow down"}}, {})
    server.faults = [busy, busy, busy]
    assert [c.text for c in build_captioner(openai_cfg(server.url)).caption([Item("a", image)])] == [CAPTION]
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert len(gaps) == 3 and 0.2 <= gaps[0] < 0.4 <= gaps[1] < 0.8 <= gaps[2] < 1.6, gaps  # backoff_s, doubling
    server.faults = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})]
    start = len(server.times)
    assert build_captioner(openai_cfg(server.url)).caption([Item("b", image)])[0].text == CAPTION
    assert server.times[start + 1] - server.times[start] >= 1.0
    server.faults = [(503, {"error": {"message": "warming up"}}, {"Retry-After": "0"})]
    start = len(server.times)
    assert build_captioner(openai_cfg(server.url, backoff_s=30.0)).caption([Item("c", image)])[0].text == CAPTION
    assert server.times[start + 1] - server.times[start] < 1.0  # the header's 0 s, not backoff_s = 30 s


def test_backoff_delay_doubles_up_to_sixty_seconds_and_reads_both_retry_after_forms():
    assert [backoff_delay(n, 1.5) for n in range(7)] == [1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 60.0]
    assert backoff_delay(0, 1.0, retry_after=7.0) == 7.0 and backoff_delay(5, 1.0, retry_after=0.0) == 0.0
    assert backoff_delay(0, 1.0, retry_after=3600.0) == 60.0
    assert (
        retry_after_s({"retry-after": "2.5"}) == 2.5
        and retry_after_s({}) is None
        and retry_after_s({"retry-after": "soon"}) is None
    )
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0


def test_a_server_error_after_every_retry_is_counted_and_retried_by_the_next_run(tmp_path, server):
    spec = write_input(str(tmp_path / "in"), 2, per_shard=2)
    server.always = 500
    cfg = openai_cfg(server.url, concurrency=1, max_retries=2, backoff_s=0.05)
    stats = recaption_data({"train": spec}, str(tmp_path / "out"), cfg, project_layout(), PIXELS)["train"]
    assert stats["failed"] == {"server_error": 2} and stats["transient_failures"] == 2 and len(server.seen) == 2 * 3
    assert len(read_done(str(tmp_path / "out" / "train-000000.tar"))["transient_keys"]) == 2
    server.always = None  # the server recovers: the next run captions exactly the two failed samples
    stats = recaption_data({"train": spec}, str(tmp_path / "out"), cfg, project_layout(), PIXELS)["train"]
    assert stats["failed"] == {} and len(server.seen) == 2 * 3 + 2
    assert sorted(captions(str(tmp_path / "out" / "train-*.tar")).values()) == [CAPTION, CAPTION]
