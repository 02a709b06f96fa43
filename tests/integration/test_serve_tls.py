"""`vigil serve --tls-cert/--tls-key`: the same app over HTTPS only (hypercorn's TLS), for use
beyond loopback; a certificate from a local CA (trustme) stands in for a real one."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from runtime.http_server import Tls, make_server
from tests.support.pipeline import make_host


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Tls, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    return Tls(str(chain), str(key)), ca_file


def test_the_local_host_serves_https_only_with_a_certificate(tmp_path: Path, tls_files: tuple[Tls, Path]) -> None:
    tls, ca_file = tls_files
    host = make_host(tmp_path / "data")
    server = make_server(host, "token", ("127.0.0.1", 0), tls=tls)
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        resp = httpx.get(server.url + "/api/health", verify=ssl.create_default_context(cafile=str(ca_file)),
                         timeout=10)
        assert resp.status_code == 200
        with pytest.raises(httpx.HTTPError):  # no cleartext on the TLS port
            httpx.get(server.url.replace("https://", "http://") + "/api/health", timeout=5).raise_for_status()
    finally:
        server.shutdown()
        host.services.close()
