"""Issue 15 security items: the HTTP judge keeps its key on its own origin (#4); report.html
embeds only files inside the run folder (#6)."""

import contextlib
import http.server
import json
import threading

import pytest

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.judges import HTTPJudge

KEY = "sk-test-secret-value"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's path and Authorization header; redirects if ``redirect_to``."""

    redirect_to: str | None = None
    seen: list[tuple[str, str | None]]

    def _handle(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"choices": [{"message": {"content": "A"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@contextlib.contextmanager
def _server(redirect_to: str | None = None):
    """A local HTTP server on 127.0.0.1 (its own port = its own origin), stopped on exit."""
    handler = type("Handler", (_Recorder,), {"redirect_to": redirect_to, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_judge_sends_its_key_to_its_own_origin(monkeypatch):
    monkeypatch.setenv("PLURALIGN_TEST_KEY", KEY)
    with _server() as (url, seen):
        judge = HTTPJudge(url + "/v1", "judge", api_key_env="PLURALIGN_TEST_KEY", timeout=5)
        assert judge.compare("p", "x", "y") == 1.0
    assert seen == [("/v1/chat/completions", f"Bearer {KEY}")]


def test_http_judge_refuses_a_redirect_to_another_origin(monkeypatch):
    """Before the fix urllib followed the 302 and forwarded 'Authorization: Bearer <key>'."""
    monkeypatch.setenv("PLURALIGN_TEST_KEY", KEY)
    with _server() as (other, other_seen), _server(redirect_to=other) as (url, seen):
        judge = HTTPJudge(url + "/v1", "judge", api_key_env="PLURALIGN_TEST_KEY", timeout=5)
        with pytest.raises(EvaluationError, match="redirect.*another origin"):
            judge.compare("p", "x", "y")
    assert len(seen) == 1
    assert other_seen == []  # the other origin never saw a request, let alone the key
