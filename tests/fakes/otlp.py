"""A local OTLP/HTTP receiver of metrics and traces, after the OpenTelemetry collector's documented HTTP
contract (opentelemetry.io/docs/specs/otlp/#otlphttp): POST /v1/metrics with an ExportMetricsServiceRequest,
or /v1/traces with an ExportTraceServiceRequest, in binary protobuf (Content-Type application/x-protobuf),
answered 200 with the matching Export...ServiceResponse; 503 with Retry-After while `unavailable` says so
(the exporter must retry, not drop or crash); 415 for any other content type; 400 for a body that does not
decode."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

PROTOBUF = "application/x-protobuf"


@dataclass
class Point:
    metric: str
    kind: str  # sum | gauge
    value: float
    attributes: dict[str, str]
    monotonic: bool = False
    cumulative: bool = False


@dataclass
class Span:
    trace_id: str  # 32 hex digits, as a W3C traceparent writes it
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a trace's root
    name: str
    kind: str  # server | client | consumer | producer | internal
    attributes: dict[str, str | int | float | bool]
    error: bool  # status code ERROR
    status_message: str
    resource: dict[str, str]


def _value(v) -> str | int | float | bool:  # type: ignore[no-untyped-def]
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else str(v)


@dataclass
class OtlpReceiver:
    requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    trace_requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    unavailable: int = 0  # answer this many requests 503 first
    refused: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/metrics", self._export)
        app.router.add_post("/v1/traces", self._export_traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        return await self._receive(request, ExportMetricsServiceRequest, ExportMetricsServiceResponse, self.requests)

    async def _export_traces(self, request: web.Request) -> web.Response:
        return await self._receive(request, ExportTraceServiceRequest, ExportTraceServiceResponse,
                                   self.trace_requests)

    async def _receive(self, request: web.Request, request_type: Any, response_type: Any,
                       into: list[Any]) -> web.Response:
        """One OTLP/HTTP export: protobuf only, the injected 503s first, then the message kept in `into`."""
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        if self.unavailable > 0:
            self.unavailable -= 1
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": "0"})
        message = request_type()
        try:
            message.ParseFromString(await request.read())
        except DecodeError:
            return web.Response(status=400, text=f"not an {request_type.__name__}")
        into.append(message)
        self.arrived.set()
        return web.Response(body=response_type().SerializeToString(), content_type=PROTOBUF)

    def spans(self) -> list[Span]:
        """Every span received, in the order they arrived."""
        kinds = {SpanMessage.SPAN_KIND_SERVER: "server", SpanMessage.SPAN_KIND_CLIENT: "client",
                 SpanMessage.SPAN_KIND_CONSUMER: "consumer", SpanMessage.SPAN_KIND_PRODUCER: "producer",
                 SpanMessage.SPAN_KIND_INTERNAL: "internal"}
        found = []
        for request in self.trace_requests:
            for rs in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        found.append(Span(
                            trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                            name=s.name, kind=kinds.get(s.kind, "unspecified"),
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            error=s.status.code == s.status.STATUS_CODE_ERROR, status_message=s.status.message,
                            resource=resource,
                        ))
        return found

    def resources(self) -> list[dict[str, str]]:
        return [{kv.key: kv.value.string_value for kv in rm.resource.attributes}
                for r in self.requests for rm in r.resource_metrics]

    def points(self) -> list[Point]:
        """Every data point received, oldest first."""
        found = []
        for request in self.requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        for p in data.data_points:
                            value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                            found.append(Point(
                                metric=m.name, kind=kind, value=value,
                                attributes={kv.key: kv.value.string_value for kv in p.attributes},
                                monotonic=getattr(data, "is_monotonic", False),
                                cumulative=getattr(data, "aggregation_temporality", 0) == 2,
                            ))
        return found

    def latest(self, metric: str, **attributes: str) -> Point | None:
        matching = [p for p in self.points() if p.metric == metric and p.attributes == attributes]
        return matching[-1] if matching else None


class OtlpGrpcReceiver:
    """The collector's OTLP/gRPC metrics service (opentelemetry.proto.collector.metrics.v1.MetricsService,
    Export) on a free loopback port, in plaintext as a local agent listens; keeps what it receives."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

        receiver = self
        self.http = OtlpReceiver()  # reuses its decoding helpers over the same request list

        class Service(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                receiver.http.requests.append(request)
                return ExportMetricsServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def latest(self, metric: str, **attributes: str) -> Point | None:
        return self.http.latest(metric, **attributes)
