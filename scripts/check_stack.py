#!/usr/bin/env python3
"""Validates the shipped observability stack with real tools.

- docker-compose.yml against the compose specification schema
  (check-jsonschema), plus every depends_on / config / volume reference,
  pinned image tags and the documented ports;
- otel-collector.yaml structurally: every pipeline names defined components,
  connectors are used on both sides, endpoints match the compose services;
- dashboards/alerts.yaml with `promtool check rules` and `promtool test rules`;
- every dashboard query with `promtool check rules` (variables substituted);
- dashboards/bg-queue.json is what dashboards/generate.py produces, and its
  data source uids are the provisioned ones.

Prints one line per check and exits non-zero on the first failure.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
passed = 0


def ok(message):
    global passed
    passed += 1
    print(f"ok   {message}")


def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    ok(message)


def run(cmd, what):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{what}\n{result.stdout}\n{result.stderr}")
    ok(what)
    return result.stdout


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def check_compose():
    run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        "docker-compose.yml matches the compose specification schema")
    compose = load("docker-compose.yml")
    services = compose["services"]
    configs = compose.get("configs", {})
    volumes = compose.get("volumes", {}) or {}
    expected = {"app", "loadgen", "otel-collector", "jaeger", "prometheus", "grafana"}
    check(expected <= set(services), f"compose has the services {sorted(expected)}")
    for name, service in services.items():
        for target in (service.get("depends_on") or {}):
            check(target in services, f"{name}: depends_on {target} is a service")
        for entry in service.get("configs", []):
            source = entry["source"] if isinstance(entry, dict) else entry
            check(source in configs, f"{name}: config {source} is declared")
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if source.startswith("."):
                check((ROOT / source).exists(), f"{name}: bind mount {source} exists")
            else:
                check(source in volumes, f"{name}: volume {source} is declared")
        image = service.get("image", "")
        if "build" not in service and not image.startswith("bg-queue-demo"):
            tag = image.rsplit(":", 1)[-1] if ":" in image else ""
            check(tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is pinned")
    for name, config in configs.items():
        check((ROOT / config["file"]).is_file(), f"config {name}: {config['file']} exists")
    # "[host_ip:]host_port:container_port": the host port is the second
    # field from the right.
    ports = {name: [str(p).split(":")[-2] for p in s.get("ports", [])] for name, s in services.items()}
    for service, port in [("app", "3000"), ("app", "3001"), ("jaeger", "16686"), ("grafana", "3002"),
                          ("prometheus", "9090")]:
        check(port in ports[service], f"{service} publishes port {port} (as docs/stack.md says)")
    # The debug page shows task names and error text: on the host's
    # loopback only, never on every interface.
    debug = [str(p) for p in services["app"].get("ports", []) if str(p).split(":")[-1] == "3001"]
    check(debug and all(p.startswith("127.0.0.1:") for p in debug),
          "app publishes the debug port on 127.0.0.1 only")
    for name, service in services.items():
        if name in ("app", "prometheus", "grafana"):
            check("healthcheck" in service, f"{name} has a healthcheck")
    return compose


def endpoint_host_port(endpoint):
    match = re.match(r"^(?:[a-z]+://)?([^:/]+):(\d+)", endpoint)
    return (match.group(1), match.group(2)) if match else (None, None)


def check_collector(compose):
    config = load("otel-collector.yaml")
    kinds = ["receivers", "processors", "exporters", "connectors", "extensions"]
    defined = {kind: set((config.get(kind) or {}).keys()) for kind in kinds}
    service = config["service"]
    for extension in service.get("extensions", []):
        check(extension in defined["extensions"], f"collector: extension {extension} is defined")
    used_as_exporter, used_as_receiver = set(), set()
    for name, pipeline in service["pipelines"].items():
        for receiver in pipeline["receivers"]:
            ok_ = receiver in defined["receivers"] or receiver in defined["connectors"]
            check(ok_, f"collector: pipeline {name} receiver {receiver} is defined")
            if receiver in defined["connectors"]:
                used_as_receiver.add(receiver)
        for processor in pipeline.get("processors", []):
            check(processor in defined["processors"], f"collector: pipeline {name} processor {processor} is defined")
        for exporter in pipeline["exporters"]:
            ok_ = exporter in defined["exporters"] or exporter in defined["connectors"]
            check(ok_, f"collector: pipeline {name} exporter {exporter} is defined")
            if exporter in defined["connectors"]:
                used_as_exporter.add(exporter)
        if pipeline.get("processors"):
            check(pipeline["processors"][0] == "memory_limiter", f"collector: pipeline {name} starts with memory_limiter")
    for connector in defined["connectors"]:
        check(connector in used_as_exporter and connector in used_as_receiver,
              f"collector: connector {connector} is fed by one pipeline and feeds another")
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in service["pipelines"].values() for c in p.get(kind, [])}
        for component in defined[kind]:
            check(component in used or component in defined["connectors"], f"collector: {kind[:-1]} {component} is used")
    check(config["connectors"]["spanmetrics"]["exemplars"]["enabled"] is True, "collector: span metrics record exemplars")
    dims = {d["name"] for d in config["connectors"]["spanmetrics"]["dimensions"]}
    check({"bg.pool.name", "bg.task.name"} <= dims, "collector: span metrics keep bg.pool.name and bg.task.name")

    services = compose["services"]
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    check(grpc.endswith(":4317") and http.endswith(":4318"), "collector: OTLP on 4317 (gRPC) and 4318 (HTTP)")
    app_endpoint = services["app"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = endpoint_host_port(app_endpoint)
    check(host == "otel-collector" and port == "4317", f"app exports to the collector service's gRPC port ({app_endpoint})")
    for name, exporter in config["exporters"].items():
        endpoint = exporter.get("endpoint") or exporter.get("metrics_endpoint")
        host, port = endpoint_host_port(endpoint)
        check(host in services, f"collector: exporter {name} targets service {host}")
    prom_host, prom_port = endpoint_host_port(config["exporters"]["otlphttp/prometheus"]["metrics_endpoint"])
    check(prom_port == "9090" and "--web.enable-otlp-receiver" in services["prometheus"]["command"],
          "collector pushes metrics to Prometheus' OTLP receiver")
    health = config["extensions"]["health_check"]["endpoint"]
    check(health.endswith(":13133"), "collector: health check on 13133")


def dashboard_queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.match(r"label_values\((.*),\s*\w+\)$", query)
        if match:
            yield f"variable {variable['name']}", match.group(1)


def substitute(expr):
    for name, value in [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
                        ("${service}", ".*"), ("$service", ".*"), ("$pool", ".*"), ("$task", ".*")]:
        expr = expr.replace(name, value)
    return expr


def check_rules_and_dashboards():
    run(["promtool", "check", "rules", "dashboards/alerts.yaml"], "promtool check rules dashboards/alerts.yaml")
    result = subprocess.run(["promtool", "test", "rules", "alerts.test.yaml"], cwd=ROOT / "dashboards",
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"promtool test rules\n{result.stdout}\n{result.stderr}")
    ok("promtool test rules dashboards/alerts.test.yaml (each alert fires and stays quiet)")

    generated = subprocess.run([sys.executable, "-c",
                                "import sys; sys.path.insert(0, 'dashboards'); import generate; sys.stdout.write(generate.render())"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    check(generated == (ROOT / "dashboards/bg-queue.json").read_text(),
          "dashboards/bg-queue.json is up to date with dashboards/generate.py")
    dashboard = json.loads(generated)
    queries = list(dashboard_queries(dashboard))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(rules, handle)
        path = handle.name
    run(["promtool", "check", "rules", path], f"promtool check rules on all {len(queries)} dashboard queries")
    for title, expr in queries:
        check("$" not in substitute(expr), f"query in {title!r} has no unsubstituted variable")

    datasources = load("dashboards/provisioning/datasources/datasources.yaml")["datasources"]
    uids = {d["uid"]: d for d in datasources}
    check(set(uids) == {"prometheus", "jaeger"}, "data sources have fixed uids prometheus and jaeger")
    destinations = uids["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    check(any(d["datasourceUid"] == "jaeger" for d in destinations), "Prometheus exemplars link to the Jaeger data source")
    for panel in dashboard["panels"]:
        uid = panel.get("datasource", {}).get("uid")
        if uid:
            check(uid in uids, f"panel {panel['title']!r} uses a provisioned data source")
    check(any(t.get("exemplar") for p in dashboard["panels"] for t in p.get("targets", [])),
          "a run-time panel shows exemplars")


def main():
    compose = check_compose()
    check_collector(compose)
    check_rules_and_dashboards()
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
