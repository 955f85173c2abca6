"""The HTTP API's request bodies (pydantic: FastAPI turns a violation into a 422 naming the field)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, WithJsonSchema, field_validator, model_validator,
)


def _integral(v):
    """JSON has one number type: 5.0 is the integer 5 (as JSON Schema's "integer" says); 5.5 stays
    a float and is refused; strings and booleans are refused. A float that reads as 0 (0.0, or
    1e-400, which the JSON parser rounds to 0) is refused too: write 0 as 0."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) >= 1 else v


Int = Annotated[StrictInt, BeforeValidator(_integral), WithJsonSchema({"type": "integer"})]
MAX_K = 100_000  # a k above the run's serve.max_k answers max_k; above this it is refused as a mistake
PositiveInt = Annotated[StrictInt, BeforeValidator(_integral), Field(ge=1, le=MAX_K),
                        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_K})]


class RelationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relation: str = Field(min_length=1, max_length=500, description="relation name or URI")
    neighbour: Int | Annotated[str, Field(pattern=r"\S", max_length=500)] = Field(
        description="a KG1 entity id, or a name (not blank, at most 500 characters)")
    direction: Literal["out", "in"] = Field("out", description="out: entity -relation-> neighbour")

    @field_validator("neighbour")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("must be a KG1 id or a non-empty name")
        return v.strip() if isinstance(v, str) else v


class AttributeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(min_length=1, max_length=500)
    value: str = Field(max_length=2000)


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=500, pattern=r"\S", description="the entity's name (not blank)")
    relations: list[RelationIn] = Field(default_factory=list, max_length=1000)
    attributes: list[AttributeIn] = Field(default_factory=list, max_length=1000)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()


class AlignRequest(BaseModel):
    """One entity to align: a KG1 id of the served run, or a new entity by its facts."""

    # exactly one of id / entity (checked by _one_of; said in the schema for clients and fuzzers)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["id"], "properties": {"id": {"type": "integer"}}},
        {"required": ["entity"], "properties": {"entity": {"type": "object"}}}]})

    id: Int | None = Field(None, description="a KG1 entity id of the run")
    entity: EntityIn | None = None
    k: PositiveInt | None = Field(None, description="candidates to return (default serve.k; a larger k than the "
                                                          "run's serve.max_k, given by GET /healthz, returns max_k)")
    tier: Literal["auto", "small", "llm"] = Field("auto", description="auto: the router decides")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.id is None) == (self.entity is None):
            raise ValueError("give exactly one of id or entity")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[AlignRequest] = Field(min_length=1)


class ErrorField(BaseModel):
    field: str = Field(description="the request field at fault (dotted; '' when none)")
    message: str


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx / 5xx answer: one error naming the field; a 422 also lists every violation."""

    error: ErrorField
    detail: list[ValidationItem] | None = None


def error_responses(*codes: int) -> dict:
    """OpenAPI ``responses`` documenting these error statuses with the ErrorBody schema."""
    what = {401: "missing or wrong bearer token", 404: "an id that is not an entity of the run",
            411: "no Content-Length", 413: "body over serve.max_body_bytes",
            422: "a field out of its bounds or of the wrong type (named in error.field)",
            500: "internal error (no traceback)", 503: "overloaded or restarting: retry with backoff (Retry-After)"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}
