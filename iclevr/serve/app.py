"""The web side of `iclevr serve`: a starlette app with three routes and the uvicorn server that runs it.

  GET  /               the page (page.html with the options inlined: objects, limits, defaults, model)
  GET  /api/options    the same options as JSON
  POST /api/generate   a JSON request -> a stream of newline-delimited JSON events (jobs.py lists them);
                       a bad request is answered 400 {"type": "error", "message"} before anything is queued

Why starlette + uvicorn and not Gradio: two small pure-Python packages, and a page written here in plain
HTML/JS that loads nothing from the network (Gradio's front end pulls fonts and scripts from CDNs unless
configured otherwise, and the package is ~100 MB of dependencies). The stream is read with fetch(), so the
browser closing the page closes the connection, which cancels the job (see stream()).

Ctrl-C or SIGTERM: every job is cancelled (pages see "stopped: the server is stopping"), the server closes
its connections and `serve` returns normally.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from importlib import resources
from ipaddress import ip_address
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from iclevr.errors import UserError
from iclevr.serve.jobs import TERMINAL, JobQueue, QueueFull

INSTALL = 'the web page needs the optional serve extra: pip install -e ".[serve]" (starlette and uvicorn)'
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeSettings(BaseModel):
    """Settings of `iclevr serve`."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = Field(
        None,
        description="Run folder or .safetensors weights; empty = the newest "
        "run under checkpoints/, else the packaged pretrained model.",
    )
    evaluator: Path | None = Field(
        None, description="Evaluator file for the verdicts; empty = the project's own (cached, else packaged)."
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind; anything but the local "
        "machine makes the page reachable from the network (said at start).",
    )
    port: int = Field(7860, ge=0, le=65535, description="TCP port (0 = any free port).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    queue: int = Field(16, ge=1, le=1000, description="Generations that may wait behind the running one.")


def require_extra() -> None:
    """Raise the one-line install hint when starlette or uvicorn is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None


def is_local(host: str) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1, localhost)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def page_html(options: dict) -> str:
    """The page with its options inlined as JSON (escaped so no value can close the script tag)."""
    text = resources.files("iclevr.serve").joinpath("page.html").read_text(encoding="utf-8")
    return text.replace("__OPTIONS__", json.dumps(options).replace("<", "\\u003c"))


def build_app(engine, jobs: JobQueue):
    """The ASGI app: the page, its options, and the streaming generate endpoint."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from iclevr.serve.request import parse_request

    options = engine.options()
    html = page_html(options)

    async def page(request):
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def get_options(request):
        return JSONResponse(options)

    async def generate(request):
        try:
            req = engine.check(parse_request(await request.body(), engine.defaults()))
        except UserError as e:
            return JSONResponse({"type": "error", "message": str(e)}, status_code=400)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: dict) -> None:  # called from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

        try:
            job = jobs.submit(req, emit)
        except QueueFull as e:
            return JSONResponse({"type": "error", "message": str(e)}, status_code=503)

        async def stream():
            try:
                while True:
                    event = await events.get()
                    yield json.dumps(event) + "\n"
                    if event["type"] in TERMINAL:
                        return
            finally:  # done, or the browser went away (starlette cancels this generator): free the worker
                jobs.cancel(job)

        return StreamingResponse(
            stream(),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/options", get_options),
            Route("/api/generate", generate, methods=["POST"]),
        ]
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a UserError saying why not (port in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise UserError(f"--host {host}: not an address of this machine") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(app, jobs: JobQueue):
    """A uvicorn server whose Ctrl-C / SIGTERM cancels every job first, then stops without re-raising."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # a signal handler: no locks here, a thread does the work
            self.force_exit = self.should_exit  # a second signal: stop without waiting for connections
            self.should_exit = True
            threading.Thread(target=jobs.close, kwargs={"timeout": None}, daemon=True).start()

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="off")
    return Server(config)


def url_of(sock: socket.socket, host: str) -> str:
    """The page's address for the console line."""
    port = sock.getsockname()[1]
    shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(settings: ServeSettings, console=None, ready=None) -> dict:
    """Load the model, listen, serve the page until Ctrl-C / SIGTERM; returns {"url", "served"}.

    `ready(url)` is called once the socket listens (tests use it)."""
    require_extra()
    from iclevr.serve.engine import Engine

    engine = Engine(settings.checkpoint, settings.evaluator, settings.device)
    sock = bind(settings.host, settings.port)
    jobs = JobQueue(engine.run, limit=settings.queue)
    server = make_server(build_app(engine, jobs), jobs)
    url = url_of(sock, settings.host)
    if console is not None:
        console.print(engine.model_line, markup=False, soft_wrap=True)
        console.print(engine.evaluator_line, markup=False, soft_wrap=True)
        if not is_local(settings.host):
            console.print(
                f"note: listening on {settings.host}, so any machine that can reach this one can use "
                "the page (it has no login); the default --host 127.0.0.1 keeps it local",
                markup=False,
                soft_wrap=True,
            )
        console.print(f"serving on {url} (Ctrl-C stops)", markup=False, soft_wrap=True)
    if ready is not None:
        ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        jobs.close(timeout=5)
        sock.close()
    return {"url": url, "served": jobs.served}
