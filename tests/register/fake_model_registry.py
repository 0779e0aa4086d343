"""A Kubeflow Model Registry REST server on loopback (pipelines.loopback.ServerThread), implementing the
endpoints the `model-registry` client calls to register a model, with the state they need (registered
models, versions, artifacts with server-made ids). Every request is recorded with its body and
Authorization header, for the tests to check the payloads."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from aiohttp import web

API = "/api/model_registry/v1"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: dict | None
    authorization: str | None


@dataclass
class FakeModelRegistry:
    token: str = "registry-token"
    calls: list[Call] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)  # id -> registered model
    versions: dict[str, dict] = field(default_factory=dict)  # id -> model version
    artifacts: dict[str, list[dict]] = field(default_factory=dict)  # version id -> artifacts
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @web.middleware
    async def _record(self, request: web.Request, handler):
        body = await request.json() if request.can_read_body else None
        self.calls.append(
            Call(
                request.method, request.path, dict(request.query), body, request.headers.get("Authorization")
            )
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"code": "401", "message": "unauthorized"}, status=401)
        return await handler(request)

    def _stamp(self, body: dict) -> dict:
        now = str(int(time.time() * 1000))
        return {
            **body,
            "id": str(next(self._ids)),
            "createTimeSinceEpoch": now,
            "lastUpdateTimeSinceEpoch": now,
        }

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response({"code": "404", "message": f"{what} not found"}, status=404)

    async def list_models(self, request):
        items = list(self.models.values())
        page_size = int(request.query.get("pageSize", 100))
        return web.json_response(
            {
                "items": items[:page_size],
                "nextPageToken": "",
                "pageSize": page_size,
                "size": len(items[:page_size]),
            }
        )

    async def find_model(self, request):
        name = request.query.get("name")
        found = next((m for m in self.models.values() if m["name"] == name), None)
        return web.json_response(found) if found else self._not_found(f"registered model {name}")

    async def create_model(self, request):
        model = self._stamp({**await request.json(), "state": "LIVE"})
        self.models[model["id"]] = model
        return web.json_response(model, status=201)

    async def find_version(self, request):
        name, parent = request.query.get("name"), request.query.get("parentResourceId")
        found = next(
            (v for v in self.versions.values() if v["name"] == name and v["registeredModelId"] == parent),
            None,
        )
        return web.json_response(found) if found else self._not_found(f"model version {name}")

    async def create_version(self, request):
        body = await request.json()
        if body.get("registeredModelId") not in self.models:
            return self._not_found(f"registered model {body.get('registeredModelId')}")
        version = self._stamp({**body, "state": "LIVE"})
        self.versions[version["id"]] = version
        return web.json_response(version, status=201)

    async def add_artifact(self, request):
        version_id = request.match_info["version_id"]
        if version_id not in self.versions:
            return self._not_found(f"model version {version_id}")
        artifact = self._stamp(await request.json())
        self.artifacts.setdefault(version_id, []).append(artifact)
        return web.json_response(artifact, status=201)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(f"{API}/registered_models", self.list_models)
        app.router.add_post(f"{API}/registered_models", self.create_model)
        app.router.add_get(f"{API}/registered_model", self.find_model)
        app.router.add_get(f"{API}/model_version", self.find_version)
        app.router.add_post(f"{API}/model_versions", self.create_version)
        app.router.add_post(f"{API}/model_versions/{{version_id}}/artifacts", self.add_artifact)
        return app
