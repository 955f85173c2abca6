"""The README and docs/ hold up: every relative link and every repository path they name exists,
every `hiea-ray` command they show is a subcommand, the README stays short, docs/configuration.md
is the config's current help, ``hiea-ray config show`` reads back as the same config, and
docs/tests.md lists every test file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hiea_ray.cli import build_parser
from hiea_ray.config import Config, load_config
from hiea_ray.config_doc import to_markdown, to_yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_paths_and_commands_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            bad.append(f"link {target}")
    # repository paths named in the text: scripts, configs, results, modules
    for path in set(re.findall(r"(?<![\w/.-])((?:benchmarks|hiea_ray|cluster|jobs|scripts|tests)/[\w./-]+\.(?:py|json|yaml|png|sh))", text)):
        if "*" not in path and "<" not in path and not (ROOT / path).exists():
            bad.append(f"path {path}")
    subs = _subcommands()
    code = "\n".join(ln for ln in text.splitlines() if ln.startswith("    ")) + " ".join(re.findall(r"`[^`]+`", text))
    for cmd in re.findall(r"(?:^|[\s`/])hiea-ray ([a-z][\w-]*)", code):
        if cmd not in subs:
            bad.append(f"command hiea-ray {cmd}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(sorted(set(bad)))


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_configuration_page_is_current():
    want = to_markdown(Config())
    have = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert have == want, "docs/configuration.md is stale: hiea-ray config show --defaults --markdown > docs/configuration.md"


@pytest.mark.parametrize("config", [None, "benchmarks/configs/dbp15k-hiea.yaml", "benchmarks/configs/scale-synthetic.yaml"])
def test_config_show_reads_back_as_the_same_config(tmp_path, config):
    cfg = load_config(None if config is None else ROOT / config, ["embed.batch_size=7", "retrieve.index=IVF64,Flat"])
    shown = tmp_path / "shown.yaml"
    shown.write_text(to_yaml(cfg))
    assert load_config(shown) == cfg
    assert "# Texts per forward pass." in shown.read_text()  # the field's help rides along


def test_configs_merge_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("embed: {batch_size: 8, max_length: 32}\nretrieve: {k: 70}\n")
    b.write_text("embed: {batch_size: 16}\n")
    cfg = load_config([a, b], ["retrieve.k=90"])
    assert (cfg.embed.batch_size, cfg.embed.max_length, cfg.retrieve.k) == (16, 32, 90)
    b.write_text("embed: {batch_size: 0}\n")
    from hiea_ray.errors import UserError

    with pytest.raises(UserError, match=r"a.yaml \+ .*b.yaml: .*embed.batch_size"):
        load_config([a, b])


def test_every_test_file_is_listed_in_docs_tests():
    listed = (ROOT / "docs" / "tests.md").read_text()
    missing = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if f"tests/{p.name}" not in listed]
    assert not missing, f"docs/tests.md lacks {missing}"


def test_every_results_page_names_its_results_date_and_commit():
    """Each study page under docs/results/ says which committed JSON holds its numbers, when they
    were committed and at which commit (checked against git when the checkout has its history)."""
    import subprocess

    line = re.compile(r"^Results: (`benchmarks/results/[\w.-]+\.json`(?:, )?)+ — committed (\d{4}-\d{2}-\d{2}) at ([0-9a-f]{7,})\.$",
                      re.M)
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        if page.name == "index.md":
            continue
        m = line.search(page.read_text())
        assert m, f"{page.name}: no 'Results: `benchmarks/results/...json` — committed DATE at COMMIT.' line"
        for j in re.findall(r"`(benchmarks/results/[\w.-]+\.json)`", m.group(0)):
            assert (ROOT / j).is_file(), f"{page.name}: {j} does not exist"
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{m.group(3)}^{{commit}}"], capture_output=True)
        shallow = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
        if shallow.returncode == 0 and shallow.stdout.strip() == "false":
            assert known.returncode == 0, f"{page.name}: commit {m.group(3)} is not in this repository"


def _numbers(obj, out: list) -> list:
    """Every number in a JSON document (numbers inside strings are not results)."""
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(float(obj))
    return out


def unbacked_table_numbers(text: str, values: list[float]) -> list[str]:
    """The decimals with 3 or 4 places in a page's table rows (Hits@1, MRR, precision, F1, ...)
    that no value of ``values`` rounds to at the shown precision."""
    import numpy as np

    vals = np.unique(np.asarray(values, dtype=np.float64))
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            continue
        for m in re.findall(r"(?<![\w.+\-])(\d+\.\d{3,4})(?!\d)", line):
            nd = len(m.split(".")[1])
            if not len(vals) or not np.any(np.abs(np.round(vals, nd) - float(m)) < 0.5 * 10.0 ** -nd + 1e-12):
                out.append(f"line {i}: {m}")
    return out


def test_unbacked_table_numbers_are_found():
    """The check below finds a number no JSON holds, and takes one that rounds to a JSON value."""
    page = "| a | 0.8840 | 0.892 |\n| b | 0.1234 |\nprose 0.5555 is not a table"
    assert unbacked_table_numbers(page, [0.884, 0.89152, 0.12]) == ["line 2: 0.1234"]


def test_every_number_in_a_results_table_is_in_a_json_the_page_names():
    """Each decimal (3–4 places) in a results page's tables is a value of one of the committed JSONs
    the page names (``benchmarks/results/X.json``), at the shown precision: no table quotes what no
    committed file holds."""
    bad = {}
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        if page.name == "index.md":
            continue
        text = page.read_text()
        values: list = []
        for j in sorted(set(re.findall(r"benchmarks/results/[\w.-]+\.json", text))):
            if (ROOT / j).is_file():
                _numbers(json.loads((ROOT / j).read_text()), values)
        if miss := unbacked_table_numbers(text, values):
            bad[page.name] = miss
    assert not bad, bad


def test_every_number_in_the_readmes_results_table_is_in_a_json_its_page_names():
    """A README results row quotes only values of the JSONs named on the results pages it links."""
    bad = {}
    for i, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        pages = re.findall(r"\((docs/results/[\w.-]+\.md)\)", line) if line.startswith("|") else []
        if not pages:
            continue
        values: list = []
        for p in pages:
            for j in sorted(set(re.findall(r"benchmarks/results/[\w.-]+\.json", (ROOT / p).read_text()))):
                if (ROOT / j).is_file():
                    _numbers(json.loads((ROOT / j).read_text()), values)
        if miss := unbacked_table_numbers(line, values):
            bad[f"README.md line {i}"] = miss
    assert not bad, bad


def test_every_results_json_says_its_command_commit_date_and_machine():
    """Each committed results JSON carries, at its top level, the command as run, the commit, the
    date and the machine (or says that one was not recorded, for files from before the rule)."""
    bad = {}
    for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        doc = json.loads(f.read_text())
        lack = [k for k in ("command", "commit", "date", "machine") if not (isinstance(doc, dict) and doc.get(k))]
        if lack:
            bad[f.name] = lack
    assert not bad, bad
