"""The loop gate on a real `hlm serve` of the product's student (service/loopgate.py, service/server.py).

- A request a connection sends right after a refusal is held before it is read; one sent
  later, or after an answered request, is not. Counted by hlm_refusals_held_total, never
  timed: the window that counts as "at once" is widened (HLM_RETRY_GAP_MS) so a loaded
  machine cannot make the re-send late, and HLM_REFUSAL_HOLD_MS=0 turns holds off.
- The static student answers on the event loop (no batch worker): its searches report no
  batch wait beyond their time in the loop, and the loop's admission refuses by that wait.
"""

from __future__ import annotations

import json
import socket

from http_helpers import metrics

TOO_LARGE = b"x" * 300  # over HLM_MAX_BODY_BYTES=256 below: a 413 from the edge, a refusal


def request(body: bytes) -> bytes:
    return (b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body)


def read_answer(sock: socket.socket) -> int:
    """The next response's status (the body read to its content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1])


def held(server) -> float:
    return metrics(server).get(("hlm_refusals_held_total", frozenset()), 0.0)


def test_a_re_send_right_after_a_refusal_is_held_and_an_answer_ends_the_streak(start_server, static_artifact):
    server = start_server(static_artifact, max_body_bytes=256, retry_gap_ms=1000, refusal_hold_ms=4)
    server.wait_for("/readyz")
    good = request(json.dumps({"query": "cordless drill", "k": 3}).encode())
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request(TOO_LARGE))
        assert read_answer(sock) == 413
        assert held(server) == 0
        sock.sendall(request(TOO_LARGE))  # at once after a refusal: held, then refused again
        assert read_answer(sock) == 413
        assert held(server) == 1
        sock.sendall(good)  # at once again: held (the streak goes on), then answered
        assert read_answer(sock) == 200
        assert held(server) == 2
        sock.sendall(good)  # after an answer: read at once
        assert read_answer(sock) == 200
        assert held(server) == 2


def test_no_hold_when_holds_are_off(start_server, static_artifact):
    server = start_server(static_artifact, max_body_bytes=256, retry_gap_ms=1000, refusal_hold_ms=0)
    server.wait_for("/readyz")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(3):
            sock.sendall(request(TOO_LARGE))
            assert read_answer(sock) == 413
    assert held(server) == 0


def test_the_static_student_answers_on_the_loop_and_its_wait_is_its_time_in_the_loop(static_server):
    wait = ("hlm_queue_wait_seconds_count", frozenset({("encoder", "student")}))
    batches = ("hlm_batch_size_count", frozenset({("encoder", "student")}))
    before = metrics(static_server)
    answer = static_server.client.post("/v1/search", json={"query": "cordless drill", "k": 3}).json()
    after = metrics(static_server)
    assert answer["timings"]["queue_ms"] < answer["timings"]["total_ms"]
    # its wait in the loop is recorded as its queue wait; no batch worker ran it
    assert after[wait] == before.get(wait, 0.0) + 1
    assert after.get(batches, 0.0) == before.get(batches, 0.0)


class _Transport:
    """What the protocol writes, and whether it paused or closed (a stand-in socket)."""

    def __init__(self, peer=("10.0.0.9", 4000)):
        self.written, self.closed, self.peer = b"", False, peer

    def get_extra_info(self, name, default=None):
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def set_protocol(self, protocol):
        pass


def test_the_protocol_answers_what_the_gate_refuses_before_any_task_exists():
    """Five connections of one client send a search each in one read of the loop (fed here
    without a loop turn between them, as the loop reads what arrived together): the first four
    are admitted (tasks: under four admitted nothing is refused), the fifth, with 16 ms of
    searches ahead, is refused by the protocol itself, 429 with Retry-After, no task; a
    client's only request is admitted whatever is ahead of it."""
    import asyncio
    from types import SimpleNamespace

    import uvicorn
    from uvicorn.server import ServerState

    from service.loopgate import LoopGate
    from service.server import protocol_for
    from service.settings import Settings

    async def app(scope, receive, send):  # never reached by a refused search
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def main():
        refused = []
        gate = LoopGate(budget_s=0.005, hold_max_s=0.0, on_refused=lambda encoder, s: refused.append(encoder))
        gate.state = SimpleNamespace(runtime=SimpleNamespace(slots={"student": SimpleNamespace(inline=True),
                                                                    "teacher": SimpleNamespace(inline=False)}))
        gate.cost_s = 0.004  # a search takes 4 ms on the loop: two ahead are past the 5 ms budget
        config = uvicorn.Config(app, lifespan="off", log_level="warning")
        state = ServerState()
        cls = protocol_for(Settings(), gate)
        body = b'{"query": "drill"}'
        search = (b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body)
        teacher_body = b'{"query": "drill", "encoder": "teacher"}'
        teacher = (b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                   b"content-length: %d\r\n\r\n" % len(teacher_body) + teacher_body)
        conns = []
        for _ in range(6):
            protocol = cls(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
            transport = _Transport()
            protocol.connection_made(transport)
            conns.append((protocol, transport))
        lone = cls(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
        lone_transport = _Transport(peer=("10.0.0.77", 4000))
        lone.connection_made(lone_transport)
        for protocol, _ in conns[:5]:
            protocol.data_received(search)  # 0, 4, 8, 12 ms ahead: admitted; 16 ms: refused
        conns[5][0].data_received(teacher)  # the teacher is not the loop's: the edge judges it
        lone.data_received(search)  # 16 ms ahead, but its client's only request
        tasks_made = len(state.tasks)
        await asyncio.sleep(0.05)  # let the admitted ones answer
        return conns, lone_transport, refused, tasks_made, gate

    conns, lone, refused, tasks_made, gate = asyncio.run(main())
    statuses = [t.written.split(b" ")[1] if t.written else b"" for _, t in conns]
    assert statuses == [b"200"] * 4 + [b"429", b"200"]
    assert b"retry-after: 1" in conns[4][1].written and b'"code": "budget"' in conns[4][1].written
    assert lone.written.split(b" ")[1] == b"200"
    assert refused == ["student"] and tasks_made == 6  # the refused search never became a task
    assert gate.inline_pending == 0 and gate.pending == {}  # every admitted one counted out when answered
