"""Checks rendered inventory-mesh manifests for what a schema cannot see.

kubernetes-validate proves every manifest is a valid Kubernetes object; this proves they are the
objects the chart promises (STYLE.md, "Helm chart"): the expected services and hook, selectors on
name/instance/component only, hardened pods, native gRPC probes on the container port, peer
addresses that point at rendered Services, and a termination grace longer than drain + grace.

Usage: check_chart_invariants.py RENDERED.yaml --services a,b,.. --job yes|no
Prints one line per check group; exits 1 with every problem listed.
"""

import argparse
import re
import sys

import yaml

SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
STANDARD_LABELS = SELECTOR_KEYS | {"app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"}


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    if not match:
        raise ValueError(f"duration {duration!r} is not whole seconds")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--services", required=True, help="comma-separated services expected")
    parser.add_argument("--job", choices=["yes", "no"], required=True)
    args = parser.parse_args()
    expected_services = sorted(s for s in args.services.split(",") if s)

    with open(args.rendered, encoding="utf-8") as file:
        documents = [d for d in yaml.safe_load_all(file) if d]
    by_kind: dict[str, dict[str, dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document

    problems: list[str] = []

    def check(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    accounts = by_kind.get("ServiceAccount", {})
    jobs = by_kind.get("Job", {})

    for document in documents:
        name = f'{document["kind"]}/{document["metadata"]["name"]}'
        labels = document["metadata"].get("labels", {})
        check(STANDARD_LABELS <= labels.keys(), f"{name}: missing standard labels {sorted(STANDARD_LABELS - labels.keys())}")

    components = sorted(d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component", "?") for d in deployments.values())
    check(components == expected_services, f"deployed components {components}, expected {expected_services}")
    check(sorted(services) == sorted(deployments), f"Services {sorted(services)} differ from Deployments {sorted(deployments)}")
    check(sorted(accounts) == sorted(deployments), f"ServiceAccounts {sorted(accounts)} differ from Deployments {sorted(deployments)}")
    check(len(jobs) == (1 if args.job == "yes" else 0), f"{len(jobs)} migrate Job(s), expected job={args.job}")

    service_ports = {name: s["spec"]["ports"][0]["port"] for name, s in services.items()}

    def check_env(owner: str, env: list[dict]) -> dict[str, dict]:
        names = [e["name"] for e in env]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        check(not duplicates, f"{owner}: env names repeated: {duplicates}")
        by_name = {e["name"]: e for e in env}
        for secret_env in ("DATABASE_URL", "REDIS_URL"):
            ref = by_name.get(secret_env, {}).get("valueFrom", {}).get("secretKeyRef")
            check(bool(ref and ref.get("name") and ref.get("key")), f"{owner}: {secret_env} is not a secretKeyRef")
        for peer in ("AVAILABILITY", "RESERVATION", "REPLENISHMENT"):
            url = by_name.get(f"MESH__PEERS__{peer}", {}).get("value", "")
            match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
            check(bool(match), f"{owner}: MESH__PEERS__{peer}={url!r} is not http://<service>:<port>")
            if match and match.group(1) in service_ports:
                check(int(match.group(2)) == service_ports[match.group(1)], f"{owner}: MESH__PEERS__{peer} port differs from Service {match.group(1)}")
            elif match and peer.lower() in expected_services:
                problems.append(f"{owner}: MESH__PEERS__{peer} points at {match.group(1)}, which is not a rendered Service")
        check(by_name.get("MESH__TELEMETRY__JSON_LOGS", {}).get("value") in ("true", "false"), f"{owner}: MESH__TELEMETRY__JSON_LOGS missing")
        return by_name

    def check_pod(owner: str, pod: dict) -> dict:
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{owner}: pod runAsNonRoot is not true")
        (container,) = pod["containers"]
        context = container.get("securityContext", {})
        check(context.get("readOnlyRootFilesystem") is True, f"{owner}: readOnlyRootFilesystem is not true")
        check(context.get("allowPrivilegeEscalation") is False, f"{owner}: allowPrivilegeEscalation is not false")
        check(context.get("capabilities", {}).get("drop") == ["ALL"], f"{owner}: capabilities.drop is not [ALL]")
        check(pod.get("automountServiceAccountToken") is False, f"{owner}: service account token is mounted")
        return container

    for name, deployment in deployments.items():
        owner = f"Deployment/{name}"
        selector = deployment["spec"]["selector"]["matchLabels"]
        component = selector.get("app.kubernetes.io/component")
        check(set(selector) == SELECTOR_KEYS, f"{owner}: selector keys {sorted(selector)}, expected name/instance/component")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        check(selector.items() <= pod_labels.items(), f"{owner}: pod labels do not match the selector")
        service = services.get(name)
        if service:
            check(service["spec"]["selector"] == selector, f"{owner}: Service selector differs from the Deployment's")
            check(service["spec"]["ports"][0].get("targetPort") == "grpc", f"Service/{name}: targetPort is not grpc")
        pod = deployment["spec"]["template"]["spec"]
        check(pod.get("serviceAccountName") == name, f"{owner}: serviceAccountName is not {name}")
        container = check_pod(owner, pod)
        check(container["command"] + container["args"] == ["inventory-mesh", "serve", component], f"{owner}: does not run `inventory-mesh serve {component}`")
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            check(annotations.get("prometheus.io/port") == str(port), f"{owner}: prometheus.io/port is {annotations.get('prometheus.io/port')!r}, not the gRPC port {port}")
            check(annotations.get("prometheus.io/path") == "/metrics", f"{owner}: prometheus.io/path is not /metrics")
        env = check_env(owner, container["env"])
        listen = env.get(f"MESH__{component.upper()}__LISTEN_ADDR", {}).get("value")
        check(listen == f"0.0.0.0:{port}", f"{owner}: MESH__{component.upper()}__LISTEN_ADDR={listen!r}, expected 0.0.0.0:{port}")
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name, {})
            check(probe.get("grpc", {}).get("port") == port, f"{owner}: {probe_name} is not a gRPC probe on port {port}")
        startup, readiness, liveness = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
        try:
            drain = seconds(env["MESH__SHUTDOWN__DRAIN_DELAY"]["value"])
            grace = seconds(env["MESH__SHUTDOWN__GRACE"]["value"])
        except (KeyError, ValueError) as error:
            problems.append(f"{owner}: shutdown env: {error}")
            continue
        check(pod["terminationGracePeriodSeconds"] > drain + grace, f"{owner}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= drain {drain} + grace {grace}")
        check(readiness["periodSeconds"] * readiness["failureThreshold"] <= drain or drain == 0, f"{owner}: readiness needs longer than the drain delay ({drain}s) to notice NOT_SERVING")
        check(startup["periodSeconds"] * startup["failureThreshold"] >= 30, f"{owner}: startupProbe allows less than 30 s")
        check(liveness["periodSeconds"] * liveness["failureThreshold"] >= readiness["periodSeconds"] * readiness["failureThreshold"], f"{owner}: livenessProbe is stricter than readinessProbe")

    for name, job in jobs.items():
        owner = f"Job/{name}"
        hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
        check({"pre-install", "pre-upgrade"} <= hooks, f"{owner}: not a pre-install,pre-upgrade hook")
        container = check_pod(owner, job["spec"]["template"]["spec"])
        check(container["command"] + container["args"] == ["inventory-mesh", "migrate"], f"{owner}: does not run `inventory-mesh migrate`")
        check_env(owner, container["env"])

    summary = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    if problems:
        for problem in problems:
            print(f"  FAIL invariant: {problem}")
        return 1
    print(f"  ok   invariants ({summary}): labels, selectors, security, gRPC probes, metrics scrape, env, peers, shutdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
