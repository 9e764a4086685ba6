"""Hostile and odd input, load, and file access against a real served index.

Every hostile text query goes through the served API, `Searcher.search_text` and the CLI: it
gets results or a one-line message, never a traceback, and the server keeps answering. Odd
uploads get a message. Eight clients at once for a bounded time get no errors, and the
server's memory stays bounded (figures in test-artifacts/load.json; latency is recorded, never
asserted). No path from a request, however spelled or linked, gets a file served; the server
listens on 127.0.0.1 only. The server is tests/conftest.py's `served` (no --host).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from retrieval.errors import TusouError
from retrieval.search.searcher import Searcher
from tests.imagegen import draw, png_bomb
from ui.cli import main

QUERIES = {
    "empty": "",
    "whitespace": " \t\n\u3000\r ",
    "10000-chars": "红色的圆形" * 2000,
    "emoji": "🐱🐶🌅 👨‍👩‍👧 🇨🇳",
    "mixed": "红色的 circle 在 beach 上, OK?",
    "control-only": "\x00\x01\x07\x1b\x7f\u200b\u202e\ufeff",
    "controls-inside": "红色\x00的\x1b[31m圆形\r\n\t",
    "markup": "<script>alert(1)</script> **粗体** [链接](http://example.com) `x`",
    "unpaired-surrogate": "\ud800红色\udcff",  # what a bad UTF-8 byte in argv becomes; "\ud800" in JSON
}
EMPTY = {"empty", "whitespace", "control-only"}
K = 5
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0].url, verbose=False)


@pytest.fixture(scope="module")
def searcher(served) -> Searcher:
    return Searcher(served[2] / "index", device="cpu")


def call_raw(server, api: str, data: list) -> tuple[str, object]:
    """One call through the HTTP API itself, for what gradio_client cannot send: ("complete",
    outputs) or ("error", message). json.dumps escapes an unpaired surrogate as \\udXXX. The
    parameters after `data` get the defaults the server publishes, as gradio_client fills them."""
    parameters = json.load(urllib.request.urlopen(server.url + "gradio_api/info", timeout=10))["named_endpoints"][f"/{api}"]["parameters"]
    data = [*data, *(parameter["parameter_default"] for parameter in parameters[len(data):])]
    base = server.url + "gradio_api/call/" + api
    request = urllib.request.Request(base, json.dumps({"data": data}).encode(), {"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=60))["event_id"]
    event = payload = None
    for line in urllib.request.urlopen(f"{base}/{event_id}", timeout=120).read().decode().splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[6:])
            return event, payload
    raise AssertionError(f"no result for {api}: {event} {payload}")


def assert_still_answers(client: Client) -> None:
    _, results, status = client.predict("红色的圆形", 3, api_name="/search_text")
    assert len(results) == 3 and "3 个结果" in status


def assert_one_line_message(status: str) -> None:
    assert status and "\n" not in status and len(status) < 200 and "Traceback" not in status
    assert "gradio-tmp" not in status  # no server-side temporary path


# --- hostile text queries ------------------------------------------------------------


@pytest.mark.parametrize("name", QUERIES)
def test_hostile_query_through_the_api(served, client, name):
    query = QUERIES[name]
    if name == "unpaired-surrogate":  # gradio_client cannot even encode it; plain JSON can
        event, outputs = call_raw(served[0], "search_text", [query, K, None, 0.5, "", -1, False, 0.95])
        assert event == "complete", outputs
        gallery, results, status = outputs
    else:
        gallery, results, status = client.predict(query, K, api_name="/search_text")
    assert_one_line_message(status)
    if name in EMPTY:
        assert gallery == [] and results == [] and "请输入" in status
    else:
        assert len(gallery) == len(results) == K and [r["rank"] for r in results] == list(range(1, K + 1))
        assert f"{K} 个结果" in status and len(status) < 80  # the query is echoed shortened
        assert "<script" not in status and "**" not in status and "\ud800" not in status  # shown, not rendered
    assert_still_answers(client)


@pytest.mark.parametrize("name", QUERIES)
def test_hostile_query_through_the_searcher(searcher, name):
    if name in EMPTY:
        with pytest.raises(TusouError) as caught:
            searcher.search_text(QUERIES[name], K)
        assert "\n" not in str(caught.value) and "empty query" in str(caught.value)
    else:
        results = searcher.search_text(QUERIES[name], K)
        assert [r.rank for r in results] == list(range(1, K + 1))


def test_a_10000_character_query_is_cut_to_what_the_model_reads(searcher):
    """Far past the text tower's 77 tokens, the rest of the query changes nothing."""
    long, prefix = searcher.search_text(QUERIES["10000-chars"], K), searcher.search_text(QUERIES["10000-chars"][:200], K)
    assert [r.id for r in long] == [r.id for r in prefix]
    assert [r.score for r in long] == pytest.approx([r.score for r in prefix], abs=1e-5)


@pytest.mark.parametrize("name", QUERIES)
def test_hostile_query_through_the_cli(served, capsys, name):
    code = main(["search", str(served[2] / "index"), QUERIES[name], "--json", "-k", str(K)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if name in EMPTY:
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("tusou: error: empty query")
    else:
        rows = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and [r["rank"] for r in rows] == list(range(1, K + 1))


@pytest.mark.parametrize("k", [0, 51, 10**9])
def test_k_out_of_range_is_refused_with_a_message(client, k):
    with pytest.raises(Exception, match="(minimum|maximum) value"):
        client.predict("红色", k, api_name="/search_text")
    assert_still_answers(client)


@pytest.mark.parametrize(
    "labels, template, expected",
    [
        ("", "", "no labels"),
        (" ,，、;\n ", "", "no labels"),
        ("猫\x00,狗\x1b,\u200b", "", "2 个标签"),
        ("猫" * 10_000, "", "1 个标签"),
        (",".join(f"标签{i}" for i in range(1000)), "", "最多 200 个标签"),
        ("猫,狗", "{x}{}", "模板"),
        ("猫,狗", "{}{0}", "模板"),
        ("猫,狗", "{0.__class__}{}", "模板"),
        ("猫,狗", "{:>999999999}", "模板"),  # would build a gigabyte string in str.format
        ("猫,狗", "{}{", "模板"),
    ],
    ids=["empty", "separators-only", "controls", "10000-chars", "1000-labels", "named-field", "manual-field",
         "attribute-field", "huge-width", "lone-brace"],
)
def test_hostile_labels_and_templates_get_a_message(served, client, labels, template, expected):
    image = next(served[1].glob("image_0002.*"))
    scores, status = client.predict(handle_file(str(image)), labels, template, api_name="/label")
    assert_one_line_message(status)
    assert expected in status
    if "个标签" not in expected:
        assert not (scores or {}).get("confidences")
    assert_still_answers(client)


# --- odd uploads (test_ui_api.py has the file bomb, a 21 MB file and text named .png) ---


def truncated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    draw(3, (400, 300)).save(buffer, fmt, quality=95) if fmt == "JPEG" else draw(3, (400, 300)).save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


UPLOADS = {
    "truncated.jpg": (lambda: truncated("JPEG"), "truncated"),
    "truncated.png": (lambda: truncated("PNG"), "truncated"),
    "empty.png": (lambda: b"", "empty"),
    "page.png": (lambda: b"<html><script>alert(1)</script></html>", "not an image"),
    "drawing.svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "not an image"),
}


@pytest.mark.parametrize("name", UPLOADS)
def test_odd_uploads_get_a_message_from_both_endpoints(served, client, tmp_path, name):
    make, reason = UPLOADS[name]
    upload = tmp_path / name
    upload.write_bytes(make())
    gallery, results, status = client.predict(handle_file(str(upload)), K, api_name="/search_image")
    assert gallery == [] and results == [] and "无法使用这张图片" in status and reason in status
    assert_one_line_message(status)
    scores, status = client.predict(handle_file(str(upload)), "猫,狗", "", api_name="/label")
    assert "无法使用这张图片" in status and reason in status
    assert_one_line_message(status)
    assert_still_answers(client)


def data_url(data: bytes) -> dict:
    return {"url": "data:image/png;base64," + base64.b64encode(data).decode(), "path": None, "meta": {"_type": "gradio.FileData"}}


def test_data_url_uploads_go_through_the_same_checks(served, client, tmp_path):
    """An API client may send an image inline; it is decoded by tusou, not by Gradio in full."""
    image = next(served[1].glob("image_0005.*"))
    event, (_, results, _) = call_raw(served[0], "search_image", [data_url(image.read_bytes()), 3])
    assert event == "complete" and results[0]["file"] == str(image)

    event, (_, results, status) = call_raw(served[0], "search_image", [data_url(png_bomb(tmp_path / "bomb.png").read_bytes()), 3])
    assert event == "complete" and results == [] and "too large" in status
    event, (_, results, status) = call_raw(served[0], "search_image", [data_url(b"hello, not an image"), 3])
    assert event == "complete" and results == [] and "not an image" in status
    broken = data_url(b"")
    broken["url"] += "!!not base64"
    event, message = call_raw(served[0], "search_image", [broken, 3])
    assert event == "error" and "base64" in str(message)
    event, message = call_raw(served[0], "search_image", [data_url(os.urandom(21 * 1024 * 1024)), 3])
    assert event == "error" and "20mb" in str(message)
    assert_still_answers(client)


# --- load -------------------------------------------------------------------------------


LOAD_CLIENTS = 8
LOAD_SECONDS = 15.0
REPEATED = ["红色的圆形", "蓝色的方块", "海边的日落", "一只小狗", "城市的夜景"]


def rss_mb(pid: int) -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def well_formed(outputs: tuple, k: int, status_says: str) -> bool:
    gallery, results, status = outputs
    return (
        len(gallery) == len(results) == k
        and [r["rank"] for r in results] == list(range(1, k + 1))
        and all(set(r) == {"rank", "score", "id", "file", "taken", "taken_from", "width", "height"} for r in results)
        and status_says in status
    )


def test_eight_clients_for_fifteen_seconds(served):
    server, collection, _ = served
    pid = server.process.pid
    assert "serve" in Path(f"/proc/{pid}/cmdline").read_text()
    images = [handle_file(str(path)) for path in sorted(collection.glob("image_000*"))[:4]]
    clients = [Client(server.url, verbose=False, download_files=False) for _ in range(LOAD_CLIENTS)]
    clients[0].predict("预热", K, api_name="/search_text")
    clients[0].predict(images[0], K, api_name="/search_image")
    before = rss_mb(pid)

    latencies: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def work(number: int) -> None:
        client, i = clients[number], 0
        while time.monotonic() < deadline:
            i += 1
            if i % 6 == 0:
                kind, args, says = "image", (images[(number + i) % len(images)], K), "以图搜图"
            elif i % 3 == 0:
                kind, args, says = "text", (f"第{number}号客户端的第{i}个查询：绿色的三角形", K), "个结果"
            else:
                kind, args, says = "text", (REPEATED[(number + i) % len(REPEATED)], K), "个结果"
            started = time.perf_counter()
            try:
                outputs = client.predict(*args, api_name=f"/search_{kind}")
                ok = well_formed(outputs, K, says)
            except Exception as exc:  # recorded, asserted below
                outputs, ok = exc, False
            with lock:
                latencies[kind].append(time.perf_counter() - started)
                if not ok:
                    errors.append(f"{kind}: {outputs!r}"[:300])

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=LOAD_SECONDS + 120)
    elapsed = time.monotonic() - started
    after = rss_mb(pid)

    every = sorted(latencies["text"] + latencies["image"])

    def pct(values: list[float], q: int) -> float:
        return round(1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1) if len(values) > 1 else 0.0

    figures = {
        "clients": LOAD_CLIENTS,
        "seconds": round(elapsed, 1),
        "requests": len(every),
        "text_requests": len(latencies["text"]),
        "image_requests": len(latencies["image"]),
        "errors": len(errors),
        "requests_per_second": round(len(every) / elapsed, 1),
        "p50_ms": pct(every, 50),
        "p95_ms": pct(every, 95),
        "text_p50_ms": pct(latencies["text"], 50),
        "text_p95_ms": pct(latencies["text"], 95),
        "image_p50_ms": pct(latencies["image"], 50),
        "image_p95_ms": pct(latencies["image"], 95),
        "rss_before_mb": round(before["VmRSS"], 1),
        "rss_after_mb": round(after["VmRSS"], 1),
        "rss_peak_mb": round(after["VmHWM"], 1),
        "cpus": os.cpu_count(),
        "k": K,
        "model": "test-tiny",
        "index_images": 30,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nload:", json.dumps(figures))

    assert not any(thread.is_alive() for thread in threads)
    assert errors == [], errors[:5]
    assert len(every) >= LOAD_CLIENTS and latencies["image"]
    assert after["VmRSS"] - before["VmRSS"] < 200, figures
    assert_still_answers(clients[0])


# --- file access (test_ui_api.py has absolute, indexed, traversal from the collection, an
# encoded path and a symlink's target through gradio_api/file=, file= and gradio_api/file/) ---


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def planted(served) -> dict[str, Path]:
    """Inside the server's own Gradio temp dir (whose files it does serve): a real file, and
    symlinks from there to outside it."""
    server, collection, root = served
    folder = root / "gradio-tmp" / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "real.txt").write_text("served from the temp dir")
    links = {"passwd.txt": Path("/etc/passwd"), "secret.png": root / "secret.png",
             "indexed.png": next(collection.glob("image_0001.*")), "etc": Path("/etc")}
    for name, target in links.items():
        (folder / name).symlink_to(target)
    return {"folder": folder, **links}


def test_a_real_file_in_the_temp_dir_is_served(served, planted):
    """The control for the cases below: the route and the temp dir are the right ones."""
    status, body = fetch(f"{served[0].url}gradio_api/file={planted['folder'] / 'real.txt'}")
    assert status == 200 and body == b"served from the temp dir"


def access_cases(root: Path, collection: Path, port: int) -> dict[str, str]:
    tmp = root / "gradio-tmp"
    up = "../" * 12
    catalog = next(iter(sorted((root / "index").glob("catalog*"))), root / "index" / "catalog")
    return {
        "relative-traversal": f"gradio_api/file={up}etc/passwd",
        "encoded-relative": "gradio_api/file=" + "%2e%2e%2f" * 12 + "etc%2fpasswd",
        "double-encoded": "gradio_api/file=" + "%252e%252e%252f" * 12 + "etc%252fpasswd",
        "traversal-from-temp-dir": f"gradio_api/file={tmp}/{up}etc/passwd",
        "encoded-from-temp-dir": f"gradio_api/file={tmp}/" + "%2e%2e/" * 12 + "etc/passwd",
        "double-encoded-from-temp-dir": f"gradio_api/file={tmp}/" + "%252e%252e%252f" * 12 + "etc%252fpasswd",
        "index-catalog": f"gradio_api/file={catalog}",
        "index-manifest": f"gradio_api/file={root / 'index' / 'manifest.json'}",
        "proc-environ": "gradio_api/file=/proc/self/environ",
        "proc-root": "gradio_api/file=/proc/self/root/etc/passwd",
        "proc-cwd": "gradio_api/file=/proc/self/cwd/pyproject.toml",
        "file-url": "gradio_api/file=file:///etc/passwd",
        "loopback-url": f"gradio_api/file=http://127.0.0.1:{port}/config",
        "temp-link-to-passwd": f"gradio_api/file={tmp}/planted/passwd.txt",
        "temp-link-to-secret": f"gradio_api/file={tmp}/planted/secret.png",
        "temp-link-to-indexed": f"gradio_api/file={tmp}/planted/indexed.png",
        "temp-dir-link": f"gradio_api/file={tmp}/planted/etc/passwd",
        "collection-link": f"gradio_api/file={collection / 'link_out.png'}",
        "static-traversal": f"static/{up}etc/passwd",
        "static-encoded": "static/" + "%2e%2e%2f" * 12 + "etc%2fpasswd",
        "static-double-encoded": "static/" + "%252e%252e%252f" * 12 + "etc%252fpasswd",
        "static-absolute": "static//etc/passwd",
        "assets-encoded": "assets/" + "..%2f" * 12 + "etc%2fpasswd",
        "assets-absolute": "assets/%2fetc%2fpasswd",
        "svelte-encoded": "svelte/" + "..%2f" * 12 + "etc%2fpasswd",
        "proxy-file-url": "gradio_api/proxy=file:///etc/passwd",
        "proxy-loopback": f"gradio_api/proxy=http://127.0.0.1:{port}/config",
    }


ACCESS = list(access_cases(Path("/r"), Path("/c"), 0))


@pytest.mark.parametrize("kind", ACCESS)
def test_file_routes_refuse_more_paths(served, planted, kind):
    server, collection, root = served
    route = access_cases(root, collection, server.port)[kind]
    status, body = fetch(server.url + route)
    assert 400 <= status < 500, (kind, status, body[:200])
    catalog = root / "index" / "catalog.sqlite"
    forbidden = [b"root:", (root / "secret.png").read_bytes()[:64], next(collection.glob("image_0001.*")).read_bytes()[:64],
                 catalog.read_bytes()[:40], (root / "index" / "manifest.json").read_bytes()[:40], b"GRADIO_", b"[project]"]
    assert not any(secret in body for secret in forbidden), (kind, body[:200])


@pytest.mark.parametrize("name", ["traversal", "absolute", "encoded"])
def test_upload_route_keeps_uploads_in_the_temp_dir(served, name):
    server, _, root = served
    filename = {"traversal": "../" * 12 + f"{root}/escaped.txt", "absolute": f"{root}/escaped.txt",
                "encoded": "..%2f" * 12 + "escaped.txt"}[name]
    response = httpx.post(server.url + "gradio_api/upload", files={"files": (filename, b"uploaded")}, timeout=30)
    assert response.status_code == 200
    (saved,) = response.json()
    assert Path(saved).resolve().is_relative_to((root / "gradio-tmp").resolve())
    assert not (root / "escaped.txt").exists()


@pytest.mark.parametrize("api", ["search_image", "label"])
@pytest.mark.parametrize("target", ["indexed", "secret", "passwd", "file-url"])
def test_api_refuses_file_paths_it_did_not_receive_as_uploads(served, api, target):
    """A FileData naming a server path instead of an upload: refused before any handler runs."""
    server, collection, root = served
    path = {"indexed": str(next(collection.glob("image_0001.*"))), "secret": str(root / "secret.png"),
            "passwd": "/etc/passwd", "file-url": None}[target]
    payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
    if target == "file-url":
        payload["url"] = "file:///etc/passwd"
    event, outputs = call_raw(server, api, [payload, 3] if api == "search_image" else [payload, "猫,狗", ""])
    if target == "file-url" and event == "complete":  # a URL but no path: as if nothing was uploaded
        assert "请上传" in outputs[-1]
    else:
        assert event == "error", outputs


# --- binding --------------------------------------------------------------------------


def listening(port: int) -> list[str]:
    """Local addresses of sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.append(address)
    return found


def test_serve_binds_loopback_only_by_default(served):
    server = served[0]
    assert listening(server.port) == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            own = probe.getsockname()[0]
        except OSError:
            own = None
    if own and not own.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((own, server.port), timeout=3).close()
