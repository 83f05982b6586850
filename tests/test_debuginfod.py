"""debuginfod servers that do not play by the rules, each a small server on
127.0.0.1 started here: a download has a deadline and a size cap, enters the
cache only as an ELF file with the build ID asked for, and leaves no partial
file behind; the next server is tried."""

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

from dfforensics.batch.debuginfod import fetch_from_debuginfod
from dfforensics.inputs.elffacts import read_build_id

# A real ELF file with a build ID: the Python running the tests.
ELF = Path(os.path.realpath(sys.executable))
BUILD_ID = read_build_id(str(ELF))
pytestmark = pytest.mark.skipif(BUILD_ID is None, reason="this Python has no build ID note")


class Server:
    """Accepts connections on 127.0.0.1 and answers each with ``behave(connection)``."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.behave = behave
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            connection.recv(65536)  # the request
            self.behave(connection)
        except OSError:
            pass  # the client hung up: what a deadline does
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def ok_headers(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


def not_http(connection):
    connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")


def many_headers(connection):
    connection.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Padding: x\r\n" * 200 + b"\r\n" + b"\x7fELF")


def huge_header(connection):
    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100_000 + b"\r\n\r\n")


def trickle_headers(connection):
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    while True:
        connection.sendall(b"X")
        threading.Event().wait(1.0)


def trickle_body(connection):
    connection.sendall(ok_headers(10_000_000) + b"\x7fELF")
    while True:
        connection.sendall(b"\0")
        threading.Event().wait(1.0)


def short_body(connection):
    data = ELF.read_bytes()
    connection.sendall(ok_headers(len(data)) + data[: len(data) // 2])


def garbage(connection):
    connection.sendall(ok_headers(5000) + os.urandom(5000))


def wrong_build_id(connection):
    # A whole ELF file, but not the one asked for: served for any build ID.
    data = ELF.read_bytes()
    connection.sendall(ok_headers(len(data)) + data)


def the_file(connection):
    data = ELF.read_bytes()
    connection.sendall(ok_headers(len(data)) + data)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DFFORENSICS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEBUGINFOD_TIMEOUT", "3")
    return tmp_path / "cache"


def fetch_in_thread(build_id: str, urls: str) -> list:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fetch_from_debuginfod(build_id, urls)),
                              daemon=True)
    thread.start()
    # Far past the 3 s deadline: only a download without one is still running.
    thread.join(60)
    assert not thread.is_alive(), "the download has no deadline"
    return result


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize("behave", [not_http, many_headers, huge_header, trickle_headers, trickle_body,
                                    short_body, garbage])
def test_a_hostile_server_yields_nothing_and_leaves_nothing(cache, behave):
    server = Server(behave)
    try:
        assert fetch_in_thread(BUILD_ID, server.url) == [None]
    finally:
        server.stop()
    assert leftovers(cache) == []


def test_an_elf_file_of_another_build_is_not_taken(cache):
    server = Server(wrong_build_id)
    try:
        assert fetch_in_thread("ab" * 20, server.url) == [None]
    finally:
        server.stop()
    assert leftovers(cache) == []


def test_a_file_over_the_size_cap_is_not_taken(cache, monkeypatch):
    monkeypatch.setenv("DFFORENSICS_DEBUGINFOD_MAX_BYTES", "4096")
    server = Server(the_file)
    try:
        assert fetch_in_thread(BUILD_ID, server.url) == [None]
    finally:
        server.stop()
    assert leftovers(cache) == []


def test_after_a_hostile_server_the_next_one_is_asked(cache):
    hostile, good = Server(trickle_body), Server(the_file)
    try:
        (path,) = fetch_in_thread(BUILD_ID, f"{hostile.url} {good.url}")
    finally:
        hostile.stop()
        good.stop()
    assert path is not None and Path(path).read_bytes() == ELF.read_bytes()
    assert leftovers(cache) == [f"debuginfod/{BUILD_ID}/debuginfo"]


def test_a_symlink_in_the_cache_is_not_taken_for_the_file(cache, tmp_path):
    entry = cache / "debuginfod" / BUILD_ID / "debuginfo"
    entry.parent.mkdir(parents=True)
    entry.symlink_to(ELF)  # the right bytes, but not a file of the cache's own
    good = Server(the_file)
    try:
        (path,) = fetch_in_thread(BUILD_ID, good.url)
    finally:
        good.stop()
    assert path is not None and not Path(path).is_symlink()
