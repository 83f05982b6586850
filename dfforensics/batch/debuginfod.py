"""
Debug files from debuginfod servers
-----------------------------------

``GET <url>/buildid/<id>/debuginfo`` on each server of ``$DEBUGINFOD_URLS``
until one answers with the file asked for. A server is not trusted: each
download has an overall deadline (``$DEBUGINFOD_TIMEOUT`` seconds, default 90,
for the whole answer, not per read, so a server trickling bytes cannot hold a
triage run), a size cap (``$DFFORENSICS_DEBUGINFOD_MAX_BYTES``, default 4 GiB),
and enters the cache only as an ELF file whose build ID is the one asked for.
Whatever fails leaves nothing behind. No drgn.
"""

import http.client
import os
import re
import socket
import stat as stat_mode
import tempfile
import threading
import time
import urllib.parse
from typing import Final, Optional

from dfforensics.inputs.formats import cache_dir

__all__ = ("fetch_from_debuginfod",)

_CHUNK: Final = 1 << 20
_BUILD_ID_RE: Final = re.compile(r"[0-9a-f]{8,}")


class _Refused(Exception):
    """This server's answer is not the file: try the next one."""


def _limits() -> tuple[float, int]:
    try:
        timeout = float(os.environ.get("DEBUGINFOD_TIMEOUT", "90"))
    except ValueError:
        timeout = 90.0
    try:
        cap = int(os.environ.get("DFFORENSICS_DEBUGINFOD_MAX_BYTES", str(4 << 30)))
    except ValueError:
        cap = 4 << 30
    return (timeout if timeout > 0 else 90.0), cap


def _is_the_file(path: str, build_id: str) -> bool:
    from dfforensics.inputs.elffacts import read_build_id

    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat_mode.S_ISREG(info.st_mode) and read_build_id(path) == build_id


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused(f"not an http(s) URL: {url}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout), parts.path.rstrip("/")


def _abort(sock: socket.socket) -> None:
    """At the deadline: end the connection under whatever read is blocked on it
    (the response reads the socket itself, so the connection may have let go of it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _copy_body(response: http.client.HTTPResponse, out_fd: int, deadline: float, cap: int) -> None:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > cap:
        raise _Refused(f"{declared} bytes, more than the cap of {cap}")
    written = 0
    while chunk := response.read(_CHUNK):
        written += len(chunk)
        if written > cap:
            raise _Refused(f"more than the cap of {cap} bytes")
        if time.monotonic() > deadline:
            raise _Refused("past the deadline")
        os.write(out_fd, chunk)
    if time.monotonic() > deadline:
        raise _Refused("past the deadline")


def _download(url: str, build_id: str, target: str, timeout: float, cap: int) -> None:
    """Download into ``target``; :class:`_Refused` (and nothing written) unless it is the file."""
    deadline = time.monotonic() + timeout
    connection, base = _connection(url, timeout)
    watchdog: Optional[threading.Timer] = None
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".partial-")
    try:
        connection.connect()
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (connection.sock,))
        watchdog.daemon = True
        watchdog.start()
        connection.request("GET", f"{base}/buildid/{build_id}/debuginfo")
        response = connection.getresponse()
        if response.status != 200:
            raise _Refused(f"HTTP {response.status}")
        _copy_body(response, fd, deadline, cap)
        os.close(fd)
        fd = -1
        if not _is_the_file(partial, build_id):
            raise _Refused("not an ELF file with that build ID")
        os.replace(partial, target)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _Refused(str(error)) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        connection.close()
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(partial):
            os.unlink(partial)


def fetch_from_debuginfod(build_id: str, urls: Optional[str] = None) -> Optional[str]:
    """The debug file of ``build_id`` from the servers in ``urls`` (default
    ``$DEBUGINFOD_URLS``), kept in the dfforensics cache; None when no server
    has it (or none answers with it in time)."""
    urls = os.environ.get("DEBUGINFOD_URLS", "") if urls is None else urls
    build_id = build_id.lower()
    if not urls.strip() or not _BUILD_ID_RE.fullmatch(build_id):
        return None
    directory = os.path.join(cache_dir(), "debuginfod", build_id)
    target = os.path.join(directory, "debuginfo")
    if _is_the_file(target, build_id):
        return target
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.lexists(target):
            os.unlink(target)  # a symlink, or a file that is not this build's
    except OSError:
        return None
    timeout, cap = _limits()
    for url in urls.split():
        try:
            _download(url, build_id, target, timeout, cap)
            return target
        except _Refused:
            continue
    _remove_if_empty(directory)
    return None


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass
