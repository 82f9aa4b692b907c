"""The course's reference implementations, withheld from the exercises that rebuild them.

Most exercises ask the learner to write a function that `helpers` already has: the course needs
it for the rest of the notebook. A checker compares the learner's answer with that reference, so
an answer that simply calls the reference would pass without teaching anything. Functions marked
`@reference` can therefore be *withheld*: while a checker runs the learner's function inside
`with withheld(fn, ...)`, calling `fn` raises `ReferenceWithheld` (the checker turns that into a
diagnosis). Everywhere else they are ordinary functions.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# Withheld functions by module and name, not by object: `importlib.reload` of a module makes new
# wrappers of the same references, which must be withheld as well.
_withheld: set[str] = set()


class ReferenceWithheld(RuntimeError):
    """The learner's answer called the reference implementation of its own exercise."""

    def __init__(self, name: str, message: str | None = None):
        super().__init__(
            message
            or f"your answer calls the course's `{name}`, which this exercise withholds: it "
            "computes (part of) the answer you are asked to build yourself, from the weights "
            "and tensors you are given"
        )
        self.name = name


# wrapper -> the function it guards. Kept here rather than in the wrapper's closure, so that the
# unguarded function is not one attribute (`__wrapped__`, `__closure__`) away from the learner.
_originals: dict[Callable, Callable] = {}


def reference(fn: F) -> F:
    """Mark `fn` as a reference implementation that a checker may withhold."""
    # named as the learner reaches it: helpers.circuits.one_layer.x -> circuits.x, or as the
    # module says, when its functions are not in its package's namespace (REFERENCE_PREFIX)
    package = fn.__module__.split(".")[1] if "." in fn.__module__ else fn.__module__
    prefix = getattr(sys.modules.get(fn.__module__), "REFERENCE_PREFIX", package)
    name = f"{prefix}.{fn.__name__}"
    key = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if key in _withheld:
            raise ReferenceWithheld(name)
        return _originals[wrapper](*args, **kwargs)

    _originals[wrapper] = fn
    wrapper.is_course_reference = True
    wrapper.reference_key = key
    wrapper.reference_name = name
    # functools.wraps exposes the unguarded function as __wrapped__; the signature and docstring
    # stay, for help()
    wrapper.__signature__ = inspect.signature(fn)
    del wrapper.__wrapped__
    return wrapper  # type: ignore[return-value]


def original(fn: Callable) -> Callable:
    """The function a `@reference` wraps (for reading its source); any other function as it is.
    Refused while the reference is withheld: it is not a way around a checker."""
    if getattr(fn, "reference_key", None) in _withheld:
        raise ReferenceWithheld(fn.reference_name)
    return _originals.get(fn, fn)


@contextmanager
def withheld(*fns: Callable) -> Iterator[None]:
    """Within the block, calling any of `fns` (each marked `@reference`) raises ReferenceWithheld.
    Code in the block that lifts the ban (empties the withheld set) is refused at the end."""
    for fn in fns:
        if not getattr(fn, "is_course_reference", False):
            raise TypeError(f"{fn!r} is not marked @reference, so it cannot be withheld")
    added = [fn.reference_key for fn in fns if fn.reference_key not in _withheld]
    _withheld.update(added)
    intact = False
    try:
        yield
        intact = all(key in _withheld for key in added)
    finally:
        _withheld.difference_update(added)
    if not intact:
        raise ReferenceWithheld(
            "",
            "your answer changed which of the course's functions this exercise withholds; "
            "compute the answer yourself",
        )
