"""Config: defaults, YAML, --set overrides and coercion, errors naming the field, section hashes."""

from __future__ import annotations

import pytest

from hiea_ray.config import Config, VerbalizeConfig, load_config, parse_overrides, section_hash
from hiea_ray.errors import UserError


def test_defaults_validate():
    cfg = Config().validate()
    assert cfg.decode.csls_k <= cfg.retrieve.k
    assert load_config().to_dict() == Config().to_dict()


def test_yaml_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "data:\n  format: dbp15k\n  names: uri\nembed:\n  batch_size: 16\n  name_weight: 0.25\n"
        "decode:\n  decoders: [top1, csls]\n  match_threshold: 0.3\nretrieve:\n  index: hnsw\n"
    )
    cfg = load_config(p)
    assert cfg.data.format == "dbp15k" and cfg.data.names == "uri"
    assert cfg.embed.batch_size == 16 and cfg.embed.name_weight == 0.25
    assert cfg.decode.decoders == ["top1", "csls"] and cfg.decode.match_threshold == 0.3
    assert cfg.retrieve.index == "hnsw"
    assert cfg.verbalize == VerbalizeConfig()  # untouched sections keep their defaults


def test_empty_yaml_is_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p).to_dict() == Config().to_dict()


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus:\n  x: 1\n", "bogus"),
        ("embed:\n  bogus: 1\n", "embed.bogus"),
        ("decode:\n  csls_k: 5\n  sinkhorn_temp: 0.1\n", "decode.sinkhorn_temp"),
    ],
)
def test_unknown_yaml_key_is_named(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert key in msg and "unknown config key" in msg
    assert str(p) in msg


@pytest.mark.parametrize("item, key", [("embed.bogus=1", "embed.bogus"), ("nosection.x=1", "nosection")])
def test_unknown_override_key_is_named(item, key):
    with pytest.raises(UserError, match="unknown config key") as e:
        load_config(overrides=[item])
    assert key in str(e.value)


def test_overrides_coerce_types():
    cfg = load_config(
        overrides=[
            "retrieve.k=20",
            "retrieve.ivf_nprobe=8.0",  # an integral float is a valid int
            "embed.name_weight=1",  # int -> float
            "data.valid_fraction=0.25",
            "verbalize.include_relations=false",
            "verbalize.include_incoming=no",
            "data.skip_bad_lines=true",
            "decode.decoders=[top1, sinkhorn]",
            "evaluate.hits_at=1,3",
            "decode.match_threshold=0.4",
            "ray.num_cpus=null",
            "ray.address=none",
            "embed.model=123",  # a str field keeps a numeric-looking value as text
        ]
    )
    assert cfg.retrieve.k == 20 and isinstance(cfg.retrieve.k, int)
    assert cfg.retrieve.ivf_nprobe == 8 and isinstance(cfg.retrieve.ivf_nprobe, int)
    assert cfg.embed.name_weight == 1.0 and isinstance(cfg.embed.name_weight, float)
    assert cfg.data.valid_fraction == 0.25
    assert cfg.verbalize.include_relations is False and cfg.verbalize.include_incoming is False
    assert cfg.data.skip_bad_lines is True
    assert cfg.decode.decoders == ["top1", "sinkhorn"]
    assert cfg.evaluate.hits_at == [1, 3]
    assert cfg.decode.match_threshold == 0.4
    assert cfg.ray.num_cpus is None and cfg.ray.address is None
    assert cfg.embed.model == "123"


def test_override_null_resets_optional(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  match_threshold: 0.5\n")
    assert load_config(p).decode.match_threshold == 0.5
    assert load_config(p, ["decode.match_threshold=null"]).decode.match_threshold is None


def test_overrides_win_over_yaml_and_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("retrieve:\n  k: 30\n  index: ivf\n")
    cfg = load_config(p, ["retrieve.k=7", "decode.csls_k=5"])
    assert cfg.retrieve.k == 7 and cfg.retrieve.index == "ivf" and cfg.decode.csls_k == 5


@pytest.mark.parametrize(
    "item, field",
    [
        ("retrieve.k=abc", "retrieve.k"),
        ("retrieve.k=2.5", "retrieve.k"),
        ("retrieve.k=true", "retrieve.k"),
        ("decode.decoders=[foo]", "decode.decoders"),
        ("decode.decoders=[top1, nope]", "decode.decoders"),
        ("evaluate.hits_at=[1, x]", "evaluate.hits_at[1]"),
        ("embed.name_weight=abc", "embed.name_weight"),
        ("embed.name_weight=1.5", "embed.name_weight"),
        ("verbalize.include_relations=maybe", "verbalize.include_relations"),
        ("data.format=csv", "data.format"),
        ("retrieve.index=lsh", "retrieve.index"),
        ("data.valid_fraction=1.0", "data.valid_fraction"),
        ("decode.match_threshold=high", "decode.match_threshold"),
        ("decode.csls_k=100", "decode.csls_k"),
        ("embed=3", "embed"),
        ("llm.fusion=often", "llm.fusion"),
        ("llm.fusion=1.5", "llm.fusion"),
        ("llm.readout=words", "llm.readout"),
        ("llm.validation=test", "llm.validation"),
        ("llm.routed_valid_fraction=1.5", "llm.routed_valid_fraction"),
        ("llm.train_on=test", "llm.train_on"),
        ("llm.keep_by=loss", "llm.keep_by"),
        ("llm.cpu_amp=maybe", "llm.cpu_amp"),
    ],
)
def test_bad_value_names_the_field(item, field):
    with pytest.raises(UserError) as e:
        load_config(overrides=[item])
    assert field in str(e.value)


@pytest.mark.parametrize("items, says", [
    (["decode.engine=ray", "decode.matcher=hungarian"], "decode.engine: ray matches greedily"),
    (["decode.engine=ray", "rerank.enabled=true"], "decode.engine: ray does not fuse"),
    (["decode.engine=ray", "ray.offload=[decode]"], "ray.offload: decode.engine ray"),
    (["retrieve.engine=ray", "ray.offload=[retrieve]"], "ray.offload: retrieve.engine ray"),
])
def test_the_ray_engines_refuse_what_they_do_not_do(items, says):
    with pytest.raises(UserError, match=says):
        load_config(overrides=items)
    load_config(overrides=items[:1])  # the engine alone is fine


def test_llm_examples_from_labelled_sources_need_routed_validation():
    with pytest.raises(UserError, match="llm.train_on: 'labelled' needs llm.validation: routed"):
        load_config(overrides=["llm.train_on=labelled", "llm.validation=links"])
    assert load_config(overrides=["llm.train_on=both"]).llm.train_on == "both"


def test_bad_value_in_yaml_names_file_and_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("retrieve:\n  k: many\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "retrieve.k" in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["retrieve.k"])
    with pytest.raises(UserError, match="not a section"):
        parse_overrides(["a=1", "a.b=2"])
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("data:\n  format: dbp15k\nretrieve:\n  k: [1, 2\n  index: flat\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert "broken.yaml:" in msg and "not valid YAML" in msg
    line = int(msg.split("broken.yaml:")[1].split(":")[0])
    assert 4 <= line <= 6  # the unclosed list starts on line 4; the parser notices by line 5/6


def test_missing_and_non_mapping_config(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)


def test_section_hash_changes_only_with_its_sections():
    base = load_config()
    h_embed = section_hash(base, "embed")
    h_decode = section_hash(base, "decode")
    assert h_embed == section_hash(load_config(), "embed")  # stable
    other_decode = load_config(overrides=["decode.csls_k=5"])
    assert section_hash(other_decode, "embed") == h_embed
    assert section_hash(other_decode, "decode") != h_decode
    other_embed = load_config(overrides=["embed.batch_size=7"])
    assert section_hash(other_embed, "embed") != h_embed
    assert section_hash(other_embed, "decode") == h_decode
    assert section_hash(other_embed, "decode", "embed") != section_hash(base, "decode", "embed")
    # extra payload is part of the key
    assert section_hash(base, "embed", extra={"a": 1}) != section_hash(base, "embed", extra={"a": 2})
    assert section_hash(base, "embed", extra={"a": 1}) != h_embed


def test_llm_fusion_is_a_weight_or_auto_and_stays_out_of_the_training_keys():
    assert load_config(overrides=["llm.fusion=auto"]).llm.fusion == "auto"
    assert load_config(overrides=["llm.fusion=0.25"]).llm.fusion == 0.25
    a, b = load_config(overrides=["llm.fusion=0.25"]), load_config(overrides=["llm.fusion=auto"])
    assert section_hash(a, "llm") == section_hash(b, "llm")  # llm_train / llm keys: trying a weight re-trains nothing
    assert section_hash(a, "llm.fusion") != section_hash(b, "llm.fusion")  # the evaluate stage's key sees it
    # fields added later keep earlier runs' keys at their defaults
    assert section_hash(load_config(overrides=["llm.cpu_amp=false"]), "llm") == section_hash(Config(), "llm")
    assert section_hash(load_config(overrides=["llm.cpu_amp=true"]), "llm") != section_hash(Config(), "llm")


@pytest.mark.parametrize("quiet, log_to_driver, forwarded", [(False, False, False), (False, True, True),
                                                             (True, True, False)])
def test_ray_worker_output_stays_in_rays_logs_unless_asked(quiet, log_to_driver, forwarded):
    """A run's terminal shows its stages, not the Ray workers' stdout/stderr (Ray Train's placement
    group cleaner alone printed thousands of lines in an LLM training): Ray starts with
    log_to_driver off unless ray.log_to_driver is set (and never with -q)."""
    from hiea_ray.ops.data import ray_init_kwargs

    cfg = load_config(overrides=[f"ray.log_to_driver={str(log_to_driver).lower()}", "ray.num_cpus=1"])
    kw = ray_init_kwargs(cfg, quiet, None)
    assert kw["log_to_driver"] is forwarded and kw["address"] == "local" and kw["num_cpus"] == 1
    assert ("logging_level" in kw) is quiet


@pytest.mark.parametrize("address, env, want", [("ray://head:10001", None, "ray://head:10001"),
                                                (None, "http://head:8265", None), (None, None, "local")])
def test_init_ray_joins_the_configured_cluster(address, env, want):
    """ray.address is joined; else $RAY_ADDRESS (set inside `ray job submit`) by ray.init() itself;
    else a new local instance, never one found on this machine."""
    from hiea_ray.ops.data import ray_init_kwargs

    cfg = load_config(overrides=[] if address is None else [f"ray.address={address}"])
    assert ray_init_kwargs(cfg, False, env).get("address") == want
