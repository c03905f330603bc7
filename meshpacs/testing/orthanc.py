"""A real Orthanc as a test peer: a child process with its own config, ports and storage.

Debian's Orthanc (``/usr/sbin/Orthanc``) is started as a plain child of the caller, never
through the init script (whose stop command kills every Orthanc on the machine), with a
config written into a directory the caller owns::

    with OrthancProcess(tmp_path / "orthanc", modalities={"meshnode": node}) as orthanc:
        orthanc.upload(data)                                  # POST /instances
        orthanc.rest("POST", "/modalities/meshnode/store", study_id)

What the defaults guarantee, whatever ``config`` adds on top:

* DICOM and HTTP ports are free ports picked when the object is made (so a peer's config
  can name them before Orthanc starts), never 4242/8042, which a system Orthanc may hold;
* storage and index live in ``<directory>/storage``; deleting the directory resets Orthanc;
* HTTP answers loopback only (``RemoteAccessAllowed: false``) and asks for a test user's
  password; no plugin loads; jobs are not saved; logs keep Orthanc's de-identification;
* ``TCP_NODELAY=1`` is in Orthanc's environment: Debian builds DCMTK with Nagle's algorithm
  on unless told, and every C-STORE response would otherwise wait ~40 ms for a delayed ACK.

The process stays a direct child (``subprocess.Popen``, no shell, no daemonising): a
process re-parented to PID 1 lingers as a zombie that ``kill -0`` still reports alive.
``stop`` sends SIGTERM, waits, and sends SIGKILL after ``stop_timeout`` seconds.
``detached=True`` starts Orthanc in its own session instead (still a plain child): a
Ctrl-C or a closing terminal then does not reach it, and it outlives the caller, as the
testbed's Orthancs must outlive ``meshpacs testbed up``; whoever stops it goes by PID.

Nothing here imports pytest: callers check :func:`orthanc_available` (or catch
:class:`OrthancUnavailable`) and skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from meshpacs.testing.dcmtk import dcmtk_env
from meshpacs.testing.loopback import free_port

__all__ = [
    "ORTHANC_BINARY",
    "Modality",
    "OrthancError",
    "OrthancProcess",
    "OrthancUnavailable",
    "free_port",
    "orthanc_available",
]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
"""Where Debian's ``orthanc`` package installs the server."""

_LOOPBACK = "127.0.0.1"
_LOG_TAIL = 4000  # characters of Orthanc's log quoted when it fails to start


class OrthancUnavailable(RuntimeError):
    """The Orthanc executable is not installed: tests skip, benchmarks leave it out."""


class OrthancError(RuntimeError):
    """Orthanc failed to start, or answered a REST call with an HTTP error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Modality(NamedTuple):
    """A DICOM peer Orthanc knows, for its ``DicomModalities`` section."""

    aet: str
    port: int
    host: str = _LOOPBACK

    def as_config(self) -> dict[str, Any]:
        return {"AET": self.aet, "Host": self.host, "Port": self.port}


def orthanc_available(executable: str = ORTHANC_BINARY) -> bool:
    """True if the Orthanc server executable exists and may be run."""
    return os.access(executable, os.X_OK)


class OrthancProcess:
    """One Orthanc server in ``directory``, started by :meth:`start` or ``with``.

    ``config`` is merged over the safe defaults key by key (top level), except
    ``DicomModalities``, whose entries are added to those from ``modalities``.
    ``lua_script`` is loaded through ``LuaScripts`` (absolute path).
    """

    def __init__(
        self,
        directory: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Modality] | None = None,
        config: Mapping[str, Any] | None = None,
        lua_script: Path | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
        user: str = "meshpacs-test",
        password: str = "meshpacs-test-password",
        executable: str = ORTHANC_BINARY,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        detached: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.aet = aet
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.user = user
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._proc: subprocess.Popen[bytes] | None = None
        self.config = self._build_config(password, modalities or {}, config or {}, lua_script)

    # -- paths and addresses -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / "orthanc.json"

    @property
    def storage_dir(self) -> Path:
        return self.directory / "storage"

    @property
    def log_path(self) -> Path:
        return self.directory / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.http_port}"

    @property
    def modality(self) -> Modality:
        """This Orthanc as a DICOM peer, for another AE's destination list."""
        return Modality(self.aet, self.dicom_port)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise OrthancError("Orthanc is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Write the config, start Orthanc and wait until ``/system`` answers."""
        if not orthanc_available(self.executable):
            raise OrthancUnavailable(f"{self.executable} is not installed")
        if self._proc is not None:
            raise OrthancError("Orthanc was already started")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")
        env = dcmtk_env()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.executable, str(self.config_path)],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detached,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout`` s, then SIGKILL; returns the exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, chars: int = _LOG_TAIL) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._proc.returncode} while starting;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self.rest("GET", "/system", timeout=2.0)
                return
            except (OSError, OrthancError):
                pass
            if time.monotonic() > deadline:
                raise OrthancError(
                    f"Orthanc did not answer /system within {self.startup_timeout:g} s;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    # -- REST ----------------------------------------------------------------------------

    def rest_raw(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        timeout: float = 120.0,
    ) -> bytes:
        """One REST call; returns the body as bytes. A dict or list body is sent as JSON."""
        if isinstance(body, bytes):
            data: bytes | None = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        elif body is None:
            data = None
        else:
            data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method.upper())
        request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload: bytes = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise OrthancError(
                f"{method.upper()} {path}: HTTP {exc.code}: {detail}", status=exc.code
            ) from None
        return payload

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        timeout: float = 120.0,
    ) -> Any:
        """One REST call; returns the parsed JSON answer (``None`` for an empty body)."""
        payload = self.rest_raw(method, path, body, timeout=timeout)
        return json.loads(payload) if payload.strip() else None

    def upload(self, data: bytes) -> dict[str, Any]:
        """``POST /instances`` with one Part 10 file; Orthanc's answer (``ID``, ``Status``…)."""
        answer: dict[str, Any] = self.rest("POST", "/instances", data)
        return answer

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics")["CountInstances"])

    # -- config --------------------------------------------------------------------------

    def _build_config(
        self,
        password: str,
        modalities: Mapping[str, Modality],
        extra: Mapping[str, Any],
        lua_script: Path | None,
    ) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": f"meshpacs-test-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpDescribeErrors": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: password},
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomModalities": {},
            "DicomScuTimeout": 30,
            "SaveJobs": False,
            "ExecuteLuaEnabled": False,
            "DeidentifyLogs": True,
            "LuaScripts": [],
        }
        extra = dict(extra)
        added = dict(extra.pop("DicomModalities", {}))
        config.update(extra)
        config["DicomModalities"] = {
            **{name: m.as_config() for name, m in modalities.items()},
            **added,
        }
        if lua_script is not None:
            config["LuaScripts"] = [*config["LuaScripts"], str(Path(lua_script).absolute())]
        return config

    def remove_storage(self) -> None:
        """Delete Orthanc's storage and index (only while it is stopped)."""
        if self.running:
            raise OrthancError("stop Orthanc before removing its storage")
        shutil.rmtree(self.storage_dir, ignore_errors=True)
