"""CustomHealthChecker: your function, sync or async, as a health check."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping

from .._dispatch import CallbackBusyError, Dispatcher, is_async_callable
from .checker import DEFAULT_TIMEOUT, HealthChecker
from .result import HEALTHY, UNHEALTHY, HealthCheckError, HealthCheckResult, HealthStatus

__all__ = ["CheckFunction", "CheckReturn", "CustomHealthChecker"]


CheckReturn = bool | Mapping[str, object] | HealthCheckResult | None
CheckFunction = Callable[[], CheckReturn | Awaitable[CheckReturn]]


class CustomHealthChecker(HealthChecker):
    """Runs your function as a health check.

    ``check_func`` takes no arguments, is sync or async, and returns:

    - ``True`` or ``None``: healthy; ``False``: unhealthy;
    - a dict: its items become details; an optional ``"status"`` (a
      :class:`HealthStatus` or its string) or ``"healthy"`` (bool) key sets the
      status, an optional ``"error"`` key the error text;
    - a :class:`HealthCheckResult`: taken as the verdict.

    An exception is an unhealthy result carrying the error. Sync functions run on
    one worker thread of the checker's own (started at the first check, ended by
    :meth:`aclose`), never in the loop's default executor, so a stuck function
    cannot starve DNS lookups or other checks; ``in_thread=False`` runs them on
    the event loop, for quick ones. A sync call that outlives its timeout is not
    started again until it returns: meanwhile each check fails at once with
    "previous call of the check function is still running".
    """

    def __init__(
        self,
        name: str,
        check_func: CheckFunction,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
        in_thread: bool = True,
        component_type: str = "component",
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if not callable(check_func):
            raise TypeError(f"'check_func' must be callable: {check_func!r}")
        self._func = check_func
        self._is_async = is_async_callable(check_func)
        self._in_thread = in_thread
        # One thread of its own, never the loop's default executor (where DNS lookups
        # queue): a stuck function holds this thread only.
        self._worker = Dispatcher(max_workers=1, name=f"xnai-health-check-{self.name}")
        self.component_type = component_type

    async def _call(self) -> CheckReturn:
        if self._is_async or not self._in_thread:
            value = self._func()
        else:
            value = await self._call_in_thread()
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _call_in_thread(self) -> CheckReturn | Awaitable[CheckReturn]:
        """Run the function on this checker's own worker thread.

        A call that outlived its timeout keeps that thread until it returns; the
        next checks fail at once instead of queueing behind it.
        """
        try:
            value: CheckReturn | Awaitable[CheckReturn] = await self._worker.call(
                self._func, timeout=None
            )
        except CallbackBusyError:
            raise HealthCheckError("previous call of the check function is still running") from None
        return value

    async def aclose(self) -> None:
        """End the worker thread (a stuck call's thread ends when the call returns)."""
        self._worker.close()

    async def probe(self) -> Mapping[str, object] | HealthCheckResult:
        value = await self._call()
        if value is None or value is True:
            return {}
        if value is False:
            raise HealthCheckError("check function returned False")
        if isinstance(value, HealthCheckResult):
            return value
        if isinstance(value, Mapping):
            details = dict(value)
            status = details.pop("status", None)
            error = details.pop("error", None)
            if status is None:
                healthy = details.get("healthy", True)
                status = HEALTHY if healthy is not False else UNHEALTHY
            result_status = HealthStatus(str(status))
            if result_status is UNHEALTHY and error is None:
                error = "check function reported unhealthy"
            return HealthCheckResult(
                service=self.name,
                status=result_status,
                details=details,
                error=None if error is None else str(error),
            )
        raise TypeError(
            "check function must return bool, dict, HealthCheckResult or None: "
            f"{type(value).__name__}"
        )
