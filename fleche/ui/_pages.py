"""The HTML of each page: plain server-rendered HTML and inline SVG, no script at all.

Everything that comes from the store (function names, argument reprs,
metadata, error messages) goes through :func:`fleche.render.escape`; addresses
are built with :func:`urllib.parse.urlencode` and escaped again as attributes.
Forms that only read are GET forms (a filter is an address you can bookmark);
the forms that change the store (``--write`` only) are POST forms carrying
the session token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from fleche.render import bar_chart, escape, format_duration, format_size, format_time, line_chart
from fleche.ui._preview import describe, preview
from fleche.ui._source import CallPage, FunctionRow, Source, VerifyRun, flatten, lookup

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:72em;color:#222;padding:0 1em}
header{display:flex;gap:1.5em;align-items:baseline;border-bottom:1px solid #ddd;margin-bottom:1em}
header h1{font-size:1.2em;margin:.3em 0}header .store{color:#666;font-size:.9em}
h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;vertical-align:top}
table.grid{font-size:.92em}table.grid thead th{border-bottom:1px solid #bbb;white-space:nowrap}
table.grid tbody tr:nth-child(even){background:#f6f7f9}
td.n,th.n{text-align:right}code,pre,td.v{font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f6f7f9;padding:.6em;overflow:auto;max-height:30em}
.note{color:#666;font-size:.9em}.error{color:#a00}.pickled{color:#8a5a00}
form.filter input[type=text]{width:40em;font-family:ui-monospace,monospace}
nav.pager a,nav.layers a{margin-right:1em}
a{color:#1f5fa8;text-decoration:none}a:hover{text-decoration:underline}
.danger{color:#fff;background:#b3261e;border:0;padding:.4em 1em}
"""

DEFAULT_COLUMNS = ("created", "duration")
"""Metadata columns of a call table unless the address chooses others."""


def href(path: str, **params: Any) -> str:
    """An escaped address for an ``href``: ``path?a=1&amp;b=2``, None values left out."""
    items: list[tuple[str, Any]] = []
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            items += [(k, x) for x in v]
        else:
            items.append((k, v))
    return escape(path + ("?" + urlencode(items) if items else ""))


def layout(source: Source, layer: int, title: str, body: str) -> str:
    """The page around ``body``: the store's address, the navigation, the layers."""
    cache = source.layer(layer)
    layers = ""
    if len(source.layers) > 1:
        links = " ".join(
            f'<a href="{href("/", layer=i)}">{"<b>" if i == layer else ""}layer {i + 1}: '
            f"{escape(c.store.url)}{'</b>' if i == layer else ''}</a>"
            for i, c in enumerate(source.layers)
        )
        layers = f'<nav class="layers">{links}</nav>'
    mode = "read-write" if source.write else "read-only"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="referrer" content="no-referrer">
<title>{escape(title)} · fleche ui</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header><h1><a href="{href("/", layer=layer)}">fleche ui</a></h1>
<a href="{href("/", layer=layer)}">functions</a>
<a href="{href("/health", layer=layer)}">health</a>
<span class="store">{escape(cache.store.url)} ({mode})</span></header>
{layers}
{body}
</body>
</html>
"""


# -- the functions ------------------------------------------------------------------------


def functions_page(source: Source, layer: int, rows: Sequence[FunctionRow]) -> str:
    body = "".join(
        f'<tr><td><a href="{href("/fn", f=r.function, layer=layer)}">{escape(r.function)}</a></td>'
        f'<td class="n">{r.calls:,}</td><td class="n">{escape(format_size(r.bytes))}</td>'
        f"<td>{escape(format_time(r.last))}</td></tr>"
        for r in rows
    )
    total = sum(r.calls for r in rows)
    table = (
        '<table class="grid" id="functions"><thead><tr><th>function</th><th class="n">calls</th>'
        '<th class="n">bytes</th><th>last call stored</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
        if rows
        else "<p>No calls stored yet.</p>"
    )
    return layout(
        source,
        layer,
        "functions",
        f"<h2>Functions</h2><p>{len(rows):,} functions, {total:,} calls.</p>{table}"
        '<p class="note">Bytes: the records plus the results they refer to (uncompressed; a '
        "result shared by two calls counted twice). The store records when a call was stored, "
        "not when it was last read: a hit writes nothing.</p>",
    )


# -- a function's calls -------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, dict) and ("digest" in value or "type" in value):
        return f"<{value.get('type', '?')}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _meta_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in ("created", "finished"):
        return format_time(value)
    if key in ("duration", "cpu"):
        return format_duration(value)
    return _cell(value)


def calls_page(
    source: Source,
    layer: int,
    function: str,
    page: CallPage | None,
    *,
    text: str,
    order: str,
    descending: bool,
    columns: Sequence[str],
    chosen: bool,
    error: str | None = None,
) -> str:
    fid = function
    common = {"f": fid, "layer": layer, "q": text or None, "c": 1 if chosen else None}
    cols = list(columns)
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">'
        for k, v in (("f", fid), ("layer", layer), ("sort", order), ("desc", int(descending)))
    )
    known = list(dict.fromkeys([*(page.metadata_keys if page else []), *cols]))
    boxes = "".join(
        f'<label><input type="checkbox" name="col" value="{escape(k)}"'
        f"{' checked' if k in cols else ''}> {escape(k)}</label> "
        for k in known
    )
    form = (
        f'<form class="filter" method="get" action="/fn">{hidden}<input type="hidden" name="c" '
        f'value="1"><input type="text" name="q" value="{escape(text)}" '
        f'placeholder="n&gt;=10 alpha=0.1 metadata.tags.project=paper" aria-label="filter">'
        f' <button type="submit">Filter</button>'
        f"<details><summary>metadata columns</summary>{boxes}</details></form>"
        '<p class="note">Terms as <code>fleche query</code> takes them: '
        "<code>NAME=VALUE</code> (also <code>!=</code>, <code>&lt;</code>, <code>&lt;=</code>, "
        "<code>&gt;</code>, <code>&gt;=</code>, <code>NAME=[a,b]</code>), "
        "<code>metadata.KEY=VALUE</code> for metadata; values read as JSON/TOML "
        "(<code>10</code> is an int, <code>'\"10\"'</code> a string); separated by spaces.</p>"
    )
    title = f"<h2>{escape(fid)}</h2>"
    if error is not None or page is None:
        return layout(
            source,
            layer,
            fid,
            f'{title}{form}<p class="error" id="error">{escape(error or "")}</p>',
        )

    def sort_link(label: str, key: str) -> str:
        desc = not descending if key == order else key == "created"
        mark = (" ▼" if descending else " ▲") if key == order else ""
        link = href("/fn", **common, col=cols or None, sort=key, desc=int(desc))
        return f'<th><a href="{link}">{escape(label)}{mark}</a></th>'

    head = (
        "<th>call</th>"
        + "".join(sort_link(n, f"arg:{n}") for n in page.arguments)
        + "".join(sort_link(k, "created" if k == "created" else f"meta:{k}") for k in cols)
        + sort_link("result", "result")
    )
    body = []
    for rec in page.records:
        arguments = _dict(rec.get("arguments"))
        meta = rec.get("metadata")
        link = href("/call", f=fid, k=rec.get("digest"), layer=layer)
        cells = [f'<td class="v"><a href="{link}">{escape(str(rec.get("digest"))[:12])}</a></td>']
        cells += [
            f'<td class="v">{escape(_cell(arguments[n])) if n in arguments else ""}</td>'
            for n in page.arguments
        ]
        cells += [f"<td>{escape(_meta_cell(k, lookup(meta, k)))}</td>" for k in cols]
        cells.append(f"<td>{escape(describe(rec.get('result')))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    first, last = page.offset + 1, page.offset + len(page.records)
    shown = f"showing {first:,}&ndash;{last:,}" if page.records else "none on this page"
    summary = (
        f'<p id="summary"><b>{page.total:,}</b> calls match'
        f"{'' if not text else ' the filter'}; {shown}.</p>"
    )
    if page.missing:
        summary += (
            f'<p class="note">{page.missing:,} calls the index listed are gone from the store '
            "(<code>fleche index refresh</code> catches up).</p>"
        )
    if page.scanned:
        summary += '<p class="note">No index answered: every record was read.</p>'
    state = {**common, "col": cols or None, "sort": order, "desc": int(descending)}
    n = page.limit
    links = []
    if page.offset > 0:
        links.append(f'<a href="{href("/fn", **state, n=n)}">first</a>')
        links.append(
            f'<a href="{href("/fn", **state, o=max(page.offset - n, 0), n=n)}">previous</a>'
        )
    if last < page.total:
        links.append(f'<a href="{href("/fn", **state, o=page.offset + n, n=n)}" id="next">next</a>')
        end = (page.total - 1) // n * n
        links.append(f'<a href="{href("/fn", **state, o=end, n=n)}">last</a>')
    pager = f'<nav class="pager">{" ".join(links)}</nav>'
    write = ""
    if source.write and page.total:
        write = (
            f'<p><a href="{href("/evict", f=fid, q=text or None, layer=layer)}">'
            f"evict these {page.total:,} calls…</a></p>"
        )
    table = (
        f'<table class="grid" id="calls"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return layout(source, layer, fid, f"{title}{form}{summary}{table}{pager}{write}")


# -- one call -----------------------------------------------------------------------------


def call_page(source: Source, layer: int, rec: dict[str, Any], size: int) -> str:
    fid = str(rec.get("function"))
    cache = source.layer(layer)
    facts = [
        ("function", fid),
        ("call digest", str(rec.get("digest"))),
        ("record", f"{size:,} bytes"),
        ("module", str(rec.get("module"))),
        ("qualname", str(rec.get("qualname"))),
        ("version", repr(rec.get("version"))),
        ("code digest", str(rec.get("code") or "-")),
    ]
    top = "".join(f"<tr><th>{escape(k)}</th><td class='v'>{escape(v)}</td></tr>" for k, v in facts)
    arguments = _dict(rec.get("arguments"))
    args = "".join(
        f"<tr><th>{escape(str(n))}</th><td class='v'>{escape(_argument(v))}</td></tr>"
        for n, v in arguments.items()
    )
    meta = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(_meta_cell(k, v) if k in ('created', 'finished', 'duration', 'cpu') else repr(v))}</td></tr>"
        for k, v in flatten(rec.get("metadata"))
    )
    result = rec.get("result")
    shown = preview(cache, result, trusted=source.trusted(layer))
    back = href("/fn", f=fid, layer=layer)
    body = (
        f'<h2>call {escape(str(rec.get("digest"))[:12])} of <a href="{back}">{escape(fid)}</a></h2>'
        f'<table id="facts">{top}</table>'
        f'<h2>Arguments</h2><table class="grid" id="arguments">{args or "<tr><td>none</td></tr>"}</table>'
        f'<h2>Result</h2><p class="v">{escape(describe(result))}</p>'
        f'<div id="preview">{shown}</div>'
        f'<h2>Metadata</h2><table class="grid" id="metadata">{meta}</table>'
    )
    return layout(source, layer, f"call {str(rec.get('digest'))[:12]}", body)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _argument(value: Any) -> str:
    if not isinstance(value, dict):
        text = repr(value)
        return text if len(text) <= 2000 else text[:2000] + "…"
    text = describe(value)
    digest = value.get("digest")
    return f"{text}, digest {digest}" if digest else text


# -- health -------------------------------------------------------------------------------


def _thin(points: list[tuple[float, float]], keep: int = 500) -> list[tuple[float, float]]:
    if len(points) <= keep:
        return points
    step = len(points) / keep
    out = [points[int(i * step)] for i in range(keep)]
    return [*out, points[-1]]


def health_page(
    source: Source,
    layer: int,
    rows: Sequence[FunctionRow],
    times: Iterable[float],
    run: VerifyRun | None,
    token: str,
) -> str:
    if run is None:
        verdict = (
            "<p>Not checked since this page started: fleche keeps no record of "
            "<code>fleche verify</code> runs in the store. The button below runs it "
            "here, read-only (no repair): it reads and re-hashes every file.</p>"
        )
    else:
        r = run.report
        state = "no problems" if r.ok else f"{r.problems:,} problems"
        verdict = (
            f'<p id="verify"><b>{escape(state)}</b>: {r.objects:,} objects and {r.records:,} '
            f"records checked ({escape(format_size(r.bytes))}) in {escape(format_duration(r.seconds))}, "
            f"{escape(format_time(run.finished))}; {len(r.orphans):,} unused objects "
            "(<code>fleche gc</code> removes them).</p>"
        )
        findings = "".join(
            f"<tr><td>{escape(f.kind)}</td><td class='v'>{escape(f.name)}</td>"
            f"<td>{escape(f.reason)}</td></tr>"
            for f in r.findings[:200]
        )
        if findings:
            verdict += f'<table class="grid">{findings}</table>'
    button = (
        f'<form method="post" action="/verify"><input type="hidden" name="token" '
        f'value="{escape(token)}"><input type="hidden" name="layer" value="{layer}">'
        '<button type="submit">run verify (read-only)</button></form>'
    )
    stamps = list(times)
    timeline = line_chart(
        "calls stored over time",
        _thin([(t, float(i + 1)) for i, t in enumerate(stamps)]),
        lambda v: f"{int(v):,}",
        empty="nothing stored yet",
    )
    top = sorted(rows, key=lambda r: (-r.bytes, r.function))
    items: list[tuple[str, float]] = [(r.function, float(r.bytes)) for r in top[:24]]
    if len(top) > 24:
        items.append((f"({len(top) - 24:,} others)", float(sum(r.bytes for r in top[24:]))))
    disk = bar_chart("bytes by function", items, format_size, empty="no calls")
    write = ""
    if source.write:
        write = f'<h2>Maintenance</h2><p><a href="{href("/gc", layer=layer)}">gc…</a></p>'
    body = (
        "<h2>Verify</h2>"
        + verdict
        + button
        + "<h2>Calls stored over time</h2>"
        + f'<div id="timeline">{timeline}</div>'
        + '<p class="note">Each call where it was stored (its <code>created</code> time), '
        "cumulated. Hits are not shown: the store counts none (a hit writes nothing; "
        "fleche's DEBUG log shows each one).</p>"
        + "<h2>Disk by function</h2>"
        + f'<div id="disk">{disk}</div>'
        + write
    )
    return layout(source, layer, "health", body)


# -- writes (--write) ---------------------------------------------------------------------


def confirm_page(
    source: Source,
    layer: int,
    title: str,
    what: str,
    action: str,
    fields: dict[str, Any],
    token: str,
) -> str:
    inputs = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">'
        for k, v in {**fields, "token": token, "layer": layer}.items()
    )
    body = (
        f"<h2>{escape(title)}</h2><p>{what}</p>"
        f'<form method="post" action="{escape(action)}">{inputs}'
        f'<button class="danger" type="submit">{escape(title)}</button></form>'
        f'<p><a href="{href("/", layer=layer)}">cancel</a></p>'
    )
    return layout(source, layer, title, body)


def done_page(source: Source, layer: int, title: str, what: str) -> str:
    return layout(source, layer, title, f"<h2>{escape(title)}</h2><p id='done'>{what}</p>")


def message_page(source: Source | None, layer: int, title: str, message: str) -> str:
    body = f'<h2>{escape(title)}</h2><p class="error" id="error">{escape(message)}</p>'
    if source is None:
        return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title></head><body>{body}</body></html>"
    try:
        return layout(source, layer, title, body)
    except LookupError:
        return layout(source, 0, title, body)
