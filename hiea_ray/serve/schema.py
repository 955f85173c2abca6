"""The HTTP API's request bodies (pydantic: FastAPI turns a violation into a 422 naming the field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator


class RelationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relation: str = Field(min_length=1, max_length=500, description="relation name or URI")
    neighbour: StrictInt | str = Field(description="a KG1 entity id, or a name")
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

    name: str = Field(max_length=500)
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

    model_config = ConfigDict(extra="forbid")

    id: StrictInt | None = Field(None, description="a KG1 entity id of the run")
    entity: EntityIn | None = None
    k: StrictInt | None = Field(None, description="candidates to return (default serve.k, at most serve.max_k)")
    tier: Literal["auto", "small", "llm"] = Field("auto", description="auto: the router decides")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.id is None) == (self.entity is None):
            raise ValueError("give exactly one of id or entity")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[AlignRequest] = Field(min_length=1)
