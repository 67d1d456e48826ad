"""Paper tables: numbers equal independent aggregates, LaTeX is well formed, published data."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from test_figures_accuracy import lower_triangular, write_cl_run

from figures.aggregate import MeanStd
from figures.runs import CLRun, read_cl_run
from figures.tables import (
    TABLES,
    Column,
    TableSpec,
    _col_header,
    _fmt,
    _row_labels,
    comparison_rows,
    fill_table,
    format_mean_std,
    latex_escape,
    layout_rows,
    load_published,
    published_value,
    to_latex,
    to_markdown,
    write_tables,
)

FA = {("norga", "sup21k", "cifar100"): [94.11, 94.93, 93.72],
      ("hide", "sup21k", "cifar100"): [92.05, 92.71],
      ("l2p", "ibot21k", "cifar100"): [80.5],
      ("norga", "sup21k", "cub200"): [90.1, 91.3],
      ("smope", "sup1k", "imagenet-r"): [79.0, 80.2, 78.8]}


# Function-scoped fixtures (cheap): a mutation-testing tool credits a module-scoped fixture's
# work to the first test only, and then skips the tests that check its output.
@pytest.fixture
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(11)
    out = []
    for (method, bb, ds), values in FA.items():
        for seed, fa in enumerate(values):
            act = "sigmoid" if method == "norga" else None
            path = write_cl_run(root / f"{method}_{bb}_{ds}_{seed}", method, bb, seed,
                                lower_triangular(rng, fa), fa, act, dataset=ds)
            out.append(read_cl_run(path))
    return out


@pytest.fixture
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return {p.name: p.read_text() for p in write_tables(runs, out)}


def test_tables_written_only_when_runs_match(written):
    assert set(written) == {f"table{i}.{s}" for i in (1, 2, 3) for s in ("md", "tex")}


def _md_row(md: str, *labels: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(labels)] == list(labels):
            return cells
    raise AssertionError(f"no row {labels}")


def test_layout_cells_equal_independent_mean_std(written):
    md = written["table1.md"]
    row = _md_row(md, "Sup-21K", "NoRGa")
    vals = FA[("norga", "sup21k", "cifar100")]
    assert row[2] == f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    assert row[3] == f"{statistics.mean(vals) + 1:.2f} ± {statistics.stdev(vals):.2f}"  # CA
    assert row[5] == "–"  # no ImageNet-R run
    # one seed: mean only, no ±
    assert _md_row(md, "iBOT-21K", "L2P")[2] == "80.50"
    row2 = _md_row(written["table2.md"], "NoRGa")
    cub = FA[("norga", "sup21k", "cub200")]
    assert row2[1] == f"{statistics.mean(cub):.2f} ± {statistics.stdev(cub):.2f}"


def test_comparison_has_paper_and_difference(written):
    md = written["table1.md"]
    row = _md_row(md, "Split CIFAR-100", "Sup-21K", "NoRGa", "FA")
    vals = FA[("norga", "sup21k", "cifar100")]
    assert row[4] == "3"
    assert row[6] == "94.48 ± 0.13"  # NoRGa paper, Table 1 (sigmoid on CIFAR Sup-21K)
    assert row[7] == f"{statistics.mean(vals) - 94.48:+.2f}".replace("-", "−")
    smope = _md_row(written["table3.md"], "Split ImageNet-R", "Sup-1K", "SMoPE", "FA")
    assert smope[6] == "79.32 ± 0.42"


def test_norga_activation_must_match_paper():
    pub = load_published()
    main = published_value(pub, "norga_table1", "cifar100", "sup21k", "norga", "FA", "sigmoid")
    assert main == (94.48, 0.13)
    # tanh was not the script choice here: the activation-ablation number is used instead
    tanh = published_value(pub, "norga_table1", "cifar100", "sup21k", "norga", "FA", "tanh")
    assert tanh == (94.36, None)
    assert published_value(pub, "norga_table1", "cifar100", "sup1k", "norga", "FA") is None


def test_published_file_spot_values():
    pub = load_published()
    assert set(pub["tables"]) == {"norga_table1", "norga_table2", "norga_activation_ablation",
                                  "smope_table"}
    assert all(t["source"] for t in pub["tables"].values())

    def get(table, ds, bb, m):
        return next(e["metrics"] for e in pub["results"] if (e["table"], e["dataset"],
                    e["backbone"], e["method"]) == (table, ds, bb, m))

    assert get("norga_table1", "imagenet-r", "moco1k", "norga")["FM"] == [9.06, 0.19]
    assert get("norga_table1", "imagenet-r", "ibot1k", "l2p")["FM"] == [11.33, 1.25]
    assert get("norga_table2", "5datasets", "ibot21k", "coda-prompt")["FA"] == [51.65, None]
    assert get("smope_table", "cub200", "sup21k-augreg", "smope")["FA"] == [87.43, 0.30]
    assert len([e for e in pub["results"] if e["table"] == "norga_table1"]) == 60


def _strip_escaped(text: str) -> str:
    return re.sub(r"\\[&%_#${}]", "", text)


@pytest.mark.parametrize("name", ["table1.tex", "table2.tex", "table3.tex"])
def test_latex_balanced_and_column_counts(written, name):
    tex = written[name]
    body = _strip_escaped(tex)
    assert body.count("{") == body.count("}")
    assert body.count("$") % 2 == 0
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
    for block in tex.split(r"\begin{tabular}")[1:]:
        spec = re.match(r"\{([lrc]+)\}", block).group(1)
        rows = [ln for ln in block.split(r"\end{tabular}")[0].splitlines()
                if ln.rstrip().endswith(r"\\")]
        assert rows
        for row in rows:
            assert _strip_escaped(row).count("&") + 1 == len(spec), row


def test_markdown_rows_have_header_width(written):
    for name, text in written.items():
        if not name.endswith(".md"):
            continue
        widths = {line.count("|") for line in text.splitlines() if line.startswith("|")}
        assert len(widths) <= 2  # layout table and comparison table


def test_table_specs_fill_only_rows_with_runs(runs):
    cells = fill_table(TABLES["table3"], runs)
    assert list(cells) == [(None, "smope")]


def test_every_cl_backbone_tag_maps_to_a_published_table_key():
    """Run directories name backbones by cl.backbones.loading tags; tables key the papers' names."""
    from figures.names import canonical_backbone

    expected = {"sup21k": "sup21k", "ibot21k": "ibot21k", "ibot1k": "ibot1k",
                "dino1k": "dino1k", "mocov3-1k": "moco1k"}
    for tag, key in expected.items():
        assert canonical_backbone(tag) == key


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_column_of_every_table_shows_its_own_runs_and_published_value(name):
    """One run per published setting of the table, each with its own metric values: every cell
    holds the run of its own (dataset, backbone, method) and that setting's paper number (a
    lookup under another column's dataset or backbone shows)."""
    spec = TABLES[name]
    pub = load_published()
    entries = [e for e in pub["results"] if e["table"] == spec.published_table]
    runs = []
    for i, e in enumerate(entries):
        metrics = {"FA": 10.0 + i, "CA": 200.0 + i, "FM": 400.0 + i, "method": e["method"],
                   "dataset": e["dataset"], "backbone": e["backbone"], "seed": 0}
        if e.get("activation"):
            metrics["gate_act"] = e["activation"]
        runs.append(CLRun(Path(f"run{i}"), _config_of(metrics), np.zeros((1, 1)), metrics))
    cells = fill_table(spec, runs, pub)
    expected = {}
    for i, e in enumerate(entries):
        for col in spec.columns:
            row_backbones = spec.backbones or (None,)
            for row_bb in row_backbones:
                if (col.dataset, col.backbone or row_bb) == (e["dataset"], e["backbone"]) \
                        and col.metric in e["metrics"]:
                    expected[(row_bb, e["method"], col)] = (i, e["metrics"][col.metric])
    assert len(expected) >= len(spec.columns)
    found = {}
    for (row_bb, variant), row in cells.items():
        for col, cell in row.items():
            found[(row_bb, variant, col)] = cell
    assert set(found) == set(expected)
    base = {"FA": 10.0, "CA": 200.0, "FM": 400.0}
    for key, (i, (mean, std)) in expected.items():
        cell = found[key]
        assert cell.ours.count == 1 and cell.ours.mean == base[key[2].metric] + i, key
        assert (cell.paper, cell.paper_std) == (mean, std), key


# A small set of runs whose written tables are pinned character by character in tests/golden/:
# table 1 (two row backbones, a single-seed row, typographic minus signs) in Markdown and LaTeX,
# table 2 (a paper number without std) and table 3. A deliberate format change updates them.
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FA = {("norga", "sup21k", "cifar100"): [94.11, 94.93],
             ("l2p", "ibot21k", "cifar100"): [80.5],
             ("coda-prompt", "sup21k", "5datasets"): [70.25, 71.0],
             ("smope", "sup1k", "imagenet-r"): [79.0, 80.2, 78.8]}


@pytest.mark.float_pin
def test_written_tables_are_pinned(tmp_path):
    rng = np.random.default_rng(11)
    runs = []
    for (method, bb, ds), values in GOLDEN_FA.items():
        for seed, fa in enumerate(values):
            act = "sigmoid" if method == "norga" else None
            path = write_cl_run(tmp_path / f"{method}_{bb}_{ds}_{seed}", method, bb, seed,
                                lower_triangular(rng, fa), fa, act, dataset=ds)
            runs.append(read_cl_run(path))
    written = {p.name: p.read_text() for p in write_tables(runs, tmp_path / "out")}
    assert sorted(written) == [f"table{i}.{s}" for i in (1, 2, 3) for s in ("md", "tex")]
    for name in ("table1.md", "table1.tex", "table2.md", "table3.md"):
        assert written[name] == (GOLDEN / name).read_text(), name
    assert not list((tmp_path / "out").glob(".*"))  # no temporary left behind


def _run(method, backbone, dataset, fa, gate_act=None):
    metrics = {"FA": fa, "CA": fa + 1, "FM": 1.0, "method": method, "dataset": dataset,
               "backbone": backbone, "seed": 0}
    if gate_act:
        metrics["gate_act"] = gate_act
    return CLRun(Path(f"{method}-{gate_act}-{fa}"), _config_of(metrics), np.zeros((1, 1)),
                 metrics)


def _config_of(metrics):
    """The config.json of a run with these metrics (a config holds no results)."""
    return {"kind": "cl", **{k: v for k, v in metrics.items() if k not in ("FA", "CA", "FM")}}


def test_norga_cell_uses_the_number_of_its_activation():
    """Sigmoid runs meet the main Table 1 number, tanh runs the activation-ablation one; a
    method other than NoRGa ignores the activation."""
    col = next(c for c in TABLES["table1"].columns if (c.dataset, c.metric) == ("cifar100", "FA"))
    for act, paper in (("sigmoid", 94.48), ("tanh", 94.36)):
        cells = fill_table(TABLES["table1"], [_run("norga", "sup21k", "cifar100", 90.0, act)])
        (row,) = cells.values()
        assert row[col].paper == paper and row[col].gate_act == act
    pub = load_published()
    l2p = published_value(pub, "norga_table1", "cifar100", "sup21k", "l2p", "FA")
    assert published_value(pub, "norga_table1", "cifar100", "sup21k", "l2p", "FA", "tanh") == l2p
    assert published_value(pub, "norga_table1", "cifar100", "sup21k", "norga", "FA",
                           "relu") is None  # neither table has relu here
    two = fill_table(TABLES["table1"], [_run("norga", "sup21k", "cifar100", 90.0, "sigmoid"),
                                        _run("norga", "sup21k", "cifar100", 91.0, "tanh")])
    papers = {variant: row[col].paper for (_, variant), row in two.items()}
    assert papers == {"norga-sigmoid": 94.48, "norga-tanh": 94.36}


def test_rows_come_in_the_papers_order():
    runs = [_run("l2p", "ibot21k", "cifar100", 1.0), _run("norga", "ibot21k", "cifar100", 2.0),
            _run("hide", "sup21k", "cifar100", 3.0), _run("norga", "sup21k", "cifar100", 4.0)]
    cells = fill_table(TABLES["table1"], runs)
    assert list(cells) == [("sup21k", "hide"), ("sup21k", "norga"), ("ibot21k", "l2p"),
                           ("ibot21k", "norga")]


def test_cell_formatting_edge_cases():
    assert format_mean_std(MeanStd(float("nan"), float("nan"), 0)) == "–"
    assert format_mean_std(MeanStd(float("inf"), 1.0, 3)) == "–"
    assert format_mean_std(MeanStd(1.23456, float("nan"), 2)) == "1.23"  # std undefined
    assert format_mean_std(MeanStd(1.23456, 0.5, 2), digits=1, pm="+/-") == "1.2 +/- 0.5"
    assert _fmt(None) == "–" and _fmt(float("nan")) == "–"
    assert _fmt(-1.5) == "−1.50" and _fmt(1.5, signed=True) == "+1.50"
    assert _fmt(2.0, digits=0, signed=True) == "+2"


def test_latex_escape_covers_every_special_character():
    assert latex_escape("a&b%c_d#e$f{g}h~i^j") == (
        r"a\&b\%c\_d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j")
    assert latex_escape("1 ± 2 − 3 –") == r"1 $\pm$ 2 $-$ 3 --"
    tex = to_latex(["A_1", "B"], [["x&y", "1"]], "Cap_%", 1)
    assert tex.splitlines() == [
        r"\begin{table}[t]", r"\centering", r"\small", r"\caption{Cap\_\%}",
        r"\begin{tabular}{lr}", r"\toprule", r"A\_1 & B \\", r"\midrule", r"x\&y & 1 \\",
        r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    assert to_markdown(["a", "b", "c"], [["1", "2", "3"]], 2).splitlines() == [
        "| a | b | c |", "|---|---|---:|", "| 1 | 2 | 3 |"]


def _fake_published(*entries: dict) -> dict:
    tables = {name: {"source": f"source of {name}"} for name in
              ("norga_table1", "norga_table2", "smope_table", "norga_activation_ablation")}
    return {"tables": tables, "results": list(entries)}


def test_a_given_published_file_is_used_everywhere(tmp_path):
    fake = _fake_published(
        {"table": "smope_table", "dataset": "imagenet-r", "backbone": "sup1k", "method": "smope",
         "metrics": {"FA": [12.34, 0.56]}},
        {"table": "norga_activation_ablation", "dataset": "cifar100", "backbone": "sup21k",
         "method": "norga", "activation": "relu", "metrics": {"FA": [55.5, 0.25]}},
        {"table": "norga_activation_ablation", "dataset": "cifar100", "backbone": "sup21k",
         "method": "hide", "activation": "relu", "metrics": {"FA": [66.6, 0.5]}})
    runs = [_run("smope", "sup1k", "imagenet-r", 50.0)]
    (row,) = fill_table(TABLES["table3"], runs, fake).values()
    assert [(c.paper, c.paper_std) for c in row.values()] == [(12.34, 0.56)]
    # activation ablation with a std; only NoRGa falls back to it
    assert published_value(fake, "norga_table1", "cifar100", "sup21k", "norga", "FA",
                           "relu") == (55.5, 0.25)
    assert published_value(fake, "norga_table1", "cifar100", "sup21k", "hide", "FA",
                           "relu") is None
    out = tmp_path / "new" / "nested"  # created with its parents
    names = [p.name for p in write_tables(runs, out, fake)]
    assert names == ["table3.md", "table3.tex"]  # tables without runs skipped, not a stop
    md = (out / "table3.md").read_text()
    assert "Paper: source of smope_table." in md and "12.34 ± 0.56" in md


def test_runs_with_different_activations_are_never_one_row():
    """Two configurations (here: the recorded activation) are two rows, each naming its value,
    never one row averaged over both."""
    runs = [_run("hide", "sup21k", "cifar100", 90.0, "sigmoid"),
            _run("hide", "sup21k", "cifar100", 91.0, "tanh")]
    cells = fill_table(TABLES["table1"], runs)
    assert [variant for _, variant in cells] == ["hide[gate_act=sigmoid]", "hide[gate_act=tanh]"]
    for row in cells.values():
        assert {cell.ours.count for cell in row.values()} == {1}


def test_labels_fall_back_to_the_raw_names_and_pm_is_passed_on():
    assert _col_header(Column("mnist", "FA", "newbb")) == "mnist newbb FA"
    assert _row_labels(TABLES["table1"], ("newbb", "l2p")) == ["newbb", "L2P"]
    spec = TableSpec("t", "T", "norga_table1", (Column("mnist", "FA"), Column("mnist", "CA")),
                     backbones=("newbb",))
    fake = _fake_published(
        {"table": "norga_table1", "dataset": "mnist", "backbone": "newbb", "method": "l2p",
         "metrics": {"CA": [70.0, 1.0]}})
    runs = [_run("l2p", "newbb", "mnist", 60.0), _run("l2p", "newbb", "mnist", 62.0)]
    cells = fill_table(spec, runs, fake)
    _, body = comparison_rows(spec, cells, pm="+/-")
    # FA has no paper number: skipped, and the row goes on to CA
    assert body == [["mnist", "newbb", "L2P", "CA", "2", "62.00 +/- 1.41", "70.00 +/- 1.00",
                     "−8.00"]]
    _, layout = layout_rows(spec, cells, pm="+/-")
    assert layout == [["newbb", "L2P", "61.00 +/- 1.41", "62.00 +/- 1.41"]]


def test_cells_without_our_numbers_are_not_compared():
    fake = _fake_published(
        {"table": "norga_table1", "dataset": "cifar100", "backbone": "sup21k", "method": "l2p",
         "metrics": {"FA": [70.0, 1.0], "FM": [5.0, 1.0]}})
    run = _run("l2p", "sup21k", "cifar100", 60.0)
    del run.metrics["FM"]  # an older run without FM
    cells = fill_table(TABLES["table1"], [run], fake)
    _, body = comparison_rows(TABLES["table1"], cells)
    assert [r[3] for r in body] == ["FA"]


def test_default_formatting_and_one_seed():
    assert format_mean_std(MeanStd(1.0, 0.5, 2)) == "1.00 ± 0.50"
    assert format_mean_std(MeanStd(1.0, 0.5, 1)) == "1.00"  # one seed: never a ±


def test_tables_from_example_data_are_marked_synthetic(tmp_path):
    """--write-example data gives tables whose first line and every LaTeX caption say
    SYNTHETIC; the same table from real runs (the pinned golden set) carries no mark."""
    from figures.examples import write_example_results
    from figures.runs import find_runs
    from figures.tables import SYNTHETIC_TABLE_MARK

    root = write_example_results(tmp_path / "example", seeds=(0,))
    runs = [read_cl_run(item.path) for item in find_runs(root) if item.kind == "cl"]
    written = write_tables(runs, tmp_path / "out")
    assert written
    for path in written:
        text = path.read_text()
        if path.suffix == ".md":
            assert text.splitlines()[0] == f"**{SYNTHETIC_TABLE_MARK}**", path.name
        else:
            captions = re.findall(r"\\caption\{([^}]*)\}", text)
            assert captions and all(c.startswith(SYNTHETIC_TABLE_MARK) for c in captions)
    assert "SYNTHETIC" not in (GOLDEN / "table1.md").read_text()
