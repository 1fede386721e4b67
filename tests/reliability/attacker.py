"""Attack families for `make reliability` (tests/reliability/test_attacks.py), run in a process of their own so the
attacker's CPU does not share the server's interpreter lock:

    python -m tests.reliability.attacker <family> <port> <seconds>  ->  one JSON line: {"statuses": {...}, ...}

Every family is a set of variants aimed at one guard, each the variant that slips past a naive version of it.
A status is the first status code the server sent, "closed" if it closed without one (expected for the slow
families: the header deadline), "open" if the connection was still open and silent when the attack ended.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

LIMIT = 65_536  # the service's max_body_bytes in the attack tests
HEAD = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def request(body: bytes, extra: str = "", path: str = "/v1/classify") -> bytes:
    head = HEAD.replace("/v1/classify", path) + extra + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("utf-8") + body


async def status_of(port: int, payload: bytes | list[bytes], pause_s: float = 0.0, read_s: float = 15.0) -> str:
    """Send payload (parts with pause_s between them), return the reply's status code, "closed" or "open"."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"
    reply = asyncio.ensure_future(reader.readline())  # read while sending, as a real client does

    async def send() -> None:
        for part in payload if isinstance(payload, list) else [payload]:
            if reply.done():
                return  # answered before the body ended
            writer.write(part)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)

    sending = asyncio.ensure_future(send())
    try:
        line = await asyncio.wait_for(reply, read_s)
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"
    except TimeoutError:
        return "open"
    except (ConnectionError, OSError):
        return "closed"
    finally:
        sending.cancel()
        writer.close()


# ------------------------------------------------------------------------------------------- body-limit family
async def over_limit(port: int, seconds: float) -> list[str]:
    """A valid JSON prefix then an over-limit tail: chunked, declared honestly, and declared below what is sent."""
    prefix = b'{"text": "hi"}'
    chunk = b" " * 16_384

    def chunked(n: int) -> list[bytes]:
        head = (HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode()
        return [head + b"%x\r\n%s\r\n" % (len(prefix), prefix)] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * n

    variants: list[bytes | list[bytes]] = [
        chunked(LIMIT // len(chunk) + 2),
        chunked(64),  # 1 MB
        request(prefix + b" " * (LIMIT + 1)),
        [request(prefix + b" " * 100)[:-50] + b"\r\n"],  # declared 114 bytes, 64 sent then a stall: body deadline
    ]
    return await _repeat(port, seconds, variants, concurrency=8)


# ------------------------------------------------------------------------------------------- parser limits
async def parser_limits(port: int, seconds: float) -> list[str]:
    """Numbers and headers at and past the parsers' limits."""
    bodies = [
        b'{"text": "a", "top_k": ' + b"7" * 4301 + b"}",
        b'{"text": "a", "top_k": ' + b"7" * 60_000 + b"}",
        b'{"text": "a", "top_k": 1e309}',
        b'{"text": "a", "top_k": -0}',
        b'{"text": "a", "top_k": 1.5}',
        b"[" * 60_000 + b"]" * 60_000,
        b'{"text": "\\ud800\\udfff\\u0000"}',
    ]
    timeouts = ["\u00b2", "9" * 5000, "", "0", "-1", "1e3", "\uff15", " 5000 "]
    variants: list[bytes | list[bytes]] = [request(b) for b in bodies]
    variants += [request(b'{"text": "a"}', f"X-Request-Timeout-Ms: {t}\r\n") for t in timeouts]
    variants += [
        (HEAD + f"Content-Length: {v}\r\n\r\n").encode("utf-8") + b'{"text": "a"}'
        for v in ("\u00b2", "9" * 5000, "5, 5")
    ]
    variants += [
        request(b'{"text": "a"}', "X-Pad: " + "a" * 60_000 + "\r\n"),
        request(b'{"text": "a"}', "".join(f"X-H{i}: v\r\n" for i in range(300))),
    ]
    return await _repeat(port, seconds, variants, concurrency=4)


# ------------------------------------------------------------------------------------------- normalisation
async def expansion(port: int, seconds: float) -> list[str]:
    """Texts that grow under NFKC (U+FDFA: 18x, U+3300, U+FB2C) to past the cap, 10 per request (just under the 64 kB
    body limit): with truncate=true each is cut and classified ("grows-truncate"), without it each request is
    refused naming the growth ("grows-strict"); 111 U+FDFA grow to 1 998 characters, under the cap ("fits")."""
    grow = ["\ufdfa" * 2000, "\u3300" * 2000, "\ufb2c" * 2000]

    def body(texts: list[str], **extra: object) -> bytes:
        return json.dumps({"texts": texts, **extra}, ensure_ascii=False).encode()

    variants: list[tuple[str, bytes]] = [("grows-truncate", request(body([g] * 10, truncate=True))) for g in grow]
    variants += [("grows-strict", request(body([g] * 10))) for g in grow]
    variants += [("fits", request(body(["\ufdfa" * 111] * 10)))]
    end = time.monotonic() + seconds
    out: list[str] = []

    async def worker(k: int) -> None:
        i = k
        while time.monotonic() < end:
            label, payload = variants[i % len(variants)]
            out.append(f"{label} {await status_of(port, payload)}")
            i += 3

    await asyncio.gather(*(worker(k) for k in range(3)))
    return out


# ------------------------------------------------------------------------------------------- slow clients
async def slowloris(port: int, seconds: float) -> list[str]:
    """300 connections that send their headers one byte a second."""
    parts = [bytes([b]) for b in request(b'{"text": "a"}')]
    return list(await asyncio.gather(*(status_of(port, parts, pause_s=1.0, read_s=seconds) for _ in range(300))))


async def slow_body(port: int, seconds: float) -> list[str]:
    """200 connections whose headers are complete and whose body comes one byte a second."""
    body = json.dumps({"text": "慢" * 300}).encode()
    msg = request(body)
    head, rest = msg[: len(msg) - len(body)], [bytes([b]) for b in body]
    return list(
        await asyncio.gather(*(status_of(port, [head, *rest], pause_s=1.0, read_s=seconds) for _ in range(200)))
    )


async def slow_read(port: int, seconds: float) -> list[str]:
    """100 connections that ask for the 1.5 MB Swagger bundle 8 times (pipelined: more than the kernel buffers hold)
    with a 4 kB receive buffer and never read. The test counts the server's connections near the end: its write
    deadline must have dropped them (the client cannot see it: the server's FIN waits behind the unsent data)."""

    async def one() -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            get = b"GET /static-offline-docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.send(get * 8)
            await asyncio.sleep(seconds)
            return "sent"
        except OSError:
            return "refused"
        finally:
            sock.close()

    return list(await asyncio.gather(*(one() for _ in range(100))))


# ------------------------------------------------------------------------------------------- floods
async def connection_flood(port: int, seconds: float) -> list[str]:
    """1 500 connections opened at once and left silent."""
    return list(await asyncio.gather(*(status_of(port, b"", read_s=seconds) for _ in range(1500))))


async def request_flood(port: int, seconds: float) -> list[str]:
    """600 connections sending 64-text requests as fast as answers come: far past the queue and in-flight caps."""
    body = request(json.dumps({"texts": [f"洪水{i}号，送餐太慢了" for i in range(64)]}).encode())
    end = time.monotonic() + seconds
    out: list[str] = []

    async def one() -> None:
        while time.monotonic() < end:
            out.append(await status_of(port, body, read_s=30))

    await asyncio.gather(*(one() for _ in range(600)))
    return out


async def _repeat(port: int, seconds: float, variants: list, concurrency: int) -> list[str]:
    end = time.monotonic() + seconds
    out: list[str] = []

    async def worker(k: int) -> None:
        i = k
        while time.monotonic() < end:
            out.append(await status_of(port, variants[i % len(variants)]))
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return out


FAMILIES: dict[str, Callable[[int, float], Awaitable[list[str]]]] = {
    f.__name__: f
    for f in (over_limit, parser_limits, expansion, slowloris, slow_body, slow_read, connection_flood, request_flood)
}


def main() -> None:
    family, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    statuses = asyncio.run(FAMILIES[family](port, seconds))
    print(json.dumps({"statuses": dict(Counter(statuses)), "attempts": len(statuses)}))


if __name__ == "__main__":
    main()
