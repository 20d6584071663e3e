"""A real MONAI Label server for tests, started the way users start it and stopped with everything it started.

``scripts/monailabel_serve.sh`` sets up MONAI Label's stock ``monaibundle`` app with the bundle and runs
``monailabel start_server`` from the MONAI Label venv (``$RFE_MONAILABEL_VENV``, default ``.ci-venv-monailabel``).
Where the test runs as root, the server runs in a network namespace of its own that holds only a loopback
interface, so a start-up that tried to download anything (model-zoo lookup, SAM2 weights) would fail; the test talks
to it by entering that namespace on the calling thread for each request. Usage::

    with MonaiLabelServer(bundle_zip, studies_dir, tmp_path / "apps") as server:
        info = server.json("GET", "/info/")
        reply = server.request("POST", "/infer/<name>?image=<id>", fields={"params": "{}"})
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVE_SCRIPT = REPO / "scripts" / "monailabel_serve.sh"
CLONE_NEWNET = 0x40000000


def monailabel_venv() -> Path:
    """The MONAI Label venv the tests use (it may not exist)."""
    return Path(os.environ.get("RFE_MONAILABEL_VENV", REPO / ".ci-venv-monailabel"))


def missing_venv_reason(venv: Path | None = None) -> str | None:
    """Why no MONAI Label server can be started here, or None when the venv is usable."""
    venv = venv or monailabel_venv()
    if not (venv / "bin" / "monailabel").is_file():
        return (
            f"MONAI Label venv not found at {venv}: build it with scripts/setup_monailabel_venv.sh "
            "(or point RFE_MONAILABEL_VENV at one)"
        )
    return None


def can_isolate_network() -> bool:
    """True where ``unshare --net`` works (root or CAP_SYS_ADMIN), so the server can be cut off from the network."""
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def parts(self) -> dict[str, tuple[str | None, bytes]]:
        """The parts of a multipart reply (MONAI Label's infer answer): name -> (filename, content)."""
        boundary = re.search(r'boundary="?([^";]+)"?', self.headers["content-type"]).group(1).encode()
        found = {}
        for chunk in self.body.split(b"--" + boundary)[1:-1]:
            head, _, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
            disposition = next(line for line in head.decode().splitlines() if line.lower().startswith("content-disp"))
            name = re.search(r'\bname="([^"]*)"', disposition).group(1)
            filename = re.search(r'filename="([^"]*)"', disposition)
            content = content[:-2] if content.endswith(b"\r\n") else content
            found[name] = (filename.group(1) if filename else None, content)
        return found


def encode_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode form ``fields`` and ``files`` (name -> (filename, content)) as multipart/form-data, like Slicer does."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass
class MonaiLabelServer:
    """``scripts/monailabel_serve.sh <bundle> <studies>`` as a context manager; see the module docstring.

    Args:
        bundle: an exported bundle zip.
        studies: the folder of photographs MONAI Label serves (its datastore).
        apps_dir: where the serve script puts the ``monaibundle`` app (``<apps_dir>/monaibundle``).
        isolate_network: run in a loopback-only network namespace (needs ``unshare --net``).
        log_path: where the server's output goes (default ``<apps_dir>/server.log``).
    """

    bundle: Path
    studies: Path
    apps_dir: Path
    isolate_network: bool = True
    venv: Path = field(default_factory=monailabel_venv)
    startup_timeout: float = 300.0
    log_path: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.apps_dir = Path(self.apps_dir)
        self.log_path = Path(self.log_path or self.apps_dir / "server.log")
        self._own_netns: int | None = None
        self._server_netns: int | None = None

    # -- process ---------------------------------------------------------------------------------------------
    def start(self) -> MonaiLabelServer:
        reason = missing_venv_reason(self.venv)
        if reason:
            raise RuntimeError(reason)
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:  # a port free here is free in a fresh namespace too
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [
            "bash",
            str(SERVE_SCRIPT),
            "--port",
            str(self.port),
            "--apps",
            str(self.apps_dir),
            str(self.bundle),
            str(self.studies),
        ]
        if self.isolate_network:
            command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
        env = {**os.environ, "RFE_MONAILABEL_VENV": str(self.venv), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.close()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MONAI Label exited with {self.process.returncode} at start-up:\n{self.log_tail()}")
            if self.isolate_network and self._server_netns is None:
                self._open_namespaces()
            try:
                if self.request("GET", "/info/", timeout=10).status == 200:
                    return
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"MONAI Label did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def _open_namespaces(self) -> None:
        """Keep handles on this process's network namespace and on the server's once ``unshare`` made it."""
        own = os.readlink("/proc/self/ns/net")
        try:
            theirs = os.readlink(f"/proc/{self.process.pid}/ns/net")
        except OSError:
            return
        if theirs == own:  # unshare has not switched yet
            return
        self._own_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
        self._server_netns = os.open(f"/proc/{self.process.pid}/ns/net", os.O_RDONLY)

    def group_pids(self) -> list[int]:
        """Every live process in the server's process group (the server, its tasks, their workers)."""
        if self.process is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == self.process.pid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop the server and everything it started; return the pids still alive afterwards (none, normally)."""
        if self.process is None:
            return []
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.process.poll() is None or self.group_pids()):
                time.sleep(0.2)
            if self.process.poll() is not None and not self.group_pids():
                break
        for handle in (self._own_netns, self._server_netns):
            if handle is not None:
                os.close(handle)
        self._own_netns = self._server_netns = None
        return self.group_pids()

    def __enter__(self) -> MonaiLabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- network ---------------------------------------------------------------------------------------------
    @contextmanager
    def inside_network(self):
        """Run the body on this thread inside the server's network namespace (setns affects this thread only).

        Any HTTP client (e.g. the Slicer module's) reaches the server on 127.0.0.1:``port`` inside this block.
        """
        if self._server_netns is None:
            yield
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._server_netns, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the server's network namespace failed")
        try:
            yield
        finally:
            if libc.setns(self._own_netns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's network namespace failed")

    def listening_addresses(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket the server's processes listen on."""
        inodes = set()
        for pid in self.group_pids():
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue
        found = set()
        for table, width in (("tcp", 8), ("tcp6", 32)):
            try:
                lines = Path(f"/proc/{self.process.pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                address, port = local.split(":")
                found.add((_decode_address(address, width), int(port, 16)))
        return found

    def request(
        self,
        method: str,
        path: str,
        fields: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
        json_body=None,
        timeout: float = 600.0,
    ) -> Reply:
        """One HTTP request to the server on 127.0.0.1; multipart when ``fields``/``files`` are given."""
        import http.client

        headers, body = {}, None
        if fields is not None or files is not None:
            body, headers["Content-Type"] = encode_multipart(fields or {}, files or {})
        elif json_body is not None:
            body, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        with self.inside_network():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
            finally:
                connection.close()
        return reply

    def json(self, method: str, path: str, **kwargs):
        reply = self.request(method, path, **kwargs)
        if reply.status != 200:
            raise AssertionError(f"{method} {path}: HTTP {reply.status}: {reply.body[:2000]!r}\n{self.log_tail()}")
        return reply.json()

    @staticmethod
    def query(path: str, **params) -> str:
        return f"{path}?{urllib.parse.urlencode(params)}"


def _decode_address(hex_address: str, width: int) -> str:
    """Decode an address from /proc/net/tcp{,6} (little-endian 32-bit words) to its text form."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words)
