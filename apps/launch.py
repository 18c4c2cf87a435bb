"""Starting an app: the shared command line, the build-then-serve flow and ``launch``.

Launch defaults suit offline use: queue on, the app's theme and CSS, no SSR, the local URL
printed; a bundle that cannot be loaded is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import gradio as gr

from saescope.apps.adapter import ENV_BUNDLE, AppSetupError
from saescope.apps.style import CSS, THEME
from saescope.apps.uploads import MAX_FILE_SIZE


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PortInUse(ValueError):
    """The port asked for cannot be listened on; the message says what to do."""


def requested_address(host: str | None, port: int | None) -> tuple[str, int | None]:
    """The (host, port) :func:`launch` will use: the arguments, else GRADIO_SERVER_NAME/PORT."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    try:
        port = port or int(os.environ.get("GRADIO_SERVER_PORT", "0") or 0) or None
    except ValueError as err:
        raise PortInUse(
            f"GRADIO_SERVER_PORT={os.environ['GRADIO_SERVER_PORT']!r} is not a port number"
        ) from err
    return host, port


def check_port(host: str | None, port: int | None) -> None:
    """Raise :class:`PortInUse` unless ``port`` on ``host`` can be listened on now.

    Why: an app loads its bundle and warms up (seconds) before gradio binds the port; a port
    already taken must fail at once, before any of that. The test bind mirrors gradio's own
    (SO_REUSEADDR), so a port in TIME_WAIT is not mistaken for a busy one. No port: gradio picks
    a free one from 7860 up, nothing to check.
    """
    host, port = requested_address(host, port)
    if port is None:
        return
    if not 0 < port < 65536:
        raise PortInUse(f"port {port} is not a valid port number (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise PortInUse(f"cannot listen on host {host!r}: unknown address ({err})") from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except PermissionError as err:
            raise PortInUse(
                f"no permission to listen on port {port} of {host} (ports below 1024 need "
                "privileges); choose another with --port"
            ) from err
        except OSError as err:
            raise PortInUse(
                f"port {port} on {host} is already in use; choose another with --port N "
                "(or leave --port out to take the next free one), or stop the program using it"
            ) from err


def launch(
    demo: gr.Blocks,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    name: str = "app",
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    max_concurrency: int = 1,
):
    """Queue on, launch with the app's theme/CSS, print the URL; returns ``(app, local_url)``."""
    demo.queue(default_concurrency_limit=max_concurrency, max_size=64)
    host, port = requested_address(host, port)
    app, local_url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        theme=THEME,
        css=CSS,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        footer_links=["api"],
    )
    if not quiet:
        print(
            f"saescope {name} running at {local_url}"
            + (f" (public: {share_url})" if share_url else ""),
            flush=True,
        )
    if not prevent_thread_lock:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
    return app, local_url


def app_parser(prog: str, description: str, bundle: bool = True) -> argparse.ArgumentParser:
    """The command line every app shares: ``[--bundle] --host --port --share --no-examples``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    if bundle:
        p.add_argument(
            "--bundle",
            default=os.environ.get(ENV_BUNDLE) or None,
            help="bundle folder or Hub id (default: the offline default bundle, built once)",
        )
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument(
        "--no-examples", dest="examples", action="store_false", help="hide the example images"
    )
    return p


def serve(build, args, name: str, loading: str | None = None) -> int:
    """Build an app with ``build()`` (warm), print how long that took, launch it, print the URL.

    A port that is taken fails first, before loading anything; a bundle that cannot be loaded,
    or a port taken while it loaded, is one ``error:`` line and exit status 2, not a traceback.
    """
    t0 = time.perf_counter()
    try:
        check_port(args.host, args.port)
        if loading:
            print(loading, flush=True)
        demo = build()
    except (AppSetupError, PortInUse) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ready in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        launch(demo, args.host, args.port, args.share, name=name)
    except OSError as err:  # taken meanwhile (gradio: "Cannot find empty port in range")
        print(f"error: cannot listen on the requested port: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


def loading_line(bundle: str | None) -> str:
    return "loading bundle" + (f" {bundle}" if bundle else " (offline default)") + " …"


__all__ = [
    "PortInUse",
    "check_port",
    "free_port",
    "launch",
    "app_parser",
    "requested_address",
    "serve",
    "loading_line",
]
