"""One Ports type (rerank_contract.ports): every place that states a port agrees with it.

Code takes its numbers from the type; what cannot import it (compose, Dockerfiles, Kubernetes
manifests) is checked here, so a port moved in one place and not the others fails CI."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from rerank_contract.ports import DEFAULT, Ports

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_is_nims():
    assert DEFAULT == Ports(rest=8000, grpc=8001, metrics=8002, triton_http=8003)
    assert Ports(1, 2, 3, 4).offset(10) == Ports(11, 12, 13, 14) and Ports(1, 2, 3, 4).http == 1


def test_code_defaults_come_from_the_type():
    from rerank_client.connection import DEFAULT_URLS
    from rerank_gateway.settings import GatewaySettings
    from rerank_serving.cli import add_arguments
    from rerank_serving.supervise import image_command
    import argparse

    assert DEFAULT_URLS == {"grpc": f"localhost:{DEFAULT.grpc}", "http": f"localhost:{DEFAULT.triton_http}"}
    settings = GatewaySettings()
    assert settings.port == DEFAULT.rest and settings.triton.endswith(f":{DEFAULT.grpc}")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.http_port, args.grpc_port, args.metrics_port, args.triton_http_port) == (
        DEFAULT.rest, DEFAULT.grpc, DEFAULT.metrics, DEFAULT.triton_http)
    command = image_command([])
    assert {f"--http-port={DEFAULT.triton_http}", f"--grpc-port={DEFAULT.grpc}",
            f"--metrics-port={DEFAULT.metrics}"} <= set(command)


def test_the_makefile_states_no_port():
    """make serve passes a port only when one is given; otherwise rerank-serve's defaults (the type's)."""
    assert not re.search(r"\b800[0-3]\b", "\n".join(line for line in (ROOT / "Makefile").read_text().splitlines()
                                                    if not line.startswith("#")))


def test_images_and_compose_expose_the_types_ports():
    triton = (ROOT / "docker" / "Dockerfile.triton").read_text()
    gateway = (ROOT / "docker" / "Dockerfile.gateway").read_text()
    assert f"EXPOSE {DEFAULT.grpc} {DEFAULT.metrics} {DEFAULT.triton_http}" in triton
    assert f"EXPOSE {DEFAULT.rest}" in gateway and f"RERANK_GATEWAY_PORT={DEFAULT.rest}" in gateway
    assert f"RERANK_GATEWAY_TRITON=triton:{DEFAULT.grpc}" in gateway
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    assert compose["gateway"]["ports"] == [f"${{HTTP_PORT:-{DEFAULT.rest}}}:{DEFAULT.rest}"]
    assert compose["gateway"]["environment"]["RERANK_GATEWAY_TRITON"] == f"triton:{DEFAULT.grpc}"
    assert compose["triton"]["ports"] == [f"${{GRPC_PORT:-{DEFAULT.grpc}}}:{DEFAULT.grpc}",
                                          f"${{METRICS_PORT:-{DEFAULT.metrics}}}:{DEFAULT.metrics}",
                                          f"${{TRITON_HTTP_PORT:-{DEFAULT.triton_http}}}:{DEFAULT.triton_http}"]


def test_kubernetes_manifests_use_the_types_ports():
    base = ROOT / "deploy" / "k8s" / "base"
    triton = yaml.safe_load((base / "triton-deployment.yaml").read_text())
    (container,) = [c for c in triton["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": DEFAULT.grpc, "metrics": DEFAULT.metrics, "http": DEFAULT.triton_http}
    gateway = yaml.safe_load((base / "gateway-deployment.yaml").read_text())
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": DEFAULT.rest}
    config = yaml.safe_load((base / "configmap.yaml").read_text())["data"]
    assert config["RERANK_GATEWAY_PORT"] == str(DEFAULT.rest) and config["RERANK_GATEWAY_TRITON"].endswith(
        f":{DEFAULT.grpc}")
