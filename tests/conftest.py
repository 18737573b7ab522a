"""Shared test helpers: a fake OpenAI-compatible chat server for the LLM judge's tests; a local Ray runtime."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# `precision: auto` picks bf16 on CPUs that compute it natively (dapt.train.precision): the suite (and the commands it
# launches) computes in fp32 on every machine, so its numbers and tolerances do not depend on the CPU it runs on.
# tests/unit/test_precision.py tests the choice itself; `DAPT_CPU_BF16=1 pytest` runs the suite as such a CPU would.
os.environ.setdefault("DAPT_CPU_BF16", "0")


class FakeJudge:
    """Answers POST /v1/chat/completions like the API: the reply's content is `reply(request body)`."""

    def __init__(self, reply, raw=None):
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, body)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    self.wfile.write(b'{"error": "not found"}')
                    return
                payload = (
                    raw
                    if raw is not None
                    else json.dumps(
                        {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply(body)}}]}
                    ).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def overlap_rating(body: dict) -> str:
    """A judge that rates 5 when the candidate equals the reference, else 2, and says a few words around it."""
    text = body["messages"][1]["content"]
    reference = text.split("Reference answer:\n")[1].split("\n\nCandidate answer:")[0]
    candidate = text.split("Candidate answer:\n")[1].split("\n\nRating")[0]
    return "Rating: 5" if candidate == reference else "2 - mostly wrong"


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray runtime on 2 CPUs, started once for every test of the Ray backends (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
