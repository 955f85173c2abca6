"""The Serve tier on a tiny finished HIEA run: the engine decodes, routes and scores a run entity
exactly as the run did, and a new entity equal to a run entity as that entity; the decoder state is
rebuilt when the run changes; the Ray Serve app over HTTP on loopback answers the same, rejects bad
requests with a 4xx naming the field, and loses no request when replicas are killed under load."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_conftest_helpers import e2e_run, hiea_run_shared

from hiea_ray.core.hiea import small_probs
from hiea_ray.errors import UserError
from hiea_ray.io import column_to_numpy, read_dir, read_lists

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served_run(ray_shared, synthetic_dir, tiny_encoder_dir, tiny_llm_dir, tmp_path_factory):
    e2e = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    h = hiea_run_shared(tmp_path_factory, e2e, tiny_llm_dir)
    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(h["run"], run)
    return run


def _offline(run):
    route = pq.read_table(run / "route" / "standard" / "route.parquet").to_pydict()
    q, cand, score = read_lists(run / "decode" / "standard" / "structure.parquet")
    parts = read_dir(run / "llm" / "standard" / "parts").sort_by("src")
    prompts = pq.read_table(run / "llm" / "standard" / "prompts.parquet").sort_by("src")
    return route, q, cand, score, parts, prompts


def test_engine_answers_a_run_entity_exactly_as_the_run(served_run):
    from hiea_ray.serve.engine import LLMTier, RouterTier, ServeRun, SmallTier

    ctx = ServeRun(served_run)
    assert ctx.protocol == "standard" and ctx.has_router and ctx.has_llm
    small, router = SmallTier(ctx), RouterTier(ctx)
    route, q, cand, score, parts, prompts = _offline(served_run)
    rows = small([{"id": int(s)} for s in q])
    ids = np.stack([r["ids"] for r in rows])
    got = np.stack([r["scores"] for r in rows])
    # the structure decoder's list of every source, re-encoded and decoded online
    assert (ids == cand).mean() > 0.99  # near-ties may swap under a re-encoded vector's float noise
    assert np.allclose(got[ids == cand], score[ids == cand], atol=1e-4)
    prob, certain = router(np.stack([r["features"] for r in rows]), rows[0]["feature_names"])
    assert np.allclose(prob, route["prob"], atol=1e-3)
    assert (certain == np.asarray(route["certain"])).mean() > 0.99
    assert [r["best"] for r in rows] == route["answer"]
    # the LLM tier: the routed sources' prompts and distributions are the llm stage's
    llm = LLMTier(ctx)
    routed = parts["src"].to_numpy()
    by_src = {int(r["entity"].id): r for r in rows}
    ps = [llm.prompt(by_src[int(s)]["entity"], by_src[int(s)]["vector"], by_src[int(s)]["ids"]) for s in routed]
    assert [p["text"] for p in ps] == prompts["text"].to_pylist()
    assert np.array_equal(np.stack([p["options"] for p in ps]), column_to_numpy(prompts["options"]))
    logp = llm.score(ps)
    assert np.allclose(np.exp(logp), np.exp(column_to_numpy(parts["logp"])), atol=1e-3)


def test_served_all_targets_lists_keep_the_seed_links_as_facts_and_the_structural_channel(
        ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    """A run decoded on all-targets with the seed links as facts and structural candidates: the
    service answers a run entity with the decode stage's own list (a seed source: its seed target
    alone), and never offers a seed target to a new entity."""
    from hiea_ray.config import load_config
    from hiea_ray.pipeline import Pipeline
    from hiea_ray.serve.engine import ServeRun, SmallTier
    from ray_conftest_helpers import copy_stages, tiny_overrides

    e2e = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    run = copy_stages(e2e["run"], tmp_path_factory.mktemp("facts") / "run", ["ingest", "verbalize", "embed"])
    sets = ["retrieve.structural_k=5", "evaluate.protocols=[all-targets]"]
    Pipeline(load_config(overrides=tiny_overrides(e2e["model"], *sets)), e2e["data"], run).run_all()
    ctx = ServeRun(run, sets)
    small = SmallTier(ctx)
    q, cand, _ = read_lists(run / "decode" / "all-targets" / f"{small.state.primary}.parquet")
    links = pq.read_table(run / "ingest" / "links.parquet").to_pandas()
    seeds = links[links["split"].isin(["train", "valid"])]
    given = dict(zip(seeds["src"], seeds["tgt"]))
    pick = [int(x) for x in q[:: max(1, len(q) // 40)]] + [int(x) for x in list(given)[:10]]
    rows = small([{"id": s} for s in pick])
    for s, r in zip(pick, rows):
        assert np.array_equal(r["ids"], cand[int(np.searchsorted(q, s))]), s
        if s in given:
            assert r["ids"][0] == given[s] and (r["ids"][1:] == -1).all()
    new = small([{"entity": {"name": "a new entity"}}])[0]
    assert not np.isin(new["ids"], list(given.values())).any()


def test_a_new_entity_is_verbalized_and_decoded_like_a_run_entity(served_run):
    from hiea_ray.serve.engine import ServeRun, SmallTier

    ctx = ServeRun(served_run)
    small = SmallTier(ctx)
    pair = ctx.pair()
    q, cand, _ = read_lists(served_run / "decode" / "standard" / "top1.parquet")
    # a source whose reverse edges a copy of it gets from its similarities alone (not the last entry
    # of any target's list, which a copy ties and does not enter): then its lists are the solve's
    st, B = small.state, small.B
    ids, _, vecs = ctx.embeddings()

    def copy_enters_its_lists(r):
        sims = B @ vecs[np.searchsorted(ids, q[r])]
        clear = not np.any(np.abs(sims - st.t2s_last) < 1e-4)  # re-encoding noise cannot flip an edge
        return clear and set(np.flatnonzero(sims > st.t2s_last).tolist()) == set(st.rev_of[r][0].tolist())

    row = next(r for r in range(len(q)) if copy_enters_its_lists(r))
    s = int(q[row])
    rel = pair.rel_triples.to_pydict()
    att = pair.attr_triples.to_pydict()
    entity = {"name": small.kg1.name(s),
              "relations": [{"relation": r, "neighbour": t, "direction": "out"}
                            for h, r, t in zip(rel["head"], rel["relation"], rel["tail"]) if h == s]
              + [{"relation": r, "neighbour": h, "direction": "in"}
                 for h, r, t in zip(rel["head"], rel["relation"], rel["tail"]) if t == s],
              "attributes": [{"attribute": a, "value": v} for e, a, v in zip(att["entity"], att["attribute"], att["value"]) if e == s]}
    new, known = small([{"entity": entity}, {"id": s}])
    assert new["entity"].text == known["entity"].text  # the same facts verbalize to the same text
    assert np.array_equal(np.sort(new["entity"].neighbours), np.sort(known["entity"].neighbours))
    assert np.allclose(new["vector"], known["vector"], atol=1e-5)
    # decoded from its similarities and neighbours alone, it gets the solve's lists and features; the
    # mutual-best feature only where the source is not itself its target's best source (a copy ties it)
    assert new["best"] == known["best"] >= 0 and np.array_equal(new["ids"], known["ids"])
    assert np.allclose(new["scores"], known["scores"], atol=1e-4)
    names = known["feature_names"]
    assert new["feature_names"] == names
    m = names.index("mutual_best")
    others = np.arange(len(names)) != m
    assert np.allclose(new["features"][others], known["features"][others], atol=1e-4, equal_nan=True)
    own_best = st.t2s_top[np.flatnonzero(small.b == known["best"])[0]] == row
    assert new["features"][m] == (0.0 if own_best else known["features"][m])


def test_the_decoder_state_is_rebuilt_when_the_run_changes(ray_shared, synthetic_dir, tiny_encoder_dir,
                                                         tmp_path_factory, caplog):
    """serve/<protocol>/decoder_state.pkl is built once, loaded while the run is the same, rebuilt
    (with the new decode) when the run's decode changed, and rebuilt when the file was replaced."""
    import logging
    import pickle

    from ray_conftest_helpers import tiny_overrides

    from hiea_ray.config import load_config
    from hiea_ray.pipeline import Pipeline
    from hiea_ray.serve.engine import ServeRun, decoder_state

    e2e = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    run = tmp_path_factory.mktemp("state") / "run"
    shutil.copytree(e2e["run"], run)
    caplog.set_level(logging.INFO, logger="hiea_ray")

    def state():
        caplog.clear()
        st = decoder_state(ServeRun(run))
        built = any("decoder state of" in r.getMessage() for r in caplog.records)
        warned = any("rebuilding" in r.getMessage() for r in caplog.records)
        return st, built, warned

    first, built, _ = state()
    path = run / "serve" / ServeRun(run).protocol / "decoder_state.pkl"
    assert built and path.is_file()
    data = path.read_bytes()
    again, built, warned = state()
    assert not built and not warned and path.read_bytes() == data
    assert np.array_equal(again.v_sink, first.v_sink)
    # the run changes: its decode re-runs with another Sinkhorn temperature
    tau = first.tau * 2
    Pipeline(load_config(overrides=tiny_overrides(e2e["model"], f"decode.sinkhorn_tau={tau}")), e2e["data"], run).run_all()
    changed, built, warned = state()
    assert built and warned and changed.tau == tau and not np.allclose(changed.v_sink, first.v_sink)
    # a file replaced on the volume (here: the old state) is not unpickled but rebuilt
    path.write_bytes(pickle.dumps(first, protocol=pickle.HIGHEST_PROTOCOL))
    again, built, warned = state()
    assert built and warned and again.tau == tau and np.array_equal(again.v_sink, changed.v_sink)


def test_serve_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    from hiea_ray.serve.engine import ServeRun

    with pytest.raises(UserError, match="config.resolved.json"):
        ServeRun(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(served_run):
    from ray import serve

    from hiea_ray.serve.app import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(served_run, ["serve.llm_batch_size=4", "serve.k=3", "serve.max_k=8", "serve.retriever_cpus=0.2",
                                     "serve.llm_cpus=0.2",
                                     "serve.max_body_bytes=20000", "serve.max_batch_queries=8", "serve.body_timeout_s=2"]),
              name="hiea", route_prefix="/")
    _PORT[0] = port
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


_PORT = [0]


@pytest.fixture(scope="module")
def demo_url(app_url, ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    """A run without router or LLM tier (the demo's kind), served beside the HIEA run as a second
    application under the route prefix /demo."""
    from ray import serve

    from hiea_ray.serve.app import build_app

    e2e = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    run = tmp_path_factory.mktemp("served-demo") / "run"
    shutil.copytree(e2e["run"], run)
    serve.run(build_app(run, ["serve.k=3", "serve.max_k=8", "serve.retriever_cpus=0.2", "serve.max_batch_queries=8"]),
              name="demo", route_prefix="/demo")
    yield f"{app_url}/demo"
    serve.delete("demo")


def _post(url, body, raw=None):
    import requests

    data = raw if raw is not None else json.dumps(body)
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=120)


def test_http_answers_equal_the_offline_run(app_url, served_run):
    import requests

    route, q, cand, score, parts, _ = _offline(served_run)
    fusion = json.loads((served_run / "llm_train" / "model" / "fusion.json").read_text())["fusion"]
    h = requests.get(f"{app_url}/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["llm"] and h["protocol"] == "standard"
    assert "/v1/align" in requests.get(f"{app_url}/openapi.json", timeout=30).json()["paths"]
    assert requests.get(f"{app_url}/docs", timeout=30).status_code == 200
    certain = np.asarray(route["certain"])
    # both tiers are exercised over HTTP: the run routes some sources to the LLM and keeps some
    assert certain.sum() >= 2 and (~certain).sum() >= 2, f"certain {certain.sum()} of {len(certain)}"
    picks = list(np.flatnonzero(certain)[:4]) + list(np.flatnonzero(~certain)[:4])
    llm_pick = dict(zip(parts["src"].to_pylist(), column_to_numpy(parts["logp"])))
    opts = dict(zip(parts["src"].to_pylist(), column_to_numpy(parts["options"])))
    for i in picks:
        s = int(route["src"][i])
        r = _post(f"{app_url}/v1/align", {"id": s})
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["tier"] == ("small" if certain[i] else "llm")
        assert b["confidence"] == pytest.approx(route["prob"][i], abs=1e-3)
        assert set(b["timings_ms"]) == {"retriever", "router", "llm", "total"}
        if certain[i]:
            assert [c["id"] for c in b["candidates"]] == [int(x) for x in cand[i, :3]]
            assert [c["score"] for c in b["candidates"]] == pytest.approx([float(x) for x in score[i, :3]], abs=1e-4)
            assert b["match"]["id"] == route["answer"][i]
        else:  # the run's merge for this source: the llm stage's distribution fused with the small
            # model's at the run's weight (llm.fusion: auto -> llm_train/model/fusion.json), or none
            p = np.exp(llm_pick[s])
            n = int((opts[s] >= 0).sum())
            small = small_probs(opts[s][None, :], cand[i][None, :], score[i][None, :])[0]
            fused = (1 - fusion) * p[:n] + fusion * small[:n]
            best = int(np.argmax(fused))
            want = int(opts[s][best]) if fused[best] > p[n] else None
            assert (b["match"] or {}).get("id") == want and b["abstained"] == (want is None)
            assert b["candidates"][0]["id"] in [int(x) for x in opts[s][:n]]
    batch = _post(f"{app_url}/v1/align/batch", {"queries": [{"id": int(route["src"][i])} for i in picks[:5]]})
    assert batch.status_code == 200 and len(batch.json()["results"]) == 5
    e = requests.get(f"{app_url}/v1/entities/1/{int(q[0])}", timeout=30).json()
    assert e["id"] == int(q[0]) and e["kg_id"]
    # the same entity by its input identifier (an IRI: slashes and all), and the answers carry identifiers
    assert requests.get(f"{app_url}/v1/entities/1/{e['kg_id']}", timeout=30).json()["id"] == int(q[0])
    assert requests.get(f"{app_url}/v1/entities/1/no:such-entity", timeout=30).status_code == 404
    uri = dict(zip(*(pq.read_table(served_run / "ingest" / "entities.parquet")[c].to_pylist() for c in ("id", "uri"))))
    b = _post(f"{app_url}/v1/align", {"id": int(q[0])}).json()
    assert b["query"]["kg1_id"] == uri[int(q[0])] and all(c["kg2_id"] == uri[c["id"]] for c in b["candidates"])
    # a new entity by name: answered by a tier, k respected
    b = _post(f"{app_url}/v1/align", {"entity": {"name": "some new entity", "relations": [
        {"relation": "r", "neighbour": int(q[1])}]}, "k": 5}).json()
    assert b["tier"] in ("small", "llm") and len(b["candidates"]) == 5 and b["query"]["id"] is None
    # a k above serve.max_k (8 here, as /healthz says) answers max_k candidates
    assert requests.get(f"{app_url}/healthz", timeout=30).json()["max_k"] == 8
    assert len(_post(f"{app_url}/v1/align", {"id": int(q[0]), "k": 1000}).json()["candidates"]) == 8


@pytest.mark.parametrize("body, raw, status, field", [
    ({}, None, 422, "body: exactly one of id or entity"),  # neither id nor entity
    ({"id": 1, "entity": {"name": "x"}}, None, 422, "body: exactly one of id or entity"),
    ({"id": "abc"}, None, 422, "id"),
    ({"id": 10**9}, None, 404, "id"),
    ({"entity": {"name": "   "}}, None, 422, "entity.name"),
    ({"entity": {"name": "x", "relations": [{"relation": "r"}]}}, None, 422, "entity.relations.0.neighbour"),
    ({"entity": {"name": "x", "relations": [{"relation": "r", "neighbour": 10**9}]}}, None, 404,
     "entity.relations.0.neighbour"),
    ({"id": 0, "k": 0}, None, 422, "k"),
    ({"id": 0, "k": -3}, None, 422, "k"),
    ({"id": 0, "tier": "gpt"}, None, 422, "tier"),
    ({"id": 0, "colour": "red"}, None, 422, "colour"),
    (None, "{not json", 400, "body: JSON"),
    (None, b"\xff\xfe{", 400, "body"),  # invalid UTF-8
    (None, "[" * 10000 + "]" * 10000, 400, "body"),  # nesting deeper than the parser takes
    (None, '{"id": ' + "1" * 4401 + "}", 400, "body"),  # an integer longer than Python's parser takes
    ({"id": 1.5}, None, 422, "id"),
    (None, "{\"id\": 1e-400}", 422, "id"),  # a float the parser rounds to 0 is not the id 0
    ({"id": 0, "k": 1e308}, None, 422, "k"),  # refused, not silently capped
    ({"entity": {"name": "x", "relations": [{"relation": "r", "neighbour": 1.5}]}}, None, 422,
     "entity.relations.0.neighbour"),  # a readable path, not pydantic's validator steps
    ({"entity": {"name": "x", "relations": [{"relation": "r", "neighbour": "n" * 501}]}}, None, 422,
     "entity.relations.0.neighbour"),
    ({"entity": {"name": "x" * 30000}}, None, 413, "body"),
])
def test_bad_requests_are_4xx_naming_the_field(app_url, served_run, body, raw, status, field):
    if body is not None and body.get("id") == 0:
        q, _, _ = read_lists(served_run / "decode" / "standard" / "top1.parquet")
        body = {**body, "id": int(q[0])}
    r = _post(f"{app_url}/v1/align", body, raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    # "FIELD" names the field exactly; "FIELD: TEXT" also a message holding TEXT ("*": any field)
    want, _, text = field.partition(": ")
    assert want == "*" or err["field"] == want, err
    assert err["message"] and text.lower() in err["message"].lower(), err
    assert "Traceback" not in r.text


def test_every_error_a_client_can_cause_has_the_one_error_shape(app_url):
    """Unknown routes, a method not allowed, an id that is a Unicode digit: {"error": {field,
    message}} with the right status, never FastAPI's {"detail": ...} nor a 500."""
    import requests

    for method, path, status in (("get", "/v1/entities/1/%C2%B2", 404), ("get", "/v1/entities/1/%E2%91%A0", 404),
                                 ("get", "/no/such/route", 404), ("get", "/v1/align", 405), ("delete", "/healthz", 405)):
        r = getattr(requests, method)(f"{app_url}{path}", timeout=30)
        assert r.status_code == status, (path, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]["message"], (path, r.text)
    assert "POST" in requests.get(f"{app_url}/v1/align", timeout=30).headers.get("allow", "")
    h = requests.get(f"{app_url}/healthz", timeout=30).json()
    assert "/" not in h["run"] and len(h["run_fingerprint"]) == 16  # a name and a fingerprint, no server path


def test_batch_over_the_limit_and_unknown_entities_are_4xx(app_url):
    import requests

    r = _post(f"{app_url}/v1/align/batch", {"queries": [{"id": 1}] * 9})
    assert r.status_code == 422 and r.json()["error"]["field"] == "queries"
    r = _post(f"{app_url}/v1/align/batch", {"queries": []})
    assert r.status_code == 422 and "queries" in r.json()["error"]["field"]
    assert requests.get(f"{app_url}/v1/entities/3/1", timeout=30).status_code == 422
    assert requests.get(f"{app_url}/v1/entities/1/999999999", timeout=30).status_code == 404


def test_replicas_killed_under_load_lose_no_request(app_url, served_run):
    import ray

    from hiea_ray.serve.load import run_load

    route, *_ = _offline(served_run)
    src = [int(s) for s in route["src"]]
    bodies = [{"id": src[i % len(src)]} for i in range(60)]
    expected = {}
    for b in bodies[:len(set(map(json.dumps, bodies)))]:
        expected[b["id"]] = _post(f"{app_url}/v1/align", b).json()

    def replicas(deployment):
        return [n for n in ray.util.list_named_actors(all_namespaces=True)
                if n["name"].startswith("SERVE_REPLICA") and f"#{deployment}#" in n["name"]]

    killed = []

    def kill(i):
        if i in (10, 30):
            name = "LLM" if i == 10 else "Retriever"
            for a in replicas(name):
                ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
                killed.append(name)

    res = run_load(f"{app_url}/v1/align", bodies, concurrency=4, max_seconds=240, on_start=kill)
    assert killed == ["LLM", "Retriever"]
    assert res["lost"] == 0 and res["not_sent"] == 0 and res["ok"] == len(bodies), {k: v for k, v in res.items() if k != "answers"}
    for b, a in zip(bodies, res["answers"]):
        e = expected[b["id"]]
        assert a["tier"] == e["tier"] and a["match"] == e["match"]
        assert [c["id"] for c in a["candidates"]] == [c["id"] for c in e["candidates"]]
    assert replicas("LLM") and replicas("Retriever")  # Serve replaced them


def test_overload_is_503_not_500_and_refused_without_waiting(app_url, served_run):
    """A second app with a tight LLM queue: a burst beyond it is refused with 503 (retryable),
    never a 500, and refused at once (the 503s come back faster than the answered requests take:
    they did not wait in a queue); the requests it takes are answered."""
    from ray import serve

    from hiea_ray.serve.app import build_app
    from hiea_ray.serve.load import run_load

    # beside the first app on 2 CPUs: small CPU shares (a replica waiting for CPUs never starts)
    serve.run(build_app(served_run, ["serve.llm_batch_size=1", "serve.max_ongoing_requests=1",
                                     "serve.max_queued_requests=1", "serve.retriever_cpus=0.2",
                                     "serve.llm_cpus=0.2"]), name="tight", route_prefix="/tight")
    try:
        route, *_ = _offline(served_run)
        src = [int(s) for s in route["src"]]
        bodies = [{"id": src[i % len(src)], "tier": "llm"} for i in range(24)]
        res = run_load(f"{app_url}/tight/v1/align", bodies, concurrency=12, max_seconds=120, retries=0)
        counts = res["status_counts"]
        assert set(counts) <= {"200", "503"}, counts
        assert counts.get("503", 0) > 0 and counts.get("200", 0) > 0, counts
        # every request got its answer, and a refusal is faster than an answer: not queued behind them
        by = res["p50_ms_by_status"]
        assert res["sent"] == len(bodies) and by["503"] < by["200"], by
    finally:
        serve.delete("tight")


def test_serve_command_refuses_bad_input_before_starting_ray(tmp_path, capsys):
    from hiea_ray.cli import main

    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "not a finished hiea-ray run" in capsys.readouterr().err



@pytest.mark.parametrize("which", ["hiea", "demo"])
def test_the_api_keeps_its_openapi_contract_under_every_schemathesis_check(which, request, tmp_path):
    """schemathesis as its users run it (``st run --checks all``, 40 examples per operation, seed 1)
    against the live app, on the run with the LLM tier and on one without: no 5xx, every status,
    header and body (the answers' models too) as /openapi.json documents them, valid requests
    accepted, invalid ones refused. The report's failures are the assertion's message."""
    import subprocess
    import sys
    from pathlib import Path

    import requests

    url = request.getfixturevalue("app_url" if which == "hiea" else "demo_url")
    contract = requests.get(f"{url}/openapi.json", timeout=30).json()
    answers = contract["paths"]["/v1/align"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answers == {"$ref": "#/components/schemas/AlignResponse"}  # a generated client knows what it receives
    tier = contract["components"]["schemas"]["AlignRequest"]["properties"]["tier"]["enum"]
    assert tier == (["auto", "small", "llm"] if which == "hiea" else ["auto", "small"])
    st = Path(sys.executable).with_name("schemathesis")
    config = Path(__file__).with_name("schemathesis.toml")  # 413 is how an over-long invalid body is refused
    r = subprocess.run([str(st), "--no-color", "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all", "-n", "40", "--seed", "1",
                        "--workers", "1", "--max-failures", "20", "--request-timeout", "60",
                        "--report-dir", str(tmp_path)], capture_output=True, text=True, timeout=1200,
                       cwd=tmp_path)  # its own .schemathesis/ folder goes there, not into the checkout
    report = "\n".join(line[:300] for line in (r.stdout + r.stderr).splitlines())  # request bodies can be MiBs
    assert r.returncode == 0, report[-8000:]


def test_a_body_shorter_than_its_content_length_is_408_in_the_error_shape(app_url):
    """Content-Length 200 and 20 bytes sent: after serve.body_timeout_s (2 s here), not the
    proxy's 60 s, a 408 with the API's error body naming the body, the connection closed."""
    import time

    with socket.create_connection(("127.0.0.1", _PORT[0]), timeout=30) as c:
        c.sendall(b"POST /v1/align HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200\r\n\r\n" + b'{"id": 1, "k": 2    ')
        t0 = time.time()
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        took = time.time() - t0
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"408", got[:500]
    assert 1.5 < took < 30, took
    err = json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])["error"]
    assert err["field"] == "body" and "Content-Length" in err["message"], err
