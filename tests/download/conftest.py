"""Helpers of the download tests: a Hugging Face Hub on loopback serving one model repo, for the real
huggingface_hub download code.

It answers the calls `HfApi.model_info` and `snapshot_download` make: the revision API (a branch resolves
to a commit), the recursive tree listing of a commit, and HEAD/GET of each file at that commit. Every
requested path is recorded, so a test can tell what the client asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repo: str, files: dict[str, bytes], branches: dict[str, str]):
        """`files` is the repo's content at every commit named in `branches` (branch -> commit)."""
        self.repo = repo
        self.files = files
        self.branches = branches
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.branches.values() else None)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                api = f"/api/models/{hub.repo}/"
                if path.startswith(api + "revision/"):
                    commit = hub.commit(path[len(api + "revision/") :])
                    siblings = [{"rfilename": name} for name in hub.files]
                    return self._json({"id": hub.repo, "sha": commit, "siblings": siblings}, commit, body)
                if path.startswith(api + "tree/"):
                    commit = hub.commit(path[len(api + "tree/") :].split("/")[0])
                    entries = [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in hub.files.items()
                    ]
                    return self._json(entries, commit, body)
                resolve = f"/{hub.repo}/resolve/"
                if path.startswith(resolve):
                    revision, _, name = path[len(resolve) :].partition("/")
                    commit = hub.commit(revision)
                    if commit is None or name not in hub.files:
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
                    data = hub.files[name]
                    headers = {
                        "X-Repo-Commit": commit,
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                        "Content-Type": "application/octet-stream",
                    }
                    return self._send(200, data, headers, body)
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)

            def _json(self, payload, commit: str | None, body: bool) -> None:
                if commit is None:
                    return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, body)
                self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, body)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


def repo_files(model_dir: Path) -> dict[str, bytes]:
    """The files of a local model folder, as a repo would hold them."""
    return {
        p.relative_to(model_dir).as_posix(): p.read_bytes()
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    }
