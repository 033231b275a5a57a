"""``/webhooks/whatsapp``: Meta's verification handshake and signed deliveries."""

from __future__ import annotations

from typing import Annotated

import msgspec
import structlog
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import QueryParameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from api.auth import PUBLIC
from api.deps import ServicesDep
from archiver.capture import MAX_JSON_DEPTH, MAX_WEBHOOK_BYTES, SignatureInvalid, nesting_depth

log = structlog.get_logger("strongroom.webhooks")


@get("/webhooks/whatsapp", tags=["webhooks"], media_type="text/plain", opt={"permission": PUBLIC})
async def verify_webhook(
    services: ServicesDep,
    mode: Annotated[str | None, QueryParameter(name="hub.mode")] = None,
    token: Annotated[str | None, QueryParameter(name="hub.verify_token")] = None,
    challenge: Annotated[str | None, QueryParameter(name="hub.challenge")] = None,
) -> Response[str]:
    """Answer Meta's subscription handshake with the challenge when the token matches."""
    if mode != "subscribe" or not token or challenge is None:
        return Response("bad handshake", status_code=HTTP_400_BAD_REQUEST)
    async with services.sessions() as session:
        matched = await services.accounts.match_verify_token(session, token)
    if not matched:
        return Response("verify token does not match", status_code=HTTP_403_FORBIDDEN)
    return Response(challenge, status_code=HTTP_200_OK)


@post(
    "/webhooks/whatsapp",
    tags=["webhooks"],
    request_max_body_size=MAX_WEBHOOK_BYTES,
    status_code=HTTP_200_OK,
    opt={"permission": PUBLIC},  # authenticated by the Meta app signature instead
)
async def receive_webhook(
    request: Request[object, object, State], services: ServicesDep
) -> Response[dict[str, str]]:
    """Verify the signature over the raw bytes, journal them durably, then acknowledge."""
    body = await request.body()
    signature = request.headers.get("x-hub-signature-256")
    try:
        account = await services.capture.verify_signature(body, signature)
    except SignatureInvalid as exc:
        log.warning("webhook refused", reason=str(exc))
        return Response({"error": "invalid signature"}, status_code=HTTP_401_UNAUTHORIZED)
    if nesting_depth(body) > MAX_JSON_DEPTH:
        return Response({"error": "body is nested too deeply"}, status_code=HTTP_400_BAD_REQUEST)
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return Response({"error": "body is not JSON"}, status_code=HTTP_400_BAD_REQUEST)
    try:
        await services.capture.journal(account.account_id, body, signature or "")
    except Exception as exc:  # not durable, so not acknowledged: Meta will retry
        log.error("journal unavailable", error=type(exc).__name__)
        return Response({"error": "try again"}, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    return Response({"status": "received"})
