"""A small OpenAI-compatible chat server (standard library only): a TriPlay policy, or any function, behind HTTP.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (non-streaming), which is all
:class:`agents.openai_compat.OpenAICompatAgent` uses, so a transformers model can stand in for a vLLM server as a
judge or a fixed defender on a machine without vLLM (``policy_reply``), and tests and benchmarks get a real
endpoint with a chosen latency (:func:`fixed_reply`). A final assistant message is continued when the request
says ``continue_final_message`` (vLLM's convention). Requests are served one at a time per reply function
(a lock), in their own threads.

>>> with ChatServer(fixed_reply("VERDICT: REFUSAL"), model="stub") as server:
...     from agents.openai_compat import OpenAICompatAgent
...     OpenAICompatAgent(server.base_url, "stub").chat([[{"role": "user", "content": "hi"}]])
['VERDICT: REFUSAL']
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ChatServer", "fixed_reply", "policy_reply"]

Reply = Callable[[Sequence[Mapping[str, str]], Mapping[str, Any]], str]
"""``(messages, request body) -> completion text``"""


def fixed_reply(text: str, delay: float = 0.0) -> Reply:
    """Always ``text``, after ``delay`` seconds (a latency stand-in for benchmarks)."""

    def reply(messages, body):
        if delay:
            time.sleep(delay)
        return text

    return reply


def policy_reply(policy: Any) -> Reply:
    """A TriPlay policy (``act(turns) -> texts``, e.g. ``LoRARoles.policy(None, temperature=0.0)``) as a reply.

    With ``continue_final_message`` the last (assistant) message is the answer's start: it goes after the
    generation prompt as the policy's response prefix, and the reply is what the model wrote after it.
    """
    from agents.base import Turn

    def reply(messages, body):
        messages = [dict(m) for m in messages]
        prefix = ""
        if body.get("continue_final_message") and messages and messages[-1].get("role") == "assistant":
            prefix = messages.pop()["content"]
        turn = Turn(agent="defender_0", role="defender", prompt="", messages=messages)
        settings = policy.settings.replace(response_prefix=prefix)
        if body.get("max_tokens"):  # the request may ask for fewer tokens than the policy's cap, never more
            settings = settings.replace(max_new_tokens=min(int(body["max_tokens"]), settings.max_new_tokens))
        text = type(policy)(policy.roles, policy.role, settings).act([turn])[0]
        return text[len(prefix):]

    return reply


class ChatServer:
    """``ChatServer(reply, model="name")``: serves on 127.0.0.1 (an ephemeral port unless ``port``) in a thread.

    ``base_url`` is the API root (``http://127.0.0.1:<port>/v1``); use it as a context manager or call
    :meth:`close`. ``requests`` counts the chat completions served.
    """

    def __init__(self, reply: Reply, *, model: str = "triplay", port: int = 0, serial: bool = True):
        self.reply, self.model = reply, model
        self.requests = 0
        lock = threading.Lock() if serial else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    messages = body["messages"]
                except (ValueError, KeyError, TypeError):
                    self._send(400, {"error": {"message": "expected a JSON body with messages"}})
                    return
                if body.get("model") != server.model:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served here"}})
                    return
                try:
                    if lock is not None:
                        with lock:
                            text = server.reply(messages, body)
                    else:
                        text = server.reply(messages, body)
                except Exception as e:  # the client gets a 500 it can read, not a dropped connection
                    self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                    return
                server.requests += 1
                self._send(200, {"id": f"chatcmpl-{server.requests}", "object": "chat.completion", "model": server.model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a concurrent client opens many connections at once (socketserver's 5 drops them)

        self._server = Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
