"""``rerank-gateway``: serve the REST API in front of a Triton ensemble.

    rerank-gateway --triton localhost:8001 --host 0.0.0.0 --port 8000 --workers 2

Every flag has an environment variable (``RERANK_GATEWAY_<FLAG>``, NIM's names where NIM has one);
a flag wins over its variable. The flags are generated from :class:`~rerank_gateway.settings.GatewaySettings`.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import sys
import tempfile

import uvicorn

from .settings import add_arguments, parse_args
from .tracing import log_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerank-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv, build_parser())
    except ValueError as exc:
        print(f"rerank-gateway: {exc}", file=sys.stderr)
        return 2
    os.environ.update(settings.to_env())  # workers build their app from the environment
    # Several workers keep their metrics in files (prometheus-client's multiprocess mode). A directory
    # made here is this run's alone and goes with it; one given in PROMETHEUS_MULTIPROC_DIR (e.g. a
    # Kubernetes emptyDir) is the deployment's to manage.
    made = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rerank-gateway-metrics-")
    config = log_config(settings.log_level)  # every line carries the request's X-Request-Id
    logging.config.dictConfig(config)
    try:
        uvicorn.run("rerank_gateway.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level, access_log=settings.access_log,
                    timeout_graceful_shutdown=10, log_config=config)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0
