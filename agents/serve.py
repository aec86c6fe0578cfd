"""``sleuth serve``: a read-only web page of a workspace's runs and their reports, on 127.0.0.1.

Routes (GET and HEAD only; anything else is 405):

=================================================  =================================================
``/``                                              the runs, with a live status (polls ``/api/runs``)
``/api/runs``                                      the runs as JSON (what ``sleuth runs --json`` says)
``/runs/<id>/reports/report.html`` / ``.md``       the run's report, rebuilt from its stored results on
                                                   every request (a running run shows what it has)
``/runs/<id>/reports/figures/<name>.svg``          a figure of the Markdown report
``/runs/<id>/experiments/<key>.json``              a stored result (the reports' evidence links)
``/static/runs.js``                                the page's one script
=================================================  =================================================

The server never writes: it reads the workspace as any reader does (no lock). It binds to
127.0.0.1 only, answers only requests whose ``Host`` is that address or ``localhost`` (a page
on another site cannot reach it through DNS rebinding), and sends a Content-Security-Policy
with every page: reports allow no script at all, the runs page only its own script.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from tools.errors import StorageError, UserInputError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_RUN = r"(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
_ROUTES = [
    ("index", re.compile(r"^/$")),
    ("api", re.compile(r"^/api/runs$")),
    ("script", re.compile(r"^/static/runs\.js$")),
    ("run", re.compile(rf"^/runs/{_RUN}/?$")),
    ("report", re.compile(rf"^/runs/{_RUN}/reports/report\.(?P<fmt>html|md)$")),
    ("figure", re.compile(rf"^/runs/{_RUN}/reports/figures/(?P<name>[a-z0-9_-]{{1,40}})\.svg$")),
    ("experiment", re.compile(rf"^/runs/{_RUN}/experiments/(?P<key>[0-9a-f]{{64}})\.json$")),
]


class _Reply(NamedTuple):
    status: HTTPStatus
    body: bytes
    kind: str
    csp: str | None = None
    extra: dict[str, str] | None = None


_TEXT = "text/plain; charset=utf-8"


class RunsServer(ThreadingHTTPServer):
    """The HTTP server of one workspace (``server.url`` once bound)."""

    daemon_threads = True

    def __init__(self, workspace: str | None, port: int = 0) -> None:
        from memory.runstore import RunStore
        from memory.workspace import Workspace

        self.workspace = Workspace.open(workspace)
        self.store = RunStore(self.workspace)
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as e:
            raise UserInputError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def runs_json(self) -> dict[str, Any]:
        rows = []
        for r in self.store.list():
            row = r.model_dump(mode="json")
            reportable = not r.damaged and (self.store.folder / r.id / "investigation.json").is_file()
            row["report"] = f"/runs/{r.id}/reports/report.html" if reportable else None
            rows.append(row)
        return {"workspace": str(self.workspace.path), "runs": rows}


class _Handler(BaseHTTPRequestHandler):
    server: RunsServer
    server_version = "circuitsleuth"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", _TEXT, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _answer(self, *, head: bool) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", _TEXT, head=head)
            return
        path = self.path.split("?", 1)[0]
        for name, pattern in _ROUTES:
            match = pattern.match(path)
            if match:
                try:
                    reply = getattr(self, f"_route_{name}")(**match.groupdict())
                except (UserInputError, StorageError) as e:
                    reply = _Reply(HTTPStatus.NOT_FOUND, f"{e}\n".encode(), _TEXT)
                except Exception:  # noqa: BLE001 - a bug shows as 500 here and in the log, not a dead server
                    log.exception("serving %s", path)
                    reply = _Reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", _TEXT)
                self._send(reply.status, reply.body, reply.kind, head=head, csp=reply.csp, extra=reply.extra)
                return
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", _TEXT, head=head)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, *, head: bool = False, csp: str | None = None,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", csp or "default-src 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # -- routes ---------------------------------------------------------------------------------------
    def _route_index(self) -> _Reply:
        from agents.report.render import page_environment

        page = page_environment().get_template("runs.html.j2").render(**self.server.runs_json())
        return _Reply(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", PAGE_CSP)

    def _route_api(self) -> _Reply:
        return _Reply(HTTPStatus.OK, json.dumps(self.server.runs_json()).encode(), "application/json")

    def _route_script(self) -> _Reply:
        return _Reply(HTTPStatus.OK, (STATIC / "runs.js").read_bytes(), "text/javascript; charset=utf-8")

    def _route_run(self, run: str) -> _Reply:
        self.server.store.open(run)
        return _Reply(HTTPStatus.FOUND, b"", _TEXT, extra={"Location": f"/runs/{run}/reports/report.html"})

    def _route_report(self, run: str, fmt: str) -> _Reply:
        from agents.report.render import CSP, render

        opened = self.server.store.open(run)
        if opened.investigation() is None:
            raise StorageError(f"run {run} has no report yet (status {opened.record.status})")
        kind = "text/html; charset=utf-8" if fmt == "html" else "text/markdown; charset=utf-8"
        return _Reply(HTTPStatus.OK, render(opened, fmt).encode(), kind, CSP)

    def _route_figure(self, run: str, name: str) -> _Reply:
        path = self.server.store.open(run).folder / "reports" / "figures" / f"{name}.svg"
        if not path.is_file():
            raise StorageError(f"run {run} has no figure {name}")
        return _Reply(HTTPStatus.OK, path.read_bytes(), "image/svg+xml", "default-src 'none'; style-src 'unsafe-inline'")

    def _route_experiment(self, run: str, key: str) -> _Reply:
        path = self.server.store.open(run).folder / "experiments" / f"{key}.json"
        if not path.is_file():
            raise StorageError(f"run {run} has no experiment {key[:12]}")
        return _Reply(HTTPStatus.OK, path.read_bytes(), "application/json")


def start_server(workspace: str | None, port: int = 0) -> tuple[RunsServer, threading.Thread]:
    """A server on a background thread (tests; ``port=0`` picks a free port)."""
    server = RunsServer(workspace, port)
    thread = threading.Thread(target=server.serve_forever, name="sleuth-serve", daemon=True)
    thread.start()
    return server, thread


def serve(workspace: str | None, *, port: int = 8765) -> None:
    """Serve until interrupted (``sleuth serve``)."""
    server = RunsServer(workspace, port)
    print(f"serving {server.workspace.path} at {server.url} (read-only; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
