"""Where cells run: in this process (``local``, the default) or as tasks on a Ray cluster (``ray``).

An executor has four verbs the engine uses: ``put`` an object once (a model, the images, the
reference maps), ``submit`` a function with arguments that may be handles from ``put`` or from
earlier submissions (a later draw's cell takes its stage's draw-0 cell), ``get`` a result, and
``close``. The local executor runs a function when it is submitted, so it streams: a randomized
stage's model is explained before the next stage changes it. The Ray executor sends the cell to the
cluster (Ray schedules it; a task asks for a GPU when the model lives on one) and the engine collects
the results in submission order, so both write the same results table, byte for byte, to the same
results store: a run can be interrupted under one executor and resumed under the other.

    pip install 'sanitas[ray]'
    sanitas run study.yaml --executor ray --address auto      # an existing cluster (ray start --head ...)
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from sanitas.errors import ConfigError

EXECUTORS = ("local", "ray")

#: The executor of the enclosing :func:`use_executor` block (``sanitas run/reproduce --executor``):
#: checks given no ``executor=`` run their cells there. A context variable, so it ends with the block.
_CURRENT: ContextVar[Any] = ContextVar("sanitas_executor", default=None)


class LocalExecutor:
    """Runs every function at once, in this process."""

    name = "local"
    streaming = True

    def put(self, obj: Any) -> Any:
        return obj

    def submit(self, fn, *args, gpus: float = 0) -> Any:
        return fn(*args)

    def get(self, handle: Any) -> Any:
        return handle

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs cells as Ray tasks. Starts a local Ray (``num_cpus``) when none is running and no
    ``address`` is given, and shuts it down again on ``close``; a Ray the caller started is left alone."""

    name = "ray"
    streaming = False

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("the ray executor needs Ray: pip install 'sanitas[ray]'") from exc
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            if address:
                kw["address"] = address
            elif num_cpus:
                kw["num_cpus"] = int(num_cpus)
            try:
                ray.init(**kw)
            except Exception as exc:  # noqa: BLE001 - connection errors come in many types
                raise ConfigError(f"cannot start or reach Ray ({type(exc).__name__}: {exc}); for a cluster give "
                                  "its address (--address HOST:PORT or 'auto' after `ray start`)") from exc
            self._started = True
        self._remote: dict[Any, Any] = {}

    def put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def submit(self, fn, *args, gpus: float = 0) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(fn)
        return remote.options(num_cpus=1, num_gpus=gpus).remote(*args)

    def get(self, handle: Any) -> Any:
        return self._ray.get(handle)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


@contextmanager
def use_executor(executor: str | Any = "local", address: str | None = None,
                 num_cpus: int | None = None) -> Iterator[Any]:
    """Run the cells of every check inside the block on ``executor`` (a name or an executor object).

    An executor made here from a name is closed when the block ends (a Ray it started is shut down);
    one passed in is left open for its owner."""
    ex = get_executor(executor, address, num_cpus)
    token = _CURRENT.set(ex)
    try:
        yield ex
    finally:
        _CURRENT.reset(token)
        if ex is not executor:
            ex.close()


@contextmanager
def executor_scope(executor: str | Any | None) -> Iterator[Any]:
    """The executor a check runs its cells on (see :func:`executor_for`), closed at the end of the block
    when the check made it (a Ray it started is shut down, also when the check raises)."""
    ex, owned = executor_for(executor)
    try:
        yield ex
    finally:
        if owned:
            ex.close()


def executor_for(executor: str | Any | None) -> tuple[Any, bool]:
    """The executor a check uses for its ``executor=`` argument, and whether the check owns it (made it
    from a name, so it must close it). ``None`` means the enclosing :func:`use_executor`, else local."""
    if executor is None:
        current = _CURRENT.get()
        if current is not None:
            return current, False
        return LocalExecutor(), True
    ex = get_executor(executor)
    return ex, ex is not executor


def get_executor(executor: str | Any = "local", address: str | None = None, num_cpus: int | None = None):
    """An executor from a name (``local``, ``ray``) or an executor object as it is."""
    if not isinstance(executor, str):
        return executor
    if executor == "local":
        if address:
            raise ConfigError("--address applies to the ray executor; add --executor ray")
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor(address, num_cpus)
    raise ConfigError(f"unknown executor {executor!r}: use one of {EXECUTORS}")
