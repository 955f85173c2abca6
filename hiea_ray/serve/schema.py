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


# Blank = made of these only. One set for the schema's pattern and the server's check: JSON
# Schema's (ECMA), pydantic's (Rust) and Python's idea of \s differ beyond ASCII (\x85, \x1f, \ufeff).
BLANK = " \t\n\r\f\v"
NOT_BLANK = r"[^ \t\n\r\f\v]"

Int = Annotated[StrictInt, BeforeValidator(_integral), WithJsonSchema({"type": "integer"})]
MAX_K = 100_000  # a k above the run's serve.max_k answers max_k; above this it is refused as a mistake
PositiveInt = Annotated[StrictInt, BeforeValidator(_integral), Field(ge=1, le=MAX_K),
                        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_K})]


class RelationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relation: str = Field(min_length=1, max_length=500, description="relation name or URI")
    neighbour: Int | Annotated[str, Field(pattern=NOT_BLANK, max_length=500)] = Field(
        description="a KG1 entity id, or a name (not blank, at most 500 characters)")
    direction: Literal["out", "in"] = Field("out", description="out: entity -relation-> neighbour")

    @field_validator("neighbour")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, str) and not v.strip(BLANK):
            raise ValueError("must be a KG1 id or a non-empty name")
        return v.strip(BLANK) if isinstance(v, str) else v


class AttributeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(min_length=1, max_length=500)
    value: str = Field(max_length=2000)


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=500, pattern=NOT_BLANK, description="the entity's name (not blank)")
    relations: list[RelationIn] = Field(default_factory=list, max_length=1000)
    attributes: list[AttributeIn] = Field(default_factory=list, max_length=1000)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip(BLANK):
            raise ValueError("must not be empty")
        return v.strip(BLANK)


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


class QueryOut(BaseModel):
    id: int | None = Field(description="the KG1 id (null for a new entity)")
    name: str
    kg1_id: str | None = Field(None, description="the input's identifier of a run entity (IRI, Q-id)")


class MatchOut(BaseModel):
    id: int = Field(description="the KG2 id")
    name: str
    kg2_id: str | None = Field(None, description="the input's identifier (IRI, Q-id)")


class CandidateOut(BaseModel):
    id: int = Field(description="the KG2 id")
    name: str
    score: float = Field(description="the primary decoder's score")
    kg2_id: str | None = Field(None, description="the input's identifier (IRI, Q-id)")
    llm_prob: float | None = Field(None, description="the LLM's probability, for the candidates it saw")


class TimingsOut(BaseModel):
    retriever: float
    router: float
    llm: float
    total: float


class AlignResponse(BaseModel):
    """One query's answer: the ranked candidates, the match (null: abstained) and who answered."""

    query: QueryOut
    match: MatchOut | None
    abstained: bool
    tier: Literal["small", "llm"] = Field(description="the tier that answered")
    confidence: float | None = Field(description="the router's P(the small models are right); null without a router")
    certain: bool | None = Field(description="the router's verdict; null without a router")
    candidates: list[CandidateOut]
    llm_none_prob: float | None = Field(None, description="the LLM's probability of 'none of these'")
    timings_ms: TimingsOut


class BatchResponse(BaseModel):
    results: list[AlignResponse] = Field(description="one answer per query, in the order sent")


class EntityOut(BaseModel):
    id: int
    kg: int = Field(ge=1, le=2)
    kg_id: str = Field(description="the input's identifier (IRI, Q-id)")
    name: str
    text: str = Field(description="the entity's verbalized text, as the encoder saw it")


class HealthOut(BaseModel):
    status: Literal["ok"]
    run: str = Field(description="the run folder's name (not its path)")
    run_fingerprint: str = Field(description="the fingerprint of the served run's decode stage")
    protocol: str
    router: bool
    llm: bool
    decoders: list[str]
    k: int
    max_k: int


def error_responses(*codes: int) -> dict:
    """OpenAPI ``responses`` documenting these error statuses with the ErrorBody schema."""
    what = {400: "a body that is not JSON (unparsable, invalid UTF-8, nested too deep)",
            401: "missing or wrong bearer token", 404: "an id that is not an entity of the run",
            408: "the body did not arrive within serve.body_timeout_s",
            411: "no Content-Length", 413: "body over serve.max_body_bytes",
            422: "a field out of its bounds or of the wrong type (named in error.field)",
            500: "internal error (no traceback)", 503: "overloaded or restarting: retry with backoff (Retry-After)"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}
