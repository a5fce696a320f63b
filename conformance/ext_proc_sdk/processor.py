"""An ext_proc processor written with a third-party framework: the PyPI package
`envoy-extproc-sdk` 0.1.1 (2022). The logic below uses only the SDK's own idioms: a
`BaseExtProcService` subclass with `process_request_headers` / `process_response_headers`,
the per-stream `request` dict the SDK fills (`request["path"]`, `request["method"]`),
`add_header` / `remove_header`, `form_immediate_response` and `StopRequestProcessing`.

    processor.py --port PORT --legacy-port PORT2

serves the same processor twice on 127.0.0.1, as two gRPC servers in one process:
- PORT: the SDK behind a thin adapter for today's header encoding (see RawValueAdapter).
- PORT2: the SDK exactly as published, no adapter ("legacy").

Why the adapter: Envoy (since the runtime flag envoy.reloadable_features.send_header_raw_value
became the default, and in 1.40) sends header values in `HeaderValue.raw_value` (bytes) and
reads only `raw_value` from mutations. The 2022 SDK reads and writes `HeaderValue.value`
(string). Unadapted, every header the SDK reads is empty and every header it sets arrives
with an empty value. The legacy port shows exactly that, so run.sh can check that a proxy does
what Envoy 1.40 does with such a processor.

Requests for the path /slow sleep SLOW_SECONDS (3 s) in the request-headers phase: longer
than the filter's message_timeout (1 s) in run.sh's bootstrap.
"""

import argparse
import asyncio
import logging
import os
import sys
from typing import AsyncIterator, Dict

from envoy_extproc_sdk import BaseExtProcService, StopRequestProcessing, ext_api
from envoy_extproc_sdk.health import HealthService, add_HealthServicer_to_server
from envoy_extproc_sdk.util.envoy import (
    EnvoyHttpStatusCode,
    add_ExternalProcessorServicer_to_server,
)
from grpc import ServicerContext
from grpc.aio import server as grpc_aio_server

logger = logging.getLogger("processor")

SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "3"))
BLOCKED_BODY = b"blocked by envoy-extproc-sdk\n"


class SentinelSdkProcessor(BaseExtProcService):
    """Headers only: request and response headers SEND, bodies NONE, trailers SKIP."""

    async def process_request_headers(
        self,
        headers: ext_api.HttpHeaders,
        context: ServicerContext,
        request: Dict,
        response: ext_api.CommonResponse,
    ) -> ext_api.CommonResponse:
        # The SDK has already put :method and :path into `request` (its "standard headers").
        path = request.get("path") or ""
        request["request_header_names"] = ",".join(h.key for h in headers.headers.headers)
        if path == "/blocked":
            raise StopRequestProcessing(
                response=self.form_immediate_response(
                    EnvoyHttpStatusCode.Forbidden,
                    {"x-extproc-sdk-blocked": "yes"},
                    # The SDK's signature says str; today's protos make the field bytes.
                    BLOCKED_BODY,
                ),
                reason="path /blocked",
            )
        if path == "/slow":
            await asyncio.sleep(SLOW_SECONDS)
        self.add_header(response, "x-extproc-sdk", "seen")
        self.remove_header(response, "x-remove-me")
        # Refused by the default mutation rules (Envoy ignores them, the request goes on).
        self.add_header(response, "x-envoy-extproc-sdk", "refused")
        self.add_header(response, "host", "refused.example")
        return response

    async def process_response_headers(
        self,
        headers: ext_api.HttpHeaders,
        context: ServicerContext,
        request: Dict,
        response: ext_api.CommonResponse,
    ) -> ext_api.CommonResponse:
        # The SDK's per-stream context carries the request phase's data to this phase.
        self.add_header(
            response, "x-extproc-sdk-saw", f"{request.get('method') or ''} {request.get('path') or ''}"
        )
        self.add_header(response, "x-extproc-sdk-response", "added")
        # What the proxy sent: the x-request-id the SDK keeps as request["__id"], and the names
        # of the request and response headers, in the order received.
        self.add_header(response, "x-extproc-sdk-request-id", request.get("__id") or "")
        self.add_header(
            response, "x-extproc-sdk-request-headers", request.get("request_header_names", "")
        )
        self.add_header(
            response,
            "x-extproc-sdk-response-headers",
            ",".join(h.key for h in headers.headers.headers),
        )
        self.remove_header(response, "x-upstream-secret")
        return response


def _raw_to_value(headers: ext_api.HttpHeaders) -> None:
    for h in headers.headers.headers:
        if not h.value and h.raw_value:
            h.value = h.raw_value.decode("utf-8", "replace")


def _value_to_raw(options) -> None:
    for opt in options:
        h = opt.header
        if h.value and not h.raw_value:
            h.raw_value = h.value.encode()
            h.value = ""  # Envoy refuses a HeaderValue with both set


class RawValueAdapter:
    """Wraps an SDK service: fills `value` from `raw_value` in what the proxy sends, and
    moves `value` to `raw_value` in what the SDK answers. Nothing else changes."""

    def __init__(self, service: BaseExtProcService) -> None:
        self.service = service

    async def Process(self, request_iterator, context) -> AsyncIterator[ext_api.ProcessingResponse]:
        async def incoming():
            async for req in request_iterator:
                phase = req.WhichOneof("request")
                if phase in ("request_headers", "response_headers"):
                    _raw_to_value(getattr(req, phase))
                yield req

        async for resp in self.service.Process(incoming(), context):
            kind = resp.WhichOneof("response")
            if kind in ("request_headers", "response_headers"):
                _value_to_raw(getattr(resp, kind).response.header_mutation.set_headers)
            elif kind == "immediate_response":
                _value_to_raw(resp.immediate_response.headers.set_headers)
            yield resp


async def _serve(port: int, legacy_port: int) -> None:
    servers = []
    for p, servicer in (
        (port, RawValueAdapter(SentinelSdkProcessor())),
        (legacy_port, SentinelSdkProcessor()),
    ):
        # As the SDK's create_server(), but on loopback only.
        server = grpc_aio_server()
        add_ExternalProcessorServicer_to_server(servicer, server)
        add_HealthServicer_to_server(HealthService(), server)
        server.add_insecure_port(f"127.0.0.1:{p}")
        await server.start()
        servers.append(server)
    logger.info("processor serving on 127.0.0.1:%d (adapted) and :%d (legacy)", port, legacy_port)
    print(f"ready {port} {legacy_port}", flush=True)
    await asyncio.gather(*(s.wait_for_termination() for s in servers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--legacy-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_serve(args.port, args.legacy_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
