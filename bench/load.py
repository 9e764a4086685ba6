"""A load generator for bench/serve.py: closed-loop clients on keep-alive connections, in a process of
its own, over a minimal HTTP/1.1 client on asyncio streams (a heavier client would take the two cores'
time from the server it measures).

    python -m bench.load URL json|gradio --clients 16 --seconds 30 [--warmup 3] [--k 10]

Each client sends one text query, waits for its whole answer, and sends the next; queries are distinct
(a caption and a number), so the server's query cache never answers. Prints one JSON object: the
latency of each answer after the warm-up, in seconds, the errors, and the seconds measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import urllib.parse
import urllib.request

CAPTIONS = ["红色的圆形", "蓝色的正方形在白色背景上", "两个绿色的三角形", "黄色的星星", "一只小猫坐在沙发上",
            "海边的日落", "城市街道上的汽车", "雪地里的小狗", "桌子上的一杯咖啡", "湖边的老人"]


class Connection:
    """One keep-alive connection; `request` returns (status, body)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str = "application/json") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = bytearray()
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                payload += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            payload = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), bytes(payload)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def queries() -> itertools.count:
    return (f"{CAPTIONS[n % len(CAPTIONS)]} {n}" for n in itertools.count())


async def json_search(connection: Connection, query: str, k: int) -> bool:
    status, body = await connection.request("GET", "/api/v1/search?" + urllib.parse.urlencode({"q": query, "k": k}))
    return status == 200 and len(json.loads(body)["results"]) > 0


def gradio_search(defaults: list) -> callable:
    """The UI's text search as Gradio's HTTP API runs it: a POST that queues the call, then the GET
    of its event stream, which ends with the outputs."""

    async def search(connection: Connection, query: str, k: int) -> bool:
        data = json.dumps({"data": [query, k, *defaults]}).encode()
        status, body = await connection.request("POST", "/gradio_api/call/search_text", data)
        if status != 200:
            return False
        status, stream = await connection.request("GET", f"/gradio_api/call/search_text/{json.loads(body)['event_id']}")
        return status == 200 and b"event: complete" in stream

    return search


def gradio_defaults(url: str) -> list:
    """The parameters after the query and k, at the defaults the server publishes (as gradio_client fills them)."""
    info = json.load(urllib.request.urlopen(url.rstrip("/") + "/gradio_api/info", timeout=30))
    return [parameter["parameter_default"] for parameter in info["named_endpoints"]["/search_text"]["parameters"][2:]]


async def run(url: str, face: str, clients: int, seconds: float, warmup: float, k: int) -> dict:
    parts = urllib.parse.urlsplit(url)
    search = json_search if face == "json" else gradio_search(gradio_defaults(url))
    texts = queries()
    start = time.perf_counter()
    measured_from, until = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        connection = Connection(parts.hostname, parts.port)
        while (now := time.perf_counter()) < until:
            try:
                ok = await search(connection, next(texts), k)
            except (OSError, ValueError, KeyError, asyncio.IncompleteReadError):
                ok = False
                connection.close()
            if now >= measured_from:
                if ok:
                    latencies.append(time.perf_counter() - now)
                else:
                    errors += 1
        connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - measured_from}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("face", choices=("json", "gradio"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.face, args.clients, args.seconds, args.warmup, args.k))))


if __name__ == "__main__":
    main()
