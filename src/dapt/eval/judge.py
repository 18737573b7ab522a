"""An optional LLM judge for instruction tasks: any OpenAI-compatible chat-completions endpoint.

Word-overlap metrics (ROUGE-L, token F1) miss a correct answer worded differently. When a task sets
`judge:`, every greedy answer is sent with its prompt and reference answer to the judge model, which rates
it on the rubric below; the mean rating, rescaled to [0, 1], is the variant's `judge_score`. Both variants
of a task are judged by the same model with the same rubric, at temperature 0. The API key is read from
the environment variable the config names, never written to a manifest, and sent to the configured URL only:
a redirect is not followed (urllib would carry the key along, to any host, and take that host's reply as the
rating); the error names where it pointed, so that the config can name that address itself.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Any

from dapt.errors import ConfigError, DataError

RUBRIC = """You grade an answer to a question against a reference answer. Rate the candidate answer from 1 to 5:
5 = the same meaning as the reference: correct and complete;
4 = correct, with a minor omission or an unimportant extra;
3 = partly correct: some of the reference's content is there, some is missing or wrong;
2 = related to the question but mostly wrong or missing the point;
1 = wrong, unrelated, empty or unreadable.
Judge the meaning, not the wording. Reply with the rating only: one digit from 1 to 5."""

RATING = re.compile(r"\b([1-5])\b")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an error, for `rate` to explain: the request carries the API key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(newurl, code, msg, headers, fp)


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def endpoint(url: str) -> str:
    """The chat-completions URL: `url` itself when it names it, else `url` + /chat/completions (url = API base)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def judge_messages(prompt: str, reference: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": RUBRIC},
        {
            "role": "user",
            "content": f"Question:\n{prompt}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{answer}\n\n"
            "Rating (1-5):",
        },
    ]


def rate(judge: dict[str, Any], task_name: str, prompt: str, reference: str, answer: str) -> int:
    """The judge's rating (1-5) of one answer; a clear error naming the task and the URL when it cannot say."""
    where = f"tasks.{task_name}.judge ({endpoint(judge['url'])})"
    content = complete(judge, where, judge_messages(prompt, reference, answer))
    match = RATING.search(content)
    if match is None:
        raise DataError(f"{where}: the judge's reply holds no rating from 1 to 5: {str(content)[:200]!r}")
    return int(match.group(1))


def complete(judge: dict[str, Any], where: str, messages: list[dict[str, str]]) -> str:
    """The judge's reply to `messages` at temperature 0 (`where` names the config key in errors)."""
    url = endpoint(judge["url"])
    headers = {"Content-Type": "application/json"}
    if judge.get("api_key_env"):
        key = os.environ.get(judge["api_key_env"])
        if not key:
            raise ConfigError(f"{where}: environment variable {judge['api_key_env']} (api_key_env) is not set")
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": judge["model"], "messages": messages, "temperature": 0, "max_tokens": judge["max_tokens"]}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=judge["timeout_seconds"]) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:
            target = error.filename  # the address it redirected to
            raise ConfigError(
                f"{where}: the judge redirected (HTTP {error.code}) to {target}; dapt does not follow a judge's "
                "redirects (the request would carry the API key there, and that reply would count as the rating). "
                "If that address is the judge, set judge.url to it"
            ) from None
        detail = error.read()[:300].decode(errors="replace")
        raise DataError(f"{where}: the judge answered HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"{where}: cannot reach the judge: {reason}. Is the server running at that URL?") from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise DataError(
            f"{where}: not an OpenAI-style chat-completions reply (expected choices[0].message.content): "
            f"{raw[:200].decode(errors='replace')!r}"
        ) from None
    return str(content or "")


def score(rating: int) -> float:
    """A rating 1-5 rescaled to [0, 1], like the other metrics: 1 → 0.0, 5 → 1.0."""
    return (rating - 1) / 4
