"""The segmentation worker: a plain-Python process (no Slicer) that loads a bundle once and answers requests.

    python worker.py --bundle BUNDLE_DIR [--device auto|cpu|cuda] [--overrides JSON]

Run it with any Python where torch, MONAI and the bundle's requirements are installed (Slicer's own, or one the
user points to). It reads the session token as the first line of its standard input, loads the bundle through
``bundle.inference.LesionSegmenter`` (the bundle's own ``configs/inference.json``, the only definition of the pre-
and post-processing), listens on 127.0.0.1 on a free port, and prints ``READY_PREFIX`` and a JSON object with the
port on standard output. Everything else it prints is log for the user. It exits when its standard input closes,
so it never outlives the module that started it.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the library as a package, not its files one by one
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from SkinLesionSegmentationLib import bundles, protocol, results  # noqa: E402

logger = logging.getLogger("skin_lesion_worker")
AUTH_TIMEOUT_S = 30.0
# Photos whose click sessions the worker keeps (each: the photo preprocessed at the network's size, one packed mask
# per click); the least recently clicked goes first.
MAX_CLICK_SESSIONS = 2


def one_line(error: BaseException) -> str:
    """The innermost cause of ``error`` on one line (MONAI wraps transform errors in "applying transform ...")."""
    while error.__cause__ is not None:
        error = error.__cause__
    return " ".join(str(error).split()) or type(error).__name__


class BundleModel:
    """The bundle's ``LesionSegmenter`` on a device, with CPU fallback and a count of network forward passes."""

    def __init__(self, bundle_root: Path, device: str = "auto", overrides: dict | None = None) -> None:
        import torch

        self.bundle_root = bundle_root
        self.overrides = dict(overrides or {})
        self.forward_count = 0
        self.fallback_reason = ""
        self.sessions: OrderedDict[str, ClickedPhoto] = OrderedDict()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._load(device)
        except Exception as err:  # noqa: BLE001 - any failure to use the GPU falls back to the CPU
            if device == "cpu":
                raise
            self._fall_back(err)
        metadata = bundles.read_metadata(bundle_root)
        self.spec = results.segment_spec(bundles.output_channel_def(metadata))

    def _load(self, device: str) -> None:
        from bundle.inference import LesionSegmenter

        device_overrides = {"device": f"$torch.device('{device}')"}
        if device == "cpu":
            device_overrides["amp"] = False
        # No writer: a folder's results are written by batch(), as a mask PNG and a .seg.nrrd, where the user chose.
        # No DataLoader processes: this process runs a threaded server, and a process forked from it while another
        # thread holds a lock (logging, the socket server, torch's pools) can hang for ever; a folder is then
        # preprocessed in the request's thread (seen: a 'batch' request that never answered with two CPUs).
        overrides = {"num_workers": 0, **self.overrides, **device_overrides, "writer": None}
        self.segmenter = LesionSegmenter(bundle_root=self.bundle_root, overrides=overrides)
        self.guidance = self.segmenter.guidance
        self.device = device
        self.sessions.clear()  # they hold the previous network's runner

    def _fall_back(self, err: BaseException) -> None:
        self.fallback_reason = f"GPU not usable ({one_line(err)}); running on the CPU"
        logger.warning(self.fallback_reason)
        self._load("cpu")

    def _with_cpu_fallback(self, run):
        """``run()``, and once more on the CPU if the GPU fails (out of memory, a CUDA or cuDNN error)."""
        import torch

        try:
            return run()
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
            gpu_failure = isinstance(err, torch.cuda.OutOfMemoryError) or "CUDA" in str(err) or "cuDNN" in str(err)
            if self.device == "cpu" or not gpu_failure:
                raise
            self._fall_back(err)
            return run()

    def segment(self, photo) -> dict:
        """The bundle's ``segment_array`` on a (rows, columns, 3) uint8 photo; retried on the CPU if the GPU fails."""
        import numpy as np

        output = self._with_cpu_fallback(lambda: self.segmenter.segment_array(photo))
        # one network run per photo; counted here because the fast path may run an exported copy of the network
        self.forward_count += 1
        return {
            "prob": np.asarray(output["prob"], dtype=np.float32),
            "pred": np.asarray(output["pred"], dtype=np.uint8),
        }

    def click(self, key: str, photo, clicks: list, reset: bool = False) -> tuple[dict, dict] | None:
        """Segment the photo ``key`` with the user's ``clicks`` (``(x, y, positive)`` in the order they were placed).

        The photo's session is kept (:data:`MAX_CLICK_SESSIONS` photos, least recently clicked dropped first), so
        a photo is decoded and preprocessed once; ``photo`` (a (rows, columns, 3) uint8 array) is needed only for a
        photo the worker does not hold, or with ``reset``, which starts its session again.

        Returns:
            ``(summary, {"prob", "pred"})``, or None when the worker does not hold ``key`` and no photo came.

        Raises:
            ValueError: the bundle's network takes no clicks (an automatic one).
        """
        if not self.guidance:
            raise ValueError(
                "this bundle's network takes no clicks (an automatic network); the module uses the points to pick "
                "lesion regions instead"
            )

        def run():
            if reset:
                self.sessions.pop(key, None)
            clicked = self.sessions.get(key)
            decoded = clicked is None
            if clicked is None:
                if photo is None:
                    return None
                clicked = self.sessions[key] = ClickedPhoto(self.segmenter.session(photo))
                while len(self.sessions) > MAX_CLICK_SESSIONS:
                    self.sessions.popitem(last=False)
            self.sessions.move_to_end(key)
            output, runs = clicked.segment(clicks)
            self.forward_count += runs
            return {"network_runs": runs, "decoded": decoded, "clicks": len(clicks)}, output

        return self._with_cpu_fallback(run)

    def info(self) -> dict:
        import monai
        import torch

        runner = self.segmenter.runner
        return {
            "pid": os.getpid(),
            "python": sys.executable,
            "bundle_root": str(self.bundle_root),
            "bundle_code": str(Path(sys.modules["bundle"].__file__).parent),
            "device": self.device,
            "fallback": self.fallback_reason,
            "has_weights": bool(getattr(runner, "has_weights", False)),
            "guidance": list(self.guidance),
            "click_sessions": len(self.sessions),
            "segment_name": self.spec.name,
            "segment_color": list(self.spec.color),
            "segment_terminology": self.spec.terminology,
            "forward_count": self.forward_count,
            "torch": torch.__version__,
            "monai": monai.__version__,
        }

    def batch(self, input_path: str, output_dir: str) -> dict:
        """Segment every photo of a folder (or a datalist), writing ``<name>_mask.png`` and ``<name>.seg.nrrd``, where
        the name keeps the photo's folder relative to the others' (``bundle.data.output_names``).

        Photos are listed by the bundle's ``list_images`` and segmented by its ``SegmentationRunner.run``, the
        command line's path (each photo decoded at the working size, at most one at a time in memory); the results
        are written from its ``on_result`` callback. A photo that fails is reported and skipped.
        """
        import numpy as np

        from bundle.data import file_stem, list_images

        items = list_images(input_path)
        if not items:
            raise ValueError(f"{input_path}: no photos found")
        written: list[list[str]] = []
        failures: list[list[str]] = []
        count = len(items)

        def on_result(source: str, result: dict) -> None:
            mask = np.asarray(result["pred"].detach().cpu(), dtype=np.uint8).T  # the runner's (W, H) as (rows, cols)
            # p1/IMG_0001 and p2/IMG_0001 stay apart: the runner names each item (bundle.data.output_names)
            name = result.get("output_name") or file_stem(source)
            png, seg = results.write_results(mask, output_dir, name, self.spec)
            self.forward_count += 1
            written.append([source, str(png), str(seg)])
            print(f"PROGRESS {len(written) + len(failures)}/{count} {source}", flush=True)

        def on_failure(source: str, reason: str) -> None:
            failures.append([source, reason])
            print(f"PROGRESS {len(written) + len(failures)}/{count} ERROR {reason}", flush=True)

        self.segmenter.runner.run(items, on_failure=on_failure, keep_results=False, on_result=on_result)
        return {"written": written, "failures": failures}


class ClickedPhoto:
    """One photo segmented with an ordered list of clicks, through the bundle's ``ClickSession`` (photo decoded and
    preprocessed once).

    The mask after clicks c1..ck is the network's answer to the photo, those clicks and, as its previous mask, the
    mask after c1..c(k-1) (none before the first click): a function of the ordered list alone. The masks along the
    last list are kept (packed, one bit a pixel), so a list reached from the last one by adding, moving or removing
    its last click costs one network run; removing or moving an earlier click replays the clicks after it. Removing
    a click therefore gives back exactly the mask the list without it gives.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.clicks: list[tuple[float, float, bool]] = []
        self.masks: list[tuple[object, tuple[int, ...]]] = []  # packed mask after self.clicks[:k], for each k kept

    def segment(self, clicks) -> tuple[dict, int]:
        """``({"prob", "pred"} as (rows, columns) arrays, network runs)`` for ``clicks`` (``(x, y, positive)``)."""
        import numpy as np

        clicks = [(float(x), float(y), bool(positive)) for x, y, positive in clicks]
        common = 0
        while common < min(len(clicks), len(self.clicks)) and clicks[common] == self.clicks[common]:
            common += 1
        self.clicks = clicks
        del self.masks[common + 1 :]  # masks[k] holds for clicks[:k] while k <= common
        first = min(len(self.masks), len(clicks))
        for k in range(first, len(clicks) + 1):
            self.session.clicks = {
                "positive": [[x, y] for x, y, positive in clicks[:k] if positive],
                "negative": [[x, y] for x, y, positive in clicks[:k] if not positive],
            }
            self.session.previous = self._unpack(self.masks[k - 1]) if k else None
            result = self.session.predict()
            pred = np.asarray(result["pred"].detach().cpu(), dtype=np.uint8)  # (W, H), the bundle's order
            del self.masks[k:]
            self.masks.append((np.packbits(pred, axis=None), pred.shape))
        prob = np.asarray(result["prob"].detach().cpu(), dtype=np.float32)
        output = {"prob": np.ascontiguousarray(prob.T), "pred": np.ascontiguousarray(pred.T)}
        return output, len(clicks) + 1 - first

    @staticmethod
    def _unpack(packed) -> object:
        import numpy as np

        bits, shape = packed
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(np.float32)


class Worker:
    """Answers the module's requests; one model, requests served one at a time."""

    def __init__(self, model: BundleModel, token: str) -> None:
        self.model = model
        self.token = token
        self.lock = threading.Lock()
        self.server: socketserver.ThreadingTCPServer | None = None

    def handle(self, command: str, params: dict, arrays: dict) -> tuple[dict, dict]:
        """Answer one request: ``(result, arrays)``. A new kind of request is one ``request_<command>`` method."""
        handler = getattr(self, f"request_{command}", None) if command.isidentifier() else None
        if handler is None:
            raise ValueError(f"unknown command {command!r}")
        return handler(params, arrays)

    def request_info(self, params: dict, arrays: dict) -> tuple[dict, dict]:
        return self.model.info(), {}

    def request_segment(self, params: dict, arrays: dict) -> tuple[dict, dict]:
        if "image" not in arrays:
            raise ValueError("a segment request carries no 'image' array")
        started = time.perf_counter()
        output = self.model.segment(arrays["image"])
        summary = {
            "seconds": time.perf_counter() - started,
            "forward_count": self.model.forward_count,
            "device": self.model.device,
        }
        return summary, output

    def request_click(self, params: dict, arrays: dict) -> tuple[dict, dict]:
        """A click-guided network's answer to the user's points: ``params`` ``{"photo": key, "clicks": [[x, y,
        positive], ...] in placing order, "reset": bool}``, the ``image`` array when the worker may not hold the
        photo. Answers ``{"needs_image": true}`` when it does not and none came."""
        key = params.get("photo")
        if not isinstance(key, str) or not key:
            raise ValueError("a click request names no 'photo'")
        clicks = params.get("clicks", [])
        if not isinstance(clicks, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, (int, float)) for v in c) for c in clicks
        ):
            raise ValueError("a click request's 'clicks' is not a list of [x, y, positive]")
        started = time.perf_counter()
        answer = self.model.click(key, arrays.get("image"), clicks, reset=bool(params.get("reset")))
        if answer is None:
            return {"needs_image": True}, {}
        summary, output = answer
        summary.update(
            seconds=time.perf_counter() - started, forward_count=self.model.forward_count, device=self.model.device
        )
        return summary, output

    def request_batch(self, params: dict, arrays: dict) -> tuple[dict, dict]:
        return self.model.batch(str(params["input"]), str(params["output_dir"])), {}

    def request_shutdown(self, params: dict, arrays: dict) -> tuple[dict, dict]:
        threading.Thread(target=self.server.shutdown, daemon=True).start()
        return {"stopping": True}, {}

    def serve(self) -> None:
        worker = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    self.serve_connection()
                except Exception as err:  # noqa: BLE001 - one line in the log, never a traceback; the worker goes on
                    logger.warning("dropped a connection: %s", one_line(err))

            def serve_connection(self):
                sock: socket.socket = self.request
                sock.settimeout(AUTH_TIMEOUT_S)
                authenticated = False
                while True:
                    try:
                        header = protocol.receive_header(sock)
                    except (protocol.ProtocolError, OSError):
                        return
                    if not hmac.compare_digest(str(header.get("token", "")).encode(), worker.token.encode()):
                        protocol.send_message(sock, {"ok": False, "error": "refused: missing or wrong session token"})
                        return
                    if not authenticated:
                        authenticated = True
                        sock.settimeout(None)
                    try:
                        arrays = protocol.receive_arrays(sock, header)
                        params = header.get("params") or {}
                        if not isinstance(params, dict):
                            raise ValueError("the request's 'params' is not a JSON object")
                        with worker.lock:
                            result, out_arrays = worker.handle(str(header.get("command")), params, arrays)
                        reply, reply_arrays = {"ok": True, "result": result}, out_arrays
                    except protocol.ProtocolError:
                        return
                    except Exception as err:  # noqa: BLE001 - reported to the module in one line
                        logger.error("%s failed: %s", header.get("command"), one_line(err))
                        reply, reply_arrays = {"ok": False, "error": one_line(err)}, {}
                    try:
                        protocol.send_message(sock, reply, reply_arrays)
                    except OSError:
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = False

        with Server((protocol.HOST, 0), Handler) as server:
            self.server = server
            ready = {"port": server.server_address[1], **self.model.info()}
            print(protocol.READY_PREFIX + json.dumps(ready), flush=True)
            server.serve_forever(poll_interval=0.2)


def _exit_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Load the bundle, serve until asked to stop or until standard input closes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle folder (holds configs/inference.json)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--overrides", default="{}", help="JSON object of inference.json keys to override")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    token = sys.stdin.readline().strip()
    if not token:
        print("ERROR no session token on standard input", flush=True)
        return 2
    threading.Thread(target=_exit_when_stdin_closes, daemon=True, name="stdin-watch").start()
    try:
        bundle_root = bundles.check_bundle_folder(args.bundle)
        # The bundle's configs import its own Python package ("bundle"), which must win over any other copy.
        sys.path.insert(0, str(bundle_root))
        model = BundleModel(bundle_root, args.device, json.loads(args.overrides))
    except Exception as err:  # noqa: BLE001 - the module shows this line to the user
        print(f"ERROR could not load the bundle: {one_line(err)}", flush=True)
        return 1
    Worker(model, token).serve()
    sys.stdout.flush()
    os._exit(0)  # nothing is left to clean up (results are written atomically); skip torch's slow interpreter teardown


if __name__ == "__main__":
    sys.exit(main())
