"""Notebook 05's pictures: an infill beside the truth with the differences marked, the
"type a prefix and a suffix" widget, and exact match against training tokens.

Each function takes its data as arguments and returns HTML (a string), a widget, or a
matplotlib figure; none generates text itself except through `mamba_nb.infill.infill`.
Not here: task construction and scoring (`evaluate.py`).

For browser tests, the widget's parts carry CSS classes: `infill-prefix` and
`infill-suffix` (the two Textareas), `infill-button` (the "Infill" Button),
`infill-output` (the HTML widget); after a click the result is rendered inside it as
`<pre class="infill-result" data-clean="true|false">middle</pre>`.
"""
from __future__ import annotations

import difflib
import html
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from mamba_nb.viz.figure import figure

_STYLE = (
    "<style>"
    ".infill-code{font-family:monospace;white-space:pre;line-height:1.35;font-size:12px;}"
    ".infill-hole{background:#fff3b0;}"
    ".infill-same{}"
    ".infill-missing{background:#ffd6d6;text-decoration:line-through;}"
    ".infill-extra{background:#d6f5d6;}"
    ".infill-table td{vertical-align:top;padding:4px 10px;text-align:left;}"
    "</style>"
)


def diff_html(truth: str, prediction: str) -> str:
    """The prediction with its differences from the truth marked, character by character:
    `infill-extra` (the model wrote it, the truth has not) and `infill-missing` (the truth
    has it, the model did not write it)."""
    out = []
    matcher = difflib.SequenceMatcher(a=truth, b=prediction, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            out.append(f'<span class="infill-same">{html.escape(truth[a0:a1])}</span>')
            continue
        if a1 > a0:
            out.append(f'<span class="infill-missing">{html.escape(truth[a0:a1])}</span>')
        if b1 > b0:
            out.append(f'<span class="infill-extra">{html.escape(prediction[b0:b1])}</span>')
    return "".join(out)


def _context(prefix: str, suffix: str, lines: int) -> tuple[str, str]:
    before = "".join(prefix.splitlines(keepends=True)[-lines:]) if lines else ""
    after = "".join(suffix.splitlines(keepends=True)[: lines + 1]) if lines else ""
    return before, after


def infill_example_html(prefix: str, truth: str, prediction: str, suffix: str, *, context_lines: int = 4,
                        title: Optional[str] = None) -> str:
    """Two columns: the code with the true middle, and with the model's (differences marked).
    The hole is shaded; `context_lines` lines of prefix and suffix are shown around it."""
    before, after = _context(prefix, suffix, context_lines)
    b, a = html.escape(before), html.escape(after)
    left = f'<div class="infill-code">{b}<span class="infill-hole">{html.escape(truth)}</span>{a}</div>'
    right = f'<div class="infill-code">{b}<span class="infill-hole">{diff_html(truth, prediction)}</span>{a}</div>'
    head = f"<h4>{html.escape(title)}</h4>" if title else ""
    return (f'{_STYLE}{head}<table class="infill-table"><tr><th>truth</th><th>model</th></tr>'
            f"<tr><td>{left}</td><td>{right}</td></tr></table>")


def infill_result_html(text: str, clean: bool) -> str:
    """How the widget shows one infill (the element browser tests look for)."""
    note = "ended with &lt;|endoftext|&gt;" if clean else "cut by the token limit or a stop string"
    return (f'{_STYLE}<pre class="infill-result infill-code" data-clean="{str(clean).lower()}">'
            f"{html.escape(text)}</pre><small>{note}</small>")


# Everyday holes written for the course (not drawn from any evaluation set): a learner's first tries.
EXAMPLE_HOLES = [  # (prefix, true middle, suffix)
    ("def add(a, b):\n", "    return a + b", "\n"),
    ("for i in range(10):\n", "    print(i)", "\n"),
    ("def mean(values):\n    total = sum(values)\n", "    return total / len(values)", "\n"),
    ("with open(path) as f:\n", "    text = f.read()", "\nprint(len(text))\n"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n", "        self.y = y",
     "\n\n    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n"),
    ("try:\n    value = int(text)\n", "except ValueError:", "\n    value = 0\n"),
    ("if __name__ == \"__main__\":\n", "    main()", "\n"),
    ("import os\n\n\ndef exists(path):\n", "    return os.path.exists(path)", "\n"),
]


@dataclass
class Example:
    prefix: str
    middle: str  # the truth
    suffix: str
    result: object  # the model's `InfillResult`
    exact: bool


def pick_example(model, tokenizer, holes=EXAMPLE_HOLES, **infill_kwargs) -> Example:
    """The widget's default example, by a stated rule: the first of `holes` whose one-line greedy
    infill the model gets exactly right; if none, the one it fills most closely (edit similarity).
    So the example a learner first sees is one this model handles, and the rule says how it was chosen."""
    from mamba_nb.infill import infill
    from mamba_nb.scores import edit_similarity, exact_match

    results = infill(model, tokenizer, [h[0] for h in holes], [h[2] for h in holes], stop=["\n"], **infill_kwargs)
    scored = [Example(p, m, s, r, exact_match(r.text, m)) for (p, m, s), r in zip(holes, results)]
    exact = [e for e in scored if e.exact]
    if exact:
        return exact[0]
    return max(scored, key=lambda e: edit_similarity(e.result.text.strip(), e.middle.strip()))


def infill_widget(model, tokenizer, prefix: str = "", suffix: str = "", **infill_kwargs):
    """Two Textareas (prefix, suffix), an "Infill" Button, and an HTML output; the button calls
    `mamba_nb.infill.infill(model, tokenizer, prefix, suffix, **infill_kwargs)`."""
    import ipywidgets as W

    from mamba_nb.infill import infill

    layout = W.Layout(width="100%", height="140px")
    pre = W.Textarea(value=prefix, description="prefix", layout=layout)
    suf = W.Textarea(value=suffix, description="suffix", layout=layout)
    button = W.Button(description="Infill", button_style="primary")
    out = W.HTML(value="")
    for w, cls in ((pre, "infill-prefix"), (suf, "infill-suffix"), (button, "infill-button"), (out, "infill-output")):
        w.add_class(cls)

    def on_click(_):
        button.disabled = True
        try:
            r = infill(model, tokenizer, pre.value, suf.value, **infill_kwargs)
            out.value = infill_result_html(r.text, r.clean)
        except Exception as e:  # show the message where the learner is looking
            out.value = f'<pre class="infill-error">{html.escape(str(e))}</pre>'
        finally:
            button.disabled = False

    button.on_click(on_click)
    box = W.VBox([pre, suf, button, out])
    box.add_class("infill-widget")
    box.on_click = on_click  # so a test (or a notebook) can press it without a browser
    return box


def plot_exact_match_vs_tokens(points: Sequence[dict]):
    """Exact match (and edit similarity) of the FIM prompt against tokens seen in training,
    one point per snapshot. `points`: dicts with tokens_seen, exact_match, edit_similarity."""
    pts = sorted(points, key=lambda p: p["tokens_seen"])
    fig = figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    xs = [p["tokens_seen"] for p in pts]
    ax.plot(xs, [p["exact_match"] for p in pts], "o-", label="exact match")
    ax.plot(xs, [p["edit_similarity"] for p in pts], "s--", label="edit similarity")
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("single-line infilling (FIM prompt)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _gain_bars(ax, sets: dict) -> None:
    """Per hole set and layout, the suffix gain (solid) beside the content gain (hatched), each with
    its 95 % interval: how much of the gain is the suffix's content rather than the prompt's layout."""
    labels, bars = [], []  # bars: (x, value, interval, content?)
    pairs = any("content_gain" in gain[m] for gain in sets.values() for m in ("spm", "psm") if m in gain)
    for name, gain in sets.items():
        for mode in ("spm", "psm"):
            if mode in gain:
                g, x = gain[mode], len(labels)
                labels.append(f"{name}, {mode}")
                bars.append((x - 0.2 * pairs, g["gain"], g["interval"], False))
                if "content_gain" in g:
                    bars.append((x + 0.2, g["content_gain"], g["content_interval"], True))
    for content in (False, True):
        picked = [b for b in bars if b[3] == content]
        if not picked:
            continue
        xs, values = [b[0] for b in picked], np.array([b[1] for b in picked])
        err = [[v - b[2][0] for v, b in zip(values, picked)], [b[2][1] - v for v, b in zip(values, picked)]]
        ax.bar(xs, values, 0.38 if pairs else 0.8, yerr=err, capsize=3, color="#f28e2b" if content else "#4e79a7",
               hatch="//" if content else None, edgecolor="white" if content else None,
               label="content gain (shuffled − true suffix)" if content else "suffix gain (prefix only − FIM)")
    if labels:
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=25, ha="right")
        ax.legend(fontsize=7)


def plot_report(report: dict):
    """The evaluation table as bars → `Figure`: exact match and edit similarity of the FIM prompt
    against prefix only (left); the suffix gain and the content gain of each layout with their 95 %
    intervals (right)."""
    fig = figure(figsize=(9, 3.2))
    scores, gains = fig.subplots(1, 2)
    line = report.get("line", {})
    metrics = ("exact_match", "edit_similarity")
    x = np.arange(len(metrics))
    for k, (prompt, label, color) in enumerate((("fim", f"FIM ({report.get('mode', '')})", "#59a14f"),
                                               ("prefix_only", "prefix only", "#bab0ac"))):
        values = [line.get(prompt, {}).get(m, 0.0) for m in metrics]
        bars = scores.bar(x + (k - 0.5) * 0.38, values, 0.38, label=label, color=color)
        scores.bar_label(bars, fmt="%.3f", fontsize=7)
    scores.set_xticks(x, [m.replace("_", " ") for m in metrics])
    scores.set_ylim(0, 1)
    scores.set_title(f"held-out lines ({line.get('tasks', 0)} holes)", fontsize=9)
    scores.legend(fontsize=8)
    _gain_bars(gains, report.get("suffix_gain", {}))
    gains.axhline(0, color="black", lw=0.8)
    gains.set_ylabel("nats / token")
    gains.set_title("what the FIM prompt is worth, and the suffix's content", fontsize=9)
    for ax in (scores, gains):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_suffix_gain_curve(points: Sequence[dict]):
    """Suffix gain (solid) and content gain (dashed), each with its 95 % interval, of each snapshot
    against the tokens it had seen → `Figure`: when does the model start to use the suffix?
    `points`: dicts with tokens_seen and, per layout ("spm", "psm"), {"gain", "interval"} and,
    when measured, {"content_gain", "content_interval"}."""
    pts = sorted(points, key=lambda p: p["tokens_seen"])
    fig = figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    xs = np.array([p["tokens_seen"] for p in pts])
    for mode, color in (("spm", "#4e79a7"), ("psm", "#f28e2b")):
        if not pts or mode not in pts[0]:
            continue
        for value, interval, style, what in (("gain", "interval", "o-", "suffix gain"),
                                             ("content_gain", "content_interval", "s--", "content gain")):
            if value not in pts[0][mode]:
                continue
            ys = np.array([p[mode][value] for p in pts])
            lo = np.array([p[mode][interval][0] for p in pts])
            hi = np.array([p[mode][interval][1] for p in pts])
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2 if value == "gain" else 0.1)
            ax.plot(xs, ys, style, color=color, label=f"{mode.upper()} {what}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
