"""The Sparse Attention Vector (SAV) classifier: select heads, keep class centroids, classify by head vote.

Method (docs): each head's class centroids are means of its ``blocks.{l}.attn.hook_z`` vectors at the
last position; heads are scored by a criterion (nearest-centroid accuracy by default), the ``k`` best kept,
and a query is labelled by a majority vote of those heads, each voting for its nearest centroid (cosine).

The estimator fits and predicts on features (:class:`HeadFeatures`, or :class:`StoredFeatures` streamed from a
store); :meth:`SAV.fit_model` and :meth:`SAV.extract` run a model. Its votes are :class:`~savlens.voting.Votes`;
its files are written and read by :mod:`savlens.sav_io`.
"""

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures, gather_heads
from savlens.errors import ArgumentError, FeatureError, LabelError
from savlens.estimator import Estimator
from savlens.heads import Head, HeadScores, HeadSet
from savlens.io import json_safe
from savlens.labels import EncodedLabels, encode_labels, normalize_label, resolve_labels
from savlens.outofcore import StoredFeatures, head_blocks
from savlens.pipeline import EXTRACT_OPTIONS, extract_for, is_model
from savlens.sav_io import COMPARED, load_sav, save_sav, template_hash
from savlens.scoring import EPS, Criterion, centroid_accuracy, run_criterion
from savlens.voting import VoteContext, Votes, VotingRule, loo_similarity, run_voting, tally, voting_name

__all__ = ["SAV", "Votes", "extract_options_of"]


def _source_of(features: "HeadFeatures | StoredFeatures") -> dict[str, Any]:
    """The one record of how features were made: ``describe()``, the template's hash and the extraction meta."""
    src = features.describe()
    src["prompt_template_sha256"] = template_hash(features.prompt_template)
    src["meta"] = json_safe(features.meta)
    return src


def extract_options_of(source: Mapping[str, Any]) -> dict[str, Any]:
    """Return the :func:`savlens.extract` options that remake features of provenance ``source``.

    ``positions`` comes back as ``"last"`` or an int, ``dtype`` as a ``torch.dtype`` (when recorded); ``chat`` is
    left out when unknown (features made by hand), so that extraction uses its default.

    Example:
        >>> extract_options_of({"positions": "-2", "prompt_template": "Q: {text}", "chat": False,
        ...                     "system_prompt": None, "meta": {"dtype": "float16"}})
        {'positions': -2, 'prompt_template': 'Q: {text}', 'chat': False, 'system_prompt': None, 'dtype': torch.float16}
    """
    positions = str(source.get("positions", "last"))
    opts: dict[str, Any] = {
        "positions": int(positions) if positions.lstrip("-").isdigit() else positions,
        "prompt_template": source.get("prompt_template"),
    }
    if source.get("chat") is not None:
        opts["chat"] = source["chat"]
    opts["system_prompt"] = source.get("system_prompt")
    dtype = (source.get("meta") or {}).get("dtype")
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.removeprefix("torch."), None), torch.dtype):
        opts["dtype"] = getattr(torch, dtype.removeprefix("torch."))
    return opts


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_features(features: Any, what: str, instead: str) -> None:
    """Refuse anything but features, naming the model-side method to use for a model."""
    if isinstance(features, (HeadFeatures, StoredFeatures)):
        return
    if is_model(features):
        raise FeatureError(f"{what} takes features, not a model; {instead}.")
    raise FeatureError(
        f"{what}: expected HeadFeatures (from savlens.extract) or StoredFeatures; got {type(features).__name__}."
    )


class SAV(Estimator):
    """Sparse Attention Vectors: a few-shot classifier voting with the ``k`` best heads.

    Scikit-learn conventions (:class:`~savlens.estimator.Estimator`): parameters are set in ``__init__`` and
    never changed by ``fit``; learned state ends in ``_``; ``get_params`` / ``set_params`` / ``repr`` follow
    the signature.

    Args:
        k: number of heads kept (paper: 20).
        criterion: the head-selection criterion: a registered name (``"centroid"``, ``"probe"``, ``"fisher"``,
            ...) or a function ``(features, labels) -> HeadScores`` (see :mod:`savlens.scoring`).
        mode: how the criterion holds examples out (``"loo"``, ``"kfold"``, ``"in_sample"``); None uses the
            criterion's default (``"loo"`` for ``"centroid"``). Refused for criteria that take no mode.
        seed: seeds the fold split (``"kfold"``) and the tie-breaking among equal head scores
            (:meth:`HeadScores.top_k`).
        reference: reproduce the reference code exactly (docs/reproducing-savs.md): classes numbered in order
            of first appearance, in-sample centroid scores, top-k by
            ``np.argsort(scores, kind="stable")[-k:][::-1]``, vote ties won by the label voted first. Needs
            ``criterion="centroid"`` and ``mode`` None or ``"in_sample"``.
        n_folds: folds for ``mode="kfold"``.
        criterion_params: extra keyword arguments for the criterion.
        voting: how the heads' votes become a label: a registered voting rule (``"majority"``, the paper's
            rule and the default; ``"score"``; ``"reliability"``) or a function (see :mod:`savlens.voting`).
            Weighted rules learn their weights on the training shots only, with leave-one-out centroids.
        voting_params: extra keyword arguments for the voting rule.

    Attributes:
        heads_: the selected heads, best first (``k`` of them, or the heads given to :meth:`fit_heads`).
        scores_: the criterion's :class:`HeadScores` (None after :meth:`fit_heads`).
        centroids_: ``k class d_head`` class centroid of each selected head.
        classes_: the class labels; sorted, or in order of first appearance under ``reference=True``.
        source_: how the training features were made: their ``describe()`` (model id, hook, positions,
            prompt template, chat, system prompt, layers, grid), the template's hash and their extraction meta.
            Every method that takes features refuses features made otherwise.
        extract_options_: the :func:`savlens.extract` options that remake such features (from ``source_``);
            what :meth:`extract` uses.
        vote_weights_: ``k class`` vote weight of each selected head for each class, learned by the voting
            rule on the training shots (all ones under ``"majority"``).

    Votes: each head votes for the class whose centroid is most cosine-similar (first maximum in
    ``classes_`` order). Among classes tied on votes, the winner is the one with the highest cosine
    similarity summed over the ``k`` heads (then the first in ``classes_``); under ``reference=True`` it is
    the class voted first by the best-ranked head among them (``Counter.most_common`` semantics).

    Predicting on new inputs needs features of ``required_layers`` only: :meth:`predict` accepts features
    whose ``layers`` include those of ``heads_``, :meth:`extract` reads only those layers from a model, and
    :meth:`fit_heads` fits centroids of given heads (e.g. heads chosen on another task) without scoring.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(40, 2, 4, 8, generator=g)
        >>> labels = ["yes", "no"] * 20
        >>> z[0::2, 1, 2, 0] += 10; z[1::2, 1, 2, 1] += 10  # plant one informative head: L1H2
        >>> sav = SAV(k=1).fit(HeadFeatures(z, labels=labels))
        >>> str(sav.heads_), sav.classes_, sav.score(HeadFeatures(z, labels=labels))
        ('L1H2', ('no', 'yes'), 1.0)
        >>> sav
        SAV(k=1; heads_=[L1H2])
    """

    _fitted_attr: ClassVar[str] = "centroids_"

    def __init__(
        self,
        k: int = 20,
        criterion: str | Criterion = "centroid",
        mode: str | None = None,
        seed: int = 0,
        reference: bool = False,
        *,
        n_folds: int = 5,
        criterion_params: Mapping[str, Any] | None = None,
        voting: str | VotingRule = "majority",
        voting_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.k = k
        self.criterion = criterion
        self.mode = mode
        self.seed = seed
        self.reference = reference
        self.n_folds = n_folds
        self.criterion_params = criterion_params
        self.voting = voting
        self.voting_params = voting_params

    def _repr_fitted(self) -> str:
        return f"; heads_=[{self.heads_}]" if self.__sklearn_is_fitted__() else ""

    def _repr_html_(self) -> str | None:
        """Render a fitted SAV in a notebook: the head-score map, its heads (:func:`savlens.report.report_html`)."""
        if not self.__sklearn_is_fitted__():
            return None
        from savlens.report import report_html

        return report_html(self, full=False)

    @property
    def required_layers(self) -> tuple[int, ...]:
        """The model layers the selected heads live in: what an extraction for :meth:`predict` must read."""
        self._check_fitted("SAV.required_layers")
        return self.heads_.layers

    @property
    def extract_options_(self) -> dict[str, Any]:
        """The :func:`savlens.extract` options the training features were made with (from ``source_``)."""
        self._check_fitted("SAV.extract_options_")
        return extract_options_of(self.source_)

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

    def fit(self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None) -> "SAV":
        """Score every head, keep the ``k`` best, and store their class centroids.

        Args:
            features: ``example layer head_index d_head`` head features of the labelled (few-shot) examples
                (to fit from a model and examples, use :meth:`fit_model`).
            labels: one label per example; None uses ``features.labels``.

        Returns:
            self
        """
        what = "SAV.fit"
        _check_features(features, what, "use SAV(...).fit_model(model, examples, **extract_options)")
        self._check_k(features, what)
        labels = resolve_labels(features, labels, what)
        enc = encode_labels(labels, order="first" if self.reference else "sorted", what=what)
        if self.reference:
            self._check_reference_voting(what)
            if self.criterion != "centroid":
                raise ArgumentError(
                    f"{what}: reference=True uses the centroid criterion; got criterion={self.criterion!r}."
                )
            if self.mode not in (None, "in_sample"):
                raise ArgumentError(f"{what}: reference=True scores in sample; got mode={self.mode!r}.")
            if isinstance(features, StoredFeatures):
                features = features.load()  # the reference computes in the features' dtype, all at once
            scores = centroid_accuracy(features, labels, mode="in_sample", reference=True)
            heads = scores.reference_top_k(self.k)
        else:
            options = dict(self.criterion_params or {})
            options.setdefault("seed", self.seed)
            options.setdefault("n_folds", self.n_folds)
            scores = run_criterion(self.criterion, features, labels, mode=self.mode, **options)
            heads = scores.top_k(self.k, seed=self.seed)
        self._fit_centroids(features, enc, heads, what)
        self.scores_: HeadScores | None = scores
        self._fit_voting(features, enc, scores, what)
        return self

    def fit_model(self, model: Any, examples: Sequence[Any], **extract_options: Any) -> "SAV":
        """Extract every head's features of the labelled ``examples`` from ``model`` and :meth:`fit` on them.

        Args:
            model: a :class:`savlens.Model`.
            examples: the labelled examples, run in one batched pass each.
            **extract_options: options of :func:`savlens.extract` (``prompt_template``, ``chat``,
                ``system_prompt``, ``positions``, ``dtype``, ``batch_size``, ...). The features record the ones
                that define them; :meth:`extract` makes features for :meth:`predict` the same way.

        Returns:
            self
        """
        features = extract_for(model, examples, options=extract_options, what="SAV.fit_model")
        return self.fit(features)

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
        """Store class centroids for the given ``heads`` without scoring (``k`` is not used; ``heads_`` are these).

        This is the step that cross-task transfer uses (heads chosen on task A, centroids from task B's
        shots), and the one a model-side fit that extracts only the selected heads' layers plugs into:
        ``features`` need only hold the layers of ``heads``. The voting rule's weights are learned on these
        features; ``scores`` (e.g. task A's :class:`HeadScores`) is what ``voting="score"`` weighs by.
        """
        what = "SAV.fit_heads"
        _check_features(features, what, "extract the features first: savlens.extract(model, examples)")
        heads = heads if isinstance(heads, HeadSet) else HeadSet(heads)
        if not heads:
            raise ArgumentError(f"{what}: heads is empty; give at least one head.")
        labels = resolve_labels(features, labels, what)
        enc = encode_labels(labels, order="first" if self.reference else "sorted", what=what)
        if self.reference:
            self._check_reference_voting(what)
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

    # features for prediction -----------------------------------------------------------------------
    def extract(self, model: Any, examples: Sequence[Any], **run_options: Any) -> HeadFeatures:
        """Return the features :meth:`predict` needs of ``examples``, extracted as the training features were.

        Uses :attr:`extract_options_` (positions, prompt template, chat, system prompt, dtype) and reads only
        :attr:`required_layers`; the forward pass stops after the deepest of them.

        Args:
            model: the :class:`savlens.Model` the training features came from.
            examples: the examples to classify.
            **run_options: ``batch_size``, ``progress``, ``store``, ``dtype`` (how the extraction runs). The
                options that define the features are those of the fit and cannot be changed here.

        Raises:
            FeatureError: ``model`` is not the model (id and fingerprint) the training features came from.
            ArgumentError: an option that would make other features (``prompt_template``, ``chat``, ...).
        """
        what = "SAV.extract"
        self._check_fitted(what)
        fixed = sorted(set(run_options) & (set(EXTRACT_OPTIONS) - {"dtype"}))
        if fixed:
            raise ArgumentError(
                f"{what}: {fixed} define the features, so they are the fit's ({self.extract_options_}); extract "
                "with savlens.extract and re-fit to use others."
            )
        if is_model(model):
            src, meta = self.source_, self.source_.get("meta") or {}
            fingerprint = meta.get("fingerprint")
            if src.get("model_id") != model.model_id or (fingerprint and fingerprint != model.fingerprint):
                raise FeatureError(
                    f"{what}: this SAV was fitted on features of {src.get('model_id')!r}"
                    + (f" (fingerprint {str(fingerprint)[:12]})" if fingerprint else "")
                    + f", not of {model.model_id!r} (fingerprint {str(model.fingerprint)[:12]}); use the model it "
                    "was fitted with."
                )
        options = {**self.extract_options_, **run_options}
        return extract_for(model, examples, layers=self.required_layers, options=options, what=what)

    # prediction ------------------------------------------------------------------------------------
    def _check_source(self, features: "HeadFeatures | StoredFeatures", what: str) -> None:
        """Raise :class:`FeatureError` unless ``features`` were made as the training features were."""
        theirs = features.describe()
        diffs = [
            f"{k}: fitted on {self.source_.get(k)!r}, these features have {theirs[k]!r}"
            for k in COMPARED
            if json_safe(self.source_.get(k)) != json_safe(theirs[k])
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
                "Extract them with the same model, hook, positions, prompt template and chat settings as the "
                "training features (SAV.extract(model, examples) does)."
            )

    def head_vectors(self, features: HeadFeatures) -> Float[Tensor, "example k d_head"]:
        """Return the selected heads' vectors from ``features`` (checked to come from the fitted source)."""
        return self._head_vectors(features, "SAV.head_vectors")

    def _head_vectors(self, features: HeadFeatures, what: str) -> Float[Tensor, "example k d_head"]:
        self._check_fitted(what)
        _check_features(features, what, "pass sav.extract(model, examples)")
        self._check_source(features, what)
        x = gather_heads(features, self.heads_, what, upcast=not self.reference)
        return x.to(device=self.centroids_.device, dtype=self.centroids_.dtype)

    def votes(self, features: "HeadFeatures | StoredFeatures") -> Votes:
        """Return every selected head's vote on every example, with counts, similarities and winners.

        For a model and examples: ``sav.votes(sav.extract(model, examples))``.
        """
        return self._votes(features, "SAV.votes")

    def _votes(self, features: "HeadFeatures | StoredFeatures", what: str) -> Votes:
        self._check_fitted(what)
        _check_features(features, what, "pass sav.extract(model, examples)")
        if isinstance(features, StoredFeatures):  # block by block, within savlens.outofcore.memory_bound()
            self._check_source(features, what)
            blocks = head_blocks(features, self.heads_, what)  # only the k heads are read
            return Votes.concat([self._votes_of(x.to(self.centroids_.device, self.centroids_.dtype)) for x in blocks])
        return self._votes_of(self._head_vectors(features, what))

    def _votes_of(self, x: Tensor) -> Votes:
        sim = F.cosine_similarity(x[:, :, None, :], self.centroids_[None], dim=-1, eps=EPS)
        votes = sim.argmax(dim=-1)
        n_classes = len(self.classes_)
        onehot = F.one_hot(votes, n_classes)
        counts = onehot.sum(dim=1)
        weights = self.vote_weights_
        weighted = None
        if not bool((weights == 1).all()):
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

    def predict(self, features: "HeadFeatures | StoredFeatures") -> list[Hashable]:
        """Return the voted label of each example (a list, in ``classes_`` types)."""
        return self._votes(features, "SAV.predict").labels()

    def predict_proba(self, features: "HeadFeatures | StoredFeatures") -> Float[Tensor, "example class"]:
        """Return vote shares, columns in ``classes_`` order; each row sums to 1."""
        return self._votes(features, "SAV.predict_proba").shares

    def score(self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None) -> float:
        """Return the accuracy of :meth:`predict` on labelled features."""
        what = "SAV.score"
        self._check_fitted(what)
        _check_features(features, what, "pass sav.extract(model, examples)")
        truth = [normalize_label(v) for v in resolve_labels(features, labels, what)]
        kinds = {type(v).__name__ for v in truth}
        if kinds != {self.class_type_}:
            raise LabelError(f"{what}: labels of type {sorted(kinds)} for an SAV fitted on {self.class_type_} labels.")
        predicted = self._votes(features, what).labels()
        return sum(p == t for p, t in zip(predicted, truth)) / len(truth)

    # persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``tensors-<sha256[:16]>.safetensors`` (centroids, scores) and
        ``manifest.json``.

        The manifest records the parameters, classes and their type, heads, the training features'
        provenance (``source_``: model id, hook, positions, prompt template and its hash, chat settings,
        layers, grid), library versions and the tensor file's name and SHA-256. Saving over an earlier save is
        atomic as a whole: the tensor file is named by its content and written first, the manifest that names
        it replaces the old one in one rename, and only then are tensor files no manifest names removed; a
        crash at any point leaves the old save or the new one, never a mix. No pickle.
        """
        self._check_fitted("SAV.save")
        return save_sav(self, path)

    @classmethod
    def load(cls, path: str | Path, *, expect: "HeadFeatures | Mapping[str, Any] | None" = None) -> "SAV":
        """Load an SAV saved by :meth:`save`, checking the tensor file's hash.

        Args:
            path: the folder written by :meth:`save`.
            expect: features (or a dict of ``describe()`` fields: model_id, hook, positions, prompt_template,
                chat, system_prompt, layers, n_heads, d_head) the SAV will be used with; loading is refused
                when they were made otherwise.

        Raises:
            StoreError: missing or corrupt files, a changed tensor file, another format, or ``expect``
                that does not match.
        """
        return load_sav(cls, path, expect)
