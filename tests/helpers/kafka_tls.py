"""A Kafka broker reachable only through TLS, for the Kafka security tests.

The local broker (Tansu 0.6.0) speaks plaintext only: its ``--cert``/``--key`` options do not
make the broker listener speak TLS (checked: a TLS ClientHello gets "early eof"). So
:func:`tls_broker` starts a second Tansu on a private port and puts a TLS-terminating asyncio
proxy in front of it, and the broker advertises the *proxy's* address in its metadata: every
client connection, the bootstrap one and the per-broker ones, goes through TLS.

The certificates are made with the ``openssl`` command line (the ``cryptography`` package is
not installed here): a CA with a server certificate for 127.0.0.1/localhost and a client
certificate, and a second CA that signed neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from helpers.services import free_port
from helpers.stack import load_stack


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", key, "-out", cert, cwd=d)  # fmt: skip
    return cert, key


def _signed(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
    extfile.write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", key, "-out", csr, cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-extfile", extfile, "-out", cert, cwd=d)  # fmt: skip
    return cert, key


def make_tls_files(d: Path) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line is needed to make the test certificates")
    ca = _ca(d, "test-ca")
    server = _signed(
        d,
        "broker",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _signed(d, "analytics-client", ca, "extendedKeyUsage=clientAuth\n")
    other_ca, _ = _ca(d, "other-ca")
    return TlsFiles(ca[0], server[0], server[1], client[0], client[1], other_ca)


def tansu_binary() -> Path:
    """The broker binary ``make stack`` runs (found as ``stack.py`` finds it)."""
    path: Path = load_stack().tansu_binary()
    return path


async def start_tansu(port: int, advertised: int) -> asyncio.subprocess.Process:
    """A Tansu broker (memory storage) listening on ``port`` and advertising ``advertised`` (a
    relay's port: clients only ever learn that one), returned once it accepts connections."""
    proc = await asyncio.create_subprocess_exec(
        str(tansu_binary()), "broker",
        "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}",
        "--storage-engine", "memory://tansu/",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or time.monotonic() > deadline:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise RuntimeError(f"the test's Tansu broker did not start on {port}") from None
            await asyncio.sleep(0.05)
            continue
        w.close()
        return proc


@dataclass
class TlsProxy:
    """Accepts TLS on ``port`` and relays the plaintext bytes to ``upstream``."""

    context: ssl.SSLContext
    upstream: int
    port: int = 0
    handshakes: int = 0  # connections whose TLS handshake succeeded
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, ssl=self.context
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of stream, then close ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # the proxy: the only address clients ever learn
    proxy: TlsProxy


@contextlib.asynccontextmanager
async def tls_broker(
    files: TlsFiles, *, client_certificates: bool = False
) -> AsyncIterator[TlsBroker]:
    """A Tansu broker behind a TLS proxy (server certificate from ``files``); with
    ``client_certificates`` the proxy also requires a client certificate signed by the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    if client_certificates:
        context.load_verify_locations(files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    plain, public = free_port(), free_port()
    proxy = TlsProxy(context, upstream=plain, port=public)
    await proxy.start()
    try:
        broker = await start_tansu(plain, public)
    except BaseException:
        await proxy.stop()
        raise
    try:
        yield TlsBroker(f"127.0.0.1:{public}", proxy)
    finally:
        await proxy.stop()
        if broker.returncode is None:
            broker.terminate()
            try:
                await asyncio.wait_for(broker.wait(), 5)
            except TimeoutError:
                broker.kill()
                await broker.wait()


def tls_env(broker: TlsBroker, files: TlsFiles, *, ca: str | None = None) -> dict[str, str]:
    """The environment of a workload connecting to ``broker`` over TLS with a client
    certificate (``ca``: another CA file, to see it refused)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": ca or str(files.ca),
        "KAFKA_SSL_CERT_FILE": str(files.client_cert),
        "KAFKA_SSL_KEY_FILE": str(files.client_key),
    }


async def create_topics(options: dict[str, Any], *specs: tuple[str, int]) -> None:
    """Create (name, partitions) topics with an admin client of ``options``
    (``core.kafka.client_options``)."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in specs])
    finally:
        await admin.close()
