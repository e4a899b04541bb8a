"""The error boundary: where what a client sent becomes typed parameters, and where a failure becomes
the LSP error the client is owed. Nothing else in ``lsp_server`` builds a JSON-RPC error.

- ``SwespotProtocol`` answers what pygls would drop or run anyway: parameters it cannot parse
  (InvalidParams), requests before ``initialize`` (ServerNotInitialized), a ``didChange`` to an older
  version (refused), and a message that is not JSON at all (ParseError).
- ``parse`` turns a custom method's parameters into a protocol type (InvalidParams with the reasons).
- ``serve`` wraps every request: tagged log lines, timing, and ``to_lsp_error`` for a ``SwespotError``
  (the one expected failure: RequestFailed with its message).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.v import format_exception
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcServerNotInitialized
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from agent.errors import SwespotError
from lsp_server import protocol as P
from lsp_server.logs import REQUEST_TAG

log = logging.getLogger("swespot.lsp")

T = TypeVar("T")
PARSE_ERROR = -32700  # JSON-RPC: the message could not be read


def to_lsp_error(exc: SwespotError) -> JsonRpcException:
    """The LSP error for an expected failure: RequestFailed with the message that says what to do."""
    return JsonRpcException(message=str(exc), code=P.REQUEST_FAILED)


def validation_reasons(exc: cattrs.ClassValidationError) -> str:
    """cattrs' reasons with their paths; a value a protocol type's validator refused keeps its message
    ("'max_steps' must be >= 1: 0"), which cattrs alone reduces to "invalid value"."""

    def describe(error: BaseException, type_) -> str:
        if type_ is None and type(error) is ValueError and str(error):
            return f"invalid value ({error})"
        return format_exception(error, type_)

    return "; ".join(cattrs.transform_error(exc, format_exception=describe))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """Free text of a request with every lone surrogate (``"\\udc80"`` in the JSON: valid JSON, not valid
    Unicode, and unencodable as UTF-8) replaced by U+FFFD, so a prompt holding one is answered instead of
    failing deep inside with -32603. (Open documents keep theirs: the text check refuses those.)"""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    return value


def parse(converter: cattrs.Converter, raw: Any, cls: type[T], method: str) -> T:
    """Parameters of a custom method as a protocol type; InvalidParams with the reasons otherwise."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise JsonRpcInvalidParams(f"invalid parameters for {method}: expected an object, got {type(raw).__name__}")
    try:
        return converter.structure(replace_lone_surrogates(raw), cls)
    except cattrs.ClassValidationError as exc:
        raise JsonRpcInvalidParams(f"invalid parameters for {method}: {validation_reasons(exc)}") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise JsonRpcInvalidParams(f"invalid parameters for {method}: {exc}") from exc


async def serve(tag: str, handler: Callable[[], Any]) -> Any:
    """Every request passes here: tagged (``method#id``) in the log, timed, and its SwespotError turned
    into an LSP error the client can show."""
    REQUEST_TAG.set(tag)
    started = time.perf_counter()
    try:
        result = handler()
        if inspect.isawaitable(result):
            result = await result
    except SwespotError as exc:
        log.info("refused after %.0f ms: %s", (time.perf_counter() - started) * 1e3, exc)
        raise to_lsp_error(exc) from exc
    except JsonRpcInvalidParams as exc:
        log.info("refused after %.0f ms: %s", (time.perf_counter() - started) * 1e3, exc)
        raise
    except asyncio.CancelledError:
        log.info("cancelled after %.0f ms", (time.perf_counter() - started) * 1e3)
        raise
    log.info("answered in %.0f ms", (time.perf_counter() - started) * 1e3)
    return result


_BODY_ID = re.compile(r'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


class SwespotProtocol(LanguageServerProtocol):
    """pygls' protocol, with the answers a confused or hostile client is owed:

    - a request whose parameters cannot be parsed is answered with InvalidParams (pygls drops it, and the
      client would wait forever);
    - a request before ``initialize`` is answered with ServerNotInitialized (-32002, as LSP says), and a
      notification before it is dropped (pygls ran them against a server with no workspace);
    - a request without ``params`` (valid JSON-RPC) to one of our methods gets ``params: null``;
    - a ``didChange`` whose version is older than the document's is refused: versions never go back, so
      a task naming an old version is refused too;
    - a message that is not JSON gets a parse error, when its id can still be read (``answer_unreadable``).
    """

    @attrs.define
    class MalformedRequest:
        id: Any
        method: str
        reason: str
        jsonrpc: str = "2.0"

    def structure_message(self, data: dict[str, Any]):
        if (isinstance(data, dict) and "jsonrpc" in data and isinstance(data.get("method"), str) and "params" not in data
                and self.get_message_type(data["method"]) is None):
            data = {**data, "params": None}  # JSON-RPC may omit params; pygls' fallback types require them
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                reason = validation_reasons(cause) if isinstance(cause, cattrs.ClassValidationError) else str(cause or exc)
                return self.MalformedRequest(data["id"], str(data["method"]), reason)
            raise

    def handle_message(self, message):
        method = getattr(message, "method", None)
        if method is not None and not getattr(self._server, "configured", True) and method not in (lsp.INITIALIZE, lsp.EXIT):
            msg_id = getattr(message, "id", None)
            if msg_id is None:
                log.warning("dropped %s: it came before initialize", method)
                return
            why = getattr(self._server, "initialize_error", None)
            text = f"{method} before initialize: " + (f"initialize failed ({why})" if why else "send initialize first")
            log.warning("refused %s", text)
            self._send_response(msg_id, error=JsonRpcServerNotInitialized(text).to_response_error())
            return
        if isinstance(message, self.MalformedRequest):
            log.warning("malformed %s request %s: %s", message.method, message.id, message.reason)
            error = JsonRpcInvalidParams(f"invalid parameters for {message.method}: {message.reason}")
            self._send_response(message.id, error=error.to_response_error())
            return
        super().handle_message(message)

    def answer_unreadable(self, error: json.JSONDecodeError) -> None:
        """A message pygls could not read (a body cut by a wrong Content-Length, or not JSON): answer its
        request, if its id can still be read, with a parse error, so the client does not wait forever."""
        found = _BODY_ID.search(error.doc or "")
        log.warning("unreadable message (%s)%s", error, f", answering id {found.group(1)}" if found else "")
        if found:
            self._send_response(json.loads(found.group(1)), error=lsp.ResponseError(
                code=PARSE_ERROR, message=f"the message could not be read ({error.msg}): was its Content-Length right?"))

    @lsp_method(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: lsp.DidChangeTextDocumentParams):
        doc = self.workspace.text_documents.get(params.text_document.uri)
        new, old = params.text_document.version, doc.version if doc is not None else None
        if isinstance(new, int) and isinstance(old, int) and new < old:
            text = (f"refused a change of {params.text_document.uri} to version {new}: the document is at version {old} "
                    "and versions never go back (the change was not applied)")
            log.warning("%s", text)
            self.notify(lsp.WINDOW_LOG_MESSAGE, lsp.LogMessageParams(lsp.MessageType.Warning, f"SWE-Spot: {text}"))
            return
        yield from super().lsp_text_document__did_change(params)
