"""A local HTTP server standing in for api.kaggle.com, for tests that run the real kaggle package (never
the real service): token introspection, the three requests of a competition submission (start the
upload, PUT the file, create the submission), and the download of the competition's files (a redirect to
the zip). It checks credentials as Kaggle does and answers 401 to unknown ones, 403 where told to."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_USER = "token-user"


class FakeKaggle(BaseHTTPRequestHandler):
    """Kaggle's API as far as the tests need it; configure a subclass per server (see `serve`)."""

    log: list[dict] = []  # noqa: RUF012 (every request: method, path, Authorization header, JSON or data)
    tokens: frozenset[str] = frozenset()  # access tokens that introspection and requests accept
    keys: frozenset[tuple[str, str]] | None = None  # accepted (username, key) pairs; None accepts any
    forbidden: bool = False  # answer 403 to the submission (rules not accepted, token without the scope)
    zip_bytes: bytes = b""  # the competition zip DownloadDataFiles redirects to

    def log_message(self, *args: object) -> None:
        """Keep the test output quiet."""

    def reply(self, body: dict, status: int = 200) -> None:
        """Answer `status` with the JSON `body`."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        """Return the request body."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        """Return whether the request's credentials are ones this server accepts."""
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth.removeprefix("Bearer ") in self.tokens
        if auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
            return self.keys is None or (user, key) in self.keys
        return False

    def do_POST(self) -> None:
        entry = {"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "json": {}}
        entry["json"] = json.loads(self.body() or b"{}")
        self.log.append(entry)
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path.endswith("/IntrospectToken"):
            if entry["json"].get("token") in self.tokens:
                self.reply({"active": True, "username": TOKEN_USER})
            else:
                self.reply({"code": 403, "message": "Permission denied"}, 403)
        elif not self.authorized():
            self.reply({"code": 401, "message": "Unauthenticated"}, 401)
        elif self.forbidden:
            self.reply({"code": 403, "message": "You must accept this competition's rules"}, 403)
        elif self.path.endswith("/StartSubmissionUpload"):
            self.reply({"token": "blob-token-1", "createUrl": f"{host}/upload/blob-token-1"})
        elif self.path.endswith("/CreateSubmission"):
            self.reply({"message": "Successfully submitted to Digit Recognizer", "ref": 7})
        elif self.path.endswith("/DownloadDataFiles"):
            self.send_response(302)
            self.send_header("Location", f"{host}/files/digit-recognizer.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def do_GET(self) -> None:
        self.log.append({"method": "GET", "path": self.path})
        if self.path != "/files/digit-recognizer.zip":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(self.zip_bytes)))
        self.end_headers()
        self.wfile.write(self.zip_bytes)

    def do_PUT(self) -> None:
        self.log.append({"method": "PUT", "path": self.path, "data": self.body()})
        self.reply({})


@contextmanager
def serve(**config: object) -> Iterator[tuple[str, list[dict]]]:
    """Run a fake Kaggle API on 127.0.0.1 configured with `config` (FakeKaggle's class settings); yield its
    URL and its request log."""
    handler = type("ConfiguredFakeKaggle", (FakeKaggle,), {"log": [], **config})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.log
    finally:
        server.shutdown()
        server.server_close()


def basic(user: str, key: str) -> str:
    """Return the Authorization header of the legacy `user`:`key` credentials."""
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
