"""Starting, talking to and stopping the worker process (``worker.py``), without Slicer.

The worker is started in its own process group (its own session on POSIX), because the Python the user chose
may be a launcher that runs the real interpreter as a child (Slicer's ``PythonSlicer`` is one): stopping means
ending the whole tree, not just the process ``Popen`` knows. Calls block; the module runs them through
:meth:`WorkerClient.submit` and polls the returned future, so Slicer's GUI never waits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import protocol
from .imaging import photo_from_volume_array

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")


class WorkerError(RuntimeError):
    """The worker could not do what was asked; the message is one line for the user."""


class WorkerStartError(WorkerError):
    """The worker process did not get ready (wrong Python, missing packages, unusable bundle)."""


class WorkerCancelled(WorkerError):
    """The user cancelled: the worker process tree was ended."""


class WorkerDied(WorkerError):
    """The worker process ended while the module was waiting for it."""


class WorkerTimeout(WorkerError):
    """The worker neither answered nor printed anything for ``request_timeout`` seconds (suspended or hung); it was
    stopped, and the next request starts a new one."""


def kill_process_tree(process: subprocess.Popen) -> None:
    """End ``process`` and everything it started, and reap it.

    On POSIX the process leads its own process group (``start_new_session``), so the whole group is killed; while
    any member lives, the group's ID cannot be given to another process. On Windows ``taskkill /T`` ends the tree.
    """
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # also when a launcher already exited and left its child
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


class WorkerClient:
    """One worker process for one bundle; started on first use and reused for every request.

    Args:
        python: the Python command that runs the worker (a path, or a list such as ``["/path/python", "-X", ...]``).
        bundle_root: the bundle folder (see :func:`bundles.resolve_bundle` for zips).
        device: ``"auto"`` (GPU when available), ``"cpu"`` or ``"cuda"``; a GPU that fails falls back to the CPU.
        overrides: ``configs/inference.json`` keys to override (e.g. another checkpoint).
        env: the worker's environment; from Slicer, the environment Slicer started with for an external Python.
        log: called with each line the worker prints (progress, warnings), from a background thread.
        start_timeout: seconds to wait for the worker to load the bundle.
        request_timeout: seconds a request may go without an answer or a line of output from the worker (a folder
            prints a line per photo) before the worker is taken for hung, stopped, and the request fails.
    """

    def __init__(
        self,
        python: str | Sequence[str],
        bundle_root: str | os.PathLike,
        device: str = "auto",
        overrides: dict | None = None,
        env: dict | None = None,
        log: Callable[[str], None] | None = None,
        start_timeout: float = 600.0,
        request_timeout: float = 600.0,
    ) -> None:
        self.python = [str(python)] if isinstance(python, (str, os.PathLike)) else [str(p) for p in python]
        self.bundle_root = str(bundle_root)
        self.device = device
        self.overrides = dict(overrides or {})
        self.env = dict(env if env is not None else os.environ)
        self.log = log
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.info: dict = {}
        self._photos_sent: set[str] = set()  # photo keys the running worker was sent (it may have dropped some)
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._token = ""
        self._ready = threading.Event()
        self._cancelled = False
        self._busy = False
        self._starting = False
        self._closed = False
        self._last_activity = time.monotonic()
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="skin-lesion")

    # -- process --------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None and self._socket is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> dict:
        """Start the worker if it is not running and wait until it has loaded the bundle; returns its info.

        :meth:`cancel`, :meth:`stop` and :meth:`close` end a start in progress at once (it raises
        :class:`WorkerCancelled`).
        """
        with self._lock:
            if self._closed:
                raise WorkerError("the worker client was closed")
            if self.running:
                return self.info
            self._cancelled = False  # from here on, cancel() ends this start
            self._starting = True
            try:
                return self._start_locked()
            finally:
                self._starting = False

    def _start_locked(self) -> dict:
        self.lines.clear()
        self._photos_sent.clear()
        if self._process is not None:
            code = self._process.poll()
            self._kill()
            self._emit(f"the previous worker had stopped (exit code {code}); starting a new one")
        self._ready.clear()
        self._token = protocol.new_token()
        command = [
            *self.python,
            str(WORKER_SCRIPT),
            "--bundle",
            self.bundle_root,
            "--device",
            self.device,
            "--overrides",
            json.dumps(self.overrides),
        ]
        options = (
            {"start_new_session": True}
            if os.name == "posix"
            else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        )
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env={**self.env, "PYTHONUNBUFFERED": "1"},
                **options,
            )
        except OSError as err:
            raise WorkerStartError(f"cannot run the worker with {self.python[0]}: {err.strerror or err}") from None
        self._process = process
        process.stdin.write(self._token + "\n")
        process.stdin.flush()  # stdin stays open: the worker exits when it closes
        self._reader = threading.Thread(target=self._read_output, args=(process,), daemon=True, name="worker-out")
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._ready.wait(0.05):
            if self._cancelled:
                self._kill()
                raise WorkerCancelled("cancelled while the worker was starting")
            if process.poll() is not None:
                self._reader.join(timeout=5)  # its last lines say why
                self._kill()
                raise WorkerStartError(f"the worker did not start ({self.python[0]}): {self._last_error()}")
            if time.monotonic() > deadline:
                self._kill()
                raise WorkerStartError(f"the worker did not get ready within {self.start_timeout:.0f} s")
        try:
            self._socket = socket.create_connection((protocol.HOST, int(self.info["port"])), timeout=30)
            self._socket.settimeout(None)
        except OSError as err:
            self._kill()
            raise WorkerStartError(f"cannot connect to the worker: {err}") from None
        # The first request authenticates the connection at once; the worker drops connections that stay silent.
        self.info = {**self.info, **self._exchange("info", {}, {})[0]}
        return self.info

    def _read_output(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._last_activity = time.monotonic()
            line = line.rstrip("\n")
            if line.startswith(protocol.READY_PREFIX):
                self.info = json.loads(line[len(protocol.READY_PREFIX) :])
                self._ready.set()
                continue
            self._emit(line)

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        if self.log is not None:
            self.log(line)

    def _last_error(self) -> str:
        """The worker's own error line, else the last line that is not progress or log (a traceback's end)."""
        for line in reversed(self.lines):
            if line.startswith("ERROR "):
                return line[len("ERROR ") :]
        for line in reversed(self.lines):
            if line.strip() and not line.startswith(("PROGRESS ", "INFO ", "WARNING ", "the previous worker")):
                return line.strip()
        return "no message (killed, or out of memory?)"

    def _kill(self) -> None:
        process, self._process = self._process, None
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None
        if process is not None:
            kill_process_tree(process)
            if process.stdin:
                process.stdin.close()

    def cancel(self) -> None:
        """End the worker's whole process tree now; a request in progress raises :class:`WorkerCancelled`."""
        self._cancelled = True
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._process is not None:
            kill_process_tree(self._process)

    def stop(self) -> None:
        """Ask the worker to exit (cancelling a request or a start in progress), then make sure its process tree is
        gone. Returns as soon as the tree is ended: it never waits for a start or a request to finish."""
        if self._busy or self._starting:
            self.cancel()
        with self._lock:
            if self.running:
                try:
                    self._exchange("shutdown", {}, {}, timeout=5.0)  # a hung worker is killed below
                    self._process.wait(timeout=10)
                except (WorkerError, subprocess.TimeoutExpired):
                    pass
            self._kill()

    def close(self) -> None:
        """Stop the worker and the background thread (Slicer closing); the client cannot be used afterwards."""
        self._closed = True  # queued work must not start a new worker
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.stop()
        self._executor.shutdown(wait=True)

    # -- requests -------------------------------------------------------------------------------------------------

    def _wait_for_answer(self, command: str, timeout: float) -> None:
        """Wait until the worker's answer starts arriving; while it prints output it is taken as alive."""
        self._last_activity = time.monotonic()
        while not select.select([self._socket], [], [], 0.1)[0]:
            if self._cancelled:
                return  # the socket was shut down: the read that follows fails and reports the cancel
            if time.monotonic() - self._last_activity > timeout:
                self._kill()
                raise WorkerTimeout(
                    f"the worker did not answer '{command}' within {timeout:g} s (suspended or hung?); "
                    "it was stopped, and the next request starts a new one"
                )

    def _exchange(self, command: str, params: dict, arrays: dict, timeout: float | None = None) -> tuple[dict, dict]:
        try:
            protocol.send_message(self._socket, {"token": self._token, "command": command, "params": params}, arrays)
            self._wait_for_answer(command, self.request_timeout if timeout is None else timeout)
            header, out = protocol.receive_message(self._socket)
        except (OSError, ValueError, AttributeError, protocol.ProtocolError):
            if self._cancelled:
                self._kill()
                raise WorkerCancelled("cancelled; the worker was stopped") from None
            try:
                code = self._process.wait(timeout=10) if self._process is not None else None
            except subprocess.TimeoutExpired:
                code = None  # alive but the connection broke: ended below like a crashed one
            self._kill()
            self._reader.join(timeout=5)  # its last lines say why
            status = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise WorkerDied(f"the worker stopped unexpectedly ({status}): {self._last_error()}") from None
        if not header.get("ok"):
            raise WorkerError(str(header.get("error", "the worker reported an error")))
        return header.get("result", {}), out

    def request(self, command: str, params: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        """Send one request (starting the worker first if needed) and return (result, arrays)."""
        self.start()
        with self._lock:
            self._busy = True
            try:
                return self._exchange(command, params or {}, arrays or {})
            finally:
                self._busy = False

    def segment(self, photo: np.ndarray) -> dict:
        """Lesion probability (``"prob"``, float32) and mask (``"pred"``, 0/1) of a photo in any layout
        :func:`photo_from_volume_array` accepts; plus ``"forward_count"``, ``"seconds"`` and ``"device"``."""
        result, arrays = self.request("segment", arrays={"image": photo_from_volume_array(photo)})
        return {**result, "prob": arrays["prob"], "pred": arrays["pred"]}

    def click(self, photo: np.ndarray, clicks: Sequence[Sequence], reset: bool = False, key: str = "") -> dict:
        """A click-guided network's lesion probability (``"prob"``) and mask (``"pred"``) for a photo and the user's
        clicks, in the order they were placed: ``(x, y, positive)``, x the column and y the row in the photo's pixels.
        Plus ``"network_runs"`` (1 for a click added, moved or removed last), ``"decoded"``, ``"forward_count"``,
        ``"seconds"`` and ``"device"``.

        The worker keeps the photo between clicks, under ``key`` (any name that changes when the pixels do; default:
        a hash of the pixels, :func:`protocol.photo_key`): the photo is sent only when this worker has not been sent
        it (or dropped it), and ``reset`` starts its session again.
        """
        photo = photo_from_volume_array(photo)
        key = key or protocol.photo_key(photo)
        params = {
            "photo": key,
            "clicks": [[float(c[0]), float(c[1]), bool(c[2])] for c in clicks],
            "reset": bool(reset),
        }
        send = reset or key not in self._photos_sent
        result, arrays = self.request("click", params, {"image": photo} if send else {})
        if result.get("needs_image"):
            result, arrays = self.request("click", params, {"image": photo})
        self._photos_sent.add(key)
        return {**result, "prob": arrays["prob"], "pred": arrays["pred"]}

    def batch(self, input_path: str | os.PathLike, output_dir: str | os.PathLike) -> dict:
        """Segment a folder of photos in the worker; returns ``{"written": [...], "failures": [[path, reason]]}``."""
        result, _ = self.request("batch", {"input": str(input_path), "output_dir": str(output_dir)})
        return result

    def submit(self, function: Callable, *args, **kwargs) -> concurrent.futures.Future:
        """Run ``function(*args, **kwargs)`` (e.g. ``self.segment``) on the client's background thread."""
        return self._executor.submit(function, *args, **kwargs)
