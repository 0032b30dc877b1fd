"""``diffaudit app``: start the Streamlit app on the results folders (cheap to import)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import click

from diffaudit.errors import DiffauditError


def entry_script() -> Path:
    """The app's entry script, installed with the package next to its ``pages/`` folder."""
    import diffaudit.app

    return Path(diffaudit.app.__file__).resolve().parent / "Home.py"


def streamlit_argv(port: int, host: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry_script()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be bound before Streamlit starts (it would print a long log and a traceback).

    Binds and releases at once with SO_REUSEADDR, as Streamlit's server does, so a port in TIME_WAIT passes
    and only a port some process listens on (or a host that is not this machine's) is refused.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DiffauditError(
            f"--host {host!r} is not an address of this machine; use 127.0.0.1 or 0.0.0.0."
        ) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise DiffauditError(
                f"--port {port}: {host}:{port} cannot be used ({e.strerror or e}; another app may be running "
                "there); pick a free port with --port."
            ) from None


@click.command("app", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--results",
    "results",
    multiple=True,
    metavar="DIR",
    help="folder with audits and sweeps (repeatable; default reports/)",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to bind; the default keeps the app on this machine (0.0.0.0 exposes it)",
)
def app_cmd(results, port, host):
    """Browse audits and sweeps in a local Streamlit app (reads results; computes nothing).

    \b
    Examples:
      diffaudit app                                   # reports/ on http://127.0.0.1:8501
      diffaudit app --results reports --results runs/sweep1 --port 8600
    """
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise DiffauditError(
            "the app needs Streamlit; install it with: pip install 'diffaudit[app]'."
        ) from None
    roots = [Path(r).expanduser() for r in (results or ("reports",))]
    for r in roots:
        if os.pathsep in str(r):
            raise DiffauditError(
                f"--results {r}: a folder name containing {os.pathsep!r} is not supported; rename it."
            )
        if r.exists() and not r.is_dir():
            raise DiffauditError(f"--results {r} is a file; pass a folder of audits or sweeps.")
    check_port(host, port)
    env = dict(os.environ)
    env["DIFFAUDIT_RESULTS"] = os.pathsep.join(str(r.resolve()) for r in roots)
    click.echo(
        f"diffaudit app on http://{host}:{port} (results: {', '.join(str(r) for r in roots)}); Ctrl+C stops it.",
        err=True,
    )
    argv = streamlit_argv(port, host)
    if os.name == "posix":
        # Become the Streamlit server (same PID), so a SIGTERM/SIGINT sent to `diffaudit app` stops it
        # instead of orphaning a child process.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 0
