"""evals.tasks.judge against real HTTP servers on loopback (never beyond): an OpenAI-compatible chat-completions
server whose "vision model" rates an image by its brightness, with scripted faults (429, 500, timeouts, unparseable
answers); and (slow) ``transformers serve`` with the tiny random VLM, as the recaption tests run it."""

from __future__ import annotations

import numpy as np
import pytest
from chat_server import ChatServer
from PIL import Image

from evals.tasks.judge import JudgeConfig, VlmJudge, parse_rating
from harness_infra.errors import ConfigError


def brightness_rating(image: Image.Image) -> int:
    """The stand-in model's rating: 1 + mean grey level // 52 (1..5)."""
    return 1 + min(4, int(np.asarray(image.convert("L")).mean()) // 52)


@pytest.fixture
def server():
    srv = ChatServer(lambda image, text: f"Rating: {brightness_rating(image)}").start()
    yield srv
    srv.shutdown()


def images(n: int):
    return [Image.new("RGB", (16, 16), (g, g, g)) for g in np.linspace(10, 250, n).astype(int)]


def test_parse_rating():
    assert [parse_rating(t) for t in ("4", "Rating: 3/5", "**5**", "I'd say 2.", "10", "none", None, "12 then 3")] == [
        4,
        3,
        5,
        2,
        None,
        None,
        None,
        3,
    ]


def test_ratings_through_a_loopback_server_are_cached_and_bounded_in_concurrency(server, tmp_path):
    cfg = JudgeConfig(server.url, "stand-in-vlm", concurrency=2, timeout_s=5, max_retries=0)
    pics, prompts = images(8), [f"a grey square {i}" for i in range(8)]
    ratings, counts = VlmJudge(cfg, str(tmp_path)).rate(pics, prompts)
    assert ratings == [brightness_rating(p) for p in pics] and counts["rated"] == 8
    assert 1 < server.max_in_flight <= 2 and all('"a grey square' in p for p in server.prompts)
    again, counts = VlmJudge(cfg, str(tmp_path)).rate(pics, prompts)
    assert again == ratings and counts["cached"] == 8 and len(server.seen) == 8  # nothing asked twice
    other = JudgeConfig(server.url, "stand-in-vlm", rubric="Score 1-5 for {prompt}. Number only.", max_retries=0)
    VlmJudge(other, str(tmp_path)).rate(pics[:2], prompts[:2])
    assert len(server.seen) == 10  # another rubric is another cache entry


def test_faults_are_retried_or_counted_never_guessed(server, tmp_path):
    cfg = JudgeConfig(server.url, "stand-in-vlm", concurrency=1, timeout_s=1.0, max_retries=3)
    server.faults = [429, 500, "timeout"]
    ratings, counts = VlmJudge(cfg, None).rate(images(1), ["p"])
    assert ratings == [1] and counts["rated"] == 1 and server.seen[:3] == [429, 500, "timeout"]
    server.faults = [500] * 10 + ["garbage"]
    once = JudgeConfig(server.url, "stand-in-vlm", concurrency=1, timeout_s=1.0, max_retries=1)
    ratings, counts = VlmJudge(once, str(tmp_path)).rate(images(3), ["a", "b", "c"])
    assert counts["server_error"] == 3 and ratings == [None] * 3
    server.faults = ["garbage"]
    ratings, counts = VlmJudge(once, str(tmp_path)).rate(images(3), ["a", "b", "c"])  # failures were not cached
    assert counts["unparseable"] == 1 and counts["rated"] == 2 and ratings[0] is None


def test_bad_judge_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="http"):
        JudgeConfig("127.0.0.1:8000", "m")
    with pytest.raises(ConfigError, match="rubric"):
        JudgeConfig("http://127.0.0.1:1/v1", "m", rubric="no placeholder")


@pytest.mark.slow
def test_judge_against_transformers_serve_with_the_tiny_vlm(tiny_vlm, served_vlm, tmp_path):
    """A real vision model behind a real OpenAI-compatible server (random weights: answers are unparseable or a
    digit by chance); every request completes and is counted, none is an error."""
    cfg = JudgeConfig(f"{served_vlm}/v1", tiny_vlm, concurrency=2, timeout_s=60, max_retries=1)
    ratings, counts = VlmJudge(cfg, str(tmp_path)).rate(images(3), ["a red circle", "two blue squares", "a star"])
    assert counts["rated"] + counts["unparseable"] == 3 and counts["server_error"] == counts["timeout"] == 0
    assert (
        VlmJudge(cfg, str(tmp_path)).rate(images(3), ["a red circle", "two blue squares", "a star"])[1]["cached"] == 3
    )
