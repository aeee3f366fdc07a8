"""A small Hugging Face Hub on 127.0.0.1, for tests: the endpoints that pushes and downloads call, nothing more.

Repos live in memory: each branch is a list of commits, each commit a full {path: bytes} snapshot. Every file is
accepted as a regular (non-LFS) upload, so commits carry their files inline. Commits to a repo named in
`failing_repos` answer 507 (a server error that huggingface_hub does not retry), and any request about a repo named
in `unreachable_repos` is hung up on unanswered (the network failing), to test a push that breaks off.
"""

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"


class HubError(Exception):
    """An error answer of the Hub: HTTP status, message and the X-Error-Code huggingface_hub maps to an exception."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.response = status, {"error": message}, {"X-Error-Code": code}


@dataclass
class Repo:
    private: bool
    branches: dict = field(default_factory=lambda: {"main": [("0" * 40, {})]})  # name -> [(sha, files)]

    def head(self, revision):
        """(sha, files) of a branch's last commit, or of the commit whose sha is `revision`."""
        if revision in self.branches:
            return self.branches[revision][-1]
        return next(commit for commits in self.branches.values() for commit in commits if commit[0] == revision)

    def has(self, revision):
        return revision in self.branches or any(sha == revision for c in self.branches.values() for sha, _ in c)


class LocalHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[str] = []
        self.failing_repos: set[str] = set()
        self.unreachable_repos: set[str] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def client_env(self, hf_home) -> dict[str, str]:
        """The environment of a process that uses this Hub as the Hugging Face Hub, with its own cache."""
        return {
            **os.environ,
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": "hf_test",
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "0",
        }

    def files(self, repo_id, repo_type="model", revision="main") -> dict[str, bytes]:
        return self.repos[repo_type, repo_id].head(revision)[1]

    def commits(self, repo_id, repo_type="model", revision="main") -> int:
        return len(self.repos[repo_type, repo_id].branches[revision]) - 1

    # Endpoints. Each returns (status, json_or_bytes, headers).
    def create_repo(self, body):
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"user/{body['name']}"
        key = (body.get("type") or "model", repo_id)
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": f"{self.url}/{repo_id}"}, {}
        self.repos[key] = Repo(private=body.get("visibility") == "private" or bool(body.get("private")))
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}

    def snapshot(self, repo_type, repo_id, revision) -> tuple[Repo, str, dict]:
        """The repo, and the sha and files of its `revision` (a branch or a commit)."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if not repo.has(revision):
            raise HubError(404, "Revision not found", "RevisionNotFound")
        return repo, *repo.head(revision)

    def repo_info(self, repo_type, repo_id, revision):
        repo, sha, files = self.snapshot(repo_type, repo_id, revision)
        siblings = [{"rfilename": path} for path in sorted(files)]
        return 200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings}, {}

    def preupload(self, body):
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        return 200, {"files": files}, {}

    def create_branch(self, repo_type, repo_id, branch):
        repo = self.repos[repo_type, repo_id]
        if branch in repo.branches:
            return 409, {"error": "Reference already exists"}, {}
        repo.branches[branch] = [repo.head("main")]
        return 200, {}, {}

    def commit(self, repo_type, repo_id, revision, lines):
        if repo_id in self.failing_repos:
            return 507, {"error": "Insufficient Storage: the commit could not be stored"}, {}
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or revision not in repo.branches:
            return 404, {"error": "Repository or revision not found"}, {"X-Error-Code": "RepoNotFound"}
        files = dict(repo.head(revision)[1])
        for line in lines:
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return 400, {"error": f"unsupported commit entry {item['key']}"}, {}
        sha = hashlib.sha1(json.dumps(sorted(files)).encode() + b"".join(files.values())).hexdigest()
        repo.branches[revision].append((sha, files))
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True}, {}

    def resolve(self, repo_type, repo_id, revision, path):
        _, sha, files = self.snapshot(repo_type, repo_id, revision)
        if path not in files:
            return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        content = files[path]
        return 200, content, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}

    def tree(self, repo_type, repo_id, revision, folder, recursive):
        """The files and folders under `folder`, as `list_repo_tree` (and so `load_dataset` of a Hub id) reads them."""
        prefix = f"{folder}/" if folder else ""
        entries = {}
        for path, content in self.snapshot(repo_type, repo_id, revision)[2].items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else 1):  # the folders on the way
                entries.setdefault(prefix + "/".join(parts[:depth]), {"type": "directory", "oid": "0" * 40})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
            else:
                entries.setdefault(prefix + parts[0], {"type": "directory", "oid": "0" * 40})
        if folder and not entries:
            return 404, {"error": f"{folder} does not exist"}, {"X-Error-Code": "EntryNotFound"}
        return 200, [{"path": path, **entry} for path, entry in sorted(entries.items())], {}

    def route(self, method, path, body):
        path, query = unquote(urlsplit(path).path), parse_qs(urlsplit(path).query)
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {}, {}
        if m := re.fullmatch(rf"/api/{REPO}/preupload/(?P<rev>[^/]+)", path):
            return self.preupload(json.loads(body))
        if m := re.fullmatch(rf"/api/{REPO}/commit/(?P<rev>[^/]+)", path):
            return self.commit(m["type"], m["repo"], m["rev"], body.decode().splitlines())
        if method == "POST" and (m := re.fullmatch(rf"/api/{REPO}/branch/(?P<rev>[^/]+)", path)):
            return self.create_branch(m["type"], m["repo"], m["rev"])
        if m := re.fullmatch(rf"/api/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<p>.+))?", path):
            recursive = query.get("recursive") == ["true"]
            return self.tree(m["type"], m["repo"], m["rev"], (m["p"] or "").strip("/"), recursive)
        if m := re.fullmatch(rf"/api/{REPO}(?:/revision/(?P<rev>[^/]+))?", path):
            return self.repo_info(m["type"], m["repo"], m["rev"] or "main")
        if m := re.fullmatch(
            r"/(?:(?P<type>dataset|space)s/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<p>.+)", path
        ):
            return self.resolve(m["type"] or "model", m["repo"], m["rev"], m["p"])
        return 404, {"error": f"the local hub has no endpoint {method} {path}"}, {}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if any(repo in unquote(self.path) for repo in hub.unreachable_repos):
                    self.close_connection = True  # no answer at all: the client sees the connection drop
                    return
                with hub.lock:
                    hub.requests.append(f"{method} {self.path}")
                    try:
                        status, payload, headers = hub.route(method, self.path, body)
                    except HubError as error:
                        status, payload, headers = error.response
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header(
                    "Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_HEAD(self):
                self._serve("HEAD")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler
