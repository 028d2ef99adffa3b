"""Issue 15 security items: the HTTP judge keeps its key on its own origin (#4); report.html
embeds only files inside the run folder (#6)."""

import base64
import contextlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.judges import HTTPJudge
from pluralign.runs import RunFolderError, build_report, write_report

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


def _embedded(html_text: str, path) -> bool:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii") in html_text


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_report_embeds_no_file_outside_the_run_folder(tmp_path, kind):
    """Before the fix {"figures": [{"file": "/etc/passwd"}]} was base64-embedded in report.html."""
    run, outside = tmp_path / "run", tmp_path / "secret.png"
    run.mkdir()
    outside.write_bytes(b"\x89PNG\r\n\x1a\nsecret-bytes")
    (run / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\ninside")
    (run / "figs").mkdir()
    (run / "figs" / "link-inside.png").symlink_to(run / "ok.png")
    name = {"absolute": "/etc/passwd", "dotdot": "../secret.png", "symlink": "figs/evil.png"}[kind]
    if kind == "symlink":
        (run / name).symlink_to(outside)
    target = Path(name) if kind == "absolute" else outside
    figures = [{"file": name}, {"file": "ok.png"}, {"file": "figs/link-inside.png"}]
    html_text = write_report(run, {"figures": figures}).read_text()
    assert not _embedded(html_text, target)
    assert f"not embedded: {name} is outside the run folder" in html_text
    assert _embedded(html_text, run / "ok.png")  # files inside, even via a symlink, still are
    assert html_text.count("<figure>") == 2


def test_report_refuses_metrics_json_that_is_not_a_mapping(tmp_path):
    """Issue 15 #9: a metrics.json holding a list used to raise AttributeError in render_html."""
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="metrics.json.*JSON object"):
        build_report(tmp_path)


@pytest.mark.parametrize("figure", [5, {"file": 5}, {"caption": "no file"}, None])
def test_report_notes_malformed_figure_entries(tmp_path, figure):
    """A hand-edited metrics.json with a malformed figures entry used to raise TypeError or
    KeyError while rendering."""
    html_text = write_report(tmp_path, {"figures": [figure]}).read_text()
    assert "figure not embedded: entry has no file name" in html_text
