"""etcd, the reference peer: a local 3-member etcd 3.4 cluster driven like ``bench.harness`` drives ours.

etcd is the system this store would be compared with first: Raft, a linearizable KV store, and
multi-key transactions (a Txn's compares and puts). Its members are Go processes on this machine, on
127.0.0.1 like our throwaway clusters, so a figure is etcd's cost on the same 2 cores as ours.

The client speaks to etcd's v3 JSON gateway (grpc-gateway: ``POST /v3/kv/put``, ``/v3/kv/range``,
``/v3/kv/txn``, keys and values base64) over HTTP/1.1 on plain trio sockets, one keep-alive
connection per client task. Why this client:

* gRPC is etcd's native protocol, but no Python gRPC client runs under trio (grpcio has its own
  threads and an asyncio API), and the harness's client tasks are trio tasks;
* the gateway is on every etcd 3.4 member's client port, with no extra process;
* a request is one JSON body and one JSON answer, which a few lines of HTTP/1.1 handle with little
  client CPU. httpx (over anyio, on trio) was tried and costs far more: 16 tasks in one process made
  1,481 puts/s through it against 5,439 through this client, against the same cluster, and one task
  816 against 1,361. On 2 cores shared with the servers, that would be httpx's figure, not etcd's.
  The gateway's JSON translation costs etcd some CPU per request on top of gRPC; its figure includes it.

HTTP/1.1 has no multiplexing, so each task holds its own connection where our client pipelines all
of a process's tasks over one connection per node. Every range is linearizable (etcd's default, a
ReadIndex round), as our gets are with their read barrier.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from bench.peers import Aborted, Op, PeerError, closed_loop, free_ports, run_client_processes
from bench.workloads import KEYS_PER_CLIENT

ETCD_BINARY = "etcd"
INSTALL_HINT = "apt-get install etcd-server"
TMPFS = Path("/dev/shm")
STORAGES = ("tmpfs", "disk")
HOST = "127.0.0.1"
HEALTHY_WITHIN_S = 30.0
HEALTH_POLL_S = 0.1
STOP_GRACE_S = 10.0
LOG_TAIL_CHARS = 3000
REQUEST_TIMEOUT_S = 5.0  # etcd's own request timeout is 5 s plus election time; an attempt here gives up then
MAX_HEADER_BYTES = 64 * 1024
READ_CHUNK = 65536

WORKLOADS = ("put", "get", "ycsb-a", "ycsb-b", "transfer")
YCSB_READ_SHARE = {"ycsb-a": 0.5, "ycsb-b": 0.95}
DEFAULT_KEYS = 1000  # shared keys a get or YCSB phase loads, then reads and updates uniformly
DEFAULT_ACCOUNTS = 1000  # shared accounts of a transfer phase: the suite's bank, 200 accounts on each of 5 shards
DEFAULT_START_BALANCE = 1000
TRANSFER_MAX_AMOUNT = 10


def etcd_missing() -> str | None:
    """Why etcd cannot be run here, or None: the benchmark and its test skip with this reason."""
    if shutil.which(ETCD_BINARY) is None:
        return f"no `{ETCD_BINARY}` binary on PATH: install etcd 3.4 with `{INSTALL_HINT}` (Debian)"
    return None


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=1.0) as answer:
            return bool(json.loads(answer.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each member in turn, SIGKILL one still running after ``STOP_GRACE_S``.

    One at a time: a leader that gets SIGTERM first hands leadership to a live member, which takes
    milliseconds; stopped all at once, it waits out its transfer timeout (7 s here) for members that
    are stopping too.
    """
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""


@contextmanager
def open_etcd(root: Path, members: int = 3, storage: str = "tmpfs") -> Iterator[list[str]]:
    """A local etcd cluster of ``members`` on free loopback ports, healthy; yields its client endpoints.

    ``storage`` says where the members' data directories (WAL and bbolt database) live: ``tmpfs``
    under /dev/shm, where etcd's fsyncs cost nothing (the guarantee of our durability ``os``: an
    acknowledged write survives kill -9, not power loss), or ``disk`` under ``root``, where each WAL
    batch is fsynced (the guarantee of ``fsync``). Members' logs go to ``root`` either way. The data
    directories are removed on exit.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage is one of {STORAGES}, not {storage!r}")
    if (reason := etcd_missing()) is not None:
        raise RuntimeError(reason)
    root.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="bench-etcd-", dir=TMPFS if storage == "tmpfs" else root))
    ports = free_ports(HOST, 2 * members)
    names = [f"m{i}" for i in range(members)]
    clients = [f"http://{HOST}:{ports[i]}" for i in range(members)]
    peers = [f"http://{HOST}:{ports[members + i]}" for i in range(members)]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peers))
    logs = [root / f"etcd-{n}.log" for n in names]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, client, peer, log in zip(names, clients, peers, logs):
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [ETCD_BINARY, "--name", name, "--data-dir", str(data / name),
                     "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", data.name, "--logger", "zap", "--log-level", "warn"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
        until = time.monotonic() + HEALTHY_WITHIN_S
        while not all(_healthy(c) for c in clients):
            exited = [(n, log) for n, p, log in zip(names, procs, logs) if p.poll() is not None]
            if exited or time.monotonic() > until:
                name, log = exited[0] if exited else (names[0], logs[0])
                why = "exited" if exited else f"not healthy within {HEALTHY_WITHIN_S} s"
                raise RuntimeError(f"etcd member {name} {why}; its log ends:\n{_log_tail(log)}")
            time.sleep(HEALTH_POLL_S)
        yield clients
    finally:
        _stop(procs)
        shutil.rmtree(data, ignore_errors=True)


def etcd_leader(endpoints: list[str]) -> str:
    """The client endpoint of the member that leads now: the one every member's status names."""
    ids: dict[int, str] = {}
    named: set[int] = set()
    for endpoint in endpoints:
        request = urllib.request.Request(f"{endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            status = json.loads(answer.read())
        ids[int(status["header"]["member_id"])] = endpoint
        named.add(int(status.get("leader", 0)))
    if len(named) != 1 or (leader := named.pop()) not in ids:
        raise RuntimeError(f"the etcd members at {endpoints} do not agree on a leader among them")
    return ids[leader]


class _ProtocolError(Exception):
    """The bytes on the connection are not an HTTP/1.1 answer this client reads."""


class _Connection:
    """One keep-alive HTTP/1.1 connection to one member's JSON gateway, re-opened after a failure."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; etcd's JSON answer, or ``PeerError`` (the connection is then closed)."""
        payload = json.dumps(body).encode()
        request = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                if self._stream is None:
                    self._stream = await trio.open_tcp_stream(self._host, self._port)
                await self._stream.send_all(request)
                status, answer, keep = await self._read_answer()
        except (OSError, ValueError, trio.BrokenResourceError, trio.TooSlowError, _ProtocolError) as exc:
            await self.aclose()
            raise PeerError(f"{path}: {exc!r}") from exc
        if not keep:
            await self.aclose()
        if status != 200:
            raise PeerError(f"{path}: HTTP {status}: {answer[:200]!r}")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        self._stream = None
        self._buffer.clear()

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(READ_CHUNK)
        if not data:
            raise _ProtocolError("connection closed by etcd")
        self._buffer += data

    async def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise _ProtocolError("header line too long")
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[:end + len(marker)]
        return line

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _read_answer(self) -> tuple[int, bytes, bool]:
        """Status, body, and whether the connection stays open; Content-Length or chunked bodies."""
        head = (await self._read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise _ProtocolError(f"bad status line {head[0]!r}") from None
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        keep = headers.get("connection", "").lower() != "close"
        if "content-length" in headers:
            return status, await self._read_exactly(int(headers["content-length"])), keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self._read_until(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self._read_exactly(size))
                await self._read_exactly(2)  # the CRLF after each chunk
            while await self._read_until(b"\r\n"):  # trailers, up to the empty line
                pass
            return status, b"".join(chunks), keep
        raise _ProtocolError("an answer with neither Content-Length nor chunked encoding")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class _Client:
    """The operations the workloads need, on one task's connection."""

    def __init__(self, endpoint: str) -> None:
        self.conn = _Connection(endpoint)

    async def put(self, key: str, value: str) -> None:
        await self.conn.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def get(self, key: str) -> tuple[str | None, int]:
        """The key's value (None if absent) and mod_revision (0 if absent, as a Txn compares it)."""
        kvs = (await self.conn.call("/v3/kv/range", {"key": _b64(key)})).get("kvs", [])
        if not kvs:
            return None, 0
        return _unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])

    async def put_if_unchanged(self, reads: dict[str, int], writes: dict[str, str]) -> bool:
        """A Txn: if every key in ``reads`` still has that mod_revision, put every ``writes``."""
        answer = await self.conn.call("/v3/kv/txn", {
            "compare": [{"target": "MOD", "key": _b64(k), "result": "EQUAL", "mod_revision": str(rev)}
                        for k, rev in reads.items()],
            "success": [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in writes.items()],
        })
        return bool(answer.get("succeeded", False))


async def _setup(clients: list[_Client], keys: list[str], value: str) -> None:
    """Write ``keys`` over the tasks' connections in parallel, before the phase."""
    async def writer(c: _Client, mine: list[str]) -> None:
        for key in mine:
            await c.put(key, value)

    async with trio.open_nursery() as nursery:
        for n, c in enumerate(clients):
            nursery.start_soon(writer, c, keys[n::len(clients)])


async def _workload_op(workload: str, params: dict[str, Any], clients: list[_Client], phase: str,
                       tag: str) -> Op:
    """The operation ``op(task, i)`` of ``workload``, after its setup writes.

    ``put`` keys are the task's own (``tag`` is this process's); the keys that gets, YCSB and transfers
    use are shared by every process of the phase (``phase``), as ``bench.workloads``' keyspaces are,
    so contention grows with clients. Every process loads all of them: the same values, all before the
    barrier, so loading twice changes nothing.
    """
    if workload == "put":
        async def put(task: int, i: int) -> None:
            await clients[task].put(f"{tag}-{task}-{i % KEYS_PER_CLIENT}", str(i))
        return put

    if workload in ("get", *YCSB_READ_SHARE):
        keys = [f"{phase}-k{j}" for j in range(params.get("keys", DEFAULT_KEYS))]
        await _setup(clients, keys, "0")
        read_share = YCSB_READ_SHARE.get(workload, 1.0)
        rngs = [random.Random(f"{tag}-{task}") for task in range(len(clients))]

        async def get_or_put(task: int, i: int) -> None:
            rng = rngs[task]
            key = rng.choice(keys)
            if rng.random() < read_share:
                await clients[task].get(key)
            else:
                await clients[task].put(key, str(i))
        return get_or_put

    if workload == "transfer":
        accounts = [f"{phase}-acct{j}" for j in range(params.get("accounts", DEFAULT_ACCOUNTS))]
        await _setup(clients, accounts, str(params.get("start_balance", DEFAULT_START_BALANCE)))

        async def transfer(task: int, i: int) -> None:
            """One optimistic attempt, as ``bench.workloads.bank``'s: read both, compare-and-put both."""
            rng = random.Random(f"{tag}-{task}-{i}")
            src, dst = rng.sample(accounts, 2)
            (src_value, src_rev), (dst_value, dst_rev) = [await clients[task].get(k) for k in (src, dst)]
            if src_value is None or dst_value is None:
                raise PeerError(f"account {src if src_value is None else dst} is missing")
            amount = rng.randint(1, TRANSFER_MAX_AMOUNT)
            writes = {src: str(int(src_value) - amount), dst: str(int(dst_value) + amount)}
            if not await clients[task].put_if_unchanged({src: src_rev, dst: dst_rev}, writes):
                raise Aborted()
        return transfer

    raise ValueError(f"unknown etcd workload {workload!r}; one of {WORKLOADS}")


async def _run_clients(endpoints: list[str], workload: str, params: dict[str, Any], phase: str, tasks: int,
                       seconds: float, warmup_s: float, tag: str, barrier: Any) -> dict[str, Any]:
    clients = [_Client(endpoints[task % len(endpoints)]) for task in range(tasks)]
    try:
        op = await _workload_op(workload, params, clients, phase, tag)
        return await closed_loop(tasks, op, seconds, warmup_s, barrier)
    finally:
        for c in clients:
            await c.conn.aclose()


def run_etcd_phase(endpoints: list[str], workload: str, params: dict[str, Any], clients: int, procs: int,
                   seconds: float, warmup_s: float = 0.0, *, to_leader: bool = True) -> dict[str, Any]:
    """One closed-loop phase of ``workload`` against etcd; the keys of ``bench.harness.run_phase``.

    ``put`` is ``kv.put``: one put of one of ``KEYS_PER_CLIENT`` keys of the task's own. ``get`` is
    one range of one of ``params['keys']`` shared keys (loaded first, chosen uniformly); ``ycsb-a`` and
    ``ycsb-b`` are gets and puts over them (50/50, 95/5; uniform keys, not YCSB's zipfian). ``transfer``
    is one optimistic attempt of a transfer between two of ``params['accounts']`` shared accounts: two
    ranges, then one Txn that puts both balances if both mod_revisions are unchanged; a failed compare
    is an abort, not retried (as ``bench.workloads.bank`` counts a conflict).

    With ``to_leader`` (the default), every task talks to the member that leads when the phase starts,
    as our client talks to each shard's leader: etcd's best case, with no forwarding. Without it, tasks
    are spread round-robin over ``endpoints``, as etcd's clientv3 balancer spreads its connections.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown etcd workload {workload!r}; one of {WORKLOADS}")
    targets = [etcd_leader(endpoints)] if to_leader else list(endpoints)
    phase = f"etcd-{workload}{clients}-{os.getpid()}-{time.monotonic_ns()}"
    return run_client_processes(_run_clients, (targets, workload, params, phase), clients, procs,
                                seconds, warmup_s, phase)
