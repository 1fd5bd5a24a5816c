"""The estimator contract of :class:`~savlens.sav.SAV`, the classifiers and the probes (scikit-learn's).

- Constructor parameters are stored unchanged under their own names; ``fit`` never changes them, and learned
  state ends in ``_``.
- :meth:`Estimator.get_params` / :meth:`Estimator.set_params` / ``repr`` are derived from the ``__init__``
  signature; ``get_params(deep=True)`` adds the parameters of parameters that are estimators themselves as
  ``name__param``, and ``set_params`` sets them, so :func:`sklearn.base.clone` and grid searches work.
- Used before ``fit``, an estimator raises :class:`~savlens.errors.NotFittedError`, which is also an
  ``AttributeError`` (as in scikit-learn): one check, :meth:`Estimator._check_fitted`.
"""

import inspect
from typing import Any, ClassVar

from savlens.errors import ArgumentError, NotFittedError


def _same(value: Any, default: Any) -> bool:
    """True when ``value`` is the signature default (identical, or equal and of the same type)."""
    if value is default:
        return True
    if type(value) is not type(default):
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor compares element-wise
        return False


class Estimator:
    """Base of savlens' estimators: parameters from the ``__init__`` signature, one fitted check.

    A subclass stores each ``__init__`` argument as an attribute of the same name, sets learned attributes
    (ending in ``_``) only in ``fit``, and names in ``_fitted_attr`` an attribute that exists once fitted.

    Example:
        >>> class Mean(Estimator):
        ...     _fitted_attr = "mean_"
        ...     def __init__(self, shift: float = 0.0, *, scale: float = 1.0) -> None:
        ...         self.shift = shift
        ...         self.scale = scale
        >>> m = Mean(scale=2.0)
        >>> m, m.get_params()
        (Mean(scale=2.0), {'shift': 0.0, 'scale': 2.0})
        >>> m.set_params(shift=1.0)
        Mean(shift=1.0, scale=2.0)
        >>> hasattr(m, "mean_"), m.__sklearn_is_fitted__()
        (False, False)
    """

    _fitted_attr: ClassVar[str] = ""

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        """The constructor's parameter names, in signature order (``*args`` / ``**kwargs`` are not allowed)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ takes *{p.name}; an estimator names all its parameters.")
        return tuple(p.name for p in params)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor parameters by name (scikit-learn convention).

        Args:
            deep: also return the parameters of parameters that are estimators (``get_params`` of their own), as
                ``"<name>__<param>"``.
        """
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            out[name] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return out

    def set_params(self, **params: Any) -> "Estimator":
        """Set constructor parameters (``name=value``, or ``name__param=value`` on a nested estimator); return self.

        Raises:
            ArgumentError: a name that is not a parameter of this estimator (or of the nested one).
        """
        names = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in names:
                raise ArgumentError(
                    f"{type(self).__name__}.set_params: unknown parameter {name!r}; its parameters are {list(names)}."
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not hasattr(inner, "set_params"):
                raise ArgumentError(
                    f"{type(self).__name__}.set_params: {name!r} is {inner!r}, not an estimator; "
                    f"cannot set {sorted(sub_params)} on it."
                )
            inner.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        signature = inspect.signature(type(self).__init__).parameters
        shown = ", ".join(
            f"{name}={value!r}"
            for name, value in self.get_params(deep=False).items()
            if not _same(value, signature[name].default)
        )
        return f"{type(self).__name__}({shown}{self._repr_fitted()})"

    def _repr_fitted(self) -> str:
        """Text appended to ``repr`` once fitted (none by default)."""
        return ""

    def __sklearn_is_fitted__(self) -> bool:
        """Whether :meth:`fit` has run (what :func:`sklearn.utils.validation.check_is_fitted` asks)."""
        return bool(self._fitted_attr) and self._fitted_attr in vars(self)

    def _check_fitted(self, what: str) -> None:
        """Raise :class:`NotFittedError` naming ``what`` unless fitted."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"{what}: this {type(self).__name__} is not fitted yet; call fit(features) first.")
