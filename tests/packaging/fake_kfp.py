"""A fake Kubeflow Pipelines API server (REST v2beta1), served on loopback by pipelines.loopback.ServerThread: the
endpoints `kfp.Client` calls to upload pipelines and versions, find or create experiments, create runs
and poll them.

It keeps everything in memory and records what it was sent, so a test drives the real `kfp.Client`
(and its generated kfp_server_api HTTP client) end to end. Runs report RUNNING on the first poll, then
the state given by `final_state`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web


@dataclass
class FakeKfp:
    token: str = "test-token"
    final_state: str = "SUCCEEDED"
    multi_user: bool = False
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)  # version id -> version, with its spec
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)

    def _next_id(self, kind: str) -> str:
        total = len(self.pipelines) + len(self.versions) + len(self.experiments) + len(self.runs)
        return f"{kind}-{total + 1}"

    # --- request handling -------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        # The real API server answers healthz without authorization; kfp.Client calls it when constructed.
        public = request.path.endswith("/healthz")
        if not public and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthenticated", "code": 16}, status=401)
        return await handler(request)

    @staticmethod
    def _filter_name(request: web.Request) -> str | None:
        raw = request.query.get("filter")
        if not raw:
            return None
        predicate = json.loads(raw)["predicates"][0]
        # protobuf JSON takes the enum by name or number (kfp.Client sends 1, the number of EQUALS)
        assert predicate["key"] == "display_name" and predicate["operation"] in ("EQUALS", 1), predicate
        return predicate["stringValue"]

    async def healthz(self, request):
        return web.json_response({"multi_user": self.multi_user})

    async def list_pipelines(self, request):
        name = self._filter_name(request)
        found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
        return web.json_response({"pipelines": found, "total_size": len(found)})

    async def _uploaded_spec(self, request) -> dict[str, Any]:
        """The pipeline spec, with the platform spec (when uploaded) kept under `platform_spec`."""
        form = await request.post()
        documents = list(yaml.safe_load_all(form["uploadfile"].file.read()))
        return {**documents[0], **({"platform_spec": documents[1]} if len(documents) > 1 else {})}

    async def upload_pipeline(self, request):
        spec = await self._uploaded_spec(request)
        name = request.query["name"]
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return web.json_response({"error": f"pipeline {name} exists"}, status=409)
        pipeline_id = self._next_id("pipeline")
        self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "display_name": name}
        self._add_version(pipeline_id, name, spec)  # the server makes a first version named like the pipeline
        return web.json_response(self.pipelines[pipeline_id])

    def _add_version(self, pipeline_id: str, name: str, spec: dict) -> dict:
        version_id = self._next_id("version")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id, "display_name": name}
        self.versions[version_id] = {**version, "spec": spec}
        return version

    async def upload_version(self, request):
        spec = await self._uploaded_spec(request)
        pipeline_id, name = request.query["pipelineid"], request.query["name"]
        if pipeline_id not in self.pipelines:
            return web.json_response({"error": f"no pipeline {pipeline_id}"}, status=404)
        if any(v["display_name"] == name and v["pipeline_id"] == pipeline_id for v in self.versions.values()):
            return web.json_response({"error": f"version {name} exists"}, status=409)
        return web.json_response(self._add_version(pipeline_id, name, spec))

    async def list_versions(self, request):
        pipeline_id, name = request.match_info["pipeline_id"], self._filter_name(request)
        found = [
            {k: v for k, v in version.items() if k != "spec"}
            for version in self.versions.values()
            if version["pipeline_id"] == pipeline_id and (name is None or version["display_name"] == name)
        ]
        return web.json_response({"pipeline_versions": found, "total_size": len(found)})

    async def list_experiments(self, request):
        name, namespace = self._filter_name(request), request.query.get("namespace")
        found = [
            e
            for e in self.experiments.values()
            if (name is None or e["display_name"] == name)
            and (namespace is None or e["namespace"] == namespace)
        ]
        return web.json_response({"experiments": found, "total_size": len(found)})

    async def create_experiment(self, request):
        body = await request.json()
        experiment_id = self._next_id("experiment")
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id,
            "display_name": body["display_name"],
            "namespace": body.get("namespace") or "",
        }
        return web.json_response(self.experiments[experiment_id])

    async def create_run(self, request):
        body = await request.json()
        reference = body["pipeline_version_reference"]
        if (
            reference["pipeline_version_id"] not in self.versions
            or body["experiment_id"] not in self.experiments
        ):
            return web.json_response({"error": "unknown version or experiment"}, status=404)
        run_id = self._next_id("run")
        self.runs[run_id] = {**body, "run_id": run_id, "state": "PENDING"}
        return web.json_response(self.runs[run_id])

    async def get_run(self, request):
        run_id = request.match_info["run_id"]
        if run_id not in self.runs:
            return web.json_response({"error": f"no run {run_id}"}, status=404)
        self.polls[run_id] = self.polls.get(run_id, 0) + 1
        self.runs[run_id]["state"] = "RUNNING" if self.polls[run_id] == 1 else self.final_state
        return web.json_response(self.runs[run_id])

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        prefix = "/apis/v2beta1"
        app.router.add_get(f"{prefix}/healthz", self.healthz)
        app.router.add_get(f"{prefix}/pipelines", self.list_pipelines)
        app.router.add_post(f"{prefix}/pipelines/upload", self.upload_pipeline)
        app.router.add_post(f"{prefix}/pipelines/upload_version", self.upload_version)
        app.router.add_get(f"{prefix}/pipelines/{{pipeline_id}}/versions", self.list_versions)
        app.router.add_get(f"{prefix}/experiments", self.list_experiments)
        app.router.add_post(f"{prefix}/experiments", self.create_experiment)
        app.router.add_post(f"{prefix}/runs", self.create_run)
        app.router.add_get(f"{prefix}/runs/{{run_id}}", self.get_run)
        return app
