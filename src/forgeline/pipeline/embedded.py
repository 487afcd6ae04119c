"""Prefect's temporary API server for `forgeline run`, started so that Ctrl-C reaches the flow only.

With no ``PREFECT_API_URL`` Prefect starts a temporary server as a child process in the caller's
process group. Ctrl-C in a terminal (SIGINT) or ``timeout``/``kill -- -PGID`` (SIGTERM) then reaches
that server too: it dies at once, and the interrupted flow spends minutes retrying to report its
crash to an API that is gone. Here the server runs in its own session, so the signal reaches only
the flow, which reports the crash and exits; the server is stopped at exit as before, and is sent
SIGTERM by the kernel if this process is killed outright (Linux ``PR_SET_PDEATHSIG``).

The temporary server's telemetry is off unless ``PREFECT_SERVER_ANALYTICS_ENABLED`` says otherwise:
it lives for one run, and offline it printed a "Failed to send telemetry" ERROR into every run's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from forgeline.settings import die_with_parent


ANALYTICS_ENV = "PREFECT_SERVER_ANALYTICS_ENABLED"


def _popen_own_session(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
    env = dict(os.environ if env is None else env)
    env.setdefault(ANALYTICS_ENV, "false")
    return subprocess.Popen(*args, env=env, start_new_session=True, preexec_fn=die_with_parent, **kwargs)  # type: ignore[call-overload]  # Prefect's own arguments, passed on


class _OwnSession:
    """``subprocess`` as seen by Prefect's server module: Popen starts a new session, telemetry off."""

    Popen = staticmethod(_popen_own_session)

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def start_temporary_server() -> str | None:
    """Start Prefect's temporary server in its own session unless an API URL is configured.

    Returns the API URL of the started server, or None when ``PREFECT_API_URL`` points elsewhere
    (a real server: nothing to start)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None  # a real server, or none allowed: Prefect's own behaviour applies
    import prefect.server.api.server as server_module

    server = server_module.SubprocessASGIServer()  # the instance every Prefect client in this process uses
    if not server.running:
        server_module.subprocess = _OwnSession()  # the module's name for subprocess, shimmed
        try:
            server.start()
        finally:
            server_module.subprocess = subprocess
    return server.api_url


def server_pid() -> int | None:
    """PID of the temporary server started here (None when none runs)."""
    import prefect.server.api.server as server_module

    proc = server_module.SubprocessASGIServer().server_process
    return proc.pid if proc is not None and proc.poll() is None else None



def run_process_group(cmd: list[str], grace_s: float = 10.0) -> int:
    """Run ``cmd`` as its own process group and take the whole group down with this process.

    ``mlflow ui`` starts uvicorn and several job-runner processes. Stopped with SIGTERM (as a supervisor
    or a container runtime stops a process: the PID alone), the command used to exit while they ran on,
    orphaned, holding the port. Here SIGTERM/SIGINT are forwarded to the group, whatever is left of it
    once the command has exited gets SIGTERM and then SIGKILL, and the kernel sends the child SIGTERM
    if this process is killed outright."""
    import time

    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent)

    def forward(sig: int, _frame: Any) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    from pathlib import Path

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields[0] state, fields[2] process group
            return True
    return False
