"""Long-lived probe agent that runs inside one simulated pod (or node) network namespace.

Started by ``netns_cluster.NetnsCluster`` as::

    ip netns exec NS python -u podagent.py --name ns/pod --tcp 80,81 --udp 80,81

It serves the given TCP and UDP ports on every IPv4 and IPv6 address of its namespace
(TCP: send ``"<name>\\n"`` and close; UDP: answer every datagram with ``"<name>"``) and
speaks a JSON-lines protocol on stdin/stdout.  Once all ports are bound it prints
``{"event": "ready"}``.  Each request line carries an ``id`` that is echoed in its answer;
requests are handled concurrently, so answers may come back in any order:

* ``{"id": 1, "op": "probe", "dst": "10.244.1.5", "port": 80, "proto": "tcp",
  "timeout": 1.0, "src": null}`` -> ``{"id": 1, "ok": true, "reply": "ns/pod", "error": null,
  "connected": true}`` (``connected``: a TCP handshake completed, even if no reply came in time)
* ``{"id": 2, "op": "serve", "proto": "udp", "port": 53, "name": "ns/pod"}``
  -> ``{"id": 2, "ok": true, "error": null}``
* ``{"id": 3, "op": "unserve", "proto": "udp", "port": 53}``
  -> ``{"id": 3, "ok": true, "error": null}``

The agent exits when stdin is closed or when its parent process dies.  It only uses the
standard library so that it can run with ``python -S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import struct
import sys
from typing import Any

# Not exported by the socket module before Python 3.12; value from <linux/in.h>.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PR_SET_PDEATHSIG = 1
UDP_PROBE_PAYLOAD = b"probe"
UDP_PROBE_SENDS = 3


def _die_with_parent() -> None:
    """Get SIGKILLed when the harness process dies, so no agent can outlive a crashed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl() took effect
        sys.exit(1)


def _raise_fd_limit() -> None:
    """Allow thousands of concurrent probe sockets."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{type(exc).__name__}: {exc}"


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _bound_socket(
    family: socket.AddressFamily, kind: socket.SocketKind, port: int
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::", port))
        else:
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _TcpServer:
    """Answers every connection on ``port`` (both families) with ``name`` and closes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._servers: list[asyncio.Server] = []

    async def start(self, port: int) -> None:
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = _bound_socket(family, socket.SOCK_STREAM, port)
            try:
                server = await asyncio.start_server(self._handle, sock=sock, backlog=1024)
            except BaseException:
                sock.close()
                raise
            self._servers.append(server)

    async def _handle(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(f"{self.name}\n".encode())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for server in self._servers:
            server.close()


class _UdpServer:
    """Answers every datagram on ``port`` (both families) with ``name``.

    Replies are sent from the exact address the request was sent to (IP_PKTINFO), so a
    probe to any address of a multi-homed namespace (e.g. a node) gets a matching reply.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._socks: list[socket.socket] = []

    def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = _bound_socket(family, socket.SOCK_DGRAM, port)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self._socks.append(sock)
            loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _on_readable(self, sock: socket.socket) -> None:
        while True:
            try:
                _data, ancdata, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            cmsgs = []
            for level, kind, data in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr;}:
                    # reply with source = the request's destination, any interface.
                    cmsgs.append((level, kind, struct.pack("=i4s4s", 0, data[8:12], bytes(4))))
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    # struct in6_pktinfo {in6_addr addr; int ifindex;}
                    cmsgs.append((level, kind, struct.pack("=16si", data[:16], 0)))
            with contextlib.suppress(OSError):
                sock.sendmsg([self.name.encode()], cmsgs, 0, addr)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.remove_reader(sock.fileno())
            sock.close()


class _UdpProbeProtocol(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class _NoReply(Exception):
    """A TCP handshake completed but the server's reply did not come within the timeout (a
    busy machine): the packets were let through, the answer is merely late."""


async def _probe_tcp(dst: str, port: int, timeout: float, src: str | None) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    async with asyncio.timeout_at(deadline):
        reader, writer = await asyncio.open_connection(
            dst, port, local_addr=(src, 0) if src else None
        )
    try:
        async with asyncio.timeout_at(deadline):
            return (await reader.read()).decode(errors="replace").strip()
    except TimeoutError:
        raise _NoReply from None
    finally:
        writer.close()


async def _probe_udp(dst: str, port: int, timeout: float, src: str | None) -> str:
    """Send a datagram and wait for the answer, resending a few times to survive a loss."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpProbeProtocol(answer),
        remote_addr=(dst, port),
        local_addr=(src, 0) if src else None,
        family=_family(dst),
    )
    try:
        async with asyncio.timeout(timeout):
            while not answer.done():
                transport.sendto(UDP_PROBE_PAYLOAD)
                await asyncio.wait({answer}, timeout=timeout / UDP_PROBE_SENDS)
            return answer.result().decode(errors="replace").strip()
    finally:
        transport.close()


class Agent:
    """Port servers plus request dispatch for one namespace."""

    def __init__(self) -> None:
        self._tcp: dict[int, _TcpServer] = {}
        self._udp: dict[int, _UdpServer] = {}

    async def serve(self, proto: str, port: int, name: str) -> None:
        if proto == "tcp":
            if port in self._tcp:
                raise ValueError(f"tcp port {port} is already served")
            tcp = _TcpServer(name)
            try:
                await tcp.start(port)
            except BaseException:
                tcp.close()
                raise
            self._tcp[port] = tcp
        elif proto == "udp":
            if port in self._udp:
                raise ValueError(f"udp port {port} is already served")
            udp = _UdpServer(name)
            try:
                udp.start(port)
            except BaseException:
                udp.close()
                raise
            self._udp[port] = udp
        else:
            raise ValueError(f"unknown protocol {proto!r}")

    def unserve(self, proto: str, port: int) -> None:
        if proto == "tcp":
            self._tcp.pop(port).close()
        elif proto == "udp":
            self._udp.pop(port).close()
        else:
            raise ValueError(f"unknown protocol {proto!r}")

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "probe":
                prober = {"tcp": _probe_tcp, "udp": _probe_udp}[request["proto"]]
                reply = await prober(
                    request["dst"],
                    int(request["port"]),
                    float(request["timeout"]),
                    request.get("src"),
                )
                return {
                    "ok": bool(reply),
                    "reply": reply,
                    "error": None if reply else "empty",
                    "connected": request["proto"] == "tcp",
                }
            if op == "serve":
                await self.serve(request["proto"], int(request["port"]), request["name"])
            elif op == "unserve":
                self.unserve(request["proto"], int(request["port"]))
            else:
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True, "error": None}
        except _NoReply:
            return {"ok": False, "reply": None, "error": "no reply", "connected": True}
        except Exception as exc:  # every request must get an answer
            return {"ok": False, "reply": None, "error": _error_name(exc), "connected": False}


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _answer(agent: Agent, request: dict[str, Any]) -> None:
    _emit({"id": request.get("id"), **await agent.handle(request)})


async def _main(name: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    agent = Agent()
    for port in tcp_ports:
        await agent.serve("tcp", port, name)
    for port in udp_ports:
        await agent.serve("udp", port, name)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    _emit({"event": "ready"})

    tasks: set[asyncio.Task[None]] = set()
    while line := await stdin.readline():
        task = asyncio.create_task(_answer(agent, json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _ports(text: str) -> list[int]:
    return [int(port) for port in text.split(",") if port]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="text to answer with, e.g. ns/pod")
    parser.add_argument("--tcp", type=_ports, default=[], help="comma-separated TCP ports")
    parser.add_argument("--udp", type=_ports, default=[], help="comma-separated UDP ports")
    args = parser.parse_args()
    _die_with_parent()
    _raise_fd_limit()
    asyncio.run(_main(args.name, args.tcp, args.udp))


if __name__ == "__main__":
    main()
