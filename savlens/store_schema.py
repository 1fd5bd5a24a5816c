"""The typed schema of a feature store's manifest and shard records (pydantic, strict types).

Only the fields savlens reads are checked; other fields are kept as they are. :func:`manifest_problem` and
:func:`shard_problem` return what is wrong as one short phrase (None when the record is valid), which the store
puts into its :class:`~savlens.errors.StoreError`.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, StrictInt, StrictStr, ValidationError, model_validator


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ShardRecord(_Record):
    """One shard: its file (inside the store folder), example ids, labels and the file's SHA-256."""

    file: StrictStr
    ids: list[StrictStr]
    labels: list[Any]
    sha256: StrictStr


class Manifest(_Record):
    """A store's manifest: what the features are (model, hook, layers), the logits kept, and for version 1
    the shard records themselves (version 2 keeps them in ``index.jsonl``)."""

    version: Literal[1, 2]
    model_id: StrictStr
    hook: StrictStr
    layers: list[StrictInt]
    shards: list[ShardRecord] | None = None
    logits: Literal["last"] | None = None
    logit_tokens: Literal["all"] | list[NonNegativeInt] | None = None
    order: list[StrictStr] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if self.version == 1 and self.shards is None:
            raise ValueError("'shards' is missing (a version-1 manifest lists its shards)")
        if self.logits == "last" and (self.logit_tokens is None or self.logit_tokens == []):
            raise ValueError("'logit_tokens' must be \"all\" or a list of token ids when 'logits' is \"last\"")
        return self


def _phrase(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{prefix}{where + ': ' if where else ''}{msg}"


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (None when they have the types savlens writes)."""
    try:
        Manifest.model_validate(manifest)
    except ValidationError as e:
        return _phrase(e)
    return None


def shard_problem(shard: dict[str, Any], k: int) -> str | None:
    """What is wrong with shard record ``k`` (None when valid)."""
    try:
        ShardRecord.model_validate(shard)
    except ValidationError as e:
        return _phrase(e, f"shard {k}: ")
    return None
