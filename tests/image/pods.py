"""Run a rendered pod's container with docker the way the kubelet runs it.

`container_run` turns the pod of a manifest `runner render` printed (a Job's, a CronJob's job
template's, a node of an Indexed Job, the serve Deployment's) into `docker run` arguments:
the same command and args, `$(VAR)` expanded from the container's env as Kubernetes expands
it; the env with the downward API's values filled in; the pod's user and fsGroup; a
read-only root; each ConfigMap's files at its mount path, read-only; emptyDirs as tmpfs
(sizeLimit kept); the limits as --cpus/--memory; capabilities dropped and no privilege
escalation. What a laptop's engine cannot reproduce is left out, and said here: the GPU
(`nvidia.com/gpu`), cluster DNS (an Indexed Job's pod names map to loopback), the pod network
(containers run with --network host, to reach the emulators on loopback, or none).

Kubernetes' rules followed: "Define Dependent Environment Variables" and "Define a Command
and Arguments for a Container" (`$(VAR)` and `$$` escapes), "Expose Pod Information to
Containers Through Environment Variables" (fieldRef), "Configure a Security Context".
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import Process

# Each container is labelled with the pid of the test process that started it: if that process
# dies without removing it (a killed pytest), the next run's remove_orphans does.
OWNER = "runner-test-pid"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def remove_orphans() -> list[str]:
    """Remove the test containers whose test process is gone; their names."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={OWNER}", "--format", f'{{{{.Names}}}} {{{{.Label "{OWNER}"}}}}'],
        capture_output=True, text=True, timeout=60,
    ).stdout.split("\n")  # fmt: skip
    orphans = [name for name, pid in (line.split() for line in listed if line.strip()) if not _alive(int(pid))]
    if orphans:
        subprocess.run(["docker", "rm", "-f", *orphans], capture_output=True, timeout=120)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def pod_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Job, CronJob or Deployment manifest."""
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def expand(text: str, env: dict[str, str]) -> str:
    """`$(NAME)` replaced by env[NAME] where defined (else kept), `$$` by `$`, as Kubernetes does."""
    return _VAR.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def quantity(value: str | int) -> int:
    """A Kubernetes quantity in bytes ("8Gi" -> 8589934592)."""
    text = str(value)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix) and suffix != text:
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def container_env(container: dict[str, Any], downward: dict[str, str]) -> dict[str, str]:
    """The container's env, each fieldRef read from `downward` (by fieldPath), each value
    expanded from the ones before it."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in downward:
                raise KeyError(f"{var['name']}: the test gives no value for the downward API's {path}")
            env[var["name"]] = downward[path]
        else:
            env[var["name"]] = expand(str(var["value"]), env)
    return env


@dataclass
class Pod:
    """One container of a rendered pod, ready to run: `args` follow `docker run`."""

    args: list[str]
    grace_seconds: int
    name: str
    probes: dict[str, str]  # readinessProbe, livenessProbe -> the URL it gets (host network)
    pre_stop_seconds: int = 0  # a preStop sleep hook: the kubelet runs it before SIGTERM, within the grace

    def start(self) -> Process:
        """Start it (`docker run`, attached): the process's output is the container's, and its
        exit code the container's."""
        return Process(["docker", "run", "--name", self.name, *self.args])

    def run(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run it to its end (`docker run --rm`): its exit code and output."""
        command = ["docker", "run", "--rm", "--name", self.name, *self.args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Stop it as the kubelet stops a preempted or deleted pod: the preStop hook, then
        SIGTERM, then SIGKILL at the end of the pod's grace period (which includes the hook)."""
        time.sleep(self.pre_stop_seconds)
        grace = max(self.grace_seconds - self.pre_stop_seconds, 0)
        subprocess.run(["docker", "stop", "-t", str(grace), self.name], check=True, capture_output=True)

    def kill(self) -> None:
        subprocess.run(["docker", "kill", self.name], capture_output=True)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


def container_run(
    manifest: dict[str, Any],
    config_maps: dict[str, dict[str, str]],
    *,
    image: str,
    name: str,
    files: Path,
    downward: dict[str, str],
    env: dict[str, str] | None = None,
    network: str = "host",
    hosts: dict[str, str] | None = None,
    args: list[str] | None = None,
    mounts: dict[Path, str] | None = None,
    index: int | None = None,
) -> Pod:
    """The `runner` container of `manifest`'s pod as docker runs it (see the module's doc).

    config_maps: name -> data, from the same render; their files are written under `files`.
    downward: fieldPath -> value, for env from the downward API (e.g. the job-name label).
    env: added to the container's env, as the cluster adds credentials (the emulator's address).
    hosts: name -> address, for --add-host (the headless Service's names).
    args: instead of the container's args: another command in the same container, as
        `kubectl debug --copy-to` runs one (`runner eval` on what the Job trained).
    mounts: host path -> container path, added read-only (files for that command).
    index: for an Indexed Job, which pod: the Job controller gives it JOB_COMPLETION_INDEX and
        its annotation; the pods' DNS names under the headless Service (`subdomain`) resolve
        to this machine.
    """
    pod = pod_of(manifest)
    (container,) = [c for c in pod["containers"] if c["name"] == "runner"]
    hosts, hostname = dict(hosts or {}), None
    if manifest["kind"] == "Job" and manifest["spec"].get("completionMode") == "Indexed":
        assert index is not None, "an Indexed Job's pod needs its index"
        downward = {**downward, "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index)}
        env = {"JOB_COMPLETION_INDEX": str(index), **(env or {})}
        if "subdomain" in pod:
            hosts |= _pod_names(manifest["metadata"]["name"], pod["subdomain"], manifest["spec"]["completions"], index)
            hostname = f"{manifest['metadata']['name']}-{index}"
    values = {**container_env(container, downward), **(env or {})}
    run = ["--label", f"{OWNER}={os.getpid()}", "--network", network, "--workdir", container.get("workingDir", "/")]
    for key, value in values.items():
        run += ["--env", f"{key}={value}"]
    run += _security(pod.get("securityContext", {}), container.get("securityContext", {}))
    run += _volumes(pod.get("volumes", []), container.get("volumeMounts", []), config_maps, files)
    for source, target in (mounts or {}).items():
        run += ["--volume", f"{source}:{target}:ro"]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        run += ["--memory", str(quantity(limits["memory"]))]
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        run += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    if hostname:
        run += ["--hostname", hostname]
    for host, address in hosts.items():
        run += ["--add-host", f"{host}:{address}"]
    command = [expand(a, values) for a in container.get("command", [])]
    if command:
        run += ["--entrypoint", command[0]]
    given = container.get("args", []) if args is None else args
    run += [image, *command[1:], *(expand(str(a), values) for a in given)]
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return Pod(run, grace, name, _probes(container), pre_stop)


def _pod_names(job: str, subdomain: str, completions: int, index: int) -> dict[str, str]:
    """The DNS names of an Indexed Job's pods under its headless Service, each pod on a loopback
    address of its own (127.0.0.2, .3, ...: an agent's address tells torch's rendezvous the
    nodes apart, and 127.0.0.1 would read back as "localhost"), by its FQDN (namespace
    "default", what torch's rendezvous hands the other nodes) and its name under the Service;
    pod `index` also resolves its own short hostname, as the kubelet's /etc/hosts does."""
    names = {}
    for i in range(completions):
        address, pod = f"127.0.0.{i + 2}", f"{job}-{i}"
        names[f"{pod}.{subdomain}.default.svc.cluster.local"] = address  # first: what the address reads back as
        names[f"{pod}.{subdomain}"] = address
        if i == index:
            names[pod] = address
    return names


def _probes(container: dict[str, Any]) -> dict[str, str]:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    urls = {}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if get := container.get(kind, {}).get("httpGet"):
            port = ports.get(get["port"], get["port"])  # a named port, or a number
            urls[kind] = f"http://127.0.0.1:{port}{get.get('path', '/')}"
    return urls


def _security(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    merged = {**pod, **container}  # the container's settings win (Kubernetes' rule)
    args = []
    if "runAsUser" in merged:
        args += ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', merged['runAsUser'])}"]
    if "fsGroup" in pod:
        args += ["--group-add", str(pod["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if merged.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in merged.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    return args


def _volumes(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], config_maps: dict[str, dict[str, str]], files: Path
) -> list[str]:
    by_name = {v["name"]: v for v in volumes}
    args = []
    for mount in mounts:
        volume, path = by_name[mount["name"]], mount["mountPath"]
        if "configMap" in volume:
            folder = files / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in config_maps[volume["configMap"]["name"]].items():
                (folder / key).write_text(text)
            args += ["--volume", f"{folder}:{path}:ro"]
        elif "emptyDir" in volume:
            # An emptyDir is a fresh, world-writable folder (mode 0777), executable, sized by its sizeLimit.
            size = volume["emptyDir"].get("sizeLimit")
            args += ["--tmpfs", f"{path}:rw,exec,mode=1777" + (f",size={quantity(size)}" if size else "")]
        else:
            raise ValueError(f"volume {volume['name']}: the harness runs configMap and emptyDir volumes only")
    return args
