"""parallel.pmap's Ray path with a stand-in for Ray (no real Ray starts here): one instance per process, started
lazily and reused; a start that times out is retried; one that never comes up ends in one line naming --executor ray."""

from __future__ import annotations

import sys
import types

import pytest

from tstack import parallel
from tstack.errors import TstackError


class FakeRay(types.ModuleType):
    """The part of Ray's API pmap uses; ``failures`` starts fail (as Ray's does on a loaded host) before one works."""

    def __init__(self, failures: int) -> None:
        super().__init__("ray")
        self.failures, self.inits, self.shutdowns, self.up = failures, 0, 0, False
        self.exceptions = types.SimpleNamespace(RayTaskError=type("RayTaskError", (Exception,), {}))

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.\nmore detail")
        self.up = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.up = False

    def remote(self, fn):
        return types.SimpleNamespace(remote=lambda *args: fn(*args))

    def put(self, value):
        return value

    def get(self, ref):
        return ref


def _triple(x: int) -> int:
    return 3 * x


@pytest.fixture
def fake_ray(monkeypatch):
    def install(failures: int) -> FakeRay:
        ray = FakeRay(failures)
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setattr(parallel.atexit, "register", lambda fn: None)  # nothing real to stop at exit
        monkeypatch.setattr(parallel.time, "sleep", lambda s: None)
        return ray
    return install


def test_ray_starts_once_and_is_reused(fake_ray):
    ray = fake_ray(0)
    assert parallel.pmap(_triple, [1, 2, 3], executor="ray", workers=2) == [3, 6, 9]
    assert parallel.pmap(_triple, list(range(10)), executor="ray", workers=2) == [3 * x for x in range(10)]
    assert (ray.inits, ray.shutdowns) == (1, 0)


def test_a_start_that_times_out_is_retried(fake_ray):
    ray = fake_ray(2)
    assert parallel.pmap(_triple, [1, 2], executor="ray", workers=2) == [3, 6]
    assert ray.inits == 3 and ray.shutdowns == 2  # each failed start cleaned up before the next


def test_ray_that_cannot_start_is_one_line_naming_the_executor(fake_ray, monkeypatch):
    ray = fake_ray(10**6)
    monkeypatch.setattr(parallel, "RAY_START_SECONDS", 0.0)
    with pytest.raises(TstackError) as info:
        parallel.pmap(_triple, [1, 2], executor="ray", workers=2)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--executor ray:")
    assert "timed out during startup" in message and "--executor process" in message
    assert ray.inits == 1 and not ray.up
