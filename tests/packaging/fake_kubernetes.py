"""A fake Kubernetes API server with a fake Training Operator and a fake Kubeflow Trainer v2, served on
loopback by pipelines.loopback.ServerThread.

It implements what components/train/multinode/ calls through the official kubernetes client: API
discovery of the engines it serves (`engines`), PyTorchJobs and TrainJobs (create, get, delete), pods
(list by label selector, get) and pod logs (follow, tail). Creating a job starts one local process per
pod, the way the controllers start pods: the container's command, its env with Secret and ConfigMap
references resolved, and the engine's rendezvous variables (PyTorchJob: MASTER_ADDR, MASTER_PORT,
WORLD_SIZE, RANK, PET_*; TrainJob: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
PET_MASTER_PORT). Each "pod" gets its own DISTILL_WORKDIR, as pods get their own disk. Pod phases follow
the processes; a job succeeds when every pod has, and fails as soon as one pod fails, except that a
TrainJob first restarts all its pods (a JobSet restart) as often as its runtime's
failurePolicy.maxRestarts allows. A TrainJob must name a ClusterTrainingRuntime in `runtimes`, and its
pod container starts from the runtime's, with the TrainJob's trainer fields on top, as Trainer does.
It also serves what components/common/inference_service.py calls: KServe InferenceServices (create,
get, replace), stored as given with a resourceVersion that a replace must match.
Every namespaced request is recorded as the RBAC rule it needs (`api_calls`), for comparing with the Role.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.conftest import free_port

JOB_PATH = "/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
TRAINJOB_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs"
# Engine -> (discovery path, the resource it lists).
ENGINE_APIS = {
    "pytorchjob": ("/apis/kubeflow.org/v1", "pytorchjobs", "PyTorchJob"),
    "trainjob": ("/apis/trainer.kubeflow.org/v1alpha1", "trainjobs", "TrainJob"),
}
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"


def rbac_rule(method: str, path: str, query) -> tuple[str, str, str]:
    """The (group, resource, verb) that the API server authorizes a namespaced request as."""
    prefix, _, rest = path.partition("/namespaces/")
    group = "" if prefix == "/api/v1" else prefix.split("/")[2]
    resource, *name_and_subresource = rest.split("/")[1:]
    named = bool(name_and_subresource)
    if len(name_and_subresource) == 2:
        resource = f"{resource}/{name_and_subresource[1]}"
    if method == "GET":
        verb = "watch" if query.get("watch") else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return group, resource, verb


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    job: str = ""

    @property
    def phase(self) -> str:
        code = self.process.poll()
        return "Running" if code is None else ("Succeeded" if code == 0 else "Failed")


@dataclass
class FakeKubernetes:
    workdir: Path
    token: str = "k8s-token"
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    jobs: dict[tuple[str, str], dict] = field(default_factory=dict)
    trainjobs: dict[tuple[str, str], dict] = field(default_factory=dict)
    # ClusterTrainingRuntimes installed: name -> object (e.g. manifests/trainer's distill-torch).
    runtimes: dict[str, dict] = field(default_factory=dict)
    # The engines whose CRDs the API server serves (API discovery).
    engines: set[str] = field(default_factory=lambda: {"pytorchjob", "trainjob"})
    # TrainJob name -> JobSet restarts so far.
    restarts: dict[str, int] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    # Pods that exist without a job, e.g. the KFP train pod: name -> Pod JSON as the API returns it.
    other_pods: dict[str, dict] = field(default_factory=dict)
    created: list[dict] = field(default_factory=list)
    inference_services: dict[tuple[str, str], dict] = field(default_factory=dict)
    # Reads of an InferenceService before KServe reports it Ready (None: never, its predictor failing).
    isvc_ready_after: int | None = 1
    isvc_reads: dict[tuple[str, str], int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    # Pods of a TrainJob that failed before a JobSet restart replaced them.
    failed_pods: list[Pod] = field(default_factory=list)
    # Every request as the RBAC rule it needs: (API group, resource[/subresource], verb).
    api_calls: set[tuple[str, str, str]] = field(default_factory=set)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        if "/namespaces/" in request.path:  # discovery is open to every account (system:discovery)
            self.api_calls.add(rbac_rule(request.method, request.path, request.query))
        return await handler(request)

    # --- the operator -----------------------------------------------------------------------------

    def _resolve_env(self, container: dict) -> dict[str, str]:
        env = {}
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
                continue
            source = variable["valueFrom"]
            kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
            reference = source[kind]
            store = self.secrets if kind == "secretKeyRef" else self.config_maps
            value = store.get(reference["name"], {}).get(reference["key"])
            if value is None and not reference.get("optional"):
                raise KeyError(f"{kind} {reference['name']}/{reference['key']} does not exist")
            if value is not None:
                env[variable["name"]] = value
        return env

    def _start_pods(self, job: dict) -> None:
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        replica_specs = job["spec"]["pytorchReplicaSpecs"]
        total = sum(spec["replicas"] for spec in replica_specs.values())
        nproc = int(job["spec"].get("nprocPerNode", "1"))
        port = free_port()
        rank = 0
        for replica_type in ("Master", "Worker"):
            spec = replica_specs.get(replica_type)
            for index in range(spec["replicas"] if spec else 0):
                container = spec["template"]["spec"]["containers"][0]
                pod_name = f"{name}-{replica_type.lower()}-{index}"
                env = {
                    **self.base_env,
                    **self._resolve_env(container),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    "WORLD_SIZE": str(total * nproc),
                    "RANK": str(rank),
                    "PET_NODE_RANK": str(rank),
                    "PET_NNODES": str(total),
                    "PET_NPROC_PER_NODE": str(nproc),
                    "PYTHONUNBUFFERED": "1",
                    "DISTILL_WORKDIR": str(self.workdir / pod_name),
                }
                command = list(container["command"]) + list(container.get("args", []))
                process, log_path = self._start(command, env, pod_name)
                labels = {
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/replica-type": replica_type.lower(),
                    "training.kubeflow.org/replica-index": str(index),
                }
                self.pods[pod_name] = Pod(pod_name, namespace, labels, process, log_path, job=name)
                rank += 1

    def _job_pods(self, name: str) -> list[Pod]:
        return [pod for pod in self.pods.values() if pod.job == name]

    def _start(self, command: list[str], env: dict[str, str], pod_name: str) -> tuple[subprocess.Popen, Path]:
        if command[0] == "python":  # the image's python is this test's interpreter
            command = [sys.executable, *command[1:]]
        log_path = self.workdir / f"{pod_name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        return process, log_path

    # --- Kubeflow Trainer v2 ----------------------------------------------------------------------

    def _node_container(self, trainjob: dict) -> dict:
        """The runtime's node container with the TrainJob's trainer fields on top, as Trainer merges them."""
        runtime = self.runtimes[trainjob["spec"]["runtimeRef"]["name"]]
        (node,) = [
            job for job in runtime["spec"]["template"]["spec"]["replicatedJobs"] if job["name"] == "node"
        ]
        (container,) = [
            c for c in node["template"]["spec"]["template"]["spec"]["containers"] if c["name"] == "node"
        ]
        trainer = trainjob["spec"].get("trainer", {})
        merged = {
            **container,
            **{key: trainer[key] for key in ("image", "command", "args") if key in trainer},
        }
        names = {variable["name"] for variable in trainer.get("env", [])}
        merged["env"] = [v for v in container.get("env", []) if v["name"] not in names] + trainer.get(
            "env", []
        )
        return merged

    def _start_nodes(self, trainjob: dict) -> None:
        name, namespace = trainjob["metadata"]["name"], trainjob["metadata"]["namespace"]
        trainer = trainjob["spec"].get("trainer", {})
        nodes, nproc = trainer.get("numNodes", 1), trainer.get("numProcPerNode", 1)
        attempt = self.restarts.get(name, 0)
        container, port = self._node_container(trainjob), free_port()
        for index in range(nodes):
            pod_name = f"{name}-node-0-{index}-a{attempt}"
            env = {
                **self.base_env,
                **self._resolve_env(container),
                "PET_NNODES": str(nodes),
                "PET_NPROC_PER_NODE": str(nproc),
                "PET_NODE_RANK": str(index),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
                "PYTHONUNBUFFERED": "1",
                "DISTILL_WORKDIR": str(self.workdir / pod_name),
            }
            process, log_path = self._start(
                list(container["command"]) + list(container.get("args", [])), env, pod_name
            )
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/restart-attempt": str(attempt),
                "batch.kubernetes.io/job-completion-index": str(index),
            }
            self.pods[pod_name] = Pod(pod_name, namespace, labels, process, log_path, job=name)

    def _stop_pods(self, name: str) -> None:
        for pod in self._job_pods(name):
            if pod.process.poll() is None:
                pod.process.kill()
            pod.process.wait()
            del self.pods[pod.name]

    def _trainjob_status(self, trainjob: dict) -> dict:
        """Status as Trainer reports it; a failed pod restarts the whole JobSet while restarts are left."""
        name = trainjob["metadata"]["name"]
        runtime = self.runtimes[trainjob["spec"]["runtimeRef"]["name"]]
        max_restarts = runtime["spec"]["template"]["spec"].get("failurePolicy", {}).get("maxRestarts", 0)
        phases = {pod.name: pod.phase for pod in self._job_pods(name)}
        failed = sorted(pod for pod, phase in phases.items() if phase == "Failed")
        if failed and self.restarts.get(name, 0) < max_restarts:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.failed_pods.extend(pod for pod in self._job_pods(name) if pod.phase == "Failed")
            self._stop_pods(name)
            self._start_nodes(trainjob)
            phases = {pod.name: pod.phase for pod in self._job_pods(name)}
            failed = []
        counts = {
            "active": sum(phase == "Running" for phase in phases.values()),
            "succeeded": sum(phase == "Succeeded" for phase in phases.values()),
            "failed": len(failed),
        }
        status: dict = {"jobsStatus": [{"name": "node", "ready": counts["active"], **counts, "suspended": 0}]}
        if failed:
            message = f"jobset failed: pod {failed[0]} failed after {self.restarts.get(name, 0)} restart(s)"
            status["conditions"] = [
                {"type": "Failed", "status": "True", "reason": "JobsFailed", "message": message}
            ]
        elif phases and all(phase == "Succeeded" for phase in phases.values()):
            status["conditions"] = [
                {
                    "type": "Complete",
                    "status": "True",
                    "reason": "JobsCompleted",
                    "message": "jobset completed",
                }
            ]
        return status

    def _status(self, name: str) -> dict:
        phases = {pod.name: pod.phase for pod in self._job_pods(name)}
        failed = sorted(pod for pod, phase in phases.items() if phase == "Failed")
        if failed:
            condition = {"type": "Failed", "status": "True", "message": f"pod {failed[0]} failed"}
        elif phases and all(phase == "Succeeded" for phase in phases.values()):
            condition = {"type": "Succeeded", "status": "True", "message": "PyTorchJob succeeded"}
        else:
            condition = {"type": "Running", "status": "True", "message": "PyTorchJob is running"}
        return {"conditions": [{"type": "Created", "status": "True"}, condition]}

    # --- the API ----------------------------------------------------------------------------------

    async def create_job(self, request):
        namespace, job = request.match_info["namespace"], await request.json()
        key = (namespace, job["metadata"]["name"])
        if key in self.jobs:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        job["metadata"]["namespace"] = namespace
        self.jobs[key] = job
        self.created.append(job)
        self._start_pods(job)
        return web.json_response(job, status=201)

    async def get_job(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.jobs:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({**self.jobs[key], "status": self._status(key[1])})

    async def delete_job(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.jobs:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        del self.jobs[key]
        self._stop_pods(key[1])
        self.deleted.append(key[1])
        return web.json_response({"kind": "Status", "status": "Success"})

    async def create_trainjob(self, request):
        namespace, trainjob = request.match_info["namespace"], await request.json()
        key = (namespace, trainjob["metadata"]["name"])
        if key in self.trainjobs:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        runtime = trainjob["spec"]["runtimeRef"]["name"]
        if runtime not in self.runtimes:  # Trainer's admission webhook refuses it
            message = f'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: ClusterTrainingRuntime.trainer.kubeflow.org "{runtime}" not found'
            return web.json_response(
                {"kind": "Status", "code": 422, "reason": "Invalid", "message": message}, status=422
            )
        trainjob["metadata"]["namespace"] = namespace
        self._start_nodes(trainjob)  # before it is listed, so that a listed job has its pods
        self.trainjobs[key] = trainjob
        self.created.append(trainjob)
        return web.json_response(trainjob, status=201)

    async def get_trainjob(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.trainjobs:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response(
            {**self.trainjobs[key], "status": self._trainjob_status(self.trainjobs[key])}
        )

    async def delete_trainjob(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.trainjobs:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        del self.trainjobs[key]
        self._stop_pods(key[1])
        self.deleted.append(key[1])
        return web.json_response({"kind": "Status", "status": "Success"})

    def _discovery(self, engine: str):
        path, plural, kind = ENGINE_APIS[engine]

        async def resources(request):
            if engine not in self.engines:
                return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
            resource = {
                "name": plural,
                "singularName": "",
                "namespaced": True,
                "kind": kind,
                "verbs": ["create", "get", "list", "delete"],
            }
            return web.json_response(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": path[len("/apis/") :],
                    "resources": [resource],
                }
            )

        return resources

    async def create_isvc(self, request):
        namespace, service = request.match_info["namespace"], await request.json()
        key = (namespace, service["metadata"]["name"])
        if key in self.inference_services:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        service["metadata"]["resourceVersion"] = "1"
        self.inference_services[key] = service
        return web.json_response(service, status=201)

    async def get_isvc(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.inference_services:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        self.isvc_reads[key] = reads = self.isvc_reads.get(key, 0) + 1
        return web.json_response({**self.inference_services[key], "status": self._isvc_status(key, reads)})

    def _isvc_status(self, key: tuple[str, str], reads: int) -> dict:
        """What KServe reports: not Ready at first, then Ready with the predictor's in-cluster address."""
        namespace, name = key
        if self.isvc_ready_after is None or reads <= self.isvc_ready_after:
            message = "predictor pod: Back-off pulling image" if self.isvc_ready_after is None else ""
            return {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "RevisionMissing", "message": message}
                ]
            }
        address = f"http://{name}-predictor.{namespace}.svc.cluster.local"
        return {
            "conditions": [{"type": "Ready", "status": "True"}],
            "address": {"url": address},
            "url": address,
        }

    async def delete_isvc(self, request):
        key = (request.match_info["namespace"], request.match_info["name"])
        if self.inference_services.pop(key, None) is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        self.deleted.append(key[1])
        return web.json_response({"kind": "Status", "status": "Success"})

    async def replace_isvc(self, request):
        key, service = (request.match_info["namespace"], request.match_info["name"]), await request.json()
        current = self.inference_services.get(key)
        if current is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if service["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"}, status=409)
        service["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.inference_services[key] = service
        return web.json_response(service)

    async def list_pods(self, request):
        selector = dict(
            pair.split("=", 1) for pair in request.query.get("labelSelector", "").split(",") if pair
        )
        items = [
            {
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
                "status": {"phase": pod.phase},
            }
            for pod in self.pods.values()
            if pod.namespace == request.match_info["namespace"] and selector.items() <= pod.labels.items()
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def get_pod(self, request):
        pod = self.other_pods.get(request.match_info["name"])
        if pod is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response(pod)

    async def pod_log(self, request):
        pod = self.pods.get(request.match_info["name"]) or next(
            (p for p in self.failed_pods if p.name == request.match_info["name"]), None
        )
        if pod is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if "tailLines" in request.query:
            pod.process.wait()
            lines = pod.log_path.read_bytes().splitlines(keepends=True)[-int(request.query["tailLines"]) :]
            return web.Response(body=b"".join(lines), content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        with open(pod.log_path, "rb") as log_file:
            while True:
                finished = pod.process.poll() is not None
                chunk = log_file.read()
                if chunk:
                    await response.write(chunk)
                elif finished or request.query.get("follow", "").lower() != "true":  # the client sends True
                    break
                else:
                    await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post(JOB_PATH, self.create_job)
        app.router.add_get(JOB_PATH + "/{name}", self.get_job)
        app.router.add_delete(JOB_PATH + "/{name}", self.delete_job)
        app.router.add_post(TRAINJOB_PATH, self.create_trainjob)
        app.router.add_get(TRAINJOB_PATH + "/{name}", self.get_trainjob)
        app.router.add_delete(TRAINJOB_PATH + "/{name}", self.delete_trainjob)
        for engine, (path, _, _) in ENGINE_APIS.items():
            app.router.add_get(path, self._discovery(engine))
        app.router.add_post(ISVC_PATH, self.create_isvc)
        app.router.add_get(ISVC_PATH + "/{name}", self.get_isvc)
        app.router.add_put(ISVC_PATH + "/{name}", self.replace_isvc)
        app.router.add_delete(ISVC_PATH + "/{name}", self.delete_isvc)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self.list_pods)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{name}", self.get_pod)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{name}/log", self.pod_log)
        return app

    def shutdown(self) -> None:
        for pod in self.pods.values():
            if pod.process.poll() is None:
                pod.process.kill()
            pod.process.wait()
