"""The LLM judge against a tiny OpenAI-compatible server on 127.0.0.1, started by the test."""

import socket

import pytest

from conftest import FakeJudge, overlap_rating  # tests/conftest.py
from dapt.config import JudgeConfig
from dapt.errors import ConfigError, DataError
from dapt.eval.judge import RUBRIC, endpoint, rate, score


def judge_config(url: str, **extra) -> dict:
    return JudgeConfig(url=url, model="tiny-judge", **extra).model_dump()


def test_ratings_come_from_the_endpoint_with_the_rubric_and_the_key(monkeypatch):
    monkeypatch.setenv("DAPT_TEST_JUDGE_KEY", "sekret")
    with FakeJudge(overlap_rating) as server:
        config = judge_config(server.url, api_key_env="DAPT_TEST_JUDGE_KEY")
        assert rate(config, "qa", "What is 2+2?", "four", "four") == 5
        assert rate(config, "qa", "What is 2+2?", "four", "five") == 2
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "tiny-judge" and body["temperature"] == 0
    assert body["messages"][0] == {"role": "system", "content": RUBRIC}
    assert "What is 2+2?" in body["messages"][1]["content"]
    assert score(1) == 0.0 and score(5) == 1.0 and score(3) == 0.5
    assert endpoint("http://h/v1/") == "http://h/v1/chat/completions" == endpoint("http://h/v1/chat/completions")


def test_an_unreachable_judge_is_a_clear_error_naming_task_and_url():
    with socket.socket() as probe:  # a port nothing listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ConfigError, match=rf"tasks\.qa\.judge \({url}/chat/completions\): cannot reach the judge"):
        rate(judge_config(url, timeout_seconds=5), "qa", "q", "r", "a")


@pytest.mark.parametrize(
    ("raw", "reply", "message"),
    [
        (b"<html>oops</html>", None, "not an OpenAI-style chat-completions reply"),
        (b'{"choices": []}', None, "not an OpenAI-style chat-completions reply"),
        (None, lambda body: "I cannot grade this.", "holds no rating from 1 to 5"),
    ],
)
def test_a_malformed_reply_is_a_clear_error_naming_task_and_url(raw, reply, message):
    with FakeJudge(reply, raw=raw) as server:
        with pytest.raises(DataError, match=message) as error:
            rate(judge_config(server.url), "qa", "q", "r", "a")
    assert f"tasks.qa.judge ({server.url}/chat/completions)" in str(error.value)


def test_a_wrong_path_and_a_missing_key_are_named():
    with FakeJudge(overlap_rating) as server:
        with pytest.raises(DataError, match="HTTP 404"):
            rate(judge_config(server.url.removesuffix("/v1") + "/nope"), "qa", "q", "r", "a")
        with pytest.raises(ConfigError, match="DAPT_TEST_UNSET_KEY"):
            rate(judge_config(server.url, api_key_env="DAPT_TEST_UNSET_KEY"), "qa", "q", "r", "a")


def test_a_redirect_is_not_followed_and_the_key_stays_with_the_configured_host(monkeypatch):
    """A 302 from the endpoint to another host: urllib would resend the request there, Authorization included,
    and take that host's reply as the rating. The judge stops instead, naming where it was sent."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    monkeypatch.setenv("DAPT_TEST_JUDGE_KEY", "sekret")
    with FakeJudge(lambda body: "5") as elsewhere:  # answers any POST to /v1/chat/completions with a 5
        target = elsewhere.url.replace("127.0.0.1", "localhost") + "/chat/completions"

        class Redirect(BaseHTTPRequestHandler):
            def do_POST(self):
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/v1"
            with pytest.raises(ConfigError, match=r"redirected \(HTTP 302\) to http://localhost:") as error:
                rate(judge_config(url, api_key_env="DAPT_TEST_JUDGE_KEY"), "qa", "q", "r", "a")
        finally:
            server.shutdown()
            server.server_close()
    assert target in str(error.value) and "set judge.url" in str(error.value)
    assert elsewhere.requests == [], "nothing, and no key, reached the host it redirected to"
