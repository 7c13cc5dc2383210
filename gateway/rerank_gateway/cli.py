"""``rerank-gateway``: serve the REST API in front of a Triton ensemble.

    rerank-gateway --triton localhost:8001 --host 0.0.0.0 --port 8000 --workers 2

Every flag has an environment variable (``RERANK_GATEWAY_<FLAG>``, NIM's names where NIM has one);
a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

import uvicorn

from .settings import GatewaySettings


def build_parser(env: GatewaySettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerank-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triton", help=f"Triton gRPC endpoint HOST:PORT (default {env.triton})")
    p.add_argument("--host", help=f"address to listen on (default {env.host})")
    p.add_argument("--port", type=int, help=f"port to listen on (default {env.port}; NIM_HTTP_API_PORT)")
    p.add_argument("--workers", type=int, help=f"worker processes (default {env.workers})")
    p.add_argument("--served-model-name", help=f"model name listed first (default {env.served_model_name})")
    p.add_argument("--ensemble", help=f"Triton ensemble name (default {env.ensemble})")
    p.add_argument("--max-passages", type=int, help=f"passages per request (default {env.max_passages})")
    p.add_argument("--max-body-bytes", type=int, help=f"bytes per request body (default {env.max_body_bytes})")
    p.add_argument("--timeout-s", type=float, help=f"deadline per request, retries included (default {env.timeout_s})")
    p.add_argument("--ride-through-s", type=float,
                   help=f"seconds a request retries while Triton is unavailable (default {env.ride_through_s})")
    p.add_argument("--triton-concurrency", type=int,
                   help=f"Triton requests in flight per REST request (default {env.triton_concurrency})")
    p.add_argument("--rows-per-request", type=int,
                   help=f"passages per Triton request (default {env.rows_per_request})")
    p.add_argument("--admission-passages", type=int,
                   help="passages in flight before a fast 503 with Retry-After, for the whole gateway "
                        "(default: the ensemble's max_passages_in_flight)")
    p.add_argument("--admission-tokens", type=int,
                   help="estimated tokens in flight before a fast 503 with Retry-After, for the whole gateway "
                        "(default: 512 per passage of the passage budget)")
    p.add_argument("--cache-bytes", type=int,
                   help=f"bytes of exact pair scores kept per worker, least recently used dropped first "
                        f"(default {env.cache_bytes})")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                   help="no score cache: every pair is scored by Triton")
    p.add_argument("--no-admission", dest="admission", action="store_const", const=False,
                   help="no admission budget: overload only lengthens the queue")
    p.add_argument("--api-key", action="append", dest="api_keys",
                   help="accept this Bearer key (repeatable); none: auth off")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allowed CORS origin (repeatable)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const=False)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        env = GatewaySettings.from_env()
        args = vars(build_parser(env).parse_args(argv))
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        settings = GatewaySettings.from_env(**args)
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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run("rerank_gateway.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level, access_log=settings.access_log,
                    timeout_graceful_shutdown=10)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0
