"""Request and response bodies of the v1 API (the OpenAPI schema shown in /docs is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator

EXAMPLES: list[Any] = [
    {"texts": ["送餐很快，味道不错，下次还点", "等了两个小时，饭都凉了，差评"]},
    {"text": "人工客服", "top_k": 2},
    {"texts": ["菜品分量太少了，而且还洒了一半"], "truncate": True},
]


# Exactly one of `text` / `texts`, said in the schema too, so clients and fuzzers generate only valid bodies.
ONE_OF_TEXT_OR_TEXTS: list[Any] = [{"required": ["text"]}, {"required": ["texts"]}]


def _texts_schema(max_texts: int | None = None) -> WithJsonSchema:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    if max_texts is not None:
        schema["maxItems"] = max_texts
    return WithJsonSchema(schema | {"description": "Several texts, classified independently, answered in order."})


class ClassifyRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": EXAMPLES, "oneOf": ONE_OF_TEXT_OR_TEXTS})

    # None means absent; the schema shows only the present forms (a string, a non-empty array).
    text: Annotated[str | None, WithJsonSchema({"type": "string", "description": "One text."})] = None
    texts: Annotated[list[str] | None, _texts_schema()] = None
    top_k: int = Field(1, ge=1, description="How many labels with scores to return per text, best first.")
    truncate: bool = Field(
        False, description="Cut texts longer than the character cap instead of rejecting them (flagged `truncated`)."
    )

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> ClassifyRequestBase:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def classify_request_model(max_texts: int, num_labels: int) -> type[ClassifyRequestBase]:
    """The request model with this deployment's limits, so the schema carries the real bounds."""
    model: type[ClassifyRequestBase] = create_model(
        "ClassifyRequest",
        __base__=ClassifyRequestBase,
        texts=(
            Annotated[list[str] | None, _texts_schema(max_texts)],
            Field(None, min_length=1, max_length=max_texts),
        ),
        top_k=(int, Field(1, ge=1, le=num_labels, description="How many labels with scores per text.")),
    )
    return model


class LabelScore(BaseModel):
    label: str = Field(examples=["negative"])
    score: float = Field(ge=0, le=1, examples=[0.93])


class Prediction(BaseModel):
    label: str = Field(description="The most likely label.", examples=["negative"])
    score: float = Field(ge=0, le=1, description="Its probability (softmax of the logits).", examples=[0.93])
    top_k: list[LabelScore] = Field(description="The `top_k` best labels with their probabilities.")
    truncated: bool = Field(description="The text was cut (character cap with truncate=true, or max_seq_len).")
    low_confidence: bool = Field(description="score is below the service's low-confidence threshold.")


class ModelInfo(BaseModel):
    id: str = Field(description="The model's name in this service: POST /v1/models/{id}/classify.")
    variant: str = Field(description="The version that answered: `stable`, or `canary` for a share of callers.")
    name: str = Field(description="The artifact's name (its manifest).")
    version: str = Field(description="The artifact's version (its manifest).")
    manifest_sha256: str = Field(description="sha256 of the artifact's manifest.json (what a pin names).")
    backend: str = Field(examples=["onnxruntime"])
    precision: str = Field(examples=["int8"])


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelInfo


class ErrorBody(BaseModel):
    type: str = Field(examples=["validation_error"])
    message: str
    hint: str = ""
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class VersionInfo(BaseModel):
    variant: str = Field(description="stable or canary.")
    share_percent: float = Field(description="Share of callers this version answers (sticky per caller).")
    ready: bool
    name: str = ""
    version: str = ""
    manifest_sha256: str = ""
    format: str = ""
    labels: list[str] = []
    max_seq_len: int = 0


class ServedModelInfo(BaseModel):
    id: str
    default: bool = Field(description="POST /v1/classify goes to this model.")
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    """The default model's stable version at the top level (as with one model), then every model and version."""

    generation: int = Field(
        description="Which set of models is serving: each successful reload makes a new generation; a rollback "
        "returns to the previous one's."
    )
    models: list[ServedModelInfo]
    name: str
    version: str
    manifest_sha256: str = Field(
        description="sha256 of the served manifest.json: pin it with ERNIE_CLS_ARTIFACT_SHA256."
    )
    labels: list[str]
    max_seq_len: int
    serving: ModelInfo
    formats: dict[str, Any]
    metrics: dict[str, Any]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "送餐很快，味道不错"}]})

    text: str = Field(description="One text (at most ERNIE_CLS_MAX_EXPLAIN_CHARS characters).")


class PieceAttribution(BaseModel):
    piece: str = Field(description="A word piece; for Chinese, one character.")
    start: int = Field(description="Its first character in `text`.")
    end: int = Field(description="One past its last character in `text`.")
    attribution: float = Field(
        description="How much the predicted label's logit margin drops when this piece is hidden ([UNK]): "
        "positive pieces support the label, negative ones speak against it."
    )


class ExplainResponse(BaseModel):
    text: str = Field(description="The text as the model reads it (normalised, lower-cased): `start`/`end` index it.")
    label: str
    score: float
    top_k: list[LabelScore]
    low_confidence: bool
    truncated: bool
    pieces: list[PieceAttribution]
    model: ModelInfo
