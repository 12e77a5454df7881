"""The launcher's readiness check, against plain HTTP servers standing in for Triton's endpoints."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llmrec.server.launcher import TritonServer, free_port


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    servers = []

    def start() -> int:
        server = HTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_not_ready_until_the_metrics_endpoint_listens(tmp_path, endpoint):
    # Triton answers ready on HTTP tens of ms before its metrics service listens (CI scraped in between).
    http_port = endpoint()
    server = TritonServer(tmp_path, http_port=http_port, metrics_port=free_port())
    assert not server.is_ready()
    server.metrics_port = endpoint()
    assert server.is_ready()


def test_an_installed_tritonserver_is_used_where_llmrec_tritonserver_home_names_one(tmp_path, monkeypatch):
    """The serving images run NVIDIA's layout (/opt/tritonserver/{bin,lib,backends}) instead of the wheel's."""
    from llmrec.server import launcher

    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").write_text("")
    monkeypatch.setenv(launcher.TRITONSERVER_HOME_ENV, str(home))
    server = TritonServer(tmp_path)
    assert server.command()[0] == str(home / "bin" / "tritonserver")
    assert f"--backend-directory={home / 'backends'}" in server.command()
    assert server.environment()["LD_LIBRARY_PATH"].split(":")[0] == str(home / "lib")

    monkeypatch.setenv(launcher.TRITONSERVER_HOME_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no bin/tritonserver"):
        server.command()
