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
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", "0") or 0) or None
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

    A bundle that cannot be loaded is one ``error:`` line and exit status 2, not a traceback.
    """
    t0 = time.perf_counter()
    try:
        if loading:
            print(loading, flush=True)
        demo = build()
    except AppSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ready in {time.perf_counter() - t0:.1f} s", flush=True)
    launch(demo, args.host, args.port, args.share, name=name)
    return 0


def loading_line(bundle: str | None) -> str:
    return "loading bundle" + (f" {bundle}" if bundle else " (offline default)") + " …"


__all__ = ["free_port", "launch", "app_parser", "serve", "loading_line"]
