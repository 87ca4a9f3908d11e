"""AWS SES v2 provider: each personalised message sent as raw MIME with ``SendEmail``, several at a time.

Why raw and not SES bulk: ``SendBulkEmail`` only takes SES-hosted templates, which would mean a second
template language beside ours and a template upload per job; raw content sends the very bytes the SMTP
path sends, so both paths deliver identical mail. (moto 5.2, our test double, does not serve SES v2
templates or ``SendBulkEmail`` either, so that path could not be tested for real.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult, report
from resilience.reasons import one_line, reason

_THROTTLED_CODES = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling"})
_FAILED_CODES = frozenset(
    {"MessageRejected", "MailFromDomainNotVerifiedException", "BadRequestException", "NotFoundException"}
)
# Errors that refuse every call, whatever the message: credentials, permissions, a paused account.
_UNAVAILABLE_CODES = frozenset(
    {
        "AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
        "SignatureDoesNotMatch", "ExpiredTokenException", "AccountSuspendedException", "SendingPausedException",
    }
)


class SendQuota(NamedTuple):
    """An SES account's sending quota as the account reports it."""

    max_send_rate: float  # messages per second
    max_24_hour_send: float  # messages per rolling 24 hours (-1: unlimited)
    sent_last_24_hours: float
    source: str  # which call answered: GetAccount (v2) or GetSendQuota (v1)


class _Unavailable(Exception):
    """Raised inside a worker thread when the call says nothing about the message, only about SES."""


class _NotTried(_Unavailable):
    """Another call of the same batch already found SES unreachable: this one was not made."""


def classify_client_error(exc: ClientError) -> tuple[Outcome | None, str]:
    """Outcome for an SES error response (None: the provider as a whole is unavailable) and a short text."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    text = one_line(f"{code}: {message}" if message else code)
    if code in _THROTTLED_CODES or "maximum sending rate exceeded" in message.lower():
        return Outcome.THROTTLED, text
    if "daily message quota exceeded" in message.lower() or code == "LimitExceededException":
        return Outcome.THROTTLED, text  # the 24-hour quota: the message is fine, the account must wait
    if code in _UNAVAILABLE_CODES:
        return None, text
    if code in _FAILED_CODES:
        return Outcome.FAILED, text
    if status >= 500:
        return Outcome.RETRY, text
    if status == 429:
        return Outcome.THROTTLED, text
    return Outcome.FAILED, text  # any other 4xx is about the request itself and will not change


class SesProvider:
    """Sends through SES v2 with our own retry policy; botocore's retries are switched off."""

    name = "ses"

    def __init__(
        self,
        *,
        region: str,
        mail_from: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: Any = None,  # str or pydantic SecretStr; never logged
        configuration_set: str | None = None,
        concurrency: int = 8,
        max_batch: int = 500,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.region, self.mail_from, self.endpoint_url = region, mail_from, endpoint_url
        self.max_batch = max_batch
        self._access_key_id = access_key_id
        self._secret = (
            secret_access_key.get_secret_value()
            if hasattr(secret_access_key, "get_secret_value")
            else secret_access_key
        )
        self._configuration_set = configuration_set
        self._concurrency = max(1, concurrency)
        self._config = Config(
            region_name=region,
            # total_max_attempts counts the first call, so 1 means botocore never retries by itself.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._concurrency,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Create the client and the thread pool (boto3 is blocking; its clients are thread-safe)."""
        if self._client is not None:
            return
        session = boto3.session.Session(
            aws_access_key_id=self._access_key_id, aws_secret_access_key=self._secret, region_name=self.region
        )
        self._client = session.client("sesv2", endpoint_url=self.endpoint_url, config=self._config)
        self._executor = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="ses-send")

    async def stop(self) -> None:
        """Let in-flight calls finish, then release the threads and HTTP connections."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        """Send every message (``concurrency`` at a time); raise ProviderUnavailable when SES refused them all."""
        await self.start()
        loop = asyncio.get_running_loop()
        unreachable: list[str] = []  # once SES refused a connection, the calls still queued are not made

        def send_one(msg: OutgoingEmail) -> SendResult:
            if unreachable:
                raise _NotTried(unreachable[0])
            try:
                return self._send_one(msg)
            except _Unavailable as exc:
                unreachable.append(str(exc))
                raise

        async def send(index: int, msg: OutgoingEmail) -> SendResult:
            result = await loop.run_in_executor(self._executor, send_one, msg)
            await report(on_result, index, result)
            return result

        outcomes = await asyncio.gather(*(send(i, msg) for i, msg in enumerate(messages)), return_exceptions=True)
        results: list[SendResult] = []
        unavailable: list[str] = []
        for msg, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, SendResult):
                results.append(outcome)
            elif isinstance(outcome, _NotTried):  # never sent: costs no attempt
                unavailable.append(str(outcome))
                results.append(SendResult(msg.key, Outcome.UNREACHED, error=one_line(f"ses unavailable: {outcome}")))
            elif isinstance(outcome, _Unavailable):
                unavailable.append(str(outcome))
                results.append(SendResult(msg.key, Outcome.RETRY, error=one_line(f"ses unavailable: {outcome}")))
            else:  # a bug, not an SES answer: report it per message instead of losing the batch
                results.append(SendResult(msg.key, Outcome.RETRY, error=reason(outcome)))
        if messages and len(unavailable) == len(messages):
            raise ProviderUnavailable(unavailable[0])
        return results

    async def read_quota(self) -> SendQuota:
        """The account's quota: SES v2 ``GetAccount``, else v1 ``GetSendQuota``.

        Both carry the same quota; v1 is asked when v2's answer is refused or not served (moto 5.2, the test
        double, serves only v1's). Raises the last error when neither answers.
        """
        await self.start()
        loop = asyncio.get_running_loop()
        try:
            account = await loop.run_in_executor(self._executor, self._client.get_account)
            quota = account["SendQuota"]
            return SendQuota(float(quota["MaxSendRate"]), float(quota["Max24HourSend"]),
                             float(quota["SentLast24Hours"]), "GetAccount")
        except (ClientError, BotoCoreError, KeyError):
            v1 = await loop.run_in_executor(self._executor, self._v1_quota)
            return SendQuota(float(v1["MaxSendRate"]), float(v1["Max24HourSend"]), float(v1["SentLast24Hours"]),
                             "GetSendQuota")

    def _v1_quota(self) -> dict[str, Any]:
        session = boto3.session.Session(
            aws_access_key_id=self._access_key_id, aws_secret_access_key=self._secret, region_name=self.region
        )
        client = session.client("ses", endpoint_url=self.endpoint_url, config=self._config)
        try:
            return dict(client.get_send_quota())
        finally:
            client.close()

    def _send_one(self, msg: OutgoingEmail) -> SendResult:
        kwargs: dict[str, Any] = {
            "FromEmailAddress": self.mail_from,
            "Destination": {"ToAddresses": [msg.to_address]},
            "Content": {"Raw": {"Data": msg.raw}},
        }
        if self._configuration_set:
            kwargs["ConfigurationSetName"] = self._configuration_set
        try:
            response = self._client.send_email(**kwargs)
        except ClientError as exc:
            outcome, text = classify_client_error(exc)
            if outcome is None:
                raise _Unavailable(text) from None
            return SendResult(msg.key, outcome, error=text)
        except (EndpointConnectionError, ConnectTimeoutError, NoCredentialsError) as exc:
            raise _Unavailable(one_line(exc)) from None
        except ParamValidationError as exc:  # the request itself is malformed: sending it again won't help
            return SendResult(msg.key, Outcome.FAILED, error=one_line(exc))
        except (ReadTimeoutError, ConnectionClosedError) as exc:
            # The request left; SES may have accepted it. Retry later rather than declare SES down.
            return SendResult(msg.key, Outcome.RETRY, error=one_line(exc))
        except BotoCoreError as exc:
            return SendResult(msg.key, Outcome.RETRY, error=one_line(exc))
        return SendResult(msg.key, Outcome.SENT, provider_message_id=response.get("MessageId"))
