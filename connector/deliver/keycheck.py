"""The deliver stage's start-up check of the Yespo API key and base URL (`check_key`)."""

from __future__ import annotations

import logging

from connector.errors import AuthenticationError, ConfigError, PermanentDeliveryError, RetryableDeliveryError
from connector.sink.client import YespoClient

__all__ = ["check_key"]

logger = logging.getLogger(__name__)


def _redirect_message(status: int, exc: PermanentDeliveryError) -> str:
    """The start-up error for a base URL that answers a redirect, naming its target if known."""
    target = f" to {exc.location}" if exc.location else ""
    return (
        f"GET /api/v1/account/info answered HTTP {status}, a redirect{target}: the connector follows "
        "no redirects; set the base URL the API answers at (e.g. https://yespo.io)"
    )


def check_key(client: YespoClient) -> None:
    """Fail fast on a refused key or a wrong base URL; an unreachable API is not fatal (deliveries retry).

    A 404 for `GET /api/v1/account/info`, which Yespo always serves, means `yespo.base_url` does not
    lead to the API. Deletes cannot notice it later: for them a 404 is "the contact is already
    gone", so a wrong URL would commit every delete and erasure without sending it anywhere.

    A redirect (3xx: `http://` for `https://`, a legacy eSputnik host) is refused the same way: the
    connector follows none (a redirected POST or DELETE would lose its body or method), so every
    write would stop the stage later with the same status.

    Args:
        client: the stage's Yespo client.

    Raises:
        AuthenticationError: the key was refused (401).
        ConfigError: the account info call answered 404 or a redirect (`yespo.base_url`).
    """
    try:
        client.account_info()
    except AuthenticationError as exc:
        if exc.status_code == 401:
            raise
        # 403 here may only mean the key lacks account rights; the contact calls decide.
        logger.warning("account info refused (403); continuing with the contact calls")
    except PermanentDeliveryError as exc:
        if exc.status_code == 404:
            raise ConfigError(
                "GET /api/v1/account/info answered 404: the base URL does not lead to the Yespo API "
                "(e.g. https://yespo.io)",
                key="yespo.base_url",
            ) from None
        if exc.status_code is not None and 300 <= exc.status_code < 400:
            raise ConfigError(_redirect_message(exc.status_code, exc), key="yespo.base_url") from None
        logger.warning("API key not checked at start-up", extra={"error": str(exc)})
    except RetryableDeliveryError as exc:
        logger.warning("API key not checked at start-up", extra={"error": str(exc)})
