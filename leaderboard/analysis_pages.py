"""Site pages of the representation analyses (brainbench.analyses): one page per backbone (its
PCA maps and probe scores) and a comparison page (CKA and kNN-agreement matrices).

Rows come from the store's analyses table; the newest row of each (analysis id, metric) is
shown. Random-init and control backbones carry the same badges as on the leaderboard, and every
score is shown beside its chance level and the shuffled-label control, so "well above chance"
can be read off the page. Figures are copied into the site, so it stays self-contained.
"""

from __future__ import annotations

import html
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from brainbench.errors import BenchError
from brainbench.leaderboard.tables import CONTROL_NOTE, RANDOM_NOTE
from brainbench.store import AnalysisResult

e = html.escape
MARKER = ".brainbench-site"
INDEX = "analyses.html"
COMPARE = "analysis-compare.html"
READING = {
    "pca_map": "first three principal components of the patch tokens of reference slices as "
               "RGB; value = variance they explain",
    "tissue_probe": "linear probe: patch token -> tissue class (background / CSF / GM / WM); "
                    "higher = more anatomically organised",
    "lesion_probe": "linear probe: patch token -> lesion vs healthy brain patch; higher = more "
                    "pathology-sensitive",
    "site_probe": "linear probe: volume feature -> acquisition site; LOWER = more invariant "
                  "to the scanner",
}


def latest(rows: Sequence[AnalysisResult]) -> list[AnalysisResult]:
    """The newest row of each (analysis id, metric), in first-written order."""
    newest: dict[tuple[str, str], AnalysisResult] = {}
    for row in rows:
        newest[(row.analysis_id, row.metric)] = row
    return list(newest.values())


def _key(row: AnalysisResult) -> tuple[str, str]:
    return row.backbone, row.weights_id


def page_name(backbone: str, weights_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone)
    return f"analysis-{safe}-{weights_id.split(':')[-1][:8]}.html"


def badge(status: str) -> str:
    return {"random-init": '<span class="badge">RANDOM-INIT</span>',
            "control": '<span class="badge">CONTROL</span>'}.get(status, "")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _page(title: str, body: str) -> str:
    from brainbench.leaderboard.site import _page as site_page

    return site_page(title, body)


def _notes(statuses: set[str]) -> str:
    items = []
    if "random-init" in statuses:
        items.append(badge("random-init") + " " + e(RANDOM_NOTE))
    if "control" in statuses:
        items.append(badge("control") + " " + e(CONTROL_NOTE))
    return ('<ul class="note">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>") if items \
        else ""


def _backbone_page(rows: list[AnalysisResult], out: Path, results_dir: Path | None) -> str:
    first = rows[0]
    scalar = [r for r in rows if r.analysis not in ("cka", "knn_agreement")]
    body = [f'<p><a href="{INDEX}">← analyses</a> · <a href="index.html">leaderboard</a></p>',
            f"<h1>{e(first.backbone)}{badge(first.weights_status)}</h1>",
            f"<p class=\"note\">weights <code>{e(first.weights_id)}</code> "
            f"({e(first.weights_status)}); profile <code>{e(first.profile)}</code>, data "
            f"<code>{e(first.data_source)}</code>, precision {e(first.precision)}</p>"]
    heads = ("analysis", "dataset", "metric", "value [95% CI]", "chance", "n people / items",
             "profile / data", "version")
    lines = []
    for r in scalar:
        interval = "" if r.lower is None else f" [{r.lower:.3f}, {r.upper:.3f}]"
        people = r.details.get("n_people", "")
        items = r.details.get("n_items", r.details.get("n_patches", ""))
        lines.append(f"<tr><td>{e(r.analysis)}<br><span class=\"ci\">"
                     f"{e(READING.get(r.analysis, ''))}</span></td><td>{e(r.dataset)}</td>"
                     f"<td>{e(r.metric)}</td><td>{_number(r.value)}{interval}</td>"
                     f"<td>{_number(r.chance)}</td><td>{e(str(people))} / {e(str(items))}</td>"
                     f"<td>{e(r.profile)}<br><span class=\"ci\">{e(r.data_source)}</span></td>"
                     f"<td>v{r.version}</td></tr>")
    body.append("<h2>Scores</h2><table><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads)
                + "</tr></thead><tbody>" + "".join(lines) + "</tbody></table>")
    body.append('<p class="note">Probes are scored out of fold (StratifiedGroupKFold by person); '
                "intervals resample people. <code>:shuffled</code> rows are the same probe on "
                "labels shuffled across items: where chance lies on these data.</p>")
    for r in scalar:
        figure = r.details.get("figure")
        if not figure or results_dir is None:
            continue
        source = Path(results_dir) / figure
        if not source.is_file():
            body.append(f'<p class="note">figure {e(figure)} is missing from the results '
                        "folder; rerun <code>brainbench analyze</code></p>")
            continue
        target = out / "figures" / "analysis" / Path(figure).name
        target = target.with_name(f"{Path(page_name(r.backbone, r.weights_id)).stem}-"
                                  f"{target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        body.append(f"<h2>{e(r.analysis)}: {e(r.dataset)}</h2><img src=\""
                    f"{e(target.relative_to(out).as_posix())}\" alt=\"PCA map of "
                    f"{e(r.backbone)} on {e(r.dataset)}\">")
    body.append(_notes({first.weights_status}))
    return _page(f"brainbench analyses: {first.backbone}", "\n".join(body))


def _matrix(rows: list[AnalysisResult], analysis: str) -> str:
    """One table per dataset: rows backbone, columns the other backbone."""
    out = []
    by_dataset: dict[tuple[str, str, str], list[AnalysisResult]] = defaultdict(list)
    for r in rows:  # never one matrix across profiles or data sources
        if r.analysis == analysis:
            by_dataset[(r.dataset, r.profile, r.data_source)].append(r)
    for (dataset, profile, source), part in sorted(by_dataset.items()):
        names = list(dict.fromkeys(r.backbone for r in part))
        status = {r.backbone: r.weights_status for r in part}
        cell = {(r.backbone, r.details.get("other")): r for r in part}
        chance = next((r.chance for r in part if r.chance is not None), None)
        head = "".join(f"<th>{e(n)}{badge(status[n])}</th>" for n in names)
        body = "".join(
            f"<tr><th>{e(a)}{badge(status[a])}</th>" + "".join(
                f"<td>{_number(cell[(a, b)].value) if (a, b) in cell else '–'}</td>"
                for b in names) + "</tr>" for a in names)
        note = f" (chance {chance:.3f})" if chance is not None else ""
        out.append(f"<h3>{e(dataset)}{note}</h3><p class=\"note\">profile {e(profile)}, data "
                   f"<code>{e(source)}</code>, {part[0].details.get('n', '?')} people</p>"
                   f"<table><thead><tr><th></th>{head}</tr></thead>"
                   f"<tbody>{body}</tbody></table>")
    return "".join(out)


def _compare_page(rows: list[AnalysisResult]) -> str:
    pairwise = [r for r in rows if r.analysis in ("cka", "knn_agreement")]
    body = [f'<p><a href="{INDEX}">← analyses</a> · <a href="index.html">leaderboard</a></p>',
            "<h1>Backbone similarity</h1>",
            '<p class="note">Volume features (CLS, mean over slices) of the same people. Linear '
            "CKA: 1 = the same representation up to rotation and scale. kNN agreement: mean "
            "overlap of each person's k nearest neighbours (cosine) in the two spaces.</p>",
            "<h2>Linear CKA</h2>", _matrix(pairwise, "cka") or "<p>no pairs stored</p>",
            "<h2>kNN retrieval agreement</h2>",
            _matrix(pairwise, "knn_agreement") or "<p>no pairs stored</p>",
            _notes({r.weights_status for r in pairwise})]
    return _page("brainbench analyses: backbone similarity", "\n".join(body))


def write_analysis_pages(out: Path, rows: Sequence[AnalysisResult],
                         results_dir: Path | None) -> str:
    """Write the analysis pages into site folder ``out``; returns the HTML list linking them
    (for the leaderboard's index), empty without rows."""
    rows = latest(rows)
    if not rows:
        return ""
    groups: dict[tuple[str, str], list[AnalysisResult]] = defaultdict(list)
    for r in rows:
        groups[_key(r)].append(r)
    links = []
    for (backbone, weights_id), part in groups.items():
        name = page_name(backbone, weights_id)
        (out / name).write_text(_backbone_page(part, out, results_dir), encoding="utf-8")
        links.append(f'<li><a href="{e(name)}">{e(backbone)}</a>{badge(part[0].weights_status)}'
                     f' <span class="ci">{e(weights_id)}</span></li>')
    (out / COMPARE).write_text(_compare_page(rows), encoding="utf-8")
    items = "".join(links) + f'<li><a href="{COMPARE}">backbone similarity (CKA, kNN)</a></li>'
    listing = f"<ul>{items}</ul>"
    (out / INDEX).write_text(_page("brainbench analyses", "<h1>Representation analyses</h1>"
                                   + listing + _notes({r.weights_status for r in rows})),
                             encoding="utf-8")
    return listing


def write_analysis_site(out: Path, rows: Sequence[AnalysisResult], results_dir: Path) -> Path:
    """`brainbench analyze`: write the analysis pages into the site folder (created when absent;
    a later `brainbench leaderboard` rebuilds them with the rest). Returns analyses.html."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BenchError(f"{out} exists and is not a brainbench site (no {MARKER}); refusing to "
                         "write analysis pages into it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("built by brainbench.leaderboard.site; safe to delete\n")
    write_analysis_pages(out, rows, results_dir)
    return out / INDEX


def analysis_table(rows: Sequence[AnalysisResult]) -> str:
    """Plain-text summary of analysis rows for the terminal (pairwise rows as one line each)."""
    from tabulate import tabulate

    marker = {"random-init": " [RANDOM-INIT]", "control": " [CONTROL]"}
    lines = []
    for r in latest(rows):
        interval = "" if r.lower is None else f" [{r.lower:.3f}, {r.upper:.3f}]"
        lines.append([f"{r.backbone}{marker.get(r.weights_status, '')}", r.analysis, r.dataset,
                      r.metric, f"{_number(r.value)}{interval}", _number(r.chance)])
    return tabulate(lines, headers=["backbone", "analysis", "dataset", "metric",
                                    "value [95% CI]", "chance"], disable_numparse=True)
