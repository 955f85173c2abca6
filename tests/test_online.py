"""The online decoder (``core.online``): one more row against a finished solve, Ray-free.

Every source of a decoded protocol, decoded again as a single row from the recorded state, gets
the decode's own list for every decoder (top1, CSLS, Sinkhorn, structure) and the router's own
features; a new row gets lists of the same shape and the same feature names."""

from __future__ import annotations

import numpy as np
import pytest

from hiea_ray.config import DecodeConfig, RetrieveConfig
from hiea_ray.core.decoders import run_decoders
from hiea_ray.core.metrics import protocol_sets
from hiea_ray.core.online import DecoderState
from hiea_ray.core.retrieval import knn
from hiea_ray.core.structure import SeedGraphs


@pytest.fixture(scope="module")
def decoded(synthetic_pair):
    pair = synthetic_pair
    ent = pair.entities.sort_by("id")
    ids, kg = ent["id"].to_numpy(), ent["kg"].to_numpy()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(ids), 32)).astype(np.float32)
    src, tgt = pair.links["src"].to_numpy(), pair.links["tgt"].to_numpy()
    vecs[np.searchsorted(ids, tgt)] = vecs[np.searchsorted(ids, src)] + 0.8 * rng.normal(size=(len(src), 32))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    test = pair.links_of("test")
    q, b = protocol_sets("standard", test["src"].to_numpy(), test["tgt"].to_numpy(), ids, kg)
    Q, B = vecs[np.searchsorted(ids, q)], vecs[np.searchsorted(ids, b)]
    s, i = knn(Q, B, 10, RetrieveConfig(k=10))
    s2, i2 = knn(B, Q, 10, RetrieveConfig(k=10))
    c = DecodeConfig(decoders=["top1", "csls", "sinkhorn", "structure"], structure_rounds=2)
    g = SeedGraphs.of(pair, ["train", "valid"])
    state: dict = {}
    lists = {d.name: (d.idx, d.score) for d in run_decoders(c.decoders, i, s, i2, s2, q, b, c, lambda: g, state=state)}
    st = DecoderState.of(c, "auto", i, s, i2, s2, q, b, g, state, lists)
    return {"q": q, "b": b, "s2t": (i, s), "t2s": (i2, s2), "g": g, "lists": lists, "st": st, "B": B, "Q": Q}


def _neighbours(g, row):
    return g.adj_s.indices[g.adj_s.indptr[row]:g.adj_s.indptr[row + 1]]


def test_every_source_decodes_online_as_the_batch_decoded_it(decoded):
    from hiea_ray.run.labelled import features

    d = decoded
    st, g, (i, s) = d["st"], d["g"], d["s2t"]
    X, names, _ = features(d["lists"], *d["t2s"], d["q"], d["b"], g, st.primary)
    src_rows, _ = g.rows(d["q"], d["b"])
    for r in range(len(d["q"])):
        qr = st.query(i[r], s[r], _neighbours(g, src_rows[r]), src_row=r)
        out = st.decode(qr)
        for name, (idx, score) in out.items():
            want_i, want_s = d["lists"][name]
            assert np.array_equal(idx[0], want_i[r]), (name, r)
            assert np.allclose(score[0], want_s[r], rtol=1e-5, atol=1e-7), (name, r)
        x, nm, _ = st.features(qr, out)
        assert nm == names
        assert np.allclose(x[0], X[r], equal_nan=True, rtol=1e-5, atol=1e-7), r


def test_structure_state_matters(decoded):
    """Without the structure decoder's last-round matches the rows differ: the state is used."""
    d = decoded
    st, g, (i, s) = d["st"], d["g"], d["s2t"]
    src_rows, _ = g.rows(d["q"], d["b"])
    base = [st.decode(st.query(i[r], s[r], _neighbours(g, src_rows[r]), r))["structure"] for r in range(40)]
    st2 = DecoderState(**{**st.__dict__, "best_t": np.full_like(st.best_t, -1), "best_s": np.full_like(st.best_s, -1)})
    other = [st2.decode(st2.query(i[r], s[r], _neighbours(g, src_rows[r]), r))["structure"] for r in range(40)]
    assert any(not np.allclose(a[1], b[1]) for a, b in zip(base, other))


def test_a_new_row_gets_reverse_edges_from_the_targets_lists(decoded):
    d = decoded
    st, g = d["st"], d["g"]
    v = d["Q"][0]
    sims = d["B"] @ v
    order = np.argsort(-sims)[:10]
    qr = st.query(order, sims[order].astype(np.float32), _neighbours(g, g.rows(d["q"][:1], d["b"])[0][0]), -1, sims)
    # the targets it would enter: above the last entry of their full t2s list
    assert set(qr.rev.tolist()) == set(np.flatnonzero(sims > st.t2s_last).tolist())
    out = st.decode(qr)
    assert set(out) == {"top1", "csls", "sinkhorn", "structure"} and all(x[0].shape == (1, 10) for x in out.values())
    # top1 is the solve's own rule on the new row: its candidates by cosine, best first
    np.testing.assert_array_equal(out["top1"][0][0], order)
    np.testing.assert_allclose(out["top1"][1][0], sims[order], atol=1e-6)


def test_a_new_row_equal_to_a_solved_source_decodes_to_that_sources_lists(decoded):
    """A new row with the vector and neighbours of a solved source r (``src_row=-1``: nothing of r's
    own state is used) gets r's lists and features, by value: top1 / CSLS always; Sinkhorn and
    structure wherever its reverse edges (the targets whose list it would enter, from its
    similarities) are r's (they differ only where r is the last entry of a target's list, which a
    copy ties and does not enter); the mutual-best feature is the solve's except where r itself is
    the target's best source (a copy ties r and does not beat it)."""
    from hiea_ray.run.labelled import features

    d = decoded
    st, g, (i, s) = d["st"], d["g"], d["s2t"]
    X, names, _ = features(d["lists"], *d["t2s"], d["q"], d["b"], g, st.primary)
    src_rows, _ = g.rows(d["q"], d["b"])
    mutual = names.index("mutual_best")
    same_rev = 0
    for r in range(len(d["q"])):
        qr = st.query(i[r], s[r], _neighbours(g, src_rows[r]), -1, d["B"] @ d["Q"][r])
        out = st.decode(qr)
        solved_rev = set(st.rev_of[r][0].tolist())
        assert set(qr.rev.tolist()) <= solved_rev, r
        exact = set(qr.rev.tolist()) == solved_rev
        same_rev += exact
        for name in (("top1", "csls", "sinkhorn", "structure") if exact else ("top1", "csls")):
            want_i, want_s = d["lists"][name]
            assert np.array_equal(out[name][0][0], want_i[r]), (name, r)
            assert np.allclose(out[name][1][0], want_s[r], rtol=1e-5, atol=1e-7), (name, r)
        if not exact:
            continue
        x, nm, best = st.features(qr, out)
        assert nm == names
        others = np.arange(len(names)) != mutual
        assert np.allclose(x[0, others], X[r, others], equal_nan=True, rtol=1e-5, atol=1e-7), r
        r_is_targets_best = best >= 0 and st.t2s_top[best] == r
        assert x[0, mutual] == (0.0 if r_is_targets_best else X[r, mutual]), r
    assert same_rev > len(d["q"]) // 3  # the full comparison ran on many rows (187 of 377 here)


@pytest.mark.parametrize("path, header, status", [
    ("/v1/align", None, 401), ("/v1/align", "Bearer wrong", 401), ("/v1/align", "Basic s3cret", 401),
    ("/v1/align", "Bearer s3cret", 200), ("/v1/align", "bearer  s3cret ", 200), ("/healthz", None, 200),
    ("/openapi.json", None, 401),
])
def test_the_bearer_token_guards_every_route_but_the_probe(monkeypatch, path, header, status):
    """serve.api_token_env names the variable holding the token: without the right bearer token a
    request is 401 with WWW-Authenticate; GET /healthz stays open for probes; without a token set
    nothing is checked; a named variable that is unset is one clear error."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    from hiea_ray.config import ServeConfig
    from hiea_ray.errors import UserError
    from hiea_ray.serve import app as serve_app

    monkeypatch.setenv("HIEA_TEST_TOKEN", "s3cret")
    monkeypatch.setattr(serve_app, "_TOKEN", [serve_app.api_token(ServeConfig(api_token_env="HIEA_TEST_TOKEN"))])
    headers = [] if header is None else [(b"authorization", header.encode())]
    req = Request({"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b""})

    async def ok(_):
        return PlainTextResponse("ok")

    r = asyncio.run(serve_app.bearer_auth(req, ok))
    assert r.status_code == status
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer" and b'"field":"authorization"' in r.body
    monkeypatch.setattr(serve_app, "_TOKEN", [serve_app.api_token(ServeConfig())])  # no token: open
    assert asyncio.run(serve_app.bearer_auth(req, ok)).status_code == 200
    monkeypatch.delenv("HIEA_TEST_TOKEN")
    with pytest.raises(UserError, match="serve.api_token_env: the environment variable HIEA_TEST_TOKEN is unset"):
        serve_app.api_token(ServeConfig(api_token_env="HIEA_TEST_TOKEN"))
