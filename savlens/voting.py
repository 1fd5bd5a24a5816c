"""Voting rules: how the selected heads' votes become one label, learned on the shots only.

Each selected head votes for its nearest class centroid (cosine). A **voting rule** turns what the heads did on
the labelled shots into per-head, per-class vote weights ``w[j, c]``; a query's tally for class ``c`` is the
sum of ``w[j, c]`` over the heads ``j`` that voted ``c``, and the class with the largest tally wins (ties: the
highest cosine similarity summed over the heads, then the first class, as for the majority vote).

A rule is any function ``(context: VoteContext, **params) -> Tensor`` returning ``k class`` (or ``k``) weights
>= 0. Register one with :func:`register_voting` to use it by name in :class:`savlens.sav.SAV` (``voting=``) and
:func:`savlens.study.run_study`; see docs/voting.md. Shipped rules, all written through that extension point:

- ``"majority"`` (:func:`majority`): every head's vote counts 1: the paper's and the reference code's rule, and
  the default;
- ``"score"`` (:func:`score_weighted`): a head's vote counts its selection score (e.g. its centroid accuracy);
- ``"reliability"`` (:func:`reliability_weighted`): a head's vote for class ``c`` counts the log-odds that the
  head is right when it votes ``c`` (or right at all, ``per_class=False``), estimated on the shots with
  **leave-one-out** centroids so a shot never grades a head with a centroid it is part of.

The rules see only the shots (:class:`VoteContext`), never the test examples. What the heads did on test
examples is a :class:`Votes`.
"""

import inspect
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from savlens.errors import ArgumentError
from savlens.heads import HeadSet
from savlens.scoring import EPS

__all__ = [
    "VoteContext",
    "Votes",
    "VotingRule",
    "available_votings",
    "get_voting",
    "loo_similarity",
    "majority",
    "register_voting",
    "reliability_weighted",
    "run_voting",
    "score_weighted",
    "tally",
    "voting_name",
]


@dataclass(frozen=True, eq=False)
class VoteContext:
    """What a voting rule may learn from: the selected heads on the labelled shots.

    Attributes:
        heads: the selected heads, best first (the ``k`` axis).
        classes: the class labels (the ``class`` axis).
        codes: ``example`` class index of each shot.
        similarity: ``example k class`` cosine similarity of each shot's head vector to each class centroid,
            **leave-one-out**: the shot's own class centroid is computed without it (``-inf`` when its class
            has no other shot).
        votes: ``example k`` the class each head votes for on each shot under those leave-one-out centroids.
        head_scores: ``k`` each head's selection score (the criterion's value, higher is better), or None
            when the heads were given rather than selected and no scores came with them.
    """

    heads: HeadSet
    classes: tuple[Hashable, ...]
    codes: Int[Tensor, " example"]
    similarity: Float[Tensor, "example k class"]
    votes: Int[Tensor, "example k"]
    head_scores: Float[Tensor, " k"] | None = None

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def correct(self) -> Tensor:
        """``example k`` bool: whether each head's leave-one-out vote on each shot is the shot's class."""
        return self.votes == self.codes[:, None]


@dataclass(eq=False)
class Votes:
    """The votes of an SAV's heads on a set of examples (what :meth:`savlens.SAV.votes` returns).

    Attributes:
        heads: the voting heads, best-ranked first (the ``k`` axis).
        classes: the class labels (the ``class`` axis).
        votes: ``example k`` index of the class each head votes for (its nearest centroid).
        counts: ``example class`` number of votes per class; each row sums to ``k``.
        similarity: ``example k class`` cosine similarity of each head's vector to each class centroid.
        winners: ``example`` index of the winning class after tie-breaking.
        tally: ``example class`` weighted vote tally of a weighted voting rule; None under the majority vote,
            whose tally is ``counts``.
    """

    heads: HeadSet
    classes: tuple[Hashable, ...]
    votes: Int[Tensor, "example k"]
    counts: Int[Tensor, "example class"]
    similarity: Float[Tensor, "example k class"]
    winners: Int[Tensor, " example"]
    tally: Float[Tensor, "example class"] | None = None

    @property
    def shares(self) -> Float[Tensor, "example class"]:
        """Vote shares: counts / k under the majority vote, else each class's share of the weighted tally
        (uniform where no voting head has any weight). The SAV's confidence."""
        if self.tally is None:
            return self.counts.double() / self.votes.shape[1]
        total = self.tally.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(self.tally, 1.0 / self.tally.shape[-1])
        return torch.where(total > 0, self.tally / total.clamp_min(1e-300), uniform)

    def labels(self) -> list[Hashable]:
        """Return the winning label of each example."""
        return [self.classes[i] for i in self.winners.tolist()]

    def of_example(self, i: int) -> dict[str, Hashable]:
        """Return ``{"L14H3": label, ...}``: what each head voted for on example ``i``, in rank order."""
        return {str(h): self.classes[c] for h, c in zip(self.heads, self.votes[i].tolist())}

    def _repr_html_(self) -> str:
        """Render the votes in a notebook: each head's vote and similarities per example (:mod:`savlens.report`)."""
        from savlens.report import votes_html

        return votes_html(self, full=False)

    @staticmethod
    def concat(parts: "list[Votes]") -> "Votes":
        """Concatenate the votes of consecutive blocks of examples (same heads and classes)."""
        first = parts[0]
        tally = None if first.tally is None else torch.cat([p.tally for p in parts if p.tally is not None])
        return Votes(
            first.heads,
            first.classes,
            votes=torch.cat([p.votes for p in parts]),
            counts=torch.cat([p.counts for p in parts]),
            similarity=torch.cat([p.similarity for p in parts]),
            winners=torch.cat([p.winners for p in parts]),
            tally=tally,
        )


VotingRule = Callable[..., Tensor]
_RULES: dict[str, VotingRule] = {}


def register_voting(name: str, *, replace: bool = False) -> Callable[[VotingRule], VotingRule]:
    """Register a voting rule under ``name`` (a decorator).

    The function takes a :class:`VoteContext` (and optional keyword parameters, passed from
    ``SAV(voting_params=...)``) and returns ``k class`` vote weights (or ``k``, the same for every class),
    finite and >= 0.

    Example:
        >>> @register_voting("top_half", replace=True)
        ... def top_half(context):
        ...     k = len(context.heads)
        ...     return (torch.arange(k) < (k + 1) // 2).double()  # only the better-ranked half votes
        >>> get_voting("top_half") is top_half
        True
    """

    def decorate(fn: VotingRule) -> VotingRule:
        if not callable(fn):
            raise ArgumentError(f"register_voting({name!r}) decorates a function; got {fn!r}.")
        if name in _RULES and _RULES[name] is not fn and not replace:
            raise ArgumentError(
                f"a voting rule named {name!r} is already registered ({_RULES[name].__qualname__}); "
                "pass replace=True to override it."
            )
        _RULES[name] = fn
        return fn

    return decorate


def get_voting(rule: str | VotingRule) -> VotingRule:
    """Return the voting rule registered under ``rule`` (a callable is returned as is)."""
    if callable(rule):
        return rule
    try:
        return _RULES[rule]
    except (KeyError, TypeError):
        raise ArgumentError(
            f"no voting rule is registered as {rule!r}; registered: {', '.join(sorted(_RULES))}. "
            "Register one with @savlens.voting.register_voting(name)."
        ) from None


def available_votings() -> tuple[str, ...]:
    """Return the registered voting rule names, sorted."""
    return tuple(sorted(_RULES))


def voting_name(rule: str | VotingRule) -> str:
    """Return the registered name of ``rule``, or ``module.qualname`` for an unregistered function."""
    if isinstance(rule, str):
        return rule
    for name, fn in _RULES.items():
        if fn is rule:
            return name
    return f"{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', repr(rule))}"


def loo_similarity(
    x: Float[Tensor, "example k d_head"], codes: Int[Tensor, " example"], n_classes: int
) -> Float[Tensor, "example k class"]:
    """Return each shot's cosine similarity to every class centroid, its own class's centroid without it.

    Computed in float64 from class sums: the own-class centroid of shot ``i`` is ``(S_y - x_i) / (n_y - 1)``
    (cosine similarity does not depend on the ``1 / (n_y - 1)`` factor); a class with a single shot gives that
    shot ``-inf`` for its own class.

    Example:
        >>> x = torch.tensor([[[1.0, 0.0]], [[1.0, 0.1]], [[0.0, 1.0]], [[0.1, 1.0]]])
        >>> loo_similarity(x, torch.tensor([0, 0, 1, 1]), 2).argmax(-1)[:, 0].tolist()
        [0, 0, 1, 1]
    """
    x = x.double()
    onehot = F.one_hot(codes, n_classes).double()
    sums = torch.einsum("nc,nkd->ckd", onehot, x)  # class k d
    centroids = sums[None] - onehot[:, :, None, None] * x[:, None]  # example class k d
    dots = torch.einsum("nkd,nckd->nkc", x, centroids)
    norms = torch.linalg.vector_norm(x, dim=-1).clamp_min(EPS)[:, :, None] * torch.linalg.vector_norm(
        centroids, dim=-1
    ).transpose(1, 2).clamp_min(EPS)
    sim = dots / norms
    counts = torch.bincount(codes, minlength=n_classes)
    alone = (counts[codes] <= 1)[:, None].expand(-1, x.shape[1])  # example k
    own = codes[:, None, None].expand(-1, x.shape[1], 1)
    sim.scatter_(-1, own, torch.where(alone[..., None], -torch.inf, sim.gather(-1, own)))
    return sim


def run_voting(rule: str | VotingRule, context: VoteContext, params: dict[str, Any] | None = None) -> Tensor:
    """Call a voting rule and check its weights: ``k class`` float64, finite, >= 0.

    Raises:
        ArgumentError: ``params`` the rule does not take, or the rule returned something other than a ``k`` or
            ``k class`` tensor of finite weights >= 0.
    """
    fn = get_voting(rule)
    name = voting_name(rule)
    params = dict(params or {})
    accepted = list(inspect.signature(fn).parameters.values())[1:]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted):
        unknown = sorted(set(params) - {p.name for p in accepted})
        if unknown:
            raise ArgumentError(
                f"voting rule {name!r} takes no parameters {unknown}; it takes {[p.name for p in accepted]}."
            )
    w = fn(context, **params)
    k, c = len(context.heads), context.n_classes
    if not isinstance(w, Tensor):
        raise ArgumentError(f"voting rule {name!r} returned {type(w).__name__}; it must return a tensor.")
    w = w.detach().to("cpu", torch.float64)
    if w.ndim == 1 and w.shape[0] == k:
        w = w[:, None].expand(k, c).clone()
    if tuple(w.shape) != (k, c):
        raise ArgumentError(
            f"voting rule {name!r} returned weights of shape {tuple(w.shape)}; it must return k={k} or "
            f"k x class = {k} x {c} weights."
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ArgumentError(f"voting rule {name!r} returned weights that are negative, NaN or infinite: {w.tolist()}.")
    return w


def tally(
    votes: Int[Tensor, "example k"], weights: Float[Tensor, "k class"], n_classes: int
) -> Float[Tensor, "example class"]:
    """Return the weighted vote tally: ``tally[i, c] = sum of weights[j, c] over the heads j voting c on i``.

    Example:
        >>> tally(torch.tensor([[0, 1, 1]]), torch.tensor([[3.0, 3.0], [1.0, 1.0], [1.0, 1.0]]), 2).tolist()
        [[3.0, 2.0]]
    """
    onehot = F.one_hot(votes, n_classes).to(torch.float64)  # example k class
    return torch.einsum("nkc,kc->nc", onehot, weights.to(torch.float64))


# the shipped rules ---------------------------------------------------------------------------------


@register_voting("majority")
def majority(context: VoteContext) -> Tensor:
    """Weigh every head's vote 1: the majority vote of the paper and the reference code (the default).

    Example:
        >>> ctx = VoteContext(HeadSet(["L0H0", "L0H1"]), ("a", "b"), torch.tensor([0]), torch.zeros(1, 2, 2),
        ...                   torch.zeros(1, 2, dtype=torch.long))
        >>> majority(ctx).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    return torch.ones(len(context.heads), context.n_classes, dtype=torch.float64)


@register_voting("score")
def score_weighted(context: VoteContext) -> Tensor:
    """Weigh each head's vote by its selection score (e.g. its leave-one-out centroid accuracy).

    The scores are the criterion's values for the selected heads (:attr:`VoteContext.head_scores`); they must
    be finite and >= 0 (centroid and probe accuracies are; a Fisher ratio can be ``inf``: use
    ``"reliability"`` there). Heads given without scores (``SAV.fit_heads(..., scores=None)``) cannot be
    weighed by score.

    Example:
        >>> scores = torch.tensor([0.9, 0.6], dtype=torch.float64)
        >>> ctx = VoteContext(HeadSet(["L0H0", "L0H1"]), ("a", "b"), torch.tensor([0]), torch.zeros(1, 2, 2),
        ...                   torch.zeros(1, 2, dtype=torch.long), head_scores=scores)
        >>> score_weighted(ctx).tolist()
        [0.9, 0.6]
    """
    s = context.head_scores
    if s is None:
        raise ArgumentError(
            "voting='score' weighs each head by its selection score, but these heads came without scores "
            "(SAV.fit_heads); pass scores=HeadScores of the task the heads were chosen on, or use another rule."
        )
    s = s.double()
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ArgumentError(
            f"voting='score' needs finite scores >= 0; the selected heads score {s.tolist()}. Use "
            "voting='reliability' for criteria whose scores can be infinite or negative."
        )
    return s


@register_voting("reliability")
def reliability_weighted(context: VoteContext, *, per_class: bool = True, prior: float = 2.0) -> Tensor:
    """Weigh each head's vote by the log-odds that it is right, learned on the shots with leave-one-out.

    On the shots, each head votes with leave-one-out centroids (:attr:`VoteContext.votes`). For ``C``
    classes, the probability that head ``j`` is right when it votes ``c`` is estimated as
    ``p = (hits + prior / C) / (votes + prior)`` (a Beta prior of strength ``prior`` centred on chance,
    ``1 / C``) and the weight is the log-odds against chance, ``w = log((C - 1) p / (1 - p))``, floored at 0:
    the optimal weights of a weighted majority vote of independent voters (Nitzan and Paroush, 1982),
    so a head at chance (or with no votes for ``c``) gets weight 0 and a head that is always right gets the
    most. With ``per_class=False``, ``p`` is the head's leave-one-out accuracy over all shots and the weight
    is the same for every class.

    A head below chance gets weight 0, not a negative weight (it never votes against a class).

    Args:
        context: the heads on the shots.
        per_class: one weight per head and class (the head's precision for that class) rather than per head.
        prior: strength of the prior (pseudo-votes at chance); larger shrinks weights towards 0.

    Example:
        >>> codes = torch.tensor([0, 0, 1, 1])
        >>> votes = torch.tensor([[0, 1], [0, 0], [1, 0], [1, 1]])  # head 0 always right, head 1 at chance
        >>> ctx = VoteContext(HeadSet(["L0H0", "L0H1"]), ("a", "b"), codes, torch.zeros(4, 2, 2), votes)
        >>> reliability_weighted(ctx, per_class=False).round(decimals=3).tolist()  # k class
        [[1.609, 1.609], [0.0, 0.0]]
        >>> reliability_weighted(ctx).round(decimals=3).tolist()  # 2 votes per class each: a weaker estimate
        [[1.099, 1.099], [0.0, 0.0]]
    """
    if not prior > 0:
        raise ArgumentError(f"voting='reliability': prior must be > 0; got {prior!r}.")
    n_classes = context.n_classes
    correct = context.correct.double()  # example k
    if per_class:
        cast = F.one_hot(context.votes, n_classes).double()  # example k class: which class each head voted
        hits = torch.einsum("nkc,nk->kc", cast, correct)
        total = cast.sum(0)
    else:
        hits = correct.sum(0)[:, None].expand(-1, n_classes)
        total = torch.full_like(hits, float(correct.shape[0]))
    p = (hits + prior / n_classes) / (total + prior)
    w = torch.log((n_classes - 1) * p / (1 - p)) if n_classes > 1 else torch.zeros_like(p)
    return w.clamp_min(0.0).nan_to_num(0.0, posinf=math.log(1e12))
