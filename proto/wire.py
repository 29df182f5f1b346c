"""How a gRPC server reads a request off the wire: undecodable bytes are the caller's error.

grpc.aio decodes a request with the handler's ``request_deserializer`` before
any servicer code runs, outside the call's context; a ``DecodeError`` there is
answered UNKNOWN with the raw exception text and logged as an "Unexpected"
traceback per request. ``DecodeInterceptor`` (install it first, i.e.
outermost, so that every other interceptor still sees decoded messages)
registers each handler without a deserializer and decodes the bytes itself,
inside the call: a malformed message is answered INVALID_ARGUMENT with one
line naming the expected message type, and the server logs one line (at most
one per method per ``LOG_EVERY_S``, with the count of the ones it skipped).

Shared by the personalizer and the agent's local API: both import ``proto``
and neither may import the other. Imports grpc only.
"""
from __future__ import annotations

import inspect
import logging
import time

import grpc

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


def _type_name(deserializer) -> str:
    cls = getattr(deserializer, "__self__", None)   # ``SomeRequest.FromString`` is a bound classmethod
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request message")


class _Decoder:
    """One method's deserializer, applied inside the call so a failure can abort it cleanly."""

    def __init__(self, method: str, deserializer, logbook: dict[str, list[float]]):
        self.method = method
        self.deserializer = deserializer
        self.type_name = _type_name(deserializer)
        self._logbook = logbook

    def _note(self) -> None:
        entry = self._logbook.setdefault(self.method, [0.0, 0])
        now = time.monotonic()
        if now - entry[0] >= LOG_EVERY_S:
            skipped = f" ({entry[1]} more since the last report)" if entry[1] else ""
            log.warning("refused an undecodable %s on %s%s", self.type_name, self.method, skipped)
            entry[0], entry[1] = now, 0
        else:
            entry[1] += 1

    async def decode(self, raw: bytes, context):
        try:
            return self.deserializer(raw)
        except Exception:   # noqa: BLE001 - whatever the decoder says, these bytes are the caller's fault
            self._note()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {self.type_name} message ({len(raw)} bytes that "
                                f"do not decode); encode it as {self.type_name} from the service's .proto")

    async def stream(self, raw_iterator, context):
        async for raw in raw_iterator:
            yield await self.decode(raw, context)


async def _finish(result):
    return await result if inspect.isawaitable(result) else result


def _guard(handler, method: str, logbook) -> grpc.RpcMethodHandler:
    d = _Decoder(method, handler.request_deserializer, logbook)
    ser = handler.response_serializer

    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(raw, context):
            return await _finish(inner(await d.decode(raw, context), context))

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=ser)

    if handler.stream_unary:
        inner = handler.stream_unary

        async def stream_unary(raw_iterator, context):
            return await _finish(inner(d.stream(raw_iterator, context), context))

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=ser)

    def streaming(inner, decode_input):
        async def behavior(first, context):
            request = await decode_input(first, context)
            if inspect.isasyncgenfunction(inner):
                async for item in inner(request, context):
                    yield item
            else:   # a handler that writes with context.write() and returns
                await _finish(inner(request, context))
        return behavior

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream, d.decode),
                                                    response_serializer=ser)

    async def stream_input(raw_iterator, context):
        return d.stream(raw_iterator, context)

    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream, stream_input),
                                                 response_serializer=ser)


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Decode every request inside its call: undecodable bytes get INVALID_ARGUMENT, not UNKNOWN."""

    def __init__(self) -> None:
        self._logbook: dict[str, list[float]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _guard(handler, handler_call_details.method, self._logbook)
