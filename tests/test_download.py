"""The download stage: file://, plain paths and a real local HTTP server; failures leave nothing.

Hostile sources (a server that stalls, resets, trickles or never ends; /dev/zero) run against
loopback servers with shrunken limits, so each gives up within a few seconds.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.core.errors import ResnetlabError
from resnetlab.data import download
from resnetlab.data.datasets import CIFAR10
from resnetlab.data.download import Limits, fetch_archive

ARCHIVE_NAME = CIFAR10.archive_name


def write_params(tmp_path: Path, url: str, md5: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(f"data:\n  url: '{url}'\n  md5: '{md5}'\n")
    return p


@pytest.fixture
def http_server(tiny_archive) -> Iterator[str]:
    """Serves the tiny archive's folder on 127.0.0.1 (an ephemeral port) until the test ends."""
    folder = tiny_archive[0].parent

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def only_archive(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("progress", [True, False])
def test_file_url_and_plain_path(tiny_archive, tmp_path, progress):
    archive, md5 = tiny_archive
    for i, url in enumerate([archive.as_uri(), str(archive)]):
        out = tmp_path / f"raw{i}"
        got = fetch_archive(url, md5, out, CIFAR10, progress=progress)
        assert got == out / ARCHIVE_NAME
        assert got.read_bytes() == archive.read_bytes()
        assert only_archive(out) == [ARCHIVE_NAME]


def test_http_download_via_cli(tiny_archive, http_server, tmp_path, caplog):
    archive, md5 = tiny_archive
    params = write_params(tmp_path, f"{http_server}/{ARCHIVE_NAME}", md5)
    out = tmp_path / "raw"
    with caplog.at_level(logging.INFO):
        assert main(["download", "--params", str(params), "--out", str(out)]) == 0
    assert (out / ARCHIVE_NAME).read_bytes() == archive.read_bytes()
    assert "100%" in caplog.text  # not a terminal: plain progress lines

    # Already there with the right md5: nothing is fetched (the server is not even asked).
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["download", "--params", str(params), "--out", str(out)]) == 0
    assert "nothing to fetch" in caplog.text


def test_http_404_is_one_clear_error(tiny_archive, http_server, tmp_path, capsys):
    params = write_params(tmp_path, f"{http_server}/missing.tar.gz", tiny_archive[1])
    assert main(["download", "--params", str(params), "--out", str(tmp_path / "raw")]) == 1
    err = capsys.readouterr().err
    assert "HTTP error 404" in err and "missing.tar.gz" in err
    assert "Traceback" not in err
    assert only_archive(tmp_path / "raw") == []


def test_unreachable_url_names_it_and_suggests_a_mirror(tiny_archive, tmp_path, capsys):
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    params = write_params(tmp_path, url, tiny_archive[1])
    assert main(["download", "--params", str(params), "--out", str(tmp_path / "raw")]) == 1
    err = capsys.readouterr().err
    assert url in err and "mirror" in err and "data.url" in err


def test_md5_mismatch_keeps_nothing_and_spares_a_good_archive(tiny_archive, tmp_path, capsys):
    archive, md5 = tiny_archive
    out = tmp_path / "raw"
    fetch_archive(str(archive), md5, out, CIFAR10)
    good = (out / ARCHIVE_NAME).read_bytes()

    # A new url/md5 pair whose download turns out corrupt: the error names both checksums.
    other = tmp_path / "other.tar.gz"
    other.write_bytes(archive.read_bytes() + b"tampered")
    wanted = "1" * 32
    with pytest.raises(ResnetlabError, match=f"expected {wanted}, got [0-9a-f]{{32}}"):
        fetch_archive(str(other), wanted, out, CIFAR10)
    assert only_archive(out) == [ARCHIVE_NAME]
    assert (out / ARCHIVE_NAME).read_bytes() == good

    # Through the CLI: exit code 1, a message with both checksums, no traceback.
    params = write_params(tmp_path, str(other), "0" * 32)
    assert main(["download", "--params", str(params), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "md5 mismatch" in err and "0" * 32 in err and "Traceback" not in err
    assert (out / ARCHIVE_NAME).read_bytes() == good


def test_truncated_download_leaves_no_partial_file(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:1000])
    out = tmp_path / "raw"
    with pytest.raises(ResnetlabError, match="md5 mismatch"):
        fetch_archive(truncated.as_uri(), md5, out, CIFAR10)
    assert only_archive(out) == []


def test_stale_temporary_from_a_killed_run_is_removed(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    out = tmp_path / "raw"
    out.mkdir()
    (out / f".{ARCHIVE_NAME}.abc123.tmp").write_bytes(b"half a download")
    fetch_archive(str(archive), md5, out, CIFAR10)
    assert only_archive(out) == [ARCHIVE_NAME]


def test_missing_local_file_and_bad_scheme(tmp_path):
    with pytest.raises(ResnetlabError, match=r"cannot read .*nope\.tar\.gz"):
        fetch_archive(str(tmp_path / "nope.tar.gz"), "0" * 32, tmp_path / "raw", CIFAR10)
    with pytest.raises(ResnetlabError, match="unsupported scheme 'ftp'"):
        fetch_archive("ftp://example.invalid/x.tar.gz", "0" * 32, tmp_path / "raw", CIFAR10)


def test_disk_full_is_reported(tiny_archive, tmp_path, monkeypatch):
    import errno
    import os

    archive, md5 = tiny_archive
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResnetlabError, match=r"disk full while writing it .* archive needs 1 MiB"):
        fetch_archive(str(archive), md5, tmp_path / "raw", CIFAR10)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert only_archive(tmp_path / "raw") == []


def test_console_script_and_module_entry_point(tiny_archive, tmp_path):
    params = write_params(tmp_path, str(tiny_archive[0]), "f" * 32)
    exe = shutil.which("resnetlab", path=str(Path(sys.executable).parent))
    assert exe, "the resnetlab console script is installed beside the interpreter"
    for cmd in ([exe], [sys.executable, "-m", "resnetlab"]):
        res = subprocess.run(
            [*cmd, "download", "--params", str(params), "--out", str(tmp_path / "raw")],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1
        assert "md5 mismatch" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------
# Hostile sources

Respond = Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]


@contextmanager
def serve(respond: Respond) -> Iterator[str]:
    """A loopback HTTP server answering every GET with `respond(handler, stop)`; `stop` is set
    when the block ends, so a response that never ends by itself does then."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with contextlib.suppress(OSError):  # the client gave up (broken pipe, reset)
                respond(self, stop)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a connection the test broke on purpose is not news

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE_NAME}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def send_headers(h: http.server.BaseHTTPRequestHandler, length: int | None) -> None:
    h.send_response(200)
    if length is not None:
        h.send_header("Content-Length", str(length))
    h.end_headers()
    h.wfile.flush()


def stall(h, stop):
    send_headers(h, 1_000_000)
    stop.wait(20)


def reset_mid_body(h, stop):
    send_headers(h, 1_000_000)
    h.wfile.write(b"x" * 10_000)
    h.wfile.flush()
    time.sleep(0.2)  # let the client read what was sent
    # SO_LINGER with a zero timeout: close() sends a TCP reset instead of an orderly end.
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()


def trickle(h, stop):
    send_headers(h, 1_000_000)
    while not stop.is_set():
        h.wfile.write(b"x")
        h.wfile.flush()
        stop.wait(0.05)


def steady_endless(h, stop):
    # About 500 KB/s with no Content-Length: fast enough for any rate rule, never finished.
    send_headers(h, None)
    while not stop.is_set():
        h.wfile.write(b"x" * 10_000)
        h.wfile.flush()
        stop.wait(0.02)


def flood(h, stop):
    send_headers(h, None)
    while not stop.is_set():
        h.wfile.write(bytes(1 << 16))


def huge_length(h, stop):
    send_headers(h, 10**12)
    stop.wait(20)


FAST = Limits(deadline_s=30, window_s=1, min_rate=1000)


def cli_download(url: str, tmp_path: Path, capsys) -> tuple[str, float]:
    """Run `resnetlab download` in-process; asserts it failed with one error line and no
    traceback, and that the destination holds nothing. Returns the error line and seconds."""
    params = write_params(tmp_path, url, "0" * 32)
    out = tmp_path / "raw"
    start = time.monotonic()
    assert main(["download", "--params", str(params), "--out", str(out)]) == 1
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error" in ln]
    assert line.startswith("resnetlab download: error: ")
    assert only_archive(out) == []  # no temporary, no partial archive
    return line, elapsed


@pytest.mark.parametrize(
    ("respond", "limits", "expected"),
    [
        (
            stall,
            FAST,
            r"stalled: no data for 1 s after 0 bytes, the minimum is at least 1 KB/s "
            r"averaged over 1 s",
        ),
        (reset_mid_body, FAST, r"failed after [\d,]+ bytes: .*reset"),
        (
            trickle,
            FAST,
            r"too slow: \d+ bytes in the last 1(\.\d*)? s, the minimum is at least "
            r"1 KB/s averaged over 1 s",
        ),
        (
            steady_endless,
            Limits(deadline_s=1.5, window_s=1, min_rate=1000, max_bytes=10**9),
            r"did not finish within the 1\.5 s deadline \([\d,]+ bytes received\)",
        ),
        (
            flood,
            Limits(max_bytes=2_000_000),
            r"has more than 2,000,000 bytes; the limit for a "
            r"mirror is 2,000,000 bytes",
        ),
    ],
    ids=["stall", "reset", "trickle", "deadline", "endless"],
)
def test_hostile_server_gives_one_line_and_leaves_nothing(
    respond, limits, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(download, "DEFAULT_LIMITS", limits)
    with serve(respond) as url:
        line, elapsed = cli_download(url, tmp_path, capsys)
    assert re.search(expected, line), line
    assert url in line and "nothing was kept" in line
    assert elapsed < 10


def test_content_length_above_the_cap_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    # The server would stall after its headers: only a refusal that reads nothing ends at once.
    monkeypatch.setattr(download, "DEFAULT_LIMITS", Limits(window_s=20))
    with serve(huge_length) as url:
        line, elapsed = cli_download(url, tmp_path, capsys)
    assert elapsed < 5
    assert (
        f"{url} has 1,000,000,000,000 bytes; the limit for a mirror is 340,996,142 bytes " in line
    )


@pytest.mark.parametrize("url", ["/dev/zero", "file:///dev/zero"])
def test_endless_local_source_is_capped(url, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "DEFAULT_LIMITS", Limits(max_bytes=3_000_000))
    line, _ = cli_download(url, tmp_path, capsys)
    assert f"{url} has more than 3,000,000 bytes" in line


def test_official_md5_caps_at_the_official_size(tmp_path):
    # With the official checksum the exact size is known: one byte more is refused.
    with pytest.raises(ResnetlabError, match=r"has more than 170,498,071 bytes; the official"):
        fetch_archive("/dev/zero", CIFAR10.md5, tmp_path / "raw", CIFAR10)
    assert only_archive(tmp_path / "raw") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_the_temporary(sig, tmp_path):
    """A real `python -m resnetlab download` from a trickling server, stopped by a signal
    mid-transfer: the process ends at once and its hidden temporary file is gone."""
    out = tmp_path / "raw"
    with serve(trickle) as url:
        params = write_params(tmp_path, url, "0" * 32)
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnetlab", "download", "--params", str(params), "--out", out],
            stderr=subprocess.PIPE,
            text=True,
            # As from a user's terminal: a shell starts background jobs with SIGINT ignored, and
            # Python keeps an inherited SIG_IGN (then Ctrl-C raises no KeyboardInterrupt).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 60  # imports take a while on a busy CPU
            while not list(out.glob(".*.tmp")):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the download never started"
                time.sleep(0.05)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()  # a no-op once it has ended
            proc.wait(5)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130)
    assert "Traceback" not in err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err
    assert only_archive(out) == []


def ansi_status(h, stop):
    # A reason phrase that would recolour the terminal, ring its bell and rewrite the line.
    h.wfile.write(b"HTTP/1.1 503 \x1b[31mGone\x1b[0m\x07\rfine\r\nContent-Length: 0\r\n\r\n")
    h.wfile.flush()


def ansi_status_line(h, stop):
    h.wfile.write(b"\x1b]0;pwned\x07 not HTTP\r\n\r\n")  # not a status line: BadStatusLine
    h.wfile.flush()


@pytest.mark.parametrize(
    ("respond", "expected"),
    [
        (ansi_status, "HTTP error 503 (?[31mGone?[0m??fine) fetching {url}"),
        (ansi_status_line, "cannot reach {url}: ?]0;pwned? not HTTP"),
    ],
    ids=["reason", "status-line"],
)
def test_control_characters_from_a_server_are_not_printed(
    respond, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(download, "DEFAULT_LIMITS", FAST)
    with serve(respond) as url:
        line, _ = cli_download(url, tmp_path, capsys)
    assert line == f"resnetlab download: error: {expected.format(url=url)}"
    assert line.isprintable()
