"""Vigil's own rules for its deployment files, beyond what the schemas say.

    check_deploy.py compose docker-compose.yml   (and the Dockerfile, .dockerignore)
    check_deploy.py kubernetes RENDERED.yaml...   (kustomize output, see validate-deploy.sh)

Prints one line per violation and exits 1 if there is any. Run by
scripts/validate-deploy.sh with the Python of its tool environment (PyYAML).
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The port of telemetry.http_addr in ops/vigil.toml and the compose file.
HTTP_PORT = 9464
# Stages that run a loop and serve /healthz, /readyz and /metrics.
STAGES = {"vigil-detector": "detect", "vigil-sink": "sink", "vigil-api": "serve"}
# `vigil serve --addr 0.0.0.0:8080` in ops/api.yaml and the compose file.
API_PORT = 8080

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def vigil_settings():
    """ops/vigil.toml, with the defaults the checks need."""
    settings = tomllib.loads((ROOT / "ops/vigil.toml").read_text())
    kafka = settings.get("kafka", {})
    topics = kafka.get("topics", {})
    return {
        "images_partitions": topics.get("images", {}).get("partitions", 12),
        "detector_group": settings.get("detector", {}).get("group_id", "vigil-detector"),
        "http_addr": settings.get("telemetry", {}).get("http_addr"),
        "bootstrap": kafka.get("bootstrap_servers"),
    }


def documented_metrics():
    """Metric names in docs/operations.md's table (rules and dashboards may use only these)."""
    text = (ROOT / "docs/operations.md").read_text()
    names = set(re.findall(r"^\| `(vigil_[a-z_]+)", text, re.M))
    # Histograms are documented by their base name; Prometheus adds these series.
    for name in list(names):
        names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def check_metric_names(where, text, known):
    for name in sorted(set(re.findall(r"\bvigil_[a-z_]+", text)) - known):
        problem(where, f"uses {name}, which is not a documented Vigil metric (docs/operations.md)")


# --- docker compose ----------------------------------------------------------------------

def check_compose(path):
    compose = yaml.safe_load(Path(path).read_text())
    services = compose["services"]
    for name, service in services.items():
        if "restart" not in service:
            problem(f"compose {name}", "no restart policy")
    brokers = [n for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka") and n != "topic-init"]
    if len(brokers) != 3:
        problem("compose", f"{len(brokers)} Kafka brokers, not 3")
    for name in brokers:
        env = services[name]["environment"]
        for key, want in [
            ("KAFKA_DEFAULT_REPLICATION_FACTOR", 3),
            ("KAFKA_MIN_INSYNC_REPLICAS", 2),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", 3),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", 3),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", 2),
        ]:
            if str(env.get(key)) != str(want):
                problem(f"compose {name}", f"{key} is {env.get(key)!r}, want {want}")
    init = " ".join(services["topic-init"]["command"])
    for needle in ("--replication-factor 3", "min.insync.replicas=2"):
        if needle not in init:
            problem("compose topic-init", f"creates topics without {needle}")
    # The Kafka image of the brokers is the one scripts/kafka.sh runs (tests/kafka/pom.xml).
    pom = (ROOT / "tests/kafka/pom.xml").read_text()
    pinned = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    for name in brokers + ["topic-init"]:
        image = services[name]["image"]
        if pinned and image != f"apache/kafka:{pinned.group(1)}":
            problem(f"compose {name}", f"image {image}, but tests/kafka/pom.xml pins Kafka {pinned.group(1)}")
    scrape = yaml.safe_load((ROOT / "ops/compose/prometheus.yml").read_text())
    scraped = {
        (name, cfg["port"])
        for job in scrape["scrape_configs"]
        for cfg in job.get("dns_sd_configs", [])
        for name in cfg["names"]
    }
    for service in ("detector", "sink"):
        env = services[service].get("environment", {})
        addr = env.get("VIGIL__TELEMETRY__HTTP_ADDR")
        if addr != f"0.0.0.0:{HTTP_PORT}":
            problem(f"compose {service}", f"VIGIL__TELEMETRY__HTTP_ADDR is {addr!r}, want 0.0.0.0:{HTTP_PORT}")
        if (service, HTTP_PORT) not in scraped:
            problem("ops/compose/prometheus.yml", f"does not scrape {service}:{HTTP_PORT}")
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if not (ROOT / source).exists():
            problem("compose", f"mounts {source}, which does not exist")
    known = documented_metrics()
    rules = ROOT / "ops/components/monitoring/alerts.rules.yaml"
    check_metric_names(str(rules.relative_to(ROOT)), rules.read_text(), known)
    dashboard = ROOT / "ops/components/monitoring/vigil-dashboard.json"
    check_metric_names(str(dashboard.relative_to(ROOT)), json.dumps(json.loads(dashboard.read_text())), known)


def check_dockerfile():
    """Two images (cpu, the default, and gpu), the weights baked in, a numeric user."""
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    if "gpu" not in stages or not stages or stages[-1] != "cpu":
        problem("Dockerfile", f"stages {stages}: want a gpu stage and cpu last (the default target)")
    gpu = text.split(" AS gpu", 1)[-1].split("\nFROM ", 1)[0]
    if not re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*graphics", gpu):
        problem("Dockerfile", "the gpu image's NVIDIA_DRIVER_CAPABILITIES lacks graphics (Vulkan)")
    if "libvulkan1" in text.split(" AS gpu", 1)[0]:
        problem("Dockerfile", "the Vulkan loader is installed before the gpu stage, so the CPU image has it too")
    for user in re.findall(r"^USER (\S+)", text, re.M):
        if not re.fullmatch(r"\d+(:\d+)?", user):
            problem("Dockerfile", f"USER {user} is not numeric (Kubernetes' runAsNonRoot cannot check a name)")
    if "VIGIL__MODEL__FETCH=never" not in text:
        problem("Dockerfile", "the image may download weights at run time (set VIGIL__MODEL__FETCH=never)")
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if "models" in ignored or "models/" in ignored:
        problem(".dockerignore", "excludes models/, so the build cannot use the weights fetched there")


# --- Kubernetes ----------------------------------------------------------------------------

def pod_specs(docs):
    for doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def check_restricted(where, spec):
    """The "restricted" Pod Security Standard, plus a read-only root filesystem."""
    pod = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problem(where, f"{key} is set")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problem(where, f"volume {volume['name']} is a hostPath")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        cw = f"{where} container {c['name']}"
        if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            problem(cw, "runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problem(cw, "runs as user 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problem(cw, f"seccompProfile {seccomp!r}, want RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(cw, "allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problem(cw, "privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problem(cw, "does not drop ALL capabilities")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problem(cw, f"adds capabilities {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(cw, "root filesystem is writable")
        for port in c.get("ports", []):
            if "hostPort" in port:
                problem(cw, "uses a hostPort")


def check_probes(where, spec, port):
    c = spec["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != port:
        problem(where, f"no container port named http = {port} (where it serves /healthz)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http":
            problem(where, f"{probe} is not GET {path} on port http")


def check_kubernetes(paths):
    settings = vigil_settings()
    if settings["http_addr"] != f"0.0.0.0:{HTTP_PORT}":
        problem("ops/vigil.toml", f"telemetry.http_addr is {settings['http_addr']!r}, want 0.0.0.0:{HTTP_PORT}")
    known = documented_metrics()
    alerts = yaml.safe_load((ROOT / "ops/components/monitoring/alerts.rules.yaml").read_text())
    for path in paths:
        name = Path(path).stem
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        deployments = by_kind.get("Deployment", {})
        for deployment, spec in pod_specs(docs):
            where = f"{name}: {deployment['kind']} {deployment['metadata']['name']}"
            check_restricted(where, spec)
            if deployment["metadata"]["name"] in STAGES:
                # The API serves health on its own port (api.addr), the stages on telemetry.http_addr.
                port = API_PORT if deployment["metadata"]["name"] == "vigil-api" else HTTP_PORT
                check_probes(where, spec, port)
        for so in by_kind.get("ScaledObject", {}).values():
            where = f"{name}: ScaledObject {so['metadata']['name']}"
            target = so["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problem(where, f"scales {target}, which is not a Deployment here")
            elif "replicas" in deployments[target]["spec"]:
                problem(where, f"{target} keeps a fixed replica count, which every apply would reset")
            if so["spec"].get("maxReplicaCount", 100) > settings["images_partitions"]:
                problem(where, f"maxReplicaCount above the {settings['images_partitions']} partitions of images")
            for trigger in so["spec"]["triggers"]:
                if trigger["type"] != "kafka":
                    continue
                meta = trigger["metadata"]
                if meta.get("consumerGroup") != settings["detector_group"]:
                    problem(where, f"watches group {meta.get('consumerGroup')}, not {settings['detector_group']}")
                if meta.get("bootstrapServers") != settings["bootstrap"]:
                    problem(where, f"asks {meta.get('bootstrapServers')}, not vigil.toml's {settings['bootstrap']}")
        for pm in by_kind.get("PodMonitor", {}).values():
            where = f"{name}: PodMonitor {pm['metadata']['name']}"
            selected = set()
            for expr in pm["spec"]["selector"].get("matchExpressions", []):
                if expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In":
                    selected.update(expr["values"])
            if selected != set(STAGES):
                problem(where, f"selects {sorted(selected)}, want {sorted(STAGES)}")
            for endpoint in pm["spec"]["podMetricsEndpoints"]:
                if endpoint.get("port") != "http" or endpoint.get("path") != "/metrics":
                    problem(where, "does not scrape /metrics on port http")
        for rule in by_kind.get("PrometheusRule", {}).values():
            where = f"{name}: PrometheusRule {rule['metadata']['name']}"
            if rule["spec"] != alerts:
                problem(where, "differs from ops/components/monitoring/alerts.rules.yaml")
            check_metric_names(where, yaml.safe_dump(rule["spec"]), known)
        gpu = deployments.get("vigil-detector")
        if name in ("gpu", "all") and gpu:
            limits = gpu["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
            if "nvidia.com/gpu" not in limits:
                problem(f"{name}: vigil-detector", "no nvidia.com/gpu limit")


def check_collector(path="ops/otel-collector.yaml"):
    """The collector config wires OTLP in to a traces and a metrics pipeline, and every
    component a pipeline names is defined."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    protocols = cfg.get("receivers", {}).get("otlp", {}).get("protocols", {})
    if set(protocols) != {"grpc", "http"}:
        problem(path, "the otlp receiver must accept grpc and http (Vigil may send either)")
    pipelines = cfg.get("service", {}).get("pipelines", {})
    for signal in ("traces", "metrics"):
        if "otlp" not in pipelines.get(signal, {}).get("receivers", []):
            problem(path, f"no {signal} pipeline receiving otlp")
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in cfg.get(kind, {}):
                    problem(path, f"pipeline {name} names {kind[:-1]} {component}, which is not defined")


def main(argv):
    if len(argv) < 3 or argv[1] not in ("compose", "kubernetes"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "compose":
        check_compose(argv[2])
        check_dockerfile()
    else:
        check_kubernetes(argv[2:])
        check_collector()
    for line in problems:
        print(f"check_deploy: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_deploy: {argv[1]}: every rule holds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
