"""The report's Markdown as one standalone HTML file: the small subset the report uses (headings, paragraphs,
tables, images, fenced code, bold, code), images inlined so the file opens anywhere."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:.25em .6em;"
         "text-align:left;vertical-align:top}th{background:#eee}tr:nth-child(even) td{background:#fafafa}"
         "code{background:#f2f2f2;padding:0 .2em;border-radius:3px}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;"
         "font-size:.85em}img{max-width:100%;border:1px solid #ddd}details{margin:.5em 0 1.5em}")


def inline(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def table_html(rows: list[list[str]]) -> str:
    head, body = rows[0], rows[2:]
    return ("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")


def image_html(alt: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f'<p><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"></p>'


def markdown_to_html(text: str, base: Path, title: str = "medmae report") -> str:
    """Standalone HTML of the report's Markdown; images are read from ``base`` and inlined. A fenced block is
    folded away (``<details>``) under the paragraph before it."""
    out: list[str] = []
    table: list[list[str]] = []
    code: list[str] | None = None
    for line in text.splitlines() + [""]:
        if code is not None:
            if line.startswith("```"):
                summary = out.pop()[3:-4] if out and out[-1].startswith("<p>") else "code"
                out.append(f"<details><summary>{summary}</summary><pre>{html.escape(chr(10).join(code))}</pre></details>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if table:
            out.append(table_html(table))
            table = []
        m = re.match(r"!\[(.*?)\]\((.+?)\)", line)
        if line.startswith("```"):
            code = []
        elif m:
            out.append(image_html(m.group(1), base / m.group(2)))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(out)}</body></html>\n")
