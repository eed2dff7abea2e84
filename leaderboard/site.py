"""The static leaderboard site: self-contained HTML, local images, inline CSS and JS.

index.html holds one sortable overall table per label fraction (the headline fraction first):
rows backbones, columns tasks, each cell the mean over seeds with its bootstrap interval,
▲/▼ for significant wins/losses against the reference, and the mean rank with its interval;
every table's last row states the minimum detectable difference per column. Random-init rows
carry a RANDOM-INIT badge and a striped background. Each task has a page with its
label-scarcity curves, per-fraction tables, label efficiency and the provenance of every cell
with the command that reproduces it (a submitted backbone's by its bundle's file). For
classification tasks a supplementary table gives the exact McNemar test of each backbone
against the reference (seed by seed, summarised).
Rows are (backbone, protocol) entries: two protocols or search budgets are two labelled rows.

Nothing is fetched from anywhere: no fonts, scripts or styles from other hosts. Every name that
comes from the store goes through `html.escape`, so a backbone called ``<script>`` is text.
Sorting: click a column header, or open ``index.html#sort=<key>[:asc|:desc]`` (keys:
``backbone``, ``rank``, ``task-<task id>``) to sort the headline table on load;
``#click=<key>,<key>`` clicks those headers in turn (what the browser test exercises).
"""

from __future__ import annotations

import html
import shlex
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from brainbench.errors import BenchError  # noqa: E402
from brainbench.store import AnalysisResult  # noqa: E402
from brainbench.leaderboard.analysis import (Analysis, CellRecord, Entry,  # noqa: E402
                                             SubmittedFile)
from brainbench.leaderboard.analysis_pages import INDEX as ANALYSES_INDEX  # noqa: E402
from brainbench.leaderboard.analysis_pages import write_analysis_pages  # noqa: E402
from brainbench.leaderboard.curves import chance_last, draw_task, write_curves  # noqa: E402
from brainbench.leaderboard.robustness import (ROBUSTNESS_NOTE, ROBUSTNESS_TITLE,  # noqa: E402
                                               site_drops)
from brainbench.leaderboard.tables import (CHANCE_NOTE, CHANCE_ROW, CONTROL_NOTE,  # noqa: E402
                                           MCNEMAR_TITLE, RANDOM_NOTE, SURVIVAL_NOTE,
                                           SURVIVAL_SECONDARY, SURVIVAL_SECONDARY_NOTE,
                                           SURVIVAL_TITLE, UNVERIFIED_NOTE, best_entries,
                                           detectable_text, mcnemar_note,
                                           precision_note, protocol_note)

e = html.escape
MARKER = ".brainbench-site"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
 max-width:1200px;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem}
table{border-collapse:collapse;margin:0.5rem 0 1rem;font-size:0.9rem}
th,td{border:1px solid #ccc;padding:0.3rem 0.5rem;text-align:left;vertical-align:top}
th{background:#f1f3f5}
table.sortable th[data-key]{cursor:pointer;user-select:none}
table.sortable th[data-key]::after{content:" \\2195";color:#888}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:#000}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:#000}
.badge.unverified{background:#8a1c1c}
.badge.contaminated{background:#6d28d9}
tr.random td{background:repeating-linear-gradient(135deg,#fff,#fff 6px,#fff4e5 6px,#fff4e5 12px)}
.badge{display:inline-block;padding:0 0.35rem;border-radius:3px;font-size:0.75rem;
 font-weight:600;background:#b45309;color:#fff;margin-left:0.3rem}
.best{font-weight:700}.win{color:#15803d;font-weight:700}.loss{color:#b91c1c;font-weight:700}
.ci{color:#555;font-size:0.8rem}.note{color:#444;font-size:0.85rem}
code{font-size:0.8rem;background:#f6f8fa;padding:0.1rem 0.2rem}
img{max-width:100%;border:1px solid #eee}
"""

JS = """
(function(){
  function value(cell, text){
    var v = cell.getAttribute('data-value');
    if (v === null || v === '') return null;
    return text ? v : parseFloat(v);
  }
  function sortTable(table, key, dir){
    var heads = table.tHead.rows[0].cells, col = -1;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute('data-key') === key) col = i;
    }
    if (col < 0) return false;
    var text = heads[col].getAttribute('data-type') === 'text';
    if (!dir) dir = heads[col].getAttribute('data-best') === 'higher' ? 'desc' : 'asc';
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = value(a.cells[col], text), y = value(b.cells[col], text);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var c = text ? x.localeCompare(y) : x - y;
      return dir === 'asc' ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
    for (var j = 0; j < heads.length; j++) heads[j].removeAttribute('aria-sort');
    heads[col].setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    table.setAttribute('data-sorted', key + ':' + dir);
    return true;
  }
  var heads = document.querySelectorAll('table.sortable th[data-key]');
  Array.prototype.forEach.call(heads, function(th){
    th.addEventListener('click', function(){
      var table = th.closest('table'), key = th.getAttribute('data-key');
      var now = table.getAttribute('data-sorted') || '';
      var dir = now === key + ':desc' ? 'asc' : (now === key + ':asc' ? 'desc' : null);
      sortTable(table, key, dir);
    });
  });
  var m = /sort=([^&:]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash || ''));
  var overall = document.getElementById('overall');
  if (m && overall) sortTable(overall, m[1], m[2]);
  var c = /click=([^&]+)/.exec(decodeURIComponent(location.hash || ''));
  if (c && overall) c[1].split(',').forEach(function(key){
    var th = overall.querySelector('th[data-key="' + key + '"]');
    if (th) th.click();
  });
})();
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"<script>{JS}</script></body></html>\n")


def _num(value: float) -> str:
    return "" if value != value else repr(float(value))


def _entry_cell(entry: Entry, flags: tuple[str, ...] | list[str] = ()) -> str:
    badge = ('<span class="badge">RANDOM-INIT</span>' if entry.is_random else
             '<span class="badge">CONTROL</span>' if entry.is_control else "")
    if entry.is_unverified:  # imported, some provenance unchecked (brainbench.results_io)
        badge += (f'<span class="badge unverified" title="not verified: '
                  f'{e(", ".join(entry.unverified))}">UNVERIFIED</span>')
    # submission bundles' flags (brainbench.submission): SUBMISSION, PARTIAL: ..., RANDOM-INIT
    badge += "".join(f'<span class="badge" title="{e(f)}">{e(f.split(":")[0])}</span>'
                     for f in flags if f != "RANDOM-INIT" or not entry.is_random)
    return (f'<td data-value="{e(entry.label)}">{e(entry.label)}{badge}</td>'
            f'<td>{entry.weights_status}<br>'
            f'<code>{e(entry.weights_id)}</code></td>')


def _score_cell(analysis: Analysis, entry: Entry, task: str, fraction: float,
                comparisons: dict) -> str:
    s = analysis.summary(entry, task, fraction)
    if s is None:
        return '<td data-value="">–</td>'
    classes = "best" if entry in best_entries(analysis, task, fraction) else ""
    mark = ""
    c = comparisons.get((entry, task))
    if c is not None and c.verdict in ("win", "loss"):
        word = "better" if c.verdict == "win" else "worse"
        symbol = "▲" if c.verdict == "win" else "▼"
        mark = (f' <span class="{c.verdict}" title="significantly {word} than the reference: '
                f'difference {c.test.difference:+.3f} [{c.test.ci_low:+.3f}, '
                f'{c.test.ci_high:+.3f}], Holm p={c.p_holm:.3g}">{symbol}</span>')
    elif c is not None and c.verdict == "ns":
        mark = (f' <span class="ci" title="not significant vs the reference: Holm '
                f'p={c.p_holm:.3g}">ns</span>')
    elif c is not None and c.verdict == "ref":
        mark = ' <span class="ci">ref</span>'
    if analysis.is_contaminated(entry, task):  # brainbench.analyses.contamination
        mark += ('<span class="badge contaminated" title="the evaluation dataset is in this '
                 'backbone\'s declared pretraining data">CONTAMINATED</span>')
    sd = "" if s.sd != s.sd else f" ± {s.sd:.3f} sd"
    interval = "" if s.ci_low != s.ci_low else f"[{s.ci_low:.3f}, {s.ci_high:.3f}]"
    return (f'<td data-value="{_num(s.mean)}"><span class="{classes}">{s.mean:.3f}</span>{mark}'
            f'<br><span class="ci">{interval}{sd}, k={s.n_seeds}</span></td>')


def overall_table(analysis: Analysis, fraction: float, table_id: str | None,
                  link_tasks: bool = True) -> str:
    tasks = [t.id for t in analysis.tasks if any(analysis.has(en, t.id, fraction)
                                                 for en in analysis.entries)]
    comparisons = analysis.comparisons(fraction, tasks)
    ranks = analysis.mean_ranks(fraction)
    heads = ['<th data-key="backbone" data-type="text">backbone</th><th>weights</th>',
             '<th data-key="rank" data-best="lower">mean rank [95% CI]</th>']
    for task in tasks:
        arrow = "↑" if analysis.direction(task) == "higher" else "↓"
        name = f'<a href="task-{e(task)}.html">{e(task)}</a>' if link_tasks else e(task)
        heads.append(f'<th data-key="task-{e(task)}" data-best="{analysis.direction(task)}">'
                     f'{name}<br><span class="ci">{e(analysis.metric(task))} {arrow}</span></th>')
    rows, flags = [], analysis.flags
    for entry in analysis.entries:
        rank = ranks.get(entry)
        rank_cell = (f'<td data-value="{_num(rank.mean_rank)}">{rank.mean_rank:.2f}<br>'
                     f'<span class="ci">[{rank.ci[0]:.2f}, {rank.ci[1]:.2f}] over '
                     f'{rank.n_tasks} task(s)</span></td>') if rank else '<td data-value="">–</td>'
        cells = "".join(_score_cell(analysis, entry, t, fraction, comparisons) for t in tasks)
        css = ' class="random"' if entry.is_random else ""
        rows.append(f"<tr{css}>{_entry_cell(entry, flags.get(entry.backbone, ()))}{rank_cell}{cells}</tr>")
    chance = [analysis.chance(t, fraction) for t in tasks]
    foot = []
    if any(c is not None for c in chance):  # what no signal scores (a footer: never sorted)
        cells = "".join('<td data-value="">–</td>' if c is None else
                        f'<td data-value="{_num(c.mean)}">{c.mean:.3f}<br><span class="ci">'
                        f'[{c.ci_low:.3f}, {c.ci_high:.3f}] shuffled labels</span></td>'
                        for c in chance)
        foot.append(f'<tr class="chance"><td>{e(CHANCE_ROW)}<span class="badge" '
                    f'title="{e(CHANCE_NOTE)}">CONTROL</span></td><td>control</td><td>–</td>'
                    f'{cells}</tr>')
    detectable = analysis.detectable_differences(fraction)
    foot.append(_detectable_row(analysis, [detectable.get(t) for t in tasks], extra=1))
    ident = f' id="{e(table_id)}"' if table_id else ""
    return (f'<table class="sortable"{ident}><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody><tfoot>{"".join(foot)}</tfoot></table>')


def _detectable_row(analysis: Analysis, values: Sequence[tuple[float, int] | None],
                    extra: int = 0) -> str:
    """The footer row every table carries: per column the minimum detectable difference of
    the paired test (Analysis.detectable_differences, as `make table` states it)."""
    cells = "".join("<td>–</td>" if v is None else f"<td>{e(detectable_text(*v))}</td>"
                    for v in values)
    what = e(f"the smallest true difference the paired test detects with power 0.8 at alpha "
             f"0.05 on these test sets, from {(analysis.reference or analysis.entries[0]).display}"
             "'s test predictions; smaller differences are likely to go unmarked")
    return (f'<tr class="detectable"><td title="{what}">minimum detectable difference</td>'
            f'<td>paired test, power 0.8</td>{"<td>–</td>" * extra}{cells}</tr>')


def mcnemar_table(analysis: Analysis, columns: list[tuple[str, str, float]]) -> str:
    """Supplementary McNemar table: rows entries, one column per (header, task, fraction);
    empty when there is no reference or no classification task to test."""
    results = {(task, f): analysis.mcnemar(f, [task]) for _, task, f in columns}
    columns = [c for c in columns if results[(c[1], c[2])]]
    if not columns:
        return ""
    heads = "".join(f"<th>{e(h)}<br><span class=\"ci\">only row / only reference right"
                    "</span></th>" for h, _, _ in columns)
    rows = []
    for entry in analysis.entries:
        found = [results[(t, f)].get((entry, t)) for _, t, f in columns]
        if not any(found):
            continue
        cells = "".join(
            "<td>–</td>" if m is None else
            f"<td>{m.summary.only_a_correct} / {m.summary.only_b_correct}<br>"
            f'<span class="ci">median p={m.summary.median_p:.3g}, {m.summary.significant}/'
            f"{m.summary.n_seeds} seeds p&lt;{m.summary.alpha:g}</span></td>" for m in found)
        css = ' class="random"' if entry.is_random else ""
        rows.append(f"<tr{css}><td>{e(entry.display)}</td>{cells}</tr>")
    fractions = sorted({f for _, _, f in columns})
    note = mcnemar_note(analysis, fractions[0] if len(fractions) == 1 else None)
    return (f"<h3>{e(MCNEMAR_TITLE)}</h3><table><thead><tr><th>backbone</th>{heads}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table><p class=\"note\">{e(note)}</p>")


def _classification(analysis: Analysis, fraction: float) -> list[tuple[str, str, float]]:
    return [(t.id, t.id, fraction) for t in analysis.tasks
            if t.kind == "classification"]


def legend(analysis: Analysis) -> str:
    ref = analysis.reference
    items = [f"Cells: mean of the primary metric over seeds (k seeds, ± sd), with its "
             f"{e(analysis.interval_description)}. Bold = best in the column."]
    if ref is not None:
        items.append(f"<span class=\"win\">▲</span> / <span class=\"loss\">▼</span>: "
                     f"significantly better / worse than the reference <b>{e(ref.display)}</b> "
                     "(paired bootstrap of the difference on the same test subjects, "
                     "Holm-adjusted across the tasks of the table, alpha 0.05); "
                     "<span class=\"ci\">ns</span> = not significant. Hover a mark for the "
                     "difference, its interval and the adjusted p-value.")
    else:
        items.append("Only one backbone: no significance tests.")
    items.append("Mean rank: 1 = best, over the tasks where every backbone has a result; the "
                 "interval comes from ranking each bootstrap resample.")
    items.append("Minimum detectable difference (each table's last row): the difference the "
                 "paired test detects with power 0.8 at alpha 0.05 on these test sets (2.8 x the "
                 "bootstrap standard error of a difference between two backbones of the "
                 "reference's quality), or none within the metric's range. Smaller true "
                 "differences are likely to go unmarked.")
    if protocol_note(analysis):
        items.append(e(protocol_note(analysis)))
    items.append(e(precision_note(analysis)))
    if any(en.is_random for en in analysis.entries):
        items.append('<span class="badge">RANDOM-INIT</span> ' + e(RANDOM_NOTE))
    if any(en.is_control for en in analysis.entries):
        items.append('<span class="badge">CONTROL</span> ' + e(CONTROL_NOTE))
    if any(en.is_unverified for en in analysis.entries):
        items.append('<span class="badge unverified">UNVERIFIED</span> ' + e(UNVERIFIED_NOTE))
    if any(t.kind == "survival" for t in analysis.tasks):
        items.append(e(SURVIVAL_NOTE))
    items += [f"<b>{e(name)}</b> (submission bundle): {e('; '.join(f))}"
              for name, f in analysis.flags.items()
              if any(en.backbone == name for en in analysis.entries)]
    items += [('<span class="badge contaminated">CONTAMINATED</span> ' if n.startswith("‡")
               else "") + e(n) for n in analysis.contamination_notes()]
    items += [e(n) for n in analysis.notes]
    return '<ul class="note">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def submitted_files(root: Path | None = None) -> dict[str, SubmittedFile]:
    """{backbone name: its card or Python file} of the bundles under `root` (default
    $BRAINBENCH_SUBMISSIONS or leaderboard/submissions), for the reproduce commands: a
    submitted backbone is no registered name, `make bench` needs its file."""
    from brainbench.submission.bundle import MANIFEST, read_manifest, submissions_dir

    root = Path(root or submissions_dir())
    out: dict[str, SubmittedFile] = {}
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else ():
        try:
            manifest = read_manifest(manifest_path.parent)
        except BenchError:
            continue
        name = (manifest.get("backbone") or {}).get("file")
        if name and (manifest_path.parent / name).is_file():
            out[manifest["name"]] = SubmittedFile(str(manifest_path.parent / name),
                                                  str(manifest["weights"].get("sha256")))
    return out


def reproduce_command(record: CellRecord,
                      submitted: Mapping[str, SubmittedFile] | None = None) -> str:
    """The one command that recomputes this cell (from a clean clone, same code version).

    A submitted backbone (``submitted``, see `submitted_files`) is named by its bundle's card
    or Python file, which `make bench MODEL=` accepts; built-ins by their name."""
    p = record.provenance
    model = record.entry.backbone
    source = (submitted or {}).get(model)
    if source is not None and source.weights_sha256 == str(p["weights_sha256"]):
        model = shlex.quote(source.path)
    parts = [f"make bench MODEL={model}", f"FRACTION={record.fraction:g}",
             f"TASKS={record.task}", f"SEEDS={record.seed}", f"PROFILE={p['profile']}",
             f"PRECISION={p.get('precision', 'fp32')}"]  # auto may choose otherwise elsewhere
    if p.get("head", "linear") != "linear":
        parts.append(f"PROTOCOL={p['head']}")
    if p.get("trials"):
        parts.append(f"TRIALS={p['trials']}")
    if str(p["data_source"]).startswith("real:"):
        parts.append(f"DATA={str(p['data_source']).removeprefix('real:')}")
    if not record.entry.is_reference_point:  # controls take no weights, random-init none
        parts.append(f"WEIGHTS=/path/to/checkpoint.pth REQUIRE_WEIGHTS=1  "
                     f"# the checkpoint whose sha256 is {p['weights_sha256']}")
    return " ".join(parts)


def _verification(provenance: dict) -> str:
    """Computed here / imported with every claim verified, or the fields that were not."""
    unverified = provenance.get("unverified") or {}
    if not unverified:
        return "yes"
    return ('<span class="badge unverified">UNVERIFIED</span> ' + "; ".join(
        f"<code>{e(k)}</code>: {e(str(v))}" for k, v in sorted(unverified.items())))


def _provenance_table(analysis: Analysis, task: str) -> str:
    rows = []
    for key in sorted((k for k in analysis.cells if k[1] == task),
                      key=lambda k: (analysis.entries.index(k[0]), k[2], k[3])):
        r = analysis.cells[key]
        p = r.provenance
        css = ' class="random"' if r.entry.is_random else ""
        rows.append(
            f"<tr{css}><td>{e(r.entry.display)}</td><td>{r.fraction:g}</td><td>{r.seed}</td>"
            f"<td>{r.value:.4f}</td><td>{int(p['n_train'])} / {int(p['n_test'])}</td>"
            f"<td>{e(str(p.get('precision', 'fp32')))}</td>"
            f"<td><code>{e(str(p['code_version']))}</code></td>"
            f"<td><code title=\"{e(str(p['weights_sha256']))}\">"
            f"{e(str(p['weights_sha256'])[:16])}…</code></td>"
            f"<td><code title=\"{e(str(p['split_hash']))}\">{e(str(p['split_hash'])[:12])}…"
            f"</code></td><td>{e(str(p['created_at']))}</td>"
            f"<td>{_verification(p)}</td>"
            f"<td><code>{e(reproduce_command(r, analysis.submitted))}</code></td></tr>")
    head = ("<tr><th>backbone</th><th>fraction</th><th>seed</th>"
            f"<th>{e(analysis.metric(task))}</th><th>n train / test</th><th>precision</th>"
            "<th>code version</th>"
            "<th>weights sha256</th><th>split hash</th><th>date (UTC)</th>"
            "<th>verified</th><th>reproduce</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _fraction_table(analysis: Analysis, task: str) -> str:
    fractions = analysis.fractions(task)
    comparisons = {f: analysis.comparisons(f) for f in fractions}
    heads = "".join(f'<th data-key="f{i}" data-best="{analysis.direction(task)}">'
                    f"fraction {f:g}</th>" for i, f in enumerate(fractions))
    rows, flags = [], analysis.flags
    for entry in analysis.entries:
        cells = "".join(_score_cell(analysis, entry, task, f, comparisons[f]) for f in fractions)
        css = ' class="random"' if entry.is_random else ""
        rows.append(f"<tr{css}>{_entry_cell(entry, flags.get(entry.backbone, ()))}{cells}</tr>")
    foot = _detectable_row(analysis, [analysis.detectable_differences(f).get(task)
                                      for f in fractions])
    return (f'<table class="sortable"><thead><tr><th data-key="backbone" data-type="text">'
            f"backbone</th><th>weights</th>{heads}</tr></thead><tbody>{''.join(rows)}"
            f"</tbody><tfoot>{foot}</tfoot></table>")


def _efficiency_table(analysis: Analysis, task: str) -> str:
    rows = []
    for entry in analysis.entries:
        eff = analysis.efficiency(entry, task)
        if eff is None:
            continue
        css = ' class="random"' if entry.is_random else ""
        rows.append(f"<tr{css}><td>{e(entry.display)}</td>"
                    f"<td>{eff.nauc:.3f} <span class=\"ci\">[{eff.nauc_ci[0]:.3f}, "
                    f"{eff.nauc_ci[1]:.3f}]</span></td>"
                    f"<td>{eff.f95:g} <span class=\"ci\">[{eff.f95_ci[0]:g}, "
                    f"{eff.f95_ci[1]:g}]</span></td>"
                    f"<td>{', '.join(f'{f:g}' for f in eff.fractions)}</td></tr>")
    if not rows:
        return "<p class=\"note\">Label efficiency needs at least two label fractions.</p>"
    return ("<table><thead><tr><th>backbone</th><th>normalised log-fraction AUC [95% CI]</th>"
            "<th>smallest fraction reaching 95% of the full-data score [95% CI]</th>"
            f"<th>fractions</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class=\"note\">Normalised AUC = area under the curve over log10(fraction) "
            "divided by the log-fraction span: the curve's average score, in the metric's own "
            "units and direction. 'Full data' = the largest fraction run. For error metrics "
            "(lower is better) reaching 95% means error ≤ full-data error / 0.95.</p>")


def _interval(mean: float, low: float, high: float) -> str:
    if low != low:  # no interval (the metric cannot be recomputed from predictions)
        return f"{mean:.3f}"
    return f'{mean:.3f}<br><span class="ci">[{low:.3f}, {high:.3f}]</span>'


def _survival_table(analysis: Analysis, task: str) -> str:
    """Uno's C and the log-rank p per fraction (survival tasks whose cells stored their
    training reference); empty otherwise."""
    if next(t for t in analysis.tasks if t.id == task).kind != "survival":
        return ""
    columns = [(f, m) for f in analysis.fractions(task) for m in SURVIVAL_SECONDARY]
    rows = []
    for entry in analysis.entries:
        found = [analysis.secondary(entry, task, f, m) for f, m in columns]
        if all(x is None for x in found):
            continue
        cells = "".join("<td>–</td>" if x is None else
                        f"<td>{_interval(x.mean, x.ci_low, x.ci_high)}</td>" for x in found)
        css = ' class="random"' if entry.is_random else ""
        rows.append(f"<tr{css}><td>{e(entry.display)}</td>{cells}</tr>")
    if not rows:
        return ""
    heads = "".join(f"<th>{e(m)} {'↑' if m == 'c_uno' else '↓'}<br>fraction {f:g}</th>"
                    for f, m in columns)
    return (f"<h2>{e(SURVIVAL_TITLE)}</h2><table><thead><tr><th>backbone</th>{heads}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
            f'<p class="note">{e(SURVIVAL_SECONDARY_NOTE)}</p>')


def _unseen_site_table(analysis: Analysis, task: str) -> str:
    """In-distribution vs held-out-site score and the drop, per fraction; empty without
    site-held-out results for the task."""
    unseen = analysis.unseen_sites
    if unseen is None:
        return ""
    rows = []
    for f in analysis.fractions(task):
        for d in site_drops(analysis, unseen, f):
            if d.task != task:
                continue
            css = ' class="random"' if d.entry.is_random else ""
            inside, outside = d.in_distribution, d.unseen
            rows.append(
                f"<tr{css}><td>{e(d.entry.display)}</td><td>{f:g}</td>"
                f"<td>{_interval(inside.mean, inside.ci_low, inside.ci_high)}</td>"
                f"<td>{e(d.site)} ({d.people} people)</td>"
                f"<td>{_interval(outside.mean, outside.ci_low, outside.ci_high)}</td>"
                f"<td>{_interval(d.drop, *d.drop_ci)}</td></tr>")
    if not rows:
        return ""
    return (f"<h2>{e(ROBUSTNESS_TITLE)}</h2><table><thead><tr><th>backbone</th>"
            "<th>fraction</th><th>in-distribution</th><th>held-out site</th>"
            f"<th>unseen site</th><th>drop</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            f'</table><p class="note">{e(ROBUSTNESS_NOTE)}</p>')


#: what the curve figures draw, under each of them
CURVES_NOTE = ("mean over seeds; error bars and bands: the tables' 95% two-level bootstrap "
               "interval; grey boxes: the chance row's 95% range (shuffled labels); dashed "
               "lines, hollow markers = random-init; dotted lines, hollow squares = control.")


def _task_figure(analysis: Analysis, task: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        draw_task(ax, analysis, task)
        ax.legend(*chance_last(*ax.get_legend_handles_labels()), fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)


def build_site(analysis: Analysis, out_dir: Path, fraction: float | None = None,
               analyses: Sequence[AnalysisResult] = (), results_dir: Path | None = None) -> Path:
    """Write the site into ``out_dir`` (replacing what a previous build left); returns index.

    ``analyses``: representation-analysis rows (brainbench.analyses) to give a page per
    backbone and a comparison page, linked from the index; ``results_dir`` holds their figures.
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "figures").mkdir(parents=True)
    headline = fraction if fraction is not None else analysis.headline_fraction()
    others = [f for f in sorted(analysis.fractions(), reverse=True) if f != headline]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    first = next(iter(analysis.cells.values()))
    protocols = analysis.protocols or [str(first.provenance["head"])]
    context = (f"profile <code>{e(str(first.provenance['profile']))}</code>, data "
               f"<code>{e(str(first.provenance['data_source']))}</code>, "
               f"protocol{'s' if len(protocols) > 1 else ''} "
               + ", ".join(f"<code>{e(p)}</code>" for p in protocols) + f"; built {e(stamp)}")
    tasks = "".join(f'<li><a href="task-{e(t.id)}.html">{e(t.id)}</a>: {e(t.endpoint)} '
                    f'({e(t.dataset)})</li>' for t in analysis.tasks)
    sections = [f"<h1>brainbench leaderboard</h1><p class=\"note\">{context}</p>",
                f"<h2>Overall, label fraction {headline:g}</h2>",
                overall_table(analysis, headline, "overall"),
                mcnemar_table(analysis, _classification(analysis, headline)), legend(analysis)]
    if len(analysis.fractions()) > 1:
        write_curves(analysis, staging / "figures", stem="label_scarcity")
        sections.append('<h2>Label-scarcity curves</h2><img src="figures/label_scarcity.png" '
                        'alt="label-scarcity curves, one panel per task"> <p class="note">'
                        f'<a href="figures/label_scarcity.svg">SVG</a>; {e(CURVES_NOTE)}</p>')
    for f in others:
        sections += [f"<h2>Label fraction {f:g}</h2>", overall_table(analysis, f, None),
                     mcnemar_table(analysis, _classification(analysis, f))]
    sections.append(f"<h2>Tasks</h2><ul>{tasks}</ul>")
    listing = write_analysis_pages(staging, analyses, results_dir)
    if listing:
        sections.append("<h2>Representation analyses</h2><p class=\"note\">PCA maps, tissue / "
                        "lesion / site probes, CKA and kNN agreement (<code>brainbench analyze"
                        f"</code>); <a href=\"{ANALYSES_INDEX}\">all analyses</a></p>{listing}")
    (staging / "index.html").write_text(_page("brainbench leaderboard", "\n".join(sections)),
                                        encoding="utf-8")
    for spec in analysis.tasks:
        _task_figure(analysis, spec.id, staging / "figures" / f"{spec.id}.png")
        body = [f'<p><a href="index.html">← leaderboard</a></p><h1>{e(spec.id)}</h1>',
                f"<p>{e(spec.endpoint)}; dataset {e(spec.dataset)}; target "
                f"{e(spec.target_description)}; primary metric {e(spec.primary_metric)} "
                f"({'higher' if analysis.direction(spec.id) == 'higher' else 'lower'} is "
                f"better).</p>",
                f'<img src="figures/{e(spec.id)}.png" alt="label-scarcity curve of '
                f'{e(spec.id)}"><p class="note">{e(CURVES_NOTE)}</p>',
                "<h2>By label fraction</h2>",
                _fraction_table(analysis, spec.id),
                mcnemar_table(analysis, [(f"fraction {f:g}", spec.id, f)
                                         for f in analysis.fractions(spec.id)]),
                legend(analysis), _survival_table(analysis, spec.id),
                _unseen_site_table(analysis, spec.id),
                "<h2>Label efficiency</h2>", _efficiency_table(analysis, spec.id),
                "<h2>Provenance of every cell</h2>", _provenance_table(analysis, spec.id)]
        (staging / f"task-{spec.id}.html").write_text(_page(f"brainbench: {spec.id}",
                                                            "\n".join(body)), encoding="utf-8")
    (staging / MARKER).write_text("built by brainbench.leaderboard.site; safe to delete\n")
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
            shutil.rmtree(staging)
            raise BenchError(f"{out_dir} exists and is not a brainbench site (no {MARKER}); "
                             "refusing to replace it: choose an empty or new folder")
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    return out_dir / "index.html"
