"""``scs-gan report``: one self-contained HTML page for one or several run directories.

Plots (matplotlib, embedded as PNG) of the losses, FID/KID against kimg, images/s, and the trajectories of
every SCS layer's ``p`` and ``q``; the data behind each plot as a table and a CSV download; the sample grids
over time. Several runs are overlaid in the same plots. Nothing is fetched from anywhere: the file opens
offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import atomic_write_text
from .metrics.evaluate import describe


@dataclass
class RunData:
    """What a run directory holds, read once."""

    path: Path
    name: str
    config: dict[str, Any]
    stats: list[dict[str, Any]]
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fakes: list[tuple[float, Path]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def _fakes_kimg(digits: str) -> float:
    """kimg of a sample grid's name: 9 digits are the image count (``fakes000200000``), older runs' 6 are kimg."""
    return int(digits) / 1000 if len(digits) == 9 else float(int(digits))


def load_run(path: str | Path) -> RunData:
    """Read a run directory; a path that is not one is a UserError."""
    import yaml

    path = Path(path).expanduser()
    if not (path / "config.yaml").is_file():
        raise UserError(f"{str(path)!r} is not a run directory (no config.yaml); give runs/<number>-<name>")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    stats = _read_jsonl(path / "stats.jsonl") if (path / "stats.jsonl").is_file() else []
    metrics = {p.stem[len("metric-") :]: _read_jsonl(p) for p in sorted(path.glob("metric-*.jsonl"))}
    fakes = sorted((_fakes_kimg(p.stem[len("fakes") :]), p) for p in path.glob("fakes*.png") if p.stem[5:].isdigit())
    final = json.loads((path / "final.json").read_text()) if (path / "final.json").is_file() else {}
    dataset = json.loads((path / "dataset.json").read_text()) if (path / "dataset.json").is_file() else {}
    return RunData(path, path.name, config, stats, metrics, fakes, final, dataset)


# ------------------------------------------------------------------------------------------------- plotting


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(run: RunData, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in run.stats:
        value = record.get(key)
        if isinstance(value, int | float):
            xs.append(record["kimg"])
            ys.append(value)
    return xs, ys


class _Plot:
    """A plot and the table of numbers behind it."""

    def __init__(self, title: str, png: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.title, self.png, self.columns, self.rows = title, png, columns, rows

    def html(self) -> str:
        csv = "\n".join([",".join(self.columns)] + [",".join(_fmt(v) for v in row) for row in self.rows])
        csv_uri = "data:text/csv;base64," + base64.b64encode(csv.encode()).decode("ascii")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in self.rows)
        slug = "".join(ch if ch.isalnum() else "-" for ch in self.title.lower())
        return (
            f'<section class="plot" id="{slug}"><h3>{html.escape(self.title)}</h3>'
            f'<img alt="{html.escape(self.title)}" src="data:image/png;base64,{self.png}">'
            f"<details><summary>data ({len(self.rows)} rows) - "
            f'<a download="{slug}.csv" href="{csv_uri}">CSV</a></summary>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details></section>"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _line_plot(runs: list[RunData], title: str, keys: list[str], ylabel: str) -> _Plot | None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    rows, drawn = [], False
    for i, run in enumerate(runs):
        for j, key in enumerate(keys):
            xs, ys = _series(run, key)
            if not xs:
                continue
            drawn = True
            label = f"{run.name} {key}" if len(runs) > 1 or len(keys) > 1 else run.name
            ax.plot(xs, ys, color=f"C{i}", linestyle=["-", "--", ":"][j % 3], label=label)
            rows += [[run.name, key, x, y] for x, y in zip(xs, ys, strict=True)]
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("kimg")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _Plot(title, _figure_png(fig), ["run", "series", "kimg", "value"], rows)


def _metric_plots(runs: list[RunData]) -> list[_Plot]:
    import matplotlib.pyplot as plt

    names = sorted({name for run in runs for name in run.metrics})
    plots = []
    for name in names:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        rows = []
        for i, run in enumerate(runs):
            records = run.metrics.get(name, [])
            xs = [r["kimg"] for r in records]
            ys = [r["value"] for r in records]
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=run.name)
                rows += [[run.name, x, y, r.get("std", "")] for x, y, r in zip(xs, ys, records, strict=True)]
                second = next((k for k in ("recall", "coverage") if k in records[-1]), None)
                if second:  # precision with recall, density with coverage
                    ax.plot(xs, [r[second] for r in records], marker="s", ls="--", color=f"C{i}", label=second)
                floor = (records[-1].get("floor") or {}).get("value")
                if floor is not None:
                    ax.axhline(floor, color=f"C{i}", ls=":", lw=1, label=f"{run.name} real-vs-real floor")
        ax.set_xlabel("kimg")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plots.append(_Plot(f"{name} against kimg", _figure_png(fig), ["run", "kimg", name, "std"], rows))
    return plots


def _precision_recall_plot(runs: list[RunData]) -> _Plot | None:
    """Precision against recall over training, one path per run and pr metric (the last point marked)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    rows = []
    for i, run in enumerate(runs):
        for name, records in sorted(run.metrics.items()):
            points = [(r["recall"], r["precision"], r["kimg"]) for r in records if "recall" in r and "precision" in r]
            if not points:
                continue
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker=".", color=f"C{i}", label=f"{run.name} {name}"
            )
            ax.plot(points[-1][0], points[-1][1], marker="*", markersize=12, color=f"C{i}")
            rows += [[run.name, name, kimg, precision, recall] for recall, precision, kimg in points]
    if not rows:
        plt.close(fig)
        return None
    ax.set(xlabel="recall (real images the generator covers)", ylabel="precision (samples that look real)")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _Plot("Precision against recall", _figure_png(fig), ["run", "metric", "kimg", "precision", "recall"], rows)


def _layer_plots(runs: list[RunData], which: str) -> list[_Plot]:
    """One plot per run: every SCS layer's mean ``which`` (p or q) with its min-max band."""
    import matplotlib.pyplot as plt

    plots = []
    for run in runs:
        layers = sorted({layer for record in run.stats for layer in record.get(which, {})})
        if not layers:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6))
        rows = []
        for k, layer in enumerate(layers):
            points = [(r["kimg"], r[which][layer]) for r in run.stats if layer in r.get(which, {})]
            xs = [x for x, _ in points]
            mean = [v["mean"] for _, v in points]
            ax.plot(xs, mean, color=f"C{k % 10}", label=layer, linestyle="-" if layer.startswith("G") else "--")
            ax.fill_between(
                xs, [v["min"] for _, v in points], [v["max"] for _, v in points], color=f"C{k % 10}", alpha=0.12
            )
            rows += [[layer, x, v["mean"], v["min"], v["max"]] for x, v in points]
        ax.set_xlabel("kimg")
        ax.set_ylabel(which)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        title = f"{which} of every SCS layer, {run.name}" + (" (mean, min-max band)" if which == "p" else "")
        plots.append(_Plot(title, _figure_png(fig), ["layer", "kimg", "mean", "min", "max"], rows))
    return plots


def _image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _samples_html(run: RunData, most: int = 8) -> str:
    fakes = run.fakes
    if len(fakes) > most:
        step = (len(fakes) - 1) / (most - 1)
        fakes = [fakes[round(i * step)] for i in range(most)]
    cells = [
        f'<figure><img alt="samples at {k:g} kimg" src="{_image_uri(p)}"><figcaption>{k:g} kimg</figcaption></figure>'
        for k, p in fakes
    ]
    reals = run.path / "reals.png"
    if reals.is_file():
        cells.append(f'<figure><img alt="real images" src="{_image_uri(reals)}"><figcaption>real</figcaption></figure>')
    title = f"Samples over time, {html.escape(run.name)}"
    return f'<section class="samples"><h3>{title}</h3><div class="strip">{"".join(cells)}</div></section>'


def _summary_table(runs: list[RunData]) -> str:
    header = ["run", "dataset", "G", "D", "kimg", "train time (s)", "images/s (last tick)", "NaN skips", "metrics"]
    rows = []
    for run in runs:
        model = run.config.get("model", {})
        last = run.stats[-1] if run.stats else {}
        metrics = ", ".join(describe(recs[-1]) for recs in run.metrics.values() if recs)
        d = run.dataset
        rows.append(
            [
                run.name,
                f"{d.get('name', '?')} ({d.get('images', '?')} images, {d.get('fingerprint', '?')})",
                model.get("g", {}).get("kind", "?"),
                model.get("d", {}).get("kind", "?"),
                f"{last.get('kimg', 0):.2f}",
                f"{last.get('time_s', 0):.0f}",
                f"{last.get('images_per_s', 0):.0f}",
                last.get("nan_skips", 0),
                metrics or "-",
            ]
        )
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em;margin:.6em 0}
table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.plot img{max-width:100%}.strip{display:flex;flex-wrap:wrap;gap:8px}
.strip img{width:160px;image-rendering:pixelated}figure{margin:0}figcaption{font-size:.75em;text-align:center}
details{margin:.3em 0 1em}summary{cursor:pointer;font-size:.8em;color:#555}
"""


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report for ``run_dirs`` (default location: ``report.html`` in the first run directory)."""
    import matplotlib

    matplotlib.use("Agg")
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    if len({r.name for r in runs}) < len(runs):  # same run name under different roots: qualify them
        for run in runs:
            run.name = f"{run.path.parent.name}/{run.name}"
    out = Path(out) if out else runs[0].path / "report.html"
    plots: list[_Plot | None] = [
        _line_plot(runs, "Losses", ["loss_D", "loss_G"], "loss"),
        *_metric_plots(runs),
        _precision_recall_plot(runs),
        _line_plot(runs, "Training speed", ["images_per_s"], "images/s"),
        _line_plot(runs, "R1 penalty", ["r1"], "R1"),
        _line_plot(runs, "Augmentation: strength p and D's mean sign on reals", ["augment_p", "ada_rt"], "value"),
        *_layer_plots(runs, "p"),
        *_layer_plots(runs, "q"),
    ]
    names = ", ".join(html.escape(r.name) for r in runs)
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>scs_gan report: {names}</title>"
        f"<style>{_CSS}</style></head><body><h1>scs_gan report</h1><p>{names}</p>"
        f"<h2>Summary</h2>{_summary_table(runs)}"
        f"<h2>Curves</h2>{''.join(p.html() for p in plots if p is not None)}"
        f"<h2>Samples</h2>{''.join(_samples_html(r) for r in runs)}"
        "</body></html>"
    )
    atomic_write_text(out, page)
    return out
