"""Thread pools: run a block of code with torch's and the BLAS / OpenMP libraries' thread counts set.

On a machine whose cores are shared with other jobs, a thread pool larger than the free cores thrashes: a
scikit-learn probe with default BLAS threads ran about 30x slower than with one thread on 2 busy cores.
:func:`limit_threads` sets, for the duration of a ``with`` block,

- torch's intra-op threads (``torch.set_num_threads``), and
- the BLAS and OpenMP pools of every library loaded so far (numpy's and scipy's OpenBLAS or MKL,
  scikit-learn's OpenMP), through ``threadpoolctl`` when it is installed (it comes with scikit-learn; savlens
  does not depend on it, and without it only torch is set),

and restores both on exit, also when the block raises. The settings are process-wide, so two threads of one
process should not use it at the same time. Libraries first loaded inside the block (e.g. by the first
``import sklearn``) are not limited: import them before entering it.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch

from savlens.errors import ArgumentError


def _check_threads(n: object, what: str = "limit_threads", arg: str = "n") -> int | None:
    """Return ``n`` if it is a thread count (an int >= 1) or None; raise :class:`ArgumentError` otherwise."""
    if n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        return n
    raise ArgumentError(
        f"{what}: {arg} must be a positive int (the number of threads) or None (leave the thread pools as they "
        f"are); got {n!r}. Pass {arg}=1 on a machine shared with other jobs."
    )


def limit_threads(n: int | None = 1) -> AbstractContextManager[None]:
    """Run a ``with`` block with ``n`` torch intra-op threads and ``n`` BLAS / OpenMP threads, then restore them.

    ``n=None`` leaves every pool as it is (the block runs unchanged). The count is checked when the function is
    called, before the block runs.

    Args:
        n: threads per pool (an int >= 1), or None.

    Raises:
        ArgumentError: ``n`` is 0, negative or not an int.

    Example:
        >>> before = torch.get_num_threads()
        >>> with limit_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    return _limited(_check_threads(n))


@contextmanager
def _limited(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()  # read first: threadpoolctl may set torch's OpenMP pool too
    with ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:  # its context manager restores each library's previous limit on exit
            stack.enter_context(threadpool_limits(limits=n))
        stack.callback(torch.set_num_threads, before)  # runs before threadpoolctl's restore (last in, first out)
        torch.set_num_threads(n)
        yield
