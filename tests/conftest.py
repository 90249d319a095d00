"""Fixtures shared across test folders: local chat servers (``agents.serve.ChatServer``), a closed port,
``no_model_loads`` (a test fails if any model loads: errors must come before that) and ``one_torch_thread``."""

from __future__ import annotations

import socket

import pytest

from agents.serve import ChatServer


@pytest.fixture
def serve():
    """``serve(reply, model="judge")`` starts a :class:`ChatServer` (closed after the test).

    ``reply`` is a fixed text or a ``(messages, body) -> text`` function; every request body the server
    answered is kept in ``server.bodies``, in order.
    """
    servers = []

    def start(reply, model: str = "judge") -> ChatServer:
        bodies: list[dict] = []
        answer = (lambda messages, body: reply) if isinstance(reply, str) else reply

        def recording(messages, body):
            bodies.append(body)
            return answer(messages, body)

        server = ChatServer(recording, model=model)
        server.bodies = bodies
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def closed_url() -> str:
    """The API root of a port nothing listens on (bound to find a free one, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a model loads: config, judge and input errors must all come before that."""
    import agents.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(agents.models, "tiny_random", refuse)
    monkeypatch.setattr(agents.models, "load_model", refuse)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored after it: the tiny model's matmuls are too small to gain
    from intra-op threads, and on a busy machine idle threads spinning on a shared core made them 3x slower.
    Use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
