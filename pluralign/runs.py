"""The run-folder contract every command follows: ``config.yaml``, ``metrics.json``, tables,
figures and ``report.html``, each written atomically (:mod:`pluralign.io`).

* :func:`write_config` records the config a run was built from (a dataclass or the mapping read);
* :func:`write_table` writes a pandas table (csv or parquet by suffix);
* :func:`write_metrics` writes ``metrics.json`` alone, :func:`write_report` writes it once together
  with a self-contained ``report.html`` that embeds the run's PNG figures (base64), so the file
  can be mailed or archived.

The HTML is rendered from ``metrics.json`` alone (plus the PNGs it lists), so ``pluralign report
--output-dir RUN_DIR`` rebuilds it at any time. Recognised top-level keys, each optional:

``title``, ``summary`` (list of lines), ``methods`` (name -> {micro, macro} estimates),
``differences`` (name -> estimate of a paired difference), ``learned_beta_variance``,
``claim`` ({holds, text}), ``diagnostics`` (name -> verdict text), ``win_rates`` (name -> stats),
``tables`` (list of {title, columns, rows}: small result tables, cells shown as given),
``figures`` (list of {file, caption}), ``failed_items`` (list), ``notes`` (list),
``runtime_seconds``. Everything else appears in the collapsible raw-JSON section.

Every command that writes a run folder goes through one guard, :func:`run_folder` (for a config
dataclass with ``output_dir`` and ``overwrite`` fields: :func:`run_guarded`), before it writes
anything: a missing or empty folder is written in place; a folder that holds anything is refused
(:class:`RunFolderError` naming what is there) unless ``overwrite=true``, which writes the new run
into a hidden sibling (``.NAME.overwrite``) and swaps it in whole once the command succeeds
(:func:`swap_folders`), so no file of the old run survives and a kill leaves the old run or the
new one, never a mix. Continuing a run (``train resume=true``, ``experiment replicate
resume=true``) writes in place: a resume is not an overwrite. ``report`` only re-renders a run's
own ``report.html`` and needs no guard.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import errno
import html
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from pluralign.errors import PluralignError
from pluralign.io import atomic_path, write_json, write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class RunFolderError(PluralignError):
    """A run folder lacks the file asked for, holds an unreadable one, or holds a run that a
    command would overwrite."""


T = TypeVar("T")
#: Staging folder -> the run folder it will replace, while an overwrite is under way.
_STAGED: dict[str, str] = {}
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@dataclasses.dataclass
class RunFolderOptions:
    """Fields of every command that writes a run folder.

    Attributes:
        overwrite: replace a run folder that already holds files, as a whole (the new run is
            written beside it and swapped in once it succeeds); without it such a folder is
            refused.
    """

    overwrite: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.overwrite, bool):
            raise RunFolderError(f"overwrite={self.overwrite!r} is invalid; use true or false")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _aside(root: Path) -> Path:
    return root.parent / f".{root.name}.replaced"


def swap_folders(new: str | os.PathLike[str], old: str | os.PathLike[str]) -> None:
    """Put folder ``new`` in the place of folder ``old`` and delete the old content.

    One atomic exchange where the OS allows it; else ``old`` is renamed aside, ``new`` renamed
    in and the aside folder deleted (a kill between the two renames leaves the old run aside,
    put back by the next :func:`run_folder` on that path)."""
    new, old = Path(new), Path(old)
    if _exchange(new, old):
        shutil.rmtree(new)
        return
    aside = _aside(old)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(old, aside)
    os.rename(new, old)
    shutil.rmtree(aside)


def _staging(root: Path) -> Path:
    return root.parent / f".{root.name}.overwrite"


@contextlib.contextmanager
def run_folder(output_dir: str | os.PathLike[str], overwrite: bool = False, *,
               resume: bool = False, primary: bool = True,
               can_resume: bool = False) -> Iterator[Path]:
    """The run-folder guard: yield the folder a command writes its run into.

    ``output_dir`` missing or empty, or ``resume`` (continuing the run there): ``output_dir``
    itself. Holding anything else: :class:`RunFolderError` naming a few entries and
    ``overwrite=true``, before anything is written; with ``overwrite``, a fresh hidden sibling
    ``.NAME.overwrite`` that replaces ``output_dir`` as a whole when the block succeeds (and is
    deleted when it fails, leaving the old run untouched). ``primary=False`` (the other ranks of
    a distributed run) neither cleans nor swaps; ``can_resume`` adds ``resume=true`` to the
    refusal's ways out.
    """
    if not isinstance(overwrite, bool):
        raise RunFolderError(f"overwrite={overwrite!r} is invalid; use true or false")
    root = Path(output_dir)
    aside = _aside(root)
    if primary and not root.exists() and aside.is_dir():
        os.rename(aside, root)  # a kill between swap_folders' two renames: the old run is back
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"output_dir {output_dir} is a file, not a folder; choose another "
                             "output_dir")
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if resume or not entries:
        yield root
        return
    if not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunFolderError(
            f"run folder {output_dir} already holds a run ({shown}); "
            + ("set resume=true to continue that run, " if can_resume else "")
            + "pass overwrite=true to replace the whole folder, or choose another output_dir")
    if Path.cwd().resolve().is_relative_to(root.resolve()):
        raise RunFolderError(f"overwrite=true cannot replace {output_dir}: it holds the current "
                             "folder; run the command from outside it")
    staging = _staging(Path(os.path.abspath(root)))
    if primary:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed overwrite
        staging.mkdir()
    _STAGED[os.fspath(staging)] = os.fspath(root)
    try:
        yield staging
        if primary:
            swap_folders(staging, os.path.abspath(root))
    finally:
        _STAGED.pop(os.fspath(staging), None)
        if primary:
            shutil.rmtree(staging, ignore_errors=True)


def published(value: Any) -> Any:
    """``value`` with every path inside a staging folder of :func:`run_folder` shown as the path
    it will have once swapped in (for config.yaml and the paths printed)."""
    if isinstance(value, Mapping):
        return {k: published(v) for k, v in value.items()}
    if isinstance(value, list):
        return [published(v) for v in value]
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        for staging, final in _STAGED.items():
            if text == staging or text.startswith(staging + os.sep):
                return final + text[len(staging):]
    return value


def run_guarded(config: Any, run: Callable[[Any], T], *, resume: bool = False) -> T:
    """``run(config)`` behind :func:`run_folder` on ``config.output_dir`` (with
    ``config.overwrite``): with an overwrite, ``run`` gets a copy of ``config`` whose
    ``output_dir`` is the staging folder. A config without ``output_dir`` runs as it is."""
    output_dir = getattr(config, "output_dir", None)
    if output_dir is None:
        return run(config)
    with run_folder(output_dir, getattr(config, "overwrite", False), resume=resume) as out:
        if out != Path(output_dir):
            config = dataclasses.replace(config, output_dir=os.fspath(out))
        return run(config)


@dataclasses.dataclass
class ReportConfig:
    """``pluralign report``: rebuild a run folder's report.html from its metrics.json and PNGs.

    Attributes:
        output_dir: the run folder.
    """

    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise RunFolderError("report needs --output-dir RUN_FOLDER")


def plain(value: Any) -> Any:
    """``value`` with dataclasses, tuples, paths and numpy scalars turned into YAML/JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_config(run_dir: str | os.PathLike[str], config: Any) -> Path:
    """Record the config of a run as ``config.yaml`` (a dataclass or the mapping read)."""
    text = yaml.safe_dump(published(plain(config)), sort_keys=False, allow_unicode=True)
    return write_text(Path(run_dir) / CONFIG_FILE, text)


def write_metrics(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` alone (runs without a report page, e.g. training)."""
    return write_json(Path(run_dir) / METRICS_FILE, plain(metrics))


def write_table(run_dir: str | os.PathLike[str], name: str, frame: Any,
                index: bool = False) -> Path:
    """Write a pandas DataFrame as ``name`` (``.parquet`` or ``.csv``) inside the run folder."""
    path = Path(run_dir) / name
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=index)
        else:
            frame.to_csv(tmp, index=index)
    return path


def read_table(path: str | os.PathLike[str], required: Sequence[str] = ()) -> Any:
    """Read a csv, parquet or jsonl table (by suffix) as a pandas DataFrame.

    Raises :class:`RunFolderError` naming the file when it is missing, of another format, not
    readable as its format (empty, binary, truncated), lacks one of the ``required`` columns or
    has no rows: never pandas' or pyarrow's traceback.
    """
    import pandas as pd

    p = Path(path)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
               ".jsonl": lambda f: pd.read_json(f, lines=True)}
    kind = p.suffix.lower()
    if kind not in readers:
        raise RunFolderError(f"{path}: unsupported table format {p.suffix!r}; use .csv, "
                             ".parquet or .jsonl")
    if not p.is_file():
        raise RunFolderError(f"{path}: no such file")
    try:
        frame = readers[kind](p)
    except (ValueError, OSError) as exc:  # EmptyDataError, ParserError, UnicodeDecodeError, Arrow
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFolderError(f"{path}: cannot read it as {kind[1:]} ({reason}); pass a "
                             f"well-formed {kind[1:]} table") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise RunFolderError(f"{path}: no {', '.join(map(repr, missing))} {noun}; columns: "
                             f"{sorted(map(str, frame.columns))}")
    if frame.empty:
        raise RunFolderError(f"{path}: no rows")
    return frame


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.bad { color: #b00020; } .good { color: #1b5e20; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:{spec}}"
    return html.escape(str(x))


def format_interval(interval: tuple[float, float] | None, spec: str = ".4g") -> str:
    """``[low, high]`` with each end formatted by ``spec``; ``n/a`` without an interval."""
    if interval is None:
        return "n/a"
    return f"[{_fmt(interval[0], spec)}, {_fmt(interval[1], spec)}]"


def format_estimate(e: Mapping[str, Any] | None, spec: str = ".4g") -> str:
    """``mean [ci_low, ci_high]`` of an estimate dict (the CI only when both ends exist)."""
    if not e:
        return "–"
    has_ci = e.get("ci_low") is not None and e.get("ci_high") is not None
    ci = f" {format_interval((e['ci_low'], e['ci_high']), spec)}" if has_ci else ""
    return f"{_fmt(e.get('mean'), spec)}{ci}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(run_dir: Path, file: str, caption: str) -> str:
    """An embedded figure, or a visible note if ``file`` is missing or lies outside ``run_dir``
    (an absolute path, ``..`` or a symlink leading out): a report embeds only its own files."""
    path = (run_dir / file).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        return (f"<p class='bad'>figure not embedded: {html.escape(file)} is outside the run "
                "folder</p>")
    if not path.is_file():
        return f"<p class='bad'>missing figure {html.escape(file)}</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(file)}' src='data:image/png;base64,{data}' "
            f"style='max-width:100%'><figcaption>{html.escape(caption)} "
            f"(<code>{html.escape(file)}</code>)</figcaption></figure>")


#: The shape every recognised top-level key of metrics.json must have (others are free).
_SHAPES: dict[str, tuple[type | tuple[type, ...], type | tuple[type, ...] | None, str]] = {
    "summary": (list, None, "a list of lines"),
    "notes": (list, None, "a list of lines"),
    "figures": (list, None, "a list of {file, caption}"),
    "failed_items": (list, Mapping, "a list of mappings"),
    "tables": (list, Mapping, "a list of {title, columns, rows}"),
    "methods": (Mapping, Mapping, "a mapping name -> {micro, macro}"),
    "differences": (Mapping, Mapping, "a mapping name -> estimate"),
    "win_rates": (Mapping, Mapping, "a mapping name -> win-rate stats"),
    "diagnostics": (Mapping, None, "a mapping name -> verdict"),
    "learned_beta_variance": (Mapping, None, "a mapping population -> number"),
    "claim": (Mapping, None, "a mapping {holds, text}"),
    "runtime_seconds": ((int, float), None, "a number"),
}


def check_metrics(metrics: Any, where: str | os.PathLike[str]) -> Mapping[str, Any]:
    """``metrics`` if it is a mapping whose recognised keys (module docstring) have their shape,
    else :class:`RunFolderError` naming ``where``, the key and the shape it needs."""
    if not isinstance(metrics, Mapping):
        raise RunFolderError(f"{where}: expected a JSON object (keys such as 'title', "
                             f"'figures'), got a {type(metrics).__name__}")
    for key, (outer, inner, wanted) in _SHAPES.items():
        value = metrics.get(key)
        if value is None:
            continue
        items = value.values() if isinstance(value, Mapping) else value
        ok = (isinstance(value, outer) and not isinstance(value, bool)
              and (inner is None or all(isinstance(v, inner) for v in items)))
        if ok and key == "tables":
            ok = all(isinstance(t.get("columns"), list) and isinstance(t.get("rows"), list)
                     and all(isinstance(r, list) for r in t["rows"]) for t in value)
        if not ok:
            raise RunFolderError(f"{where}: {key!r} must be {wanted}, got {value!r:.80}; "
                                 "rewrite it or delete the key")
    return metrics


def render_html(metrics: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str:
    """The report page for ``metrics`` (figures are read from ``run_dir``)."""
    run_dir = Path(run_dir)
    title = html.escape(str(metrics.get("title", "pluralign report")))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body><h1>{title}</h1>"]
    if metrics.get("summary"):
        parts.append("<h2>Summary</h2><ul>" + "".join(
            f"<li>{html.escape(str(s))}</li>" for s in metrics["summary"]) + "</ul>")
    claim = metrics.get("claim")
    if claim:
        cls = "good" if claim.get("holds") else "bad"
        parts.append(f"<h2>Claim under test</h2><p class='{cls}'>"
                     f"{html.escape(str(claim.get('text', '')))}</p>")
    if metrics.get("learned_beta_variance"):
        lbv = metrics["learned_beta_variance"]
        parts.append("<h3>Learned β variance (Gamma MixDPO, final step)</h3>"
                     + _table(["population", "Var[β]"], [[html.escape(k), _fmt(v, ".6g")]
                                                         for k, v in lbv.items()]))
    if metrics.get("methods"):
        rows = [[html.escape(name), format_estimate(m.get("micro")),
                 format_estimate(m.get("macro"))] for name, m in metrics["methods"].items()]
        parts.append("<h2>Preference margins (95% bootstrap CIs)</h2>"
                     + _table(["method", "micro", "macro"], rows))
    if metrics.get("differences"):
        rows = [[html.escape(name), format_estimate(d)]
                for name, d in metrics["differences"].items()]
        parts.append("<h3>Paired differences (95% paired-bootstrap CIs)</h3>"
                     + _table(["difference", "estimate [CI]"], rows))
    if metrics.get("diagnostics"):
        rows = [[html.escape(k), html.escape(str(v))] for k, v in metrics["diagnostics"].items()]
        parts.append("<h2>Heterogeneity diagnostic</h2>" + _table(["item", "verdict"], rows))
    if metrics.get("win_rates"):
        rows = []
        for name, w in metrics["win_rates"].items():
            rows.append([html.escape(name),
                         format_estimate({"mean": w.get("win_rate"), "ci_low": w.get("ci_low"),
                                          "ci_high": w.get("ci_high")}),
                         format_estimate({"mean": w.get("lc_win_rate"),
                                          "ci_low": w.get("lc_ci_low"),
                                          "ci_high": w.get("lc_ci_high")}),
                         _fmt(w.get("p_value")), _fmt(w.get("n"))])
        parts.append("<h2>Win rates vs baseline (%)</h2>"
                     + _table(["policy", "WR [CI]", "LC-WR [CI]", "sign-flip p", "n"], rows))
    for t in metrics.get("tables") or []:
        parts.append(f"<h2>{html.escape(str(t.get('title', '')))}</h2>" + _table(
            [str(c) for c in t["columns"]], [[_fmt(c) for c in row] for row in t["rows"]]))
    for fig in metrics.get("figures") or []:
        if not isinstance(fig, Mapping) or not isinstance(fig.get("file"), str):
            parts.append(f"<p class='bad'>figure not embedded: entry has no file name "
                         f"(<code>{html.escape(repr(fig))}</code>)</p>")
            continue
        parts.append(_figure(run_dir, fig["file"], str(fig.get("caption", ""))))
    failed = metrics.get("failed_items") or []
    parts.append(f"<h2>Failed items ({len(failed)})</h2>")
    if failed:
        keys = sorted({k for f in failed for k in f})
        parts.append(_table(keys, [[_fmt(f.get(k)) for k in keys] for f in failed]))
    else:
        parts.append("<p>None: every item was evaluated.</p>")
    if metrics.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li>{html.escape(str(s))}</li>" for s in metrics["notes"]) + "</ul>")
    if metrics.get("runtime_seconds") is not None:
        parts.append(f"<p>Runtime: {_fmt(float(metrics['runtime_seconds']), '.3g')} s</p>")
    parts.append("<details><summary>metrics.json</summary><pre>"
                 + html.escape(json.dumps(metrics, indent=2, sort_keys=True)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``run_dir`` (atomically); return the HTML."""
    run_dir = Path(run_dir)
    write_metrics(run_dir, metrics)
    return write_text(run_dir / REPORT_FILE, render_html(metrics, run_dir))


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Re-render ``report.html`` from a run folder's ``metrics.json`` and PNGs."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise RunFolderError(f"{path} not found; pass a run folder written by `pluralign demo`, "
                              "`evaluate`, `diagnose`, `nbc` or `simulate`")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: invalid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not UTF-8 text (byte {exc.start}); metrics.json is "
                             "written as UTF-8 JSON: rewrite it or rerun the command") from None
    except RecursionError:
        raise RunFolderError(f"{path}: JSON nested too deeply to be a metrics file; rewrite it "
                             "or rerun the command") from None
    return write_text(Path(run_dir) / REPORT_FILE,
                      render_html(check_metrics(metrics, path), run_dir))
