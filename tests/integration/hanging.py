"""Hanging transactions on the real broker: make one, and end it as the README tells an operator to.

A hanging transaction is an open transaction on a partition that its coordinator does not know of
(the broker skipped its markers, as after the 50 s broker hang in CI): the partition's last stable
offset stays below it for good and no read_committed reader gets past it. No client call ends it.

`leave_hanging` makes one without waiting for a broker race: it speaks the Kafka protocol directly
and appends a transactional record batch for a transactional id whose coordinator never added the
partition to a transaction. Brokers check that (KIP-890 verification) unless
`transaction.partition.verification.enable=false`, which the broker used here must set.

`abort_hanging` is the README's procedure, with Kafka's own tool (`kafka-transactions.sh`, the
`TransactionsCommand` class of the stack's kafka-tools jar): `find-hanging`, then `abort`.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

__all__ = ["abort_hanging", "find_hanging", "leave_hanging"]

_FIND_COORDINATOR, _INIT_PRODUCER_ID, _PRODUCE = 10, 22, 0
_RETRIABLE = {14, 15, 16, 51}  # coordinator loading / not available / not coordinator, concurrent txns


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def _transactional_batch(producer_id: int, epoch: int, key: bytes, value: bytes, timestamp_ms: int) -> bytes:
    """A v2 record batch of one record, flagged transactional (attributes bit 4)."""
    body = (
        b"\x00" + _varint(0) + _varint(0) + _varint(len(key)) + key + _varint(len(value)) + value + _varint(0)
    )
    record = _varint(len(body)) + body
    after_crc = (
        struct.pack(">hiqqqhi", 0x10, 0, timestamp_ms, timestamp_ms, producer_id, epoch, 0)
        + struct.pack(">i", 1)
        + record
    )
    after_length = struct.pack(">ib", -1, 2) + struct.pack(">I", _crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


class _Connection:
    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=30)
        self._correlation = 0

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        self._correlation += 1
        header = struct.pack(">hhi", api_key, version, self._correlation) + _string("hanging-test")
        payload = header + body
        self._sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", self._recv(4))
        response = self._recv(size)
        (correlation,) = struct.unpack(">i", response[:4])
        assert correlation == self._correlation, "response out of order"
        return response[4:]

    def _recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self._sock.close()


def _until_ok(call, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        error, result = call()
        if error == 0:
            return result
        assert error in _RETRIABLE and time.monotonic() < deadline, f"{what}: error code {error}"
        time.sleep(0.5)


def leave_hanging(
    bootstrap: str, topic: str, partition: int, *, transactional_id: str, age_s: float = 120
) -> None:
    """Append one transactional record to `topic[partition]` outside any transaction its coordinator
    knows: a hanging transaction. Its record is stamped `age_s` in the past, so `find-hanging` (which
    looks for transactions whose producer last wrote longer ago than a timeout) lists it at once."""
    conn = _Connection(bootstrap)
    try:

        def find_coordinator() -> tuple[int, None]:  # also creates __transaction_state on first use
            resp = conn.call(_FIND_COORDINATOR, 1, _string(transactional_id) + struct.pack(">b", 1))
            (error,) = struct.unpack(">h", resp[4:6])
            return error, None

        _until_ok(find_coordinator, "FindCoordinator")

        def init_producer_id() -> tuple[int, tuple[int, int]]:
            resp = conn.call(_INIT_PRODUCER_ID, 1, _string(transactional_id) + struct.pack(">i", 60000))
            _throttle, error, producer_id, epoch = struct.unpack(">ihqh", resp[:16])
            return error, (producer_id, epoch)

        producer_id, epoch = _until_ok(init_producer_id, "InitProducerId")
        stamp = int((time.time() - age_s) * 1000)
        batch = _transactional_batch(producer_id, epoch, b"hanging", b"never committed", stamp)
        body = (
            _string(transactional_id)
            + struct.pack(">hi", -1, 30000)  # acks=all
            + struct.pack(">i", 1)
            + _string(topic)
            + struct.pack(">i", 1)
            + struct.pack(">i", partition)
            + struct.pack(">i", len(batch))
            + batch
        )
        resp = conn.call(_PRODUCE, 7, body)
        # topics[1]: name, partitions[1]: index, error_code, ...
        (name_len,) = struct.unpack(">h", resp[4:6])
        at = 6 + name_len + 4
        _index, error = struct.unpack(">ih", resp[at : at + 6])
        assert error == 0, f"Produce of the hanging record: error code {error}"
    finally:
        conn.close()


def _tool(java: str, libs: Path, bootstrap: str, *args: str) -> str:
    argv = [
        java,
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.TransactionsCommand",
        "--bootstrap-server",
        bootstrap,
    ]
    result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kafka-transactions.sh {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


def find_hanging(
    java: str, libs: Path, bootstrap: str, topic: str | None = None
) -> list[tuple[str, int, int]]:
    """`kafka-transactions.sh find-hanging --max-transaction-timeout 1` on `topic` (None: every topic
    of the broker, `--broker-id 1`): (topic, partition, start offset) of each transaction whose
    producer wrote nothing for a minute and whose coordinator does not have the partition in a
    transaction."""
    scope = ["--topic", topic] if topic is not None else ["--broker-id", "1"]
    out = _tool(java, libs, bootstrap, "find-hanging", *scope, "--max-transaction-timeout", "1")
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines and lines[0][:2] == ["Topic", "Partition"], out
    column = lines[0].index("StartOffset")
    return [(row[0], int(row[1]), int(row[column])) for row in lines[1:]]


def abort_hanging(
    java: str, libs: Path, bootstrap: str, topic: str | None = None
) -> list[tuple[str, int, int]]:
    """The README's procedure: find the hanging transactions (on `topic`, None: on the broker's
    every topic), abort each; returns them."""
    found = find_hanging(java, libs, bootstrap, topic)
    for t, partition, start in found:
        _tool(
            java,
            libs,
            bootstrap,
            "abort",
            "--topic",
            t,
            "--partition",
            str(partition),
            "--start-offset",
            str(start),
        )
    return found
