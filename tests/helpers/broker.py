"""A Kafka broker a fault test owns: Tansu (memory storage) behind a TCP relay of the test's.

Clients only ever learn the relay's address (the broker advertises it), so the test can make the
broker unreachable without stopping it (``unreachable()``/``reachable()``: the relay stops
listening and drops every connection, as a network partition or a broker pod gone does), or
make it lose its whole log (``lose_log()``: a fresh Tansu behind the same address, as a memory
broker restarted or a topic re-created does), or stop it for a while (``down()``, then ``up()``
at the same address). A new Tansu gets a new private port each time:
Tansu binds without SO_REUSEADDR, and its old port lingers in TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from helpers.kafka_tls import pipe, start_tansu
from helpers.services import free_port


class OwnedBroker:
    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._upstream = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._start_broker()
        await self.reachable()

    async def _start_broker(self) -> None:
        self._upstream = free_port()
        self._proc = await start_tansu(self._upstream, self.port)

    async def _stop_broker(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None

    async def reachable(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, reuse_address=True
            )

    async def unreachable(self) -> None:
        """Stop listening and drop every connection (the broker itself runs on)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def lose_log(self) -> None:
        """A fresh, empty broker behind the same address: every topic and group is gone."""
        await self.unreachable()
        await self._stop_broker()
        await self._start_broker()
        await self.reachable()

    async def down(self) -> None:
        """The broker stopped: nothing answers at its address, and its log (memory) is gone."""
        await self.unreachable()
        await self._stop_broker()

    async def up(self) -> None:
        """A broker started again at the same address, empty: topics must be created again."""
        await self._start_broker()
        await self.reachable()

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()

    async def stop(self) -> None:
        await self.unreachable()
        await self._stop_broker()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def owned_broker() -> AsyncIterator[OwnedBroker]:
    broker = OwnedBroker()
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
