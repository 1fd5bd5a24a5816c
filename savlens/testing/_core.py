"""What every tiny-model recipe shares: the word-level tokenizer, the text sizes and the recipe registry.

A recipe is a function ``n_layers -> Parts`` that returns an HF config (of the family's own config class),
the model class, the processor (the stock HF processor class for a VLM; the tokenizer for a text LM) and the
tokenizer. :func:`savlens.testing.tiny.build_tiny` turns it into a seeded model with peaked weights.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: ~200 common English words (lower case: the tokenizer lower-cases its input), then punctuation and digits.
WORD_TEXT = """
system user assistant you are a an the helpful is are was were be been it this that these those there here
what which who where when why how many much do does did can could will would should not no yes and or but
of in on at to from with without for by about into over under above below near behind between left right
top bottom front back middle up down color colour red green blue yellow black white orange purple pink
brown gray grey dark light bright image picture photo shown show see look describe answer question
word words short one two three four five six seven eight nine ten zero number count shape shapes circle square
triangle rectangle line dot object objects thing things background foreground big small large tiny
size same different more less most least than only all some any each other both text letter letters
animal animals cat cats dog dogs bird birds car tree sky sun water person people man woman house road
table chair book
please tell me my your its their i we they he she true false label class
"""
WORDS = WORD_TEXT.split()
PUNCT = list(".,?!:;'\"()[]-/")
DIGITS = list("0123456789")

#: A ChatML-style template; ``IMAGE_MARKUP`` is replaced by what one image item renders to.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE_MARKUP"
    "{% elif item['type'] == 'video' %}VIDEO_MARKUP"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chatml_template(image_markup: str, video_markup: str = "") -> str:
    """The ChatML template with ``image_markup`` for each image item (and ``video_markup`` per video)."""
    return CHATML_TEMPLATE.replace("IMAGE_MARKUP", image_markup).replace("VIDEO_MARKUP", video_markup)


def word_tokenizer(
    specials: Sequence[str],
    *,
    chat_template: str | None,
    eos: str = "<|im_end|>",
    pad: str = "<|endoftext|>",
    bos: str | None = None,
    extra_words: Sequence[str] = (),
    padding_side: str = "left",
    **kwargs: Any,
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: ``[UNK]`` is id 0, ``specials`` take ids 1..n, then the word list.

    Input is lower-cased and split on whitespace, punctuation and single digits; unknown words map to
    ``[UNK]``. ``bos`` (if given, it must be one of ``specials``) is prepended by a post-processor when
    ``add_special_tokens=True``, as Llama / Gemma tokenizers do. ``kwargs`` go to
    :class:`~transformers.PreTrainedTokenizerFast` (e.g. ``extra_special_tokens={"image_token": "<image>"}``,
    which some processors read as ``tokenizer.image_token``).
    """
    from tokenizers import processors

    vocab: dict[str, int] = {"[UNK]": 0}
    for tok in [*specials, *WORDS, *PUNCT, *DIGITS, *extra_words]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tk.add_special_tokens(list(specials))
    if bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        padding_side=padding_side,
        chat_template=chat_template,
        **kwargs,
    )


def text_sizes(tok: PreTrainedTokenizerFast, n_layers: int) -> dict[str, Any]:
    """The language model's config fields shared by every tiny model: hidden 64, MLP 128, 4 query heads over
    2 KV heads (GQA) of 16 dims, ``n_layers`` layers, the vocabulary rounded up to a multiple of 16."""
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        vocab_size=-(-len(tok) // 16) * 16,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )


ROPE: Any = MappingProxyType({"rope_type": "default", "rope_theta": 10000.0})
"""Default rotary parameters, read-only: configs get a copy (``dict(ROPE)``), since some (Phi-3) add keys to the
dict they are given, which would change every later model built from a shared one."""


class Parts(NamedTuple):
    """What a recipe returns: config, model class, processor (the tokenizer for a text LM), tokenizer."""

    config: Any
    model_cls: type
    processor: Any
    tokenizer: PreTrainedTokenizerFast


@dataclass(frozen=True)
class Recipe:
    """How to build one family's tiny model.

    Attributes:
        family: the family name (the HF ``model_type``, e.g. ``"gemma3"``).
        build: ``n_layers -> Parts``.
        vlm: a vision-language model (False: a text LM).
        text_only_rows: the model accepts a text-only row in a batch with images.
        image_sizes: ``(width, height)`` of the test images; two different sizes where the family allows it.
        peaked_std: std of the re-drawn >= 2-D weights (None: keep HF's init).
        notes: what is special about the family's inputs (shown in the coverage table).
        hybrid: the decoder layers are not all softmax attention (linear attention, convolution,
            cross-attention), or their head sizes differ by layer.
    """

    family: str
    build: Callable[[int], Parts]
    vlm: bool = True
    text_only_rows: bool = True
    image_sizes: tuple[tuple[int, int], ...] = ((64, 64), (48, 100))
    peaked_std: float | None = 0.15
    notes: str = ""
    hybrid: bool = False


RECIPES: dict[str, Recipe] = {}


def recipe(family: str, **kw: Any) -> Callable[[Callable[[int], Parts]], Callable[[int], Parts]]:
    """Register the decorated ``n_layers -> Parts`` function as the recipe of ``family``."""

    def deco(fn: Callable[[int], Parts]) -> Callable[[int], Parts]:
        if family in RECIPES:
            raise ValueError(f"a tiny recipe for {family!r} exists already")
        RECIPES[family] = Recipe(family, fn, **kw)
        return fn

    return deco
