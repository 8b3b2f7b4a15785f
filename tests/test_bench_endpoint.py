"""The OpenAI-compatible client against a real HTTP server on loopback (stdlib ThreadingHTTPServer, SSE).

The fake server's behaviour per request is picked by the prompt length: 13 -> HTTP 500, 7 -> stops at half
the tokens asked (a server ignoring ignore_eos/min_tokens), 11 -> drops the connection mid-stream.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import nanotune.bench.session as session
from nanotune.bench.backends.endpoint import EndpointBackend, completions_url, served_model
from nanotune.bench.config import BenchConfig
from nanotune.bench.driver import drive
from nanotune.bench.records import BenchRequest
from nanotune.bench.runner import run_bench
from nanotune.bench.testing import fake_trace
from nanotune.cli import main


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "fake-served-model"}]})
        else:
            self._send_json(404, {"error": "no such path"})

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.payloads.append(body)
        srv.headers.append(dict(self.headers))
        if self.path != "/v1/completions":
            return self._send_json(404, {"error": "no such path"})
        n_prompt, n = len(body["prompt"]), body["max_tokens"]
        if n_prompt == 13:
            return self._send_json(500, {"error": {"message": "out of memory", "code": 500}})
        srv.conns.add(self.connection)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n_out = n // 2 if n_prompt == 7 else n
        try:
            for i in range(n_out):
                if n_prompt == 11 and i == 2:
                    self.connection.shutdown(socket.SHUT_RDWR)  # the server goes away mid-answer
                    return
                time.sleep(srv.chunk_s)
                chunk = {"id": "c", "choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            usage = {"choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            srv.num_done += 1
        except OSError:
            pass
        finally:
            srv.conns.discard(self.connection)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, chunk_s=0.002):
        super().__init__(("127.0.0.1", 0), Handler)
        self.chunk_s = chunk_s
        self.payloads, self.conns, self.headers = [], set(), []
        self.num_done = 0  # answers sent whole
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def die(self):
        """The whole server dies: stop accepting, cut every open stream."""
        self.shutdown()
        self.server_close()
        for c in list(self.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.die()


def backend(server, **kw):
    return EndpointBackend(server.url, "fake-served-model", vocab_size=100, num_params=10**6, **kw)


def reqs(lengths, gap_s=0.0):
    return [BenchRequest(i, i * gap_s, tuple(range(p)), o) for i, (p, o) in enumerate(lengths)]


def test_normal_streaming_payload_and_timing(server):
    b = backend(server)
    ph = drive(b, reqs([(5, 8)] * 4 + [(9, 3)] * 2))
    b.close()
    assert not ph.is_partial and all(r.is_ok for r in ph.records)
    assert [r.output_len for r in ph.records] == [8] * 4 + [3] * 2
    r0 = ph.records[0]
    assert r0.ttft_s > 0 and len(r0.token_times) == 8 and r0.end_s == r0.token_times[-1]
    assert r0.tpot_s == pytest.approx(0.002, abs=0.004)
    p = server.payloads[0]
    assert p["prompt"] == [0, 1, 2, 3, 4] and p["max_tokens"] == p["min_tokens"] == 8
    assert p["ignore_eos"] is True and p["stream"] is True and p["stream_options"] == {"include_usage": True}
    assert p["model"] == "fake-served-model"


def test_http_errors_short_outputs_and_cut_streams_are_kept(server):
    cfg = BenchConfig(engine="endpoint", endpoint=server.url, num_warmups=0)
    trace = fake_trace([(5, 6), (13, 6), (7, 6), (11, 6), (5, 4)])
    out = run_bench(cfg, trace, backend(server), None)
    m = out.result["metrics"]
    assert m["completed"] == 3 and m["failed"] == 2 and m["num_short"] == 1
    by_len = {r["prompt_len"]: r for r in out.rows}
    assert by_len[13]["status"] == "failed" and "HTTP 500" in by_len[13]["error"]
    assert "out of memory" in by_len[13]["error"]
    assert by_len[11]["status"] == "failed" and "ended early" in by_len[11]["error"]
    assert by_len[7]["status"] == "ok" and by_len[7]["is_short"] and by_len[7]["output_len"] == 3
    assert m["total_output_tokens"] == 6 + 3 + 4


def test_server_dying_mid_run_fails_requests_never_drops_them():
    server = FakeServer(chunk_s=0.02)  # 10 tokens: 0.2 s per answer, so several are open at any time
    b = backend(server)

    def die_after_the_first_answer():  # (not on a timer: on a loaded machine nothing may be done by then)
        end = time.time() + 30
        while server.num_done < 1 and time.time() < end:
            time.sleep(0.005)
        server.die()

    threading.Thread(target=die_after_the_first_answer, daemon=True).start()
    ph = drive(b, reqs([(5, 10)] * 12, gap_s=0.02))
    b.close()
    statuses = [r.status for r in ph.records]
    assert len(statuses) == 12 and set(statuses) <= {"ok", "failed"}
    assert statuses.count("ok") >= 1 and statuses.count("failed") >= 5
    errors = " ".join(r.error for r in ph.records if r.error)
    assert "ConnectionRefused" in errors or "ended early" in errors


def test_ctrl_c_aborts_open_streams_promptly():
    server = FakeServer(chunk_s=0.05)  # 100 tokens would take 5 s
    b = backend(server)
    start = time.perf_counter()

    fired = []

    def interrupt(progress):
        if progress.elapsed_s > 0.2 and not fired:
            fired.append(1)
            raise KeyboardInterrupt

    ph = drive(b, reqs([(5, 100)] * 3), on_progress=interrupt)
    b.close()
    server.die()
    assert ph.is_interrupted and time.perf_counter() - start < 2.0
    assert {r.status for r in ph.records} == {"interrupted"}


def test_max_concurrency_limits_open_connections(server):
    server.chunk_s = 0.003
    b = backend(server, max_workers=2)
    ph = drive(b, reqs([(5, 5)] * 6), max_concurrency=2)
    b.close()
    spans = sorted((r.send_s, r.end_s) for r in ph.records)
    for i, (s, _) in enumerate(spans):
        assert sum(1 for s2, e2 in spans[:i] if e2 > s) <= 1
    assert max(r.queue_s for r in ph.records) > 0.005


def test_served_model_and_url_forms(server):
    assert served_model(server.url) == "fake-served-model"
    assert completions_url("http://h:8000").path == "/v1/completions"
    assert completions_url("http://h:8000/v1/").path == "/v1/completions"
    assert completions_url("h:8000/v1/completions").path == "/v1/completions"
    with pytest.raises(ValueError, match="--endpoint"):
        completions_url("ftp://h")
    with pytest.raises(OSError):
        served_model("http://127.0.0.1:1", timeout=2)


def test_cli_against_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "load_trace", lambda *a, **k: fake_trace([(6, 5)] * 6 + [(13, 5)]))
    res = CliRunner().invoke(main, ["bench", "--endpoint", server.url, "--no-progress", "--results-dir",
                                    str(tmp_path), "--num-params", "1e6", "--peak-tflops", "1",
                                    "--vocab-size", "50", "--num-warmups", "2", "--max-concurrency", "3"])
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    assert m["completed"] == 6 and m["failed"] == 1 and m["efficiency"] is not None
    assert result["engine"]["model"] == "fake-served-model"  # from GET /v1/models
    assert run_dir.name.endswith("-endpoint")
    assert all(max(p["prompt"]) < 50 for p in server.payloads)
    assert len(server.payloads) == 9  # 2 warm-up + 7 measured, each sent once


def test_cli_unreachable_endpoint_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "load_trace", lambda *a, **k: fake_trace([(6, 5)]))
    res = CliRunner().invoke(main, ["bench", "--endpoint", "http://127.0.0.1:1", "--no-progress",
                                    "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "cannot list its models" in " ".join(res.output.split())


def test_api_key_from_the_environment_is_sent_as_bearer_and_never_written(server, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "load_trace", lambda *a, **k: fake_trace([(6, 5)] * 2))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    res = CliRunner().invoke(main, ["bench", "--endpoint", server.url, "--no-progress", "--results-dir",
                                    str(tmp_path), "--num-warmups", "0", "--vocab-size", "50"])
    assert res.exit_code == 0, res.output
    assert {h.get("Authorization") for h in server.headers} == {"Bearer sk-secret-123"}
    (run_dir,) = tmp_path.iterdir()
    text = (run_dir / "result.json").read_text()
    assert "sk-secret-123" not in text and json.loads(text)["config"]["api_key"] == "(given)"


def test_request_timeout_fails_a_stalled_stream(tmp_path):
    server = FakeServer(chunk_s=1.0)  # one chunk a second
    b = backend(server, request_timeout=0.2)
    ph = drive(b, reqs([(5, 3)]))
    b.close()
    server.die()
    (rec,) = ph.records
    assert rec.status == "failed" and "ReadTimeout" in rec.error


def test_a_stream_whose_last_line_has_no_newline_still_counts_it():
    """The client splits what arrives into lines itself: the final `data: [DONE]` without its newline (the
    connection closes right after it) is read, not lost."""
    body = (b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
            b'data: {"choices": [{"index": 0, "text": "b"}]}\n\ndata: [DONE]')
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_once():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        conn.close()

    threading.Thread(target=answer_once, daemon=True).start()
    b = EndpointBackend(f"http://127.0.0.1:{listener.getsockname()[1]}", "m", vocab_size=100)
    ph = drive(b, reqs([(3, 2)]))
    b.close()
    listener.close()
    (rec,) = ph.records
    assert rec.status == "ok" and rec.output_len == 2 and rec.generated_text == "ab", rec.error
