"""`Batch`: examples rendered through the model's prompt template, chat template and processor.

A batch is padded (left by default), carries the attention mask and model-specific position inputs, and
knows, for every row, where its last real token is and which positions are image tokens. It remembers the
model it was built for, so a batch cannot silently be run through another model.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jaxtyping import Bool, Int
from torch import Tensor

from savlens.errors import BatchMismatchError, InputError, VideoError, VideoNotSupportedError
from savlens.example import Example
from savlens.positions import last_real_index

if TYPE_CHECKING:
    from savlens.loading import Model

PaddingSide = Literal["left", "right"]


@dataclass
class Batch:
    """A padded batch of examples, ready for :func:`savlens.trace`.

    Attributes:
        inputs: the keyword arguments of the model's forward (``input_ids``, ``attention_mask``, image
            tensors, and ``position_ids`` where the family needs them for padding-invariant positions).
        example_ids: the id of the example in each row.
        labels: the label of each row (None where unlabelled).
        prompts: the rendered prompt text of each row (after prompt and chat template).
        last_index: ``batch`` sequence index of each row's last real (non-pad) token.
        image_mask: ``batch pos`` True at image tokens (not video frames).
        fingerprint: the fingerprint of the model (config, tokenizer, chat template) it was built for.
        padding_side: ``"left"`` or ``"right"``.
        prompt_template: the prompt template used (None: the raw text).
        meta: extras; ``meta["media"]`` (from :meth:`from_examples`) lists, per row, its images and videos in
            prompt order (``{"kind", "index", "size": (width, height), "frames"}``), for the token grids.
        video_mask: ``batch pos`` True at video tokens (None: no video in the batch).
    """

    inputs: dict[str, Any]
    example_ids: list[str]
    labels: list[Hashable | None]
    prompts: list[str]
    last_index: Int[Tensor, " batch"]
    image_mask: Bool[Tensor, "batch pos"]
    fingerprint: str
    padding_side: PaddingSide = "left"
    prompt_template: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    video_mask: Bool[Tensor, "batch pos"] | None = None

    @property
    def attention_mask(self) -> Int[Tensor, "batch pos"]:
        return self.inputs["attention_mask"]

    @property
    def input_ids(self) -> Int[Tensor, "batch pos"]:
        return self.inputs["input_ids"]

    @property
    def text_mask(self) -> Bool[Tensor, "batch pos"]:
        """``batch pos`` True at real (non-pad) tokens that are not image or video tokens."""
        out = self.attention_mask.bool() & ~self.image_mask
        return out if self.video_mask is None else out & ~self.video_mask

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Real (non-pad) tokens per row."""
        return self.attention_mask.sum(-1)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        n_img = self.image_mask.sum(-1).tolist()
        video = "" if self.video_mask is None else f"video_tokens={self.video_mask.sum(-1).tolist()}, "
        return (
            f"Batch(batch={self.size}, pos={self.seq_len}, lengths={self.lengths.tolist()}, "
            f"image_tokens={n_img}, {video}padding_side={self.padding_side!r})"
        )

    def check_model(self, model: "Model") -> None:
        """Raise :class:`BatchMismatchError` unless this batch was built for ``model``."""
        if self.fingerprint != model.fingerprint:
            raise BatchMismatchError(
                f"this batch was built for another model (fingerprint {self.fingerprint}, this model "
                f"{model.fingerprint}, {model.family}). Rebuild it with savlens.Batch.from_examples(model, examples)."
            )

    @classmethod
    def from_inputs(
        cls,
        model: "Model",
        inputs: Any,
        *,
        example_ids: Sequence[str] | None = None,
        labels: Sequence[Hashable | None] | None = None,
    ) -> "Batch":
        """Wrap inputs that the user's own pipeline made (a processor's ``BatchFeature`` or a dict of tensors).

        The padding side is read from the attention mask (left or right), each row's last real token and the
        image-token mask are resolved, inputs the model's forward does not take are dropped, and the position
        inputs are added as :meth:`from_examples` adds them (unless ``position_ids`` are given). The features
        are then the same as from :meth:`from_examples` on the same prompts.

        Args:
            model: the wrapped model.
            inputs: ``processor(text=..., images=..., padding=True, return_tensors="pt")`` or a tokenizer's output.
            example_ids: one id per row (default ``"0"``, ``"1"``, ...).
            labels: one label per row (default None).

        Raises:
            InputError: no ``input_ids`` tensor, a mask of another shape, padding on both ends or inside a row,
                a row of padding only, ids or labels of the wrong length.
        """
        return _from_inputs(cls, model, inputs, example_ids, labels)

    @classmethod
    def from_examples(
        cls,
        model: "Model",
        examples: Sequence[Example | str],
        *,
        prompt_template: str | None = None,
        chat: bool = True,
        system_prompt: str | None = None,
        padding_side: PaddingSide = "left",
    ) -> "Batch":
        """Render ``examples`` and encode them as one padded batch for ``model``.

        Args:
            model: the wrapped model (:func:`savlens.load` / :func:`savlens.wrap`).
            examples: :class:`Example` objects (or plain strings, taken as text-only examples).
            prompt_template: a ``str.format`` template with ``{text}`` (and optionally keys of
                ``Example.meta``) applied to each example's text before the chat template.
            chat: render through the chat template (with the generation prompt); False feeds the raw
                text, with the model's image placeholder in front for each image.
            system_prompt: an optional system message (None keeps the chat template's default).
            padding_side: ``"left"`` (default; the last real token is at index -1) or ``"right"``.

        Examples with ``videos`` go through the model's own video processor (frames sampled and decoded by
        :meth:`savlens.Example.load_videos`); their tokens are in :attr:`video_mask` (``positions="video"``).

        Raises:
            InputError: no examples, duplicate ids, an image given to a text-only model, empty input, a
                prompt longer than the model's context, a bad prompt template.
            VideoNotSupportedError: a video given to a model whose processor takes no video.
            VideoError: a video that cannot be read or sampled.
        """
        exs = [Example(e) if isinstance(e, str) else e for e in examples]
        if not exs:
            raise InputError("Batch.from_examples got no examples; pass at least one savlens.Example or string.")
        for i, e in enumerate(exs):
            if not isinstance(e, Example):
                raise InputError(f"example {i} is a {type(e).__name__}; give savlens.Example objects or strings.")
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right'; got {padding_side!r}.")
        ids = [e.id if e.id is not None else str(i) for i, e in enumerate(exs)]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(f"duplicate example ids in one batch: {dup[:5]}; give each example a unique id.")
        prompts, images, videos = [], [], []
        for i, e in enumerate(exs):
            if e.n_videos and not model.takes_video:
                raise VideoNotSupportedError(
                    f"example {ids[i]!r} has {e.n_videos} video(s) but the processor of {model.family} model "
                    f"{model.model_id!r} takes no video (it has no video processor); use a family that takes video "
                    "or pass frames as images."
                )
            if e.n_images and not model.multimodal:
                raise InputError(
                    f"example {ids[i]!r} has {e.n_images} image(s) but {model.family} model {model.model_id!r} "
                    "is a text-only language model; drop the images or load a vision-language model."
                )
            if not e.text.strip() and not e.n_images and not e.n_videos and e.messages is None:
                raise InputError(
                    f"example {ids[i]!r} is empty (no text, no image); give it text or an image, or drop it."
                )
            text = _apply_template(prompt_template, e, ids[i])
            prompts.append(model.render(e, text, chat=chat, system_prompt=system_prompt))
            images.append(e.load_images(ids[i]))
            videos.append(e.load_videos(ids[i]))
        media = [bool(im or v) for im, v in zip(images, videos)]
        if any(media) and not all(media) and not model.resolved.spec.text_rows_with_images:
            raise InputError(
                f"{model.family} model {model.model_id!r}: its processor cannot mix text-only rows with image rows "
                f"in one batch (rows {[ids[i] for i, r in enumerate(media) if not r][:5]} have no image); batch "
                "them separately (savlens.extract does when given batch_size=1), or give every row an image."
            )
        if any(images) and any(videos) and not model.resolved.spec.videos_with_images:
            raise VideoError(
                f"{model.family} model {model.model_id!r} cannot take images and videos in one batch (transformers "
                "mixes up their tokens, or its processor drops the images); batch the video examples apart from the "
                "image examples (text-only rows may join either)."
            )
        enc = model.encode(
            prompts,
            images,
            padding_side=padding_side,
            add_special_tokens=not chat,
            videos=videos if any(videos) else None,
        )
        mask = enc["attention_mask"]
        lengths = mask.sum(-1)
        max_ctx = model.max_context
        if max_ctx is not None and int(lengths.max()) > max_ctx:
            row = int(lengths.argmax())
            raise InputError(
                f"example {ids[row]!r} is {int(lengths[row])} tokens long after templating and image expansion, "
                f"more than the model's context of {max_ctx}; shorten the text or use fewer / smaller images."
            )
        if int(lengths.min()) == 0:
            raise InputError(f"example {ids[int(lengths.argmin())]!r} encodes to zero tokens.")
        image_mask, video_mask = model.media_masks(enc, [bool(r) for r in images], [bool(r) for r in videos])
        for i, e in enumerate(exs):
            if e.n_images and not bool(image_mask[i].any()):
                raise InputError(
                    f"example {ids[i]!r} has images but its prompt has no image token; with a custom `messages` "
                    f"include one {model.resolved.spec.image_item} item per image."
                )
            if e.n_videos and not bool(video_mask[i].any()):
                raise InputError(
                    f"example {ids[i]!r} has videos but its prompt has no video token; with a custom `messages` "
                    "include one {'type': 'video'} item per video."
                )
        model.add_position_inputs(enc, has_images=any(media))
        return cls(
            inputs=enc,
            example_ids=ids,
            labels=[e.label for e in exs],
            prompts=prompts,
            last_index=last_real_index(mask),
            image_mask=image_mask,
            fingerprint=model.fingerprint,
            padding_side=padding_side,
            prompt_template=prompt_template,
            meta={"media": [_media_of(e, im, v) for e, im, v in zip(exs, images, videos)]},
            video_mask=video_mask if any(videos) else None,
        )


def _from_inputs(
    cls: type[Batch],
    model: "Model",
    inputs: Any,
    example_ids: Sequence[str] | None,
    labels: Sequence[Hashable | None] | None,
) -> Batch:
    import torch

    try:
        enc = dict(inputs)
    except (TypeError, ValueError):
        raise InputError(
            f"Batch.from_inputs expects the processor's or tokenizer's output (a BatchFeature or a dict of "
            f"tensors); got {type(inputs).__name__}."
        ) from None
    ids = enc.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise InputError(
            "Batch.from_inputs needs input_ids as a batch x pos tensor: call the processor with "
            "return_tensors='pt' (and padding=True for several rows); got "
            f"{type(ids).__name__}{'' if not isinstance(ids, Tensor) else f' of shape {tuple(ids.shape)}'}."
        )
    mask = enc.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
        enc["attention_mask"] = mask
    if not isinstance(mask, Tensor) or mask.shape != ids.shape:
        raise InputError(f"attention_mask must be a tensor shaped like input_ids {tuple(ids.shape)}.")
    mask_b = mask.bool()
    if int(mask_b.sum(-1).min()) == 0:
        raise InputError(f"row {int(mask_b.sum(-1).argmin())} of these inputs has no real token (all padding).")
    if bool(mask_b[:, -1].all()):
        side: PaddingSide = "left"
    elif bool(mask_b[:, 0].all()):
        side = "right"
    else:
        raise InputError(
            "these inputs are padded on both sides (no column of real tokens at either end); pad on one side "
            "(tokenizer.padding_side = 'left' or 'right')."
        )
    pad_runs = (mask_b[:, 1:].int() - mask_b[:, :-1].int()).abs().sum(-1)
    if int(pad_runs.max()) > 1:
        raise InputError("the attention mask has holes (padding between real tokens); savlens needs one padded end.")
    n = int(ids.shape[0])
    row_ids = [str(i) for i in range(n)] if example_ids is None else [str(i) for i in example_ids]
    if len(row_ids) != n or len(set(row_ids)) != n:
        raise InputError(
            f"example_ids must be {n} unique ids, one per row; got {len(row_ids)} ({len(set(row_ids))} unique)."
        )
    row_labels: list[Hashable | None] = [None] * n if labels is None else list(labels)
    if len(row_labels) != n:
        raise InputError(f"labels must have one entry per row ({n}); got {len(row_labels)}.")
    enc = model.forward_inputs(enc)
    video_mask = model.video_token_mask(enc)
    image_mask = model.image_token_mask(ids) & ~video_mask
    has_images = bool(image_mask.any() or video_mask.any())
    if has_images and not model.multimodal:
        raise InputError(f"these inputs hold image tokens but {model.family} model {model.model_id!r} is text-only.")
    if "position_ids" not in enc:
        model.add_position_inputs(enc, has_images=has_images)
    max_ctx = model.max_context
    if max_ctx is not None and int(mask.sum(-1).max()) > max_ctx:
        raise InputError(f"a row is {int(mask.sum(-1).max())} tokens long, more than the model's context of {max_ctx}.")
    prompts = [
        str(model.tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=False)) for row, m in zip(ids, mask)
    ]
    return cls(
        inputs=enc,
        example_ids=row_ids,
        labels=row_labels,
        prompts=prompts,
        last_index=last_real_index(mask),
        image_mask=image_mask,
        fingerprint=model.fingerprint,
        padding_side=side,
        prompt_template=None,
        meta={"from_inputs": True},
        video_mask=video_mask if bool(video_mask.any()) else None,
    )


def _media_of(example: Example, images: Sequence[Any], videos: Sequence[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """The row's images and videos in prompt order: images then videos, or the order of the ``messages`` items."""
    items = [{"kind": "image", "index": i, "size": im.size, "frames": 1} for i, im in enumerate(images)]
    vids = [
        {"kind": "video", "index": j, "size": (int(f.shape[2]), int(f.shape[1])), "frames": int(f.shape[0])}
        for j, (f, _) in enumerate(videos)
    ]
    if example.messages is None:
        return items + vids
    order: list[str] = [
        str(c.get("type"))
        for m in example.messages
        if isinstance(m.get("content"), list)
        for c in m["content"]
        if isinstance(c, dict) and c.get("type") in ("image", "video")
    ]
    queues = {"image": iter(items), "video": iter(vids)}
    out = [next(queues[k], None) for k in order]
    rest = [x for x in items + vids if x not in out]
    return [x for x in out if x is not None] + rest


def _apply_template(template: str | None, example: Example, example_id: str) -> str:
    if template is None:
        return example.text
    try:
        return template.format(text=example.text, **example.meta)
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(
            f"prompt_template {template!r} cannot be filled for example {example_id!r} ({e!r}); it may use "
            "{text} and keys of Example.meta, and literal braces must be doubled ({{ }})."
        ) from None
