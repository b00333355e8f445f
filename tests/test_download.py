"""The download stage: file://, plain paths and a real local HTTP server; failures leave nothing."""

from __future__ import annotations

import http.server
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.download import ARCHIVE_NAME, fetch_archive
from resnetlab.errors import ResnetlabError


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
        got = fetch_archive(url, md5, out, progress=progress)
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
    fetch_archive(str(archive), md5, out)
    good = (out / ARCHIVE_NAME).read_bytes()

    # A new url/md5 pair whose download turns out corrupt: the error names both checksums.
    other = tmp_path / "other.tar.gz"
    other.write_bytes(archive.read_bytes() + b"tampered")
    wanted = "1" * 32
    with pytest.raises(ResnetlabError, match=f"expected {wanted}, got [0-9a-f]{{32}}"):
        fetch_archive(str(other), wanted, out)
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
        fetch_archive(truncated.as_uri(), md5, out)
    assert only_archive(out) == []


def test_stale_temporary_from_a_killed_run_is_removed(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    out = tmp_path / "raw"
    out.mkdir()
    (out / f".{ARCHIVE_NAME}.abc123.tmp").write_bytes(b"half a download")
    fetch_archive(str(archive), md5, out)
    assert only_archive(out) == [ARCHIVE_NAME]


def test_missing_local_file_and_bad_scheme(tmp_path):
    with pytest.raises(ResnetlabError, match=r"cannot read .*nope\.tar\.gz"):
        fetch_archive(str(tmp_path / "nope.tar.gz"), "0" * 32, tmp_path / "raw")
    with pytest.raises(ResnetlabError, match="unsupported scheme 'ftp'"):
        fetch_archive("ftp://example.invalid/x.tar.gz", "0" * 32, tmp_path / "raw")


def test_disk_full_is_reported(tiny_archive, tmp_path, monkeypatch):
    import errno
    import os

    archive, md5 = tiny_archive
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResnetlabError, match="disk full"):
        fetch_archive(str(archive), md5, tmp_path / "raw")
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
