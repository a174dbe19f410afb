"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (never beyond), shared by the tests of the VLM
judge and of the recaption ``openai`` backend."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
from typing import Callable, Optional

from PIL import Image


class ChatServer(http.server.ThreadingHTTPServer):
    """``POST /v1/chat/completions``: decodes the data-URI image and the text of the first message and answers
    ``answer(image, text)``. ``faults`` answer the first requests instead, one each: an HTTP status (a JSON error;
    429 with ``Retry-After: 0``), ``"timeout"`` (1.5 s, then 504), ``"garbage"`` (200 with "I cannot tell.") or a
    verbatim ``(status, payload, headers)``; ``always`` answers every request after them. Records each request's
    fault (``seen``, None for an answer), arrival time (``times``, monotonic s), JSON body, prompt, and the most in flight."""

    def __init__(self, answer: Callable[[Image.Image, str], str], faults=(), always=None) -> None:
        self.answer, self.faults, self.always = answer, list(faults), always
        self.seen: list = []
        self.times: list = []
        self.prompts: list = []
        self.bodies: list = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ChatHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> "ChatServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class ChatHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            fault: Optional[object] = self.server.faults.pop(0) if self.server.faults else self.server.always
            self.server.seen.append(fault)
            self.server.times.append(time.monotonic())
            self.server.bodies.append(body)
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            time.sleep(0.05)
            if fault == "timeout":
                time.sleep(1.5)
                return self._reply(504, {})
            if isinstance(fault, tuple):
                return self._reply(*fault)
            if isinstance(fault, int):
                return self._reply(
                    fault, {"error": {"message": f"injected {fault}"}}, {"Retry-After": "0"} if fault == 429 else {}
                )
            content = body["messages"][0]["content"]
            uri = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
            text = next(c["text"] for c in content if c["type"] == "text")
            image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
            with self.server.lock:
                self.server.prompts.append(text)
            answer = "I cannot tell." if fault == "garbage" else self.server.answer(image, text)
            self._reply(
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                },
            )
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _reply(self, status: int, payload: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
