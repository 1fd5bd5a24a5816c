"""The Sparse Attention Vector (SAV) classifier: select heads, keep class centroids, classify by head vote.

Method (docs): each head's class centroids are means of its ``blocks.{l}.attn.hook_z`` vectors at the
last position; heads are scored by a criterion (nearest-centroid accuracy by default), the ``k`` best kept,
and a query is labelled by a majority vote of those heads, each voting for its nearest centroid (cosine).
"""

import hashlib
import platform
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, LabelError, NotFittedError, SavlensError, StoreError
from savlens.heads import Head, HeadScores, HeadSet
from savlens.io import json_safe, read_json, read_tensors, sha256_bytes, tensors_to_bytes, write_bytes, write_json
from savlens.outofcore import StoredFeatures, head_blocks
from savlens.pipeline import as_features, remembered
from savlens.scoring import (
    EPS,
    EncodedLabels,
    Scorer,
    centroid_accuracy,
    encode_labels,
    normalize_label,
    resolve_labels,
    run_scorer,
    scorer_name,
)
from savlens.voting import VoteContext, VotingRule, loo_similarity, run_voting, tally, voting_name

FORMAT = "savlens.sav"
FORMAT_VERSION = 1
_SOURCE_KEYS = ("model_id", "hook", "positions", "n_heads", "d_head")


@dataclass(eq=False)
class Votes:
    """The votes of an SAV's heads on a set of examples.

    Attributes:
        heads: the voting heads, best-ranked first (the ``k`` axis).
        classes: the class labels (the ``class`` axis).
        votes: ``example k`` index of the class each head votes for (its nearest centroid).
        counts: ``example class`` number of votes per class; each row sums to ``k``.
        similarity: ``example k class`` cosine similarity of each head's vector to each class centroid.
        winners: ``example`` index of the winning class after tie-breaking.
        tally: ``example class`` weighted vote tally of a weighted voting rule (:mod:`savlens.voting`); None
            under the majority vote, whose tally is ``counts``.
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


def template_hash(template: str | None) -> str | None:
    """Return the SHA-256 of a prompt template (None stays None)."""
    return None if template is None else hashlib.sha256(template.encode("utf-8")).hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of savlens and the libraries its artefacts depend on."""
    out = {"python": platform.python_version()}
    for name in ("savlens", "torch", "numpy", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _source_of(features: "HeadFeatures | StoredFeatures") -> dict[str, Any]:
    src = features.describe()
    src["prompt_template_sha256"] = template_hash(features.prompt_template)
    src["meta"] = json_safe(features.meta)
    return src


def _options_of(features: "HeadFeatures | StoredFeatures") -> dict[str, Any]:
    """The extraction options recorded in features' provenance (template, position, chat settings)."""
    opts: dict[str, Any] = {"prompt_template": features.prompt_template}
    if features.positions != "last":
        opts["positions"] = (
            int(features.positions) if str(features.positions).lstrip("-").isdigit() else features.positions
        )
    for key in ("chat", "system_prompt"):
        if key in features.meta:
            opts[key] = features.meta[key]
    return opts


def _extract_options(saved: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """The extraction options of a loaded SAV: saved ones, else what the features' provenance tells."""
    opts = {k: v for k, v in saved.items() if k in ("positions", "prompt_template", "chat", "system_prompt")}
    opts.setdefault("prompt_template", source.get("prompt_template"))
    if "dtype" in saved:
        opts["dtype"] = getattr(torch, str(saved["dtype"]).removeprefix("torch."))
    return opts


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class SAV:
    """Sparse Attention Vectors: a few-shot classifier voting with the ``k`` best heads.

    Scikit-learn conventions: parameters are set in ``__init__`` and learned state ends in ``_``.

    Args:
        k: number of heads kept (paper: 20).
        scorer: a registered criterion name (``"centroid"``, ``"probe"``, ``"fisher"``, ...) or a function
            ``(features, labels) -> HeadScores`` (see :mod:`savlens.scoring`).
        mode: how the criterion holds examples out (``"loo"``, ``"kfold"``, ``"in_sample"``); None uses the
            criterion's default (``"loo"`` for ``"centroid"``). Refused for criteria that take no mode.
        seed: seeds the fold split (``"kfold"``) and the tie-breaking among equal head scores
            (:meth:`HeadScores.top_k`).
        reference: reproduce the reference code exactly (docs/reproducing-savs.md): classes numbered in order
            of first appearance, in-sample centroid scores, top-k by
            ``np.argsort(scores, kind="stable")[-k:][::-1]``, vote ties won by the label voted first. Needs
            ``scorer="centroid"`` and ``mode`` None or ``"in_sample"``.
        n_folds: folds for ``mode="kfold"``.
        scorer_params: extra keyword arguments for the criterion.
        voting: how the heads' votes become a label: a registered voting rule (``"majority"``, the paper's
            rule and the default; ``"score"``; ``"reliability"``) or a function (see :mod:`savlens.voting`).
            Weighted rules learn their weights on the training shots only, with leave-one-out centroids.
        voting_params: extra keyword arguments for the voting rule.

    Attributes:
        heads_: the selected heads, best first.
        scores_: the criterion's :class:`HeadScores` (None after :meth:`fit_heads`).
        centroids_: ``k class d_head`` class centroid of each selected head.
        classes_: the class labels; sorted, or in order of first appearance under ``reference=True``.
        source_: ``describe()`` of the training features (model id, hook, positions, template hash, ...).
        vote_weights_: ``k class`` vote weight of each selected head for each class, learned by the voting
            rule on the training shots (all ones under ``"majority"``).

    Votes: each head votes for the class whose centroid is most cosine-similar (first maximum in
    ``classes_`` order). Among classes tied on votes, the winner is the one with the highest cosine
    similarity summed over the ``k`` heads (then the first in ``classes_``); under ``reference=True`` it is
    the class voted first by the best-ranked head among them (``Counter.most_common`` semantics).

    Predicting on new inputs needs features of ``required_layers`` only: :meth:`predict` accepts features
    whose ``layers`` include those of ``heads_``, and :meth:`fit_heads` fits centroids of given heads
    (e.g. heads chosen on another task) without scoring, so an extraction can read the selected layers only.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(40, 2, 4, 8, generator=g)
        >>> labels = ["yes", "no"] * 20
        >>> z[0::2, 1, 2, 0] += 10; z[1::2, 1, 2, 1] += 10  # plant one informative head: L1H2
        >>> sav = SAV(k=1).fit(HeadFeatures(z, labels=labels))
        >>> str(sav.heads_), sav.classes_, sav.score(HeadFeatures(z, labels=labels))
        ('L1H2', ('no', 'yes'), 1.0)
    """

    def __init__(
        self,
        k: int = 20,
        scorer: str | Scorer = "centroid",
        mode: str | None = None,
        seed: int = 0,
        reference: bool = False,
        *,
        n_folds: int = 5,
        scorer_params: Mapping[str, Any] | None = None,
        voting: str | VotingRule = "majority",
        voting_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.k = k
        self.scorer = scorer
        self.mode = mode
        self.seed = seed
        self.reference = reference
        self.n_folds = n_folds
        self.scorer_params = scorer_params
        self.voting = voting
        self.voting_params = voting_params

    # scikit-learn plumbing -------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor parameters (scikit-learn convention)."""
        return {
            "k": self.k,
            "scorer": self.scorer,
            "mode": self.mode,
            "seed": self.seed,
            "reference": self.reference,
            "n_folds": self.n_folds,
            "scorer_params": self.scorer_params,
            "voting": self.voting,
            "voting_params": self.voting_params,
        }

    def set_params(self, **params: Any) -> "SAV":
        """Set constructor parameters (scikit-learn convention) and return self."""
        for key, value in params.items():
            if key not in self.get_params():
                raise ArgumentError(f"SAV.set_params: unknown parameter {key!r}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v!r}" for k, v in self.get_params().items() if v is not None and (k, v) != ("voting", "majority")
        )
        fitted = f"; heads_=[{self.heads_}]" if self._fitted() else ""
        return f"SAV({shown}{fitted})"

    def _fitted(self) -> bool:
        return hasattr(self, "centroids_")

    def _check_fitted(self, what: str) -> None:
        if not self._fitted():
            raise NotFittedError(f"{what}: this SAV is not fitted yet; call fit(features) first.")

    @property
    def required_layers(self) -> tuple[int, ...]:
        """The model layers the selected heads live in: what an extraction for :meth:`predict` must read."""
        self._check_fitted("SAV.required_layers")
        return self.heads_.layers

    # fitting ---------------------------------------------------------------------------------------
    def _check_k(self, features: "HeadFeatures | StoredFeatures", what: str) -> None:
        if not _is_positive_int(self.k):
            raise ArgumentError(
                f"{what}: k must be a positive int (the number of heads to keep); got {self.k!r}. "
                f"Pass k between 1 and layer x head_index = {features.n_layers * features.n_heads} (paper: 20)."
            )
        total = features.n_layers * features.n_heads
        if self.k > total:
            raise FeatureError(
                f"{what}: k={self.k} is larger than the {features.n_layers} x {features.n_heads} = {total} "
                f"heads of these features; pass k <= {total}."
            )

    def fit(self, features: Any, labels: Any = None, **extract_options: Any) -> "SAV":
        """Score every head, keep the ``k`` best, and store their class centroids.

        Args:
            features: ``example layer head_index d_head`` head features of the labelled (few-shot) examples,
                or a :class:`savlens.Model` (then ``labels`` are the labelled examples, extracted in one
                batched pass each).
            labels: one label per example; None uses ``features.labels``. With a model: the examples.
            **extract_options: with a model, options of :func:`savlens.extract` (``prompt_template``,
                ``batch_size``, ...); the ones that define the features are reused by :meth:`predict`.

        Returns:
            self
        """
        what = "SAV.fit"
        from_model = not isinstance(features, (HeadFeatures, StoredFeatures))
        if from_model:
            features, labels = as_features(features, labels, options=extract_options, what=what)
        # how to extract for predict(model, examples): as the training features were extracted
        self.extract_options_ = remembered(extract_options) if from_model else _options_of(features)
        self._check_k(features, what)
        labels = resolve_labels(features, labels, what)
        enc = encode_labels(labels, order="first" if self.reference else "sorted", what=what)
        if self.reference:
            self._check_reference_voting(what)
            if self.scorer != "centroid":
                raise ArgumentError(f"{what}: reference=True uses the centroid criterion; got scorer={self.scorer!r}.")
            if self.mode not in (None, "in_sample"):
                raise ArgumentError(f"{what}: reference=True scores in sample; got mode={self.mode!r}.")
            if isinstance(features, StoredFeatures):
                features = features.load()  # the reference computes in the features' dtype, all at once
            scores = centroid_accuracy(features, labels, mode="in_sample", reference=True)
            heads = scores.reference_top_k(self.k)
        else:
            options = dict(self.scorer_params or {})
            options.setdefault("seed", self.seed)
            options.setdefault("n_folds", self.n_folds)
            scores = run_scorer(self.scorer, features, labels, mode=self.mode, **options)
            heads = scores.top_k(self.k, seed=self.seed)
        self._fit_centroids(features, enc, heads, what)
        self.scores_: HeadScores | None = scores
        self._fit_voting(features, enc, scores, what)
        return self

    def _check_reference_voting(self, what: str) -> None:
        if voting_name(self.voting) != "majority":
            raise ArgumentError(
                f"{what}: reference=True votes as the reference code (majority, Counter tie-break); got "
                f"voting={voting_name(self.voting)!r}. Drop reference=True to use another voting rule."
            )

    def _fit_voting(
        self, features: "HeadFeatures | StoredFeatures", enc: EncodedLabels, scores: HeadScores | None, what: str
    ) -> None:
        """Learn the vote weights on the training shots (leave-one-out votes; see :mod:`savlens.voting`)."""
        k, n_classes = len(self.heads_), len(self.classes_)
        if voting_name(self.voting) == "majority" and not self.voting_params:
            self.vote_weights_: Float[Tensor, "k class"] = torch.ones(k, n_classes, dtype=torch.float64)
            return
        if isinstance(features, StoredFeatures):  # only the k selected heads, read block by block
            x = torch.cat([block.float() for block in head_blocks(features, self.heads_, what)])
        else:
            x = gather_heads(features, self.heads_, what)
        sim = loo_similarity(x, enc.codes, n_classes)
        head_scores = None
        if scores is not None:
            head_scores = torch.tensor([scores[h] for h in self.heads_], dtype=torch.float64)
        context = VoteContext(self.heads_, self.classes_, enc.codes, sim, sim.argmax(dim=-1), head_scores)
        self.vote_weights_ = run_voting(self.voting, context, dict(self.voting_params or {}))

    def fit_heads(
        self,
        features: "HeadFeatures | StoredFeatures",
        labels: Sequence[Hashable] | None = None,
        *,
        heads: "HeadSet | Iterable[Head | str | tuple[int, int]]",
        scores: HeadScores | None = None,
    ) -> "SAV":
        """Store class centroids for the given ``heads`` without scoring (``k`` becomes ``len(heads)``).

        This is the step that cross-task transfer uses (heads chosen on task A, centroids from task B's
        shots), and the one a model-side fit that extracts only the selected heads' layers plugs into:
        ``features`` need only hold the layers of ``heads``. The voting rule's weights are learned on these
        features; ``scores`` (e.g. task A's :class:`HeadScores`) is what ``voting="score"`` weighs by.
        """
        what = "SAV.fit_heads"
        heads = heads if isinstance(heads, HeadSet) else HeadSet(heads)
        if not heads:
            raise ArgumentError(f"{what}: heads is empty; give at least one head.")
        labels = resolve_labels(features, labels, what)
        enc = encode_labels(labels, order="first" if self.reference else "sorted", what=what)
        if self.reference:
            self._check_reference_voting(what)
        self.k = len(heads)
        self._fit_centroids(features, enc, heads, what)
        self.scores_ = None
        self._fit_voting(features, enc, scores, what)
        return self

    def _fit_centroids(
        self, features: "HeadFeatures | StoredFeatures", enc: EncodedLabels, heads: HeadSet, what: str
    ) -> None:
        if self.reference:  # as the reference: per-class mean of the stacked vectors, in the features' dtype
            if isinstance(features, StoredFeatures):
                features = features.load()
            x = gather_heads(features, heads, what, upcast=False)
            centroids = torch.stack([x[enc.codes == c].mean(dim=0) for c in range(enc.n_classes)], dim=1)
        else:  # class sums in float64, block by block for stored features, then float32 centroids
            if isinstance(features, HeadFeatures):
                blocks: Iterable[Tensor] = [gather_heads(features, heads, what)]
            else:  # only the selected heads are read, block by block
                blocks = head_blocks(features, heads, what)
            sums: Tensor | None = None
            start = 0
            for x in blocks:
                x = x.double()
                onehot = F.one_hot(enc.codes[start : start + x.shape[0]], enc.n_classes).double()
                start += x.shape[0]
                block = torch.einsum("nc,nkd->kcd", onehot, x)
                sums = block if sums is None else sums + block
            assert sums is not None
            centroids = (sums / enc.counts.double()[None, :, None]).float()
        self.heads_ = heads
        self.centroids_: Float[Tensor, "k class d_head"] = centroids
        self.classes_: tuple[Hashable, ...] = enc.classes
        self.class_type_ = enc.class_type
        self.source_: dict[str, Any] = _source_of(features)

    # prediction ------------------------------------------------------------------------------------
    def _check_source(self, features: "HeadFeatures | StoredFeatures", what: str) -> None:
        theirs = features.describe()
        diffs = [
            f"{k}: {self.source_[k]!r} vs {theirs[k]!r}"
            for k in _SOURCE_KEYS
            if json_safe(self.source_[k]) != json_safe(theirs[k])
        ]
        want_t, got_t = self.source_.get("prompt_template_sha256"), template_hash(features.prompt_template)
        if want_t != got_t:
            diffs.append(
                f"prompt template: fitted with {self.source_.get('prompt_template')!r}, these features were "
                f"extracted with {features.prompt_template!r}"
            )
        missing = [layer for layer in self.heads_.layers if layer not in (features.layers or ())]
        if missing:
            diffs.append(f"layers {missing} of the selected heads are not in these features")
        if diffs:
            raise FeatureError(
                f"{what}: these features do not match the features this SAV was fitted on ({'; '.join(diffs)}). "
                "Extract them with the same model, hook, positions and prompt template as the training features."
            )

    def head_vectors(self, features: HeadFeatures) -> Float[Tensor, "example k d_head"]:
        """Return the selected heads' vectors from ``features`` (checked to come from the fitted source)."""
        self._check_fitted("SAV.head_vectors")
        self._check_source(features, "SAV.head_vectors")
        x = gather_heads(features, self.heads_, "SAV.head_vectors", upcast=not self.reference)
        return x.to(device=self.centroids_.device, dtype=self.centroids_.dtype)

    def _features(self, data: Any, examples_or_labels: Any, what: str, options: dict[str, Any]) -> Any:
        """Features from features, or from (model, examples) reading only the selected heads' layers."""
        if isinstance(data, (HeadFeatures, StoredFeatures)):
            return data, examples_or_labels
        self._check_fitted(what)
        opts = {**getattr(self, "extract_options_", {}), **options}
        return as_features(data, examples_or_labels, layers=self.required_layers, options=opts, what=what)

    def votes(self, features: Any, examples: Any = None, **extract_options: Any) -> Votes:
        """Return every selected head's vote on every example, with counts, similarities and winners.

        ``features`` may be a :class:`savlens.Model` with ``examples``: then only the layers of the selected heads
        are read, and the forward pass stops after the deepest of them.
        """
        features, _ = self._features(features, examples, "SAV.votes", extract_options)
        if isinstance(features, StoredFeatures):  # block by block, within savlens.outofcore.memory_bound()
            self._check_fitted("SAV.votes")
            self._check_source(features, "SAV.votes")
            blocks = head_blocks(features, self.heads_, "SAV.votes")  # only the k heads are read
            parts = [self._votes_of(x.to(self.centroids_.device, self.centroids_.dtype)) for x in blocks]
            fields = ("votes", "counts", "similarity", "winners")
            weighted = None if parts[0].tally is None else torch.cat([p.tally for p in parts if p.tally is not None])
            votes, counts, sim, winners = (torch.cat([getattr(p, f) for p in parts]) for f in fields)
            return Votes(self.heads_, self.classes_, votes, counts, sim, winners, weighted)
        return self._votes_of(self.head_vectors(features))

    def _votes_of(self, x: Tensor) -> Votes:
        sim = F.cosine_similarity(x[:, :, None, :], self.centroids_[None], dim=-1, eps=EPS)
        votes = sim.argmax(dim=-1)
        n_classes = len(self.classes_)
        onehot = F.one_hot(votes, n_classes)
        counts = onehot.sum(dim=1)
        weights = getattr(self, "vote_weights_", None)
        weighted = None
        if weights is not None and not bool((weights == 1).all()):
            weighted = tally(votes, weights.to(votes.device), n_classes)
            tied = weighted == weighted.max(dim=-1, keepdim=True).values
        else:
            tied = counts == counts.max(dim=-1, keepdim=True).values
        if self.reference:  # Counter.most_common: among tied labels, the one voted first
            k = votes.shape[1]
            rank = torch.arange(k, device=votes.device)[None, :, None].expand_as(onehot)
            first = torch.where(onehot.bool(), rank, k).min(dim=1).values
            winners = torch.where(tied, first, k + 1).argmin(dim=-1)
        else:  # highest summed cosine similarity among tied classes, then classes_ order
            summed = sim.sum(dim=1).double()
            winners = torch.where(tied, summed, -torch.inf).argmax(dim=-1)
        return Votes(self.heads_, self.classes_, votes, counts, sim, winners, weighted)

    def predict(self, features: Any, examples: Any = None, **extract_options: Any) -> list[Hashable]:
        """Return the voted label of each example (a list, in ``classes_`` types); features or (model, examples)."""
        return self.votes(features, examples, **extract_options).labels()

    def predict_proba(
        self, features: Any, examples: Any = None, **extract_options: Any
    ) -> Float[Tensor, "example class"]:
        """Return vote shares, columns in ``classes_`` order; each row sums to 1."""
        return self.votes(features, examples, **extract_options).shares

    def score(self, features: Any, labels: Any = None, **extract_options: Any) -> float:
        """Return the accuracy of :meth:`predict` on labelled features, or on (model, labelled examples)."""
        what = "SAV.score"
        self._check_fitted(what)
        features, labels = self._features(features, labels, what, extract_options)
        truth = [normalize_label(v) for v in resolve_labels(features, labels, what)]
        kinds = {type(v).__name__ for v in truth}
        if kinds != {self.class_type_}:
            raise LabelError(f"{what}: labels of type {sorted(kinds)} for an SAV fitted on {self.class_type_} labels.")
        predicted = self.predict(features)
        return sum(p == t for p, t in zip(predicted, truth)) / len(truth)

    # persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``tensors-<sha256[:16]>.safetensors`` (centroids, scores) and
        ``manifest.json``.

        The manifest records the parameters, classes and their type, heads, the training features'
        provenance (model id, hook, positions, prompt template hash, layers, grid), library versions and the
        tensor file's name and SHA-256. Saving over an earlier save is atomic as a whole: the tensor file is
        named by its content and written first, the manifest that names it replaces the old one in one rename,
        and only then are tensor files no manifest names removed; a crash at any point leaves the old save or
        the new one, never a mix. No pickle.
        """
        self._check_fitted("SAV.save")
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise StoreError(
                f"SAV.save: {str(folder)!r} exists and is not a folder; give a new or existing folder path."
            )
        tensors = {"centroids": self.centroids_}
        weights = getattr(self, "vote_weights_", None)
        if weights is not None and not bool((weights == 1).all()):
            tensors["vote_weights"] = weights
        if self.scores_ is not None:
            tensors["scores"] = self.scores_.scores
        data = tensors_to_bytes(tensors, {"format": FORMAT})
        digest = sha256_bytes(data)
        tensor_file = f"tensors-{digest[:16]}.safetensors"
        write_bytes(folder / tensor_file, data)
        params = self.get_params()
        params["scorer"] = scorer_name(self.scorer)
        params["scorer_params"] = json_safe(dict(self.scorer_params or {}))
        params["voting"] = voting_name(self.voting)
        params["voting_params"] = json_safe(dict(self.voting_params or {}))
        scores = self.scores_
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": params,
            "classes": list(self.classes_),
            "class_type": self.class_type_,
            "heads": self.heads_.to_list(),
            "scores": None
            if scores is None
            else {
                "criterion": scores.criterion,
                "mode": scores.mode,
                "params": json_safe(scores.params),
                "layers": list(scores.layers or ()),
            },
            "features": self.source_,
            "extract_options": json_safe(getattr(self, "extract_options_", {})),
            "versions": library_versions(),
            "tensors": {
                "file": tensor_file,
                "sha256": digest,
                "centroids": list(self.centroids_.shape),
                "dtype": str(self.centroids_.dtype).removeprefix("torch."),
            },
        }
        write_json(folder / "manifest.json", manifest)
        for old in folder.glob("tensors*.safetensors"):  # earlier saves' tensors, no longer named by the manifest
            if old.name != tensor_file:
                old.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, path: str | Path, *, expect: "HeadFeatures | Mapping[str, Any] | None" = None) -> "SAV":
        """Load an SAV saved by :meth:`save`, checking the tensor file's hash.

        Args:
            path: the folder written by :meth:`save`.
            expect: features (or a dict of ``describe()`` fields: model_id, hook, positions,
                prompt_template, layers, n_heads, d_head) the SAV will be used with; loading is refused
                when they come from another model, hook, positions, prompt template or grid.

        Raises:
            StoreError: missing or corrupt files, a changed tensor file, another format, or ``expect``
                that does not match.
        """
        folder = Path(path)
        if not folder.is_dir():
            there = "it is a file" if folder.exists() else "it does not exist"
            raise StoreError(
                f"SAV.load: {str(folder)!r} is not a saved SAV ({there}); SAV.save writes a folder holding "
                "manifest.json and the tensor file it names. Give the path of that folder."
            )
        manifest = read_json(folder / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"SAV.load: {str(folder)!r} does not hold a saved SAV (format != {FORMAT!r}).")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"SAV.load: format version {manifest.get('format_version')!r} is not supported "
                f"(this savlens reads {FORMAT_VERSION})."
            )
        try:
            source = manifest["features"]
            heads = HeadSet(manifest["heads"])
            classes = tuple(manifest["classes"])
            class_type = manifest["class_type"]
            info = manifest["tensors"]
            params = manifest["params"]
            file, digest, d_head = info["file"], info["sha256"], source["d_head"]
            if not (isinstance(params, dict) and isinstance(file, str) and isinstance(digest, str)):
                raise TypeError("params, tensors.file and tensors.sha256 must be an object and strings")
            meta = manifest.get("scores")
            if meta is not None:
                score_args = (meta["criterion"], meta["mode"], meta["params"], tuple(meta["layers"]))
        except (KeyError, TypeError, ValueError, SavlensError) as e:
            raise StoreError(
                f"SAV.load: the manifest in {str(folder)!r} is incomplete or invalid ({type(e).__name__}: {e}); "
                "it was edited or not written by SAV.save. Re-fit and save the SAV."
            ) from None
        if not file or Path(file).name != file or file.startswith("."):
            raise StoreError(
                f"SAV.load: the manifest in {str(folder)!r} names a tensor file {file!r} outside its folder; it was "
                "edited, and savlens reads only files inside the SAV's folder. Re-save the SAV."
            )
        if expect is not None:
            _check_expect(source, heads, expect)
        tensors = read_tensors(folder / file, sha256=digest)
        centroids = tensors.get("centroids")
        if centroids is None or list(centroids.shape) != [len(heads), len(classes), d_head]:
            raise StoreError(f"SAV.load: the centroids in {str(folder)!r} do not match the manifest.")
        if {type(c).__name__ for c in classes} != {class_type}:
            raise StoreError(f"SAV.load: the classes {classes!r} are not all of type {class_type!r}.")
        known = cls().get_params()
        sav = cls(**{key: value for key, value in params.items() if key in known})
        sav.heads_, sav.centroids_, sav.classes_ = heads, centroids, classes
        sav.class_type_, sav.source_ = class_type, source
        sav.vote_weights_ = torch.ones(len(heads), len(classes), dtype=torch.float64)
        if "vote_weights" in tensors:
            weights = tensors["vote_weights"]
            if list(weights.shape) != [len(heads), len(classes)] or not torch.isfinite(weights).all():
                raise StoreError(f"SAV.load: the vote weights in {str(folder)!r} do not match the manifest.")
            sav.vote_weights_ = weights.double()
        sav.extract_options_ = _extract_options(manifest.get("extract_options") or {}, source)
        sav.scores_ = None
        if meta is not None and "scores" in tensors:
            try:
                sav.scores_ = HeadScores(tensors["scores"], *score_args)
            except SavlensError as e:
                raise StoreError(
                    f"SAV.load: the head scores in {str(folder)!r} do not match the manifest ({e.detail}). "
                    "Re-save the SAV."
                ) from None
        return sav


def gather_heads(
    features: HeadFeatures, heads: HeadSet, what: str = "features", *, upcast: bool = True
) -> Float[Tensor, "example k d_head"]:
    """Return the vectors of ``heads`` (in rank order) from ``features``, refusing NaN / inf.

    ``Head.layer`` is a model layer, looked up in ``features.layers``. Half-precision and integer features
    are upcast to float32 unless ``upcast`` is False (reference mode keeps floating dtypes as they are).

    Example:
        >>> z = torch.arange(2 * 3 * 2 * 1.0).reshape(2, 3, 2, 1)
        >>> gather_heads(HeadFeatures(z), HeadSet(["L2H1", "L0H0"]))[:, :, 0].tolist()
        [[5.0, 0.0], [11.0, 6.0]]
    """
    layers = list(features.layers or ())
    rows, cols = [], []
    for h in heads:
        if h.layer not in layers:
            raise FeatureError(
                f"{what}: head {h} needs layer {h.layer}, which these features do not hold (layers {layers})."
            )
        if h.head >= features.n_heads:
            raise FeatureError(f"{what}: head {h} does not exist; these features have head_index={features.n_heads}.")
        rows.append(layers.index(h.layer))
        cols.append(h.head)
    x = features.z[:, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)]
    if not x.is_floating_point() or (upcast and x.dtype in (torch.float16, torch.bfloat16)):
        x = x.float()
    if not torch.isfinite(x).all():
        i, j = torch.nonzero(~torch.isfinite(x).all(dim=-1))[0].tolist()
        ids = features.example_ids or []
        raise FeatureError(f"{what}: NaN or infinite values in head {list(heads)[j]} of example {ids[i]!r}.")
    return x


def _check_expect(source: Mapping[str, Any], heads: HeadSet, expect: "HeadFeatures | Mapping[str, Any]") -> None:
    """Raise :class:`StoreError` unless ``expect`` matches the provenance a saved SAV was fitted on."""
    allowed = {
        "model_id",
        "hook",
        "positions",
        "prompt_template",
        "prompt_template_sha256",
        "layers",
        "n_heads",
        "d_head",
    }
    if isinstance(expect, HeadFeatures):
        want: dict[str, Any] = expect.describe()
    else:
        want = dict(expect)
        unknown = sorted(set(want) - allowed)
        if unknown:
            raise StoreError(f"SAV.load: expect has unknown keys {unknown}; use {sorted(allowed)}.")
    if "prompt_template" in want:
        want["prompt_template_sha256"] = template_hash(want.pop("prompt_template"))
    diffs = [
        f"{key}: saved {source.get(key)!r}, expected {want[key]!r}"
        for key in (*_SOURCE_KEYS, "prompt_template_sha256")
        if key in want and json_safe(source.get(key)) != json_safe(want[key])
    ]
    if "layers" in want:
        missing = [layer for layer in heads.layers if layer not in set(want["layers"])]
        if missing:
            diffs.append(f"the saved heads need layers {missing}, which the expected features do not hold")
    if diffs:
        raise StoreError(
            f"SAV.load: the saved SAV was fitted on other features ({'; '.join(diffs)}). Use it with features of "
            "the model, hook, positions and template it was fitted on, or re-fit it on these."
        )
