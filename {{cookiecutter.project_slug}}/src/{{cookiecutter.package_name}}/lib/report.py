"""Self-contained HTML (one page style, tables of rows or key/value pairs, PNGs inlined as data URIs) and the
same rows as Markdown.

    >>> "<td>0.5000</td>" in rows_table([{"dice": 0.5}])
    True

Used by the stages' own reports and by `register`'s model report, so every page reads alike and opens
offline, images included, from a file, an MLflow artifact or an e-mail attachment.
"""

import base64
import html
from pathlib import Path

CSS = ("body { font-family: sans-serif; margin: 2em; max-width: 80em } "
       "table { border-collapse: collapse; margin-bottom: 1.5em } "
       "td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left } th { background: #f4f4f4 } "
       "img { max-width: 100%; border: 1px solid #eee } .pass { color: #176f2c } .fail { color: #b00020 }")


def cell(v):
    """A value as a table shows it: floats to 4 decimals (small ones in scientific notation), booleans as words.

    >>> cell(True), cell(0.5), cell(2.5e-07)
    ('yes', '0.5000', '2.500e-07')
    """
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3e}" if v and abs(v) < 1e-3 else f"{v:.4f}"
    return html.escape(str(v))


def rows_table(rows, keys=None):
    """A table with one row per dict; columns are `keys` or the first row's keys."""
    if not rows:
        return "<p>(none)</p>"
    keys = keys or list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown(rows):
    """The same rows as a Markdown table (reports/*.md, compare, a CI job summary)."""
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    fmt = lambda v: ("yes" if v else "no") if isinstance(v, bool) else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
            + "".join("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows))


def speedup_cell(t):
    """'3.76x [3.5, 4.0]', or the same marked UNRELIABLE: a noisy figure is never shown as a plain number."""
    cell = f"{t['speedup']:.2f}x [{t['speedup_ci_low']:.2f}, {t['speedup_ci_high']:.2f}]"
    return cell if t["reliable"] else f"UNRELIABLE {cell}"


def variant_rows(table, metric, chosen):
    """optimize's variants table (reports/optimize.json) as rows for markdown / rows_table."""
    return [{"variant": f"{n}{' (deployable)' if n == chosen else ''}", "size MB": v["size_mb"],
             "gzip MB": v["gzip_mb"], "size change": f"{v['size_change']:+.1%}",
             "b1 p50 ms": v["latency_batch_1"]["p50_ms"], "b1 p90/p50": v["latency_batch_1"]["p90_p50"],
             "b1 speedup": speedup_cell(v["latency_batch_1"]),
             "bN p50 ms": v["latency_batch_n"]["p50_ms"], "bN speedup": speedup_cell(v["latency_batch_n"]),
             metric: v[metric], "change": f"{v[metric + '_change']:+.4f}", "agreement": v["agreement"]}
            for n, v in table.items()]


def pairs_table(pairs):
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in pairs)
    return f"<table>{body}</table>"


def image(path, alt):
    """The PNG at `path` inlined, or a note saying it is missing (a report never points at other files)."""
    path = Path(path)
    if not path.is_file():
        return f"<p>({html.escape(str(path))} not found)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(title, body):
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
