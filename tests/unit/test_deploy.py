"""The deployment files run as written: Kubernetes manifests valid against the Kubernetes
schemas (shipped by kubernetes-validate, no network), compose and Dockerfile consistent
with the CLI, the lock file equal to what is installed and tested, schemas in the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stream_expiry.config import load_config, parse_config
from stream_expiry.kafka_settings import topic_configs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"  # what deploy/kubernetes applies, and its rekey overlay takes


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resources() -> list[dict[str, Any]]:
    return [
        d for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)
    ]


@pytest.mark.parametrize(
    "resource", _resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_every_manifest_is_valid_kubernetes(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_docs(BASE / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert _docs(K8S / "kustomization.yaml")[0]["resources"] == ["base"]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in _resources() if r["kind"] == kind]


def test_the_statefulset_has_a_volume_per_pod_probes_and_a_numeric_user() -> None:
    (sts,) = _by_kind("StatefulSet")
    spec = sts["spec"]
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    headless = [s for s in _by_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [spec["serviceName"]]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    port = int(args[args.index("--metrics-port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert {m["name"] for m in container["volumeMounts"]} == {"state", "config", "tmp"}
    _writable_tmp(pod, container)
    (pdb,) = [
        p
        for p in _by_kind("PodDisruptionBudget")
        if p["metadata"]["name"] == sts["metadata"]["name"]
    ]
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def _writable_tmp(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """A read-only root file system needs something writable on /tmp: status and replay
    keep their working store there (they stopped with a traceback without it)."""
    if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        return
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


def test_every_pod_with_a_read_only_root_has_a_writable_tmp() -> None:
    for resource in _resources():
        if resource["kind"] in ("StatefulSet", "Deployment"):
            pod = resource["spec"]["template"]["spec"]
            for container in pod["containers"]:
                _writable_tmp(pod, container)


def test_no_pod_is_given_a_kubernetes_api_token() -> None:
    """A security review: no command talks to the Kubernetes API, yet every pod had the
    namespace's default service-account token mounted, which anyone who gets code to run in
    a pod holding personal data could use. Checked over the base and the rekey overlay."""
    overlay = [d for p in sorted((K8S / "rekey").glob("*.yaml")) for d in _docs(p)]
    pods = [
        r["spec"]["template"]["spec"]
        for r in [*_resources(), *overlay]
        if r.get("kind") in ("StatefulSet", "Deployment") and "selector" in r["spec"]
    ]  # not the overlay's patch of the StatefulSet (no selector): the base's pod has it
    assert len(pods) == 3  # the service, the sink, rekey
    for pod in pods:
        assert pod.get("automountServiceAccountToken") is False, pod["containers"][0]["name"]
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_the_configmap_holds_a_valid_config() -> None:
    (cm,) = _by_kind("ConfigMap")
    config = parse_config(cm["data"]["expiry.toml"], path="configmap")
    assert config.state_dir == "/var/lib/stream-expiry"


def test_the_statefulsets_pods_share_the_input_partitions_evenly() -> None:
    """The range assignor hands out whole partition numbers: the 3 pods on the 4
    partitions the service gave its topics by default (the ConfigMap set none) left one
    pod with twice the others' records, timers and restore, against the README's "give
    the input topics a partition count your instance counts divide"."""
    (cm,) = _by_kind("ConfigMap")
    (sts,) = _by_kind("StatefulSet")
    partitions = parse_config(cm["data"]["expiry.toml"], path="configmap").topic_settings.partitions
    replicas = sts["spec"]["replicas"]
    assert partitions % replicas == 0, (partitions, replicas)
    # And room to scale out: 1, 2, 3, 4 and 6 pods share 12 evenly.
    assert all(partitions % n == 0 for n in (1, 2, 3, 4, 6)), partitions


def test_compose_has_postgres_the_sink_healthchecks_and_7_day_inputs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "topics", "stream-expiry", "postgres", "sink-postgres"} <= set(services)
    script = services["topics"]["command"][0]
    assert "retention.ms=-1" not in script
    assert "retention.ms=604800000" in script
    service = services["stream-expiry"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert "--metrics-port" in service["command"]
    assert service["ports"] == ["127.0.0.1:9400:9400"]
    sink = services["sink-postgres"]
    assert sink["command"][:2] == ["sink", "postgres"]
    assert "/readyz" in " ".join(sink["healthcheck"]["test"])
    assert sink["ports"] == ["127.0.0.1:9401:9401"]
    assert sink["depends_on"]["postgres"]["condition"] == "service_healthy"
    load_config(ROOT / "examples" / "expiry.toml")  # the mounted config is valid


def _compose_topic_configs(script: str) -> dict[str, dict[str, str]]:
    """Topic -> the ``--config`` values the compose ``topics`` script creates it with."""
    made: dict[str, dict[str, str]] = {}
    for names, body in re.findall(r"for topic in ([^;]+); do(.*?)done", script, re.S):
        configs = dict(re.findall(r"--config (\S+?)=(\S+)", body))
        for name in names.split():
            made[name] = configs
    return made


def test_compose_creates_each_topic_as_the_service_would() -> None:
    """The compose file makes the topics before the service starts, which then leaves them
    as they are: each must get what the service would have given it (README, "Topics"),
    with the one broker's replication. Its input, tombstone and dead-letter topics lacked
    ``segment.ms`` (Kafka's default is 7 days: payloads stayed 14 days, not the 8 the
    README promises) and every topic ``max.message.bytes`` (stamps of large events cut)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    made = _compose_topic_configs(compose["services"]["topics"]["command"][0])
    text = (ROOT / "examples" / "expiry.toml").read_text()
    config = parse_config(text + "\n", path="examples/expiry.toml")
    single = parse_config(
        re.sub(r"^\[topics\]$", "[topics]\nreplication_factor = 1", text, flags=re.M),
        path="examples/expiry.toml",
    )
    assert made == topic_configs(single)
    assert set(made) == set(topic_configs(config))


def test_compose_publishes_every_port_on_the_hosts_loopback_only() -> None:
    """A plaintext broker with no authentication and a database with a fixed password were
    published on every interface of the host ("9092:9092"), for any machine that reaches
    it. The containers talk over the compose network by service name, so loopback
    publishing takes nothing from them; the metrics and health ports likewise (a host's own
    Prometheus reaches loopback; another machine's is a choice to make, not a default)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = (
        ("kafka", 9092),
        ("postgres", 5432),
        ("stream-expiry", 9400),
        ("sink-postgres", 9401),
    )
    for name, port in published:
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name
    kafka = services["kafka"]["environment"]
    # What the broker tells host clients to connect to is what is published.
    assert "EXTERNAL://127.0.0.1:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "INTERNAL://kafka:19092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in ("stream-expiry", "sink-postgres"):
        assert services[name]["environment"]["STREAM_EXPIRY_BOOTSTRAP_SERVERS"] == "kafka:19092"
    sink = services["sink-postgres"]["command"]
    assert sink[sink.index("--dsn") + 1].startswith("postgresql://expiry@postgres:5432/")
    topics = services["topics"]["command"][0]
    assert "--bootstrap-server kafka:19092" in topics


def test_the_dockerfile_pins_declares_state_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^VOLUME \[\"/var/lib/stream-expiry\"\]", text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    # Every locked dependency is installed (a hand-written list once left out rocksdict,
    # and the image's ``pip check`` would have failed), and the package itself only under it.
    assert "pip install -r requirements.lock" in text
    assert "--constraint requirements.lock --no-deps" in text
    # The compiled codec is built (a compiler for that step) and checked, not left out.
    steps = text.replace("\\\n", " ").splitlines()  # one line a step
    install = next(step for step in steps if "--no-deps" in step)
    assert "gcc" in install
    assert 'python -c "import stream_expiry._native"' in install
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    # The state directory holds record ids (and a Docker volume takes the image directory's
    # mode): its user's only, as `run` makes one (0700), not mkdir's 0755.
    made = re.search(r"mkdir -p /var/lib/stream-expiry.*?(?=^RUN|^USER)", text, re.M | re.S)
    assert made is not None
    assert "chmod 0700 /var/lib/stream-expiry" in made.group(), made.group()


def test_the_image_preloads_jemalloc_through_the_link_it_makes(tmp_path: Path) -> None:
    """The image runs on jemalloc (README, "Memory allocator"): the library is installed,
    linked to one path whatever the architecture, and that path is what LD_PRELOAD names.
    The Dockerfile's own link command is run here, into a scratch directory, and a Python
    that preloads the link must have jemalloc mapped: a wrong glob, a link to nothing or a
    path the ENV does not name fails."""
    text = (ROOT / "Dockerfile").read_text()
    assert "apt-get install -y --no-install-recommends libjemalloc2" in text
    link = re.search(r'&& (ln -s "\$\(ls [^)]+\)" (\S+))$', text, re.M)
    assert link is not None, "no ln -s of the library in the Dockerfile"
    command, path = link.groups()
    preload = re.search(r"^ENV LD_PRELOAD=(\S+)$", text, re.M)
    assert preload is not None
    assert preload.group(1) == path
    if not list(Path("/usr/lib").glob("*-linux-gnu/libjemalloc.so.2")):
        pytest.skip("jemalloc is not installed here (Debian: apt-get install libjemalloc2)")
    scratch = tmp_path / "libjemalloc.so.2"
    subprocess.run(["sh", "-c", command.replace(path, str(scratch))], check=True)
    maps = subprocess.run(
        [sys.executable, "-c", "import rocksdict; print(open('/proc/self/maps').read())"],
        env={**os.environ, "LD_PRELOAD": str(scratch)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "libjemalloc.so.2" in maps.stdout


def test_the_lock_file_pins_every_runtime_dependency_within_its_declared_range() -> None:
    """The lock is what was tested (scripts/lock_requirements.py writes it from the session's
    environment); a newer machine may have newer versions installed, so the test does not
    compare with what is installed, but checks that the lock can serve the package."""
    from packaging.requirements import Requirement

    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for r in project["optional-dependencies"]["postgres"]]
    for req in declared:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_the_schemas_ship_in_the_package_and_the_top_level_is_the_same_directory() -> None:
    packaged = resources.files("stream_expiry") / "schemas"
    names = {p.name for p in packaged.iterdir() if p.name.endswith(".schema.json")}
    messages = {"input-event", "policy-update", "stamped", "tombstone", "receipt", "hold", "audit"}
    assert {f"{m}.schema.json" for m in messages} | {"config.schema.json"} <= names
    assert (ROOT / "schemas").resolve() == (ROOT / "stream_expiry" / "schemas").resolve()


def test_there_is_a_license_file_for_the_declared_license() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text


def test_the_rekey_overlay_is_valid_and_the_service_reads_what_rekey_writes() -> None:
    """``kubectl apply -k deploy/kubernetes/rekey``: everything of the base, the rekey
    Deployment, and the service's inputs patched to the copies rekey makes of its
    ``--from`` topics (each plus ``.by-record``, the default suffix)."""
    overlay = K8S / "rekey"
    kustomization = _docs(overlay / "kustomization.yaml")[0]
    assert kustomization["resources"] == ["../base", "rekey.yaml", "pdb.yaml"]
    (deployment,) = _docs(overlay / "rekey.yaml")
    kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    sources = [args[i + 1] for i, arg in enumerate(args) if arg == "--from"]
    copies = ",".join(f"{s}.by-record" for s in sources)
    port = int(args[args.index("--metrics-port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert {e["name"]: e["value"] for e in container["env"]}[
        "STREAM_EXPIRY_TOPICS_INPUTS"
    ] == copies
    [patch_ref] = kustomization["patches"]
    (patch,) = _docs(overlay / patch_ref["path"])
    (sts,) = _by_kind("StatefulSet")
    assert (patch["kind"], patch["metadata"]["name"]) == (sts["kind"], sts["metadata"]["name"])
    (patched,) = patch["spec"]["template"]["spec"]["containers"]
    (service,) = sts["spec"]["template"]["spec"]["containers"]
    assert patched["name"] == service["name"]
    env = {e["name"]: e["value"] for e in patched["env"]}
    assert env["STREAM_EXPIRY_TOPICS_INPUTS"] == copies
    # The producers' topics retired, not dropped: what the service stamped from them
    # before the switch is still tombstoned (left out of both lists, by no instance).
    assert env["STREAM_EXPIRY_TOPICS_RETIRED"] == ",".join(sources)
    # The base's inputs are the producers' topics rekey reads.
    assert sources == list(parse_config("").topics.inputs)


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_no_kustomization_takes_a_directory_that_holds_its_own() -> None:
    """``kubectl apply -k deploy/kubernetes/rekey`` stopped at once: its ``resources``
    named ``../``, the base, whose directory holds the overlay's, which kustomize refuses
    ("cycle detected: candidate root ... contains visited root ...", by design:
    kubernetes-sigs/kustomize#851, #5975). The README's command could never run; the
    test only read the files. Every directory a kustomization takes lies beside or below
    its own."""
    for kustomization in _kustomizations():
        here = kustomization.parent.resolve()
        for entry in _docs(kustomization)[0]["resources"]:
            target = (here / entry).resolve()
            if target.is_dir():
                assert not here.is_relative_to(target), f"{kustomization}: {entry}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its kustomize)")
@pytest.mark.parametrize("directory", ["", "rekey"])
def test_kubectl_builds_each_kustomization_the_readme_applies(directory: str) -> None:
    """What ``kubectl apply -k`` builds first, without a cluster: ``kubectl kustomize``."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(built.stdout) if d]
    assert "StatefulSet" in kinds
    assert kinds.count("Deployment") == (2 if directory == "rekey" else 1)


def test_the_compose_rekey_profile_retires_the_producers_topics() -> None:
    """The rekey profile as the README and the compose file say to run it: the service
    reads the copies and retires the producers' topics rekey reads. Only the inputs were
    switched, and the records stamped from the producers' topics before the switch were
    tombstoned by no instance.

    The switch is written in ``.env``, which Compose reads at every command, with the
    profile: given on one command line (``EXPIRY_INPUTS=... docker compose --profile rekey
    up``, as both said before), it lasted that command only. The next ``docker compose up
    -d`` recreated the service on the producers' topics, the copies neither read nor
    retired, and ``docker compose down`` left rekey running beside it, copying."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    rekey = compose["services"]["rekey"]
    args = rekey["command"]
    sources = [args[i + 1] for i, arg in enumerate(args) if arg == "--from"]
    env = compose["services"]["stream-expiry"]["environment"]
    assert env["STREAM_EXPIRY_TOPICS_INPUTS"] == "${EXPIRY_INPUTS:-conversations,sessions,errors}"
    assert env["STREAM_EXPIRY_TOPICS_RETIRED"] == "${EXPIRY_RETIRED:-}"  # empty: unset
    assert rekey["environment"]["STREAM_EXPIRY_TOPICS_INPUTS"] == env["STREAM_EXPIRY_TOPICS_INPUTS"]
    expected = [
        f"COMPOSE_PROFILES={','.join(rekey['profiles'])}",
        f"EXPIRY_INPUTS={','.join(f'{s}.by-record' for s in sources)}",
        f"EXPIRY_RETIRED={','.join(sources)}",
    ]
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"write the switch in a file `\.env`.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    assert block.group(1).splitlines() == expected
    comment = re.search(r"a file \.env beside this one.*?\n((?:\s+#   .*\n)+)", _compose_text())
    assert comment is not None
    assert [line.strip().removeprefix("#").strip() for line in comment.group(1).splitlines()] == (
        expected
    )
    assert "--profile rekey up` with" not in " ".join(readme.split())


def _compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def test_compose_makes_every_topic_with_the_partitions_the_topics_container_gives() -> None:
    """The ``topics`` container makes every topic with 6 partitions, but the topics the
    service, ``rekey`` or the sink make (rekey's ``.by-record`` copies, which the service
    makes when it starts before rekey) got ``[topics] partitions``' default, 4: the copies
    had fewer partitions than the producers' topics they copy, and a fourth or sixth
    instance had none to take. Each stream-expiry container must say the same count."""
    compose = yaml.safe_load(_compose_text())
    services = compose["services"]
    counts = set(re.findall(r"--partitions (\d+)", services["topics"]["command"][0]))
    assert len(counts) == 1, counts
    (count,) = counts
    ours = [name for name, svc in services.items() if svc.get("build") == "."]
    assert {"stream-expiry", "rekey", "sink-postgres"} <= set(ours)
    for name in ours:
        env = services[name]["environment"]
        assert env.get("STREAM_EXPIRY_TOPICS_PARTITIONS") == count, name
    # The variable is the one the config reads (README, Settings from the environment).
    env_config = load_config(None, environ={"STREAM_EXPIRY_TOPICS_PARTITIONS": count})
    assert env_config.topic_settings.partitions == int(count)


def _compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(_compose_text())["services"]
    return services


def _bytes(size: str) -> int:
    """A Compose memory size ("512m", "1g", "1536m") in bytes."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.lower())
    assert match is not None, size
    number, unit = match.groups()
    scale: int = 1024 ** "bkmg".index(unit or "b")
    return int(number) * scale


# Images of others that run as a user of their own (their Dockerfile's USER), so that the
# compose file needs no `user:` for them.
_NON_ROOT_IMAGES = {"apache/kafka": "appuser"}


def test_every_compose_container_runs_without_capabilities_or_privilege_gain() -> None:
    """A security review: every container ran with Docker's default capabilities (chown,
    setuid, net_raw, ...) and could gain privileges through setuid binaries, while none
    needs either: the service, the sink and rekey run as user 10001, Kafka's image as its
    own user, and PostgreSQL, whose entrypoint needs root's capabilities to change owners
    and switch user, is started as its own user from the start."""
    dockerfile_user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_user is not None
    assert int(dockerfile_user.group(1)) != 0
    for name, service in _compose_services().items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "cap_add" not in service, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        image = str(service.get("image", "")).split(":")[0]
        user = service.get("user")
        assert (
            (user is not None and user not in ("root", "0") and not user.startswith("0:"))
            or (user is None and service.get("build") == ".")
            or (user is None and image in _NON_ROOT_IMAGES)
        ), f"{name} may start as root, which needs the capabilities dropped"


def test_every_compose_container_has_memory_and_cpu_limits() -> None:
    """Without limits one container (a restore's worker processes, a JVM's heap) could take
    the host's memory from the others. The service's are the StatefulSet's: its CPU limit
    bounds the restore's worker processes (one per CPU it may use, ~100 MiB each), as
    STREAM_EXPIRY_SERVICE_WORKERS does there, and its memory limit is the pod's."""
    services = _compose_services()
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert float(limits.get("cpus", 0)) > 0, name
        assert _bytes(str(limits.get("memory", "0"))) > 0, name
    # The broker's heap is 1 GiB unless KAFKA_HEAP_OPTS says otherwise; the JVM needs more.
    kafka = services["kafka"]
    assert "KAFKA_HEAP_OPTS" not in kafka["environment"]
    assert _bytes(kafka["deploy"]["resources"]["limits"]["memory"]) >= 1536 * 1024**2
    (sts,) = _by_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    limits = services["stream-expiry"]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == int(env["STREAM_EXPIRY_SERVICE_WORKERS"])
    k8s_memory = container["resources"]["limits"]["memory"]
    assert _bytes(limits["memory"]) == _bytes(k8s_memory.removesuffix("i").lower())


def test_compose_runs_the_stream_expiry_containers_on_a_read_only_root() -> None:
    """The service, the sink and rekey run on a read-only root file system, as in
    deploy/kubernetes (readOnlyRootFilesystem): what they write goes to the service's
    state volume, and to a tmpfs on /tmp in the containers where `status` and `replay`
    are run (their working store), the same containers that mount an emptyDir there in
    Kubernetes. Tried for real on a read-only root with a tmpfs on /tmp: the service (a
    warm start, and a cold restore in 2 worker processes), `status`, `replay`, the sink
    and rekey all ran; no bytecode is written (PYTHONDONTWRITEBYTECODE)."""
    assert re.search(r"^ENV PYTHONDONTWRITEBYTECODE=1", (ROOT / "Dockerfile").read_text(), re.M)
    services = _compose_services()
    ours = {name: svc for name, svc in services.items() if svc.get("build") == "."}
    assert set(ours) == {"stream-expiry", "rekey", "sink-postgres"}
    # Which command mounts a writable /tmp in Kubernetes: run and sink (rekey: none).
    overlay = [d for p in sorted((K8S / "rekey").glob("*.yaml")) for d in _docs(p)]
    k8s_tmp = {}
    for r in [*_resources(), *overlay]:
        if r.get("kind") in ("StatefulSet", "Deployment") and "selector" in r["spec"]:
            (c,) = r["spec"]["template"]["spec"]["containers"]
            k8s_tmp[c["args"][0]] = any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    assert k8s_tmp == {"run": True, "sink": True, "rekey": False}
    for name, service in ours.items():
        assert service.get("read_only") is True, name
        tmpfs = [t.split(":")[0] for t in service.get("tmpfs", [])]
        assert ("/tmp" in tmpfs) is k8s_tmp[service["command"][0]], name
        for size in re.findall(r"size=(\w+)", " ".join(service.get("tmpfs", []))):
            # A tmpfs takes from the container's memory: it must leave the process room.
            limit = _bytes(service["deploy"]["resources"]["limits"]["memory"])
            assert _bytes(size) <= limit // 2, name
    # The service's state directory is a named volume, writable.
    service = ours["stream-expiry"]
    state = service["environment"]["STREAM_EXPIRY_STATE_DIR"]
    mounts = [v.split(":") for v in service["volumes"]]
    (volume,) = [m for m in mounts if m[1] == state]
    assert volume[0] in yaml.safe_load(_compose_text())["volumes"]
    assert len(volume) == 2 or volume[2] != "ro"


# What each image of others writes while it runs, from its own start scripts and docs (no
# Docker engine here to try them): apache/kafka's run/configure/launch write server.properties
# and the log4j files into /opt/kafka/config at every start (and exit if it is not
# writable), kafka-run-class.sh makes kafka.logs.dir (/opt/kafka/logs), the JVM writes /tmp
# (and the compression codecs unpack native libraries there, then load them: exec);
# postgres puts its socket and lock file in /var/run/postgresql and its entrypoint's
# here-documents in /tmp (docker-library/postgres#154). Their data goes to a named volume.
_WRITABLE = {
    "kafka": {"/opt/kafka/config", "/opt/kafka/logs", "/tmp", "/var/lib/kafka/data"},
    "topics": {"/tmp"},
    "postgres": {"/var/run/postgresql", "/tmp", "/var/lib/postgresql/data"},
}


def _pids_limit(service: dict[str, Any]) -> Any:
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    # Compose takes either; both, with different values, is an error of its own.
    assert not ("pids" in limits and "pids_limit" in service), service
    return limits.get("pids", service.get("pids_limit"))


def test_every_compose_container_runs_on_a_read_only_root_with_a_pids_limit() -> None:
    """Every container, the images of others included, runs on a read-only root file system,
    writing only to its volumes and to sized tmpfs mounts, with a limit on its processes and
    threads: a compromised or runaway one can neither change its image's files (binaries,
    scripts, configuration) nor take the host's process table. Kafka and PostgreSQL kept
    writable roots and no service had a pids limit before round 53."""
    services = _compose_services()
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: a writable root file system"
        pids = _pids_limit(service)
        assert isinstance(pids, int), f"{name}: no pids limit"
        assert not isinstance(pids, bool), name
        assert 0 < pids <= 4096, name  # -1 or 0 is "unlimited"
        tmpfs = {t.split(":")[0]: t for t in service.get("tmpfs", [])}
        volumes = [v.split(":") for v in service.get("volumes", [])]
        mounts = {v[1] for v in volumes}
        writable = set(tmpfs) | {v[1] for v in volumes if v[2:] != ["ro"]}
        assert _WRITABLE.get(name, set()) <= writable, (name, writable)
        assert not set(tmpfs) & mounts, name
        memory = _bytes(service["deploy"]["resources"]["limits"]["memory"])
        sizes = []
        for path, spec in tmpfs.items():
            # Unsized, a tmpfs may take half the host's memory, all of it from the container's.
            size = re.search(r"size=(\w+)", spec)
            assert size is not None, (name, path)
            sizes.append(_bytes(size.group(1)))
        assert sum(sizes) <= memory // 2, name
    kafka = services["kafka"]
    assert "exec" in kafka["tmpfs"][[t.split(":")[0] for t in kafka["tmpfs"]].index("/tmp")]
    # The broker's GC log (10 files of 100 MiB in kafka.logs.dir by default) goes to its
    # output, not into a tmpfs; with no writable directory for it the JVM would not start.
    gc = kafka["environment"]["KAFKA_GC_LOG_OPTS"]
    assert gc.startswith("-Xlog:gc")
    assert "file=" not in gc
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in {v.split(":")[1] for v in kafka["volumes"]}
    assert services["postgres"]["user"] == "postgres"  # the tmpfs is world-writable anyway


def _workloads() -> list[dict[str, Any]]:
    """The StatefulSet and the Deployments of the base and the rekey overlay (not the
    overlay's patch of the StatefulSet, which has no selector)."""
    overlay = [d for p in sorted((K8S / "rekey").glob("*.yaml")) for d in _docs(p)]
    return [
        r
        for r in [*_resources(), *overlay]
        if r.get("kind") in ("StatefulSet", "Deployment") and "selector" in r["spec"]
    ]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what this evaluator reads
    return bool(selector) and selector["matchLabels"].items() <= labels.items()


def _policies_of(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The specs of the NetworkPolicies that select the workload's pods."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [
        p["spec"] for p in _by_kind("NetworkPolicy") if _selects(p["spec"]["podSelector"], labels)
    ]


def _ports(rules: list[dict[str, Any]]) -> set[tuple[int | str, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for r in rules for p in r.get("ports", [])}


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_a_network_policy_admits_only_prometheus_to_the_metrics_port(
    workload: dict[str, Any],
) -> None:
    """A security review: every pod serves /metrics, /healthz and /readyz without
    authentication on every interface, and no NetworkPolicy isolated any pod, so every pod
    of the cluster could reach them (and anything else of the pod). Each pod is isolated
    for ingress; the only port opened is its metrics port (the container port named http,
    the one --metrics-port gives), and only to Prometheus' pods in one namespace. The
    kubelet's probes come from the node, which NetworkPolicies always allow."""
    policies = _policies_of(workload)
    assert any("Ingress" in p["policyTypes"] for p in policies), "not isolated for ingress"
    rules = [rule for p in policies for rule in p.get("ingress", [])]
    assert rules
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    (named,) = [p for p in container["ports"] if p["name"] == "http"]
    args = container["args"]
    assert named["containerPort"] == int(args[args.index("--metrics-port") + 1])
    for rule in rules:
        assert _ports([rule]) == {("http", "TCP")}, rule
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            # Both selectors in one peer: these pods of that namespace (either alone would
            # admit every pod of the namespace, or these labels in every namespace).
            assert peer["namespaceSelector"]["matchLabels"], peer
            assert peer["podSelector"]["matchLabels"], peer


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_a_network_policy_lets_pods_reach_only_dns_kafka_and_their_store(
    workload: dict[str, Any],
) -> None:
    """Isolated for egress too: a pod reaches DNS (the cluster's, in kube-system), Kafka on
    the port its bootstrap servers name, and the sink PostgreSQL on its --dsn's port;
    nothing else (the service and rekey not PostgreSQL). Every pod of the base and the
    rekey overlay is selected."""
    policies = _policies_of(workload)
    assert any("Egress" in p["policyTypes"] for p in policies), "not isolated for egress"
    rules = [rule for p in policies for rule in p.get("egress", [])]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    kafka_ports = {
        int(b.rsplit(":", 1)[1]) for b in env["STREAM_EXPIRY_BOOTSTRAP_SERVERS"].split(",")
    }
    expected: set[tuple[int | str, str]] = {(53, "UDP"), (53, "TCP")}
    expected |= {(port, "TCP") for port in kafka_ports}
    args = container["args"]
    if "--dsn" in args:
        from urllib.parse import urlsplit

        expected.add((urlsplit(args[args.index("--dsn") + 1]).port or 5432, "TCP"))
    assert _ports(rules) == expected
    (dns,) = [r for r in rules if (53, "UDP") in _ports([r])]
    assert _ports([dns]) == {(53, "UDP"), (53, "TCP")}
    for peer in dns["to"]:  # the cluster's DNS only, not port 53 anywhere
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"
        }
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_every_workload_of_several_pods_is_disrupted_one_pod_at_a_time(
    workload: dict[str, Any],
) -> None:
    """Only the service had a PodDisruptionBudget: a node drain could evict both pods of
    the sink (or of rekey) at once, and no tombstone reached PostgreSQL (no event was
    copied) until their successors started elsewhere. Each workload of several pods has
    one budget, over exactly its pods, that lets one go at a time. The sink's and
    rekey's let a pod that is not ready go too (it does no work): a database or broker
    outage does not hold drains back; the service's does, on purpose (README: Running it
    for real)."""
    overlay = [d for p in sorted((K8S / "rekey").glob("*.yaml")) for d in _docs(p)]
    budgets = [r for r in [*_resources(), *overlay] if r.get("kind") == "PodDisruptionBudget"]
    for budget in overlay:
        if budget.get("kind") == "PodDisruptionBudget":
            kubernetes_validate.validate(budget, kubernetes_validate.latest_version(), strict=True)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["replicas"] > 1
    (budget,) = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
    assert budget["spec"]["selector"] == workload["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1
    policy = budget["spec"].get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
    assert policy == ("IfHealthyBudget" if workload["kind"] == "StatefulSet" else "AlwaysAllow")
