"""A self-contained HTML page of one input's attention (interp.1): pick a layer and a head, see its pattern as a
heatmap with the tokens on both axes; hover a cell for its weight. No network: the weights are inlined as JSON
and the page's only script is inline, so it opens from a file anywhere."""

from __future__ import annotations

import html
import json
from typing import Sequence

import torch

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 11px; }}
td {{ width: 18px; height: 18px; padding: 0; }}
th {{ font-weight: normal; padding: 0 4px; white-space: pre; }}
th.key {{ writing-mode: vertical-rl; transform: rotate(180deg); }}
</style></head>
<body>
<h2>{title}</h2>
<p>Query tokens down, key tokens across; darker = more weight. Layer <select id="layer"></select>
head <select id="head"></select> <span id="value"></span></p>
<table id="grid"></table>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const layer = document.getElementById("layer"), head = document.getElementById("head");
for (let l = 0; l < data.patterns.length; l++) layer.add(new Option(String(l), String(l)));
for (let h = 0; h < data.patterns[0].length; h++) head.add(new Option(String(h), String(h)));
function draw() {{
  const w = data.patterns[+layer.value][+head.value], grid = document.getElementById("grid");
  grid.innerHTML = "";
  const top = grid.insertRow(); top.appendChild(document.createElement("th"));
  for (const t of data.tokens) {{ const th = document.createElement("th"); th.className = "key"; th.textContent = t; top.appendChild(th); }}
  w.forEach((row, i) => {{
    const tr = grid.insertRow(), th = document.createElement("th");
    th.textContent = data.tokens[i]; tr.appendChild(th);
    row.forEach((v, j) => {{
      const td = tr.insertCell(), shade = Math.round(255 * (1 - v));
      td.style.background = `rgb(${{shade}},${{shade}},255)`;
      td.title = `${{data.tokens[i]}} -> ${{data.tokens[j]}}: ${{v.toFixed(3)}}`;
      td.onmouseover = () => document.getElementById("value").textContent = td.title;
    }});
  }});
}}
layer.onchange = draw; head.onchange = draw; draw();
</script></body></html>
"""


def attention_page(patterns: torch.Tensor, tokens: Sequence[str], title: str = "attention") -> str:
    """The page (a string) for one input's patterns (L, H, N, N) and its N tokens; weights rounded to 4 digits."""
    if not isinstance(patterns, torch.Tensor) or patterns.dim() != 4 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns: expected (L, H, N, N) for one input, got "
                         f"{tuple(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__}")
    if len(tokens) != patterns.shape[-1]:
        raise ValueError(f"tokens: expected {patterns.shape[-1]} tokens, got {len(tokens)}")
    weights = [[[[round(float(v), 4) for v in row] for row in h] for h in layer] for layer in patterns.detach().cpu()]
    data = json.dumps({"tokens": list(tokens), "patterns": weights}).replace("</", "<\\/")  # no early </script>
    return _TEMPLATE.format(title=html.escape(title), data=data)
