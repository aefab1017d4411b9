"""The registry of metrics and their selectable conventions (names from CONVENTIONS.md).

Default: the ReFusion authors' own evaluation code (``cddfuse``) where it has the metric, else the
MATLAB toolboxes (VIFB/MEFB/Liu). A convention can be selected per metric (``SF.vifb``) or by a
toolbox tag applied to every metric that has it (``vifb``, ``tang``, ``mefb``, ``liu``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its canonical name, default convention, and the selectable ones.

    ``conventions`` maps each accepted convention name (aliases included) to the name the
    implementation understands; ``higher_is_better`` drives the bold best value in tables.
    """

    name: str
    default: str
    conventions: dict[str, str] = field(default_factory=dict)
    higher_is_better: bool = True
    needs_sources: bool = True


def _c(*pairs: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        alias, _, impl = p.partition("=")
        out[alias] = impl or alias
    return out


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("EN", "cddfuse", _c("cddfuse", "tang", "vifb", "mefb"), needs_sources=False),
        MetricSpec("SD", "cddfuse", _c("cddfuse", "tang=cddfuse", "vifb=cddfuse",
                                       "mefb=cddfuse"), needs_sources=False),
        MetricSpec("SF", "cddfuse", _c("cddfuse", "tang", "vifb", "mefb"), needs_sources=False),
        MetricSpec("AG", "cddfuse", _c("cddfuse", "tang", "vifb", "mefb"), needs_sources=False),
        MetricSpec("MI", "cddfuse", _c("cddfuse", "vifb", "tang")),
        MetricSpec("SCD", "cddfuse", _c("cddfuse", "tang=cddfuse")),
        MetricSpec("CC", "cddfuse", _c("cddfuse", "tang=cddfuse")),
        MetricSpec("PSNR", "cddfuse", _c("cddfuse", "tang", "vifb", "mefb")),
        MetricSpec("MSE", "cddfuse", _c("cddfuse", "tang", "vifb", "mefb"),
                   higher_is_better=False),
        MetricSpec("SSIM", "cddfuse", _c("cddfuse", "skimage_dr255_sum", "vifb",
                                         "tang_matlab_ssim_emul",
                                         "tang=tang_matlab_ssim_emul",
                                         "matlab=tang_matlab_ssim_emul",
                                         "pytorch_msssim_sum")),
        MetricSpec("MS_SSIM", "pytorch_msssim_mean",
                   _c("pytorch_msssim_mean", "pytorch_msssim_sum", "wang_mean", "wang_sum",
                      "pytorch_msssim=pytorch_msssim_mean", "wang_msssim=wang_mean")),
        MetricSpec("VIF", "cddfuse", _c("cddfuse", "tang=cddfuse")),
        MetricSpec("Qabf", "cddfuse", _c("cddfuse", "tang=cddfuse", "vifb=cddfuse",
                                         "mefb=cddfuse")),
        MetricSpec("Nabf", "vifb_cbf", _c("vifb_cbf", "tang_fused_first", "tang_as_called",
                                          "vifb=vifb_cbf", "tang=tang_as_called"),
                   higher_is_better=False),
        MetricSpec("Q_CB", "vifb", _c("vifb", "liu", "mefb")),
        MetricSpec("Q_NCIE", "mefb", _c("mefb", "liu=mefb")),
        MetricSpec("Q_Y", "mefb", _c("mefb", "liu")),
        # MEFB metricsFMI and Tang's analysis_Reference call the function without a feature,
        # so theirs is edge-FMI (not provided): no "mefb"/"tang" alias maps to pixel-FMI.
        MetricSpec("FMI", "pixel", _c("pixel", "none=pixel", "dct")),
    )
}

# Accepted spellings of metric names (case-insensitive, '-' or '_').
_ALIASES = {k.upper().replace("-", "_"): k for k in METRICS}
_ALIASES.update({"MSSSIM": "MS_SSIM", "QABF": "Qabf", "NABF": "Nabf", "QCB": "Q_CB",
                 "QNCIE": "Q_NCIE", "QY": "Q_Y", "FMI_PIXEL": "FMI", "VIFF": "VIF"})

TOOLBOX_TAGS = ("cddfuse", "tang", "vifb", "mefb", "liu")


def canonical_metric(name: str) -> str:
    """The registry name of a metric; raises KeyError naming the valid ones."""
    key = name.strip().upper().replace("-", "_")
    if key not in _ALIASES:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return _ALIASES[key]


def resolve(metric: str, convention: str | None) -> str:
    """The implementation convention of ``metric`` for a user-given name (None = default)."""
    spec = METRICS[canonical_metric(metric)]
    if convention is None or convention == "default":
        return spec.conventions.get(spec.default, spec.default)
    if convention not in spec.conventions:
        raise KeyError(f"unknown convention {convention!r} for {spec.name}; "
                       f"known: {', '.join(spec.conventions)}")
    return spec.conventions[convention]


def accepts_aliases(metric: str):
    """Decorator: the function's ``convention`` argument may be any name :func:`compute`
    accepts (a toolbox tag such as ``tang`` or ``vifb``), not only the implementation's own;
    an unknown name reaches the function, which rejects it."""
    import contextlib
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            conv = bound.arguments.get("convention")
            if conv is not None:
                with contextlib.suppress(KeyError):  # the function names the bad one
                    bound.arguments["convention"] = resolve(metric, conv)
            return fn(*bound.args, **bound.kwargs)

        return inner

    return wrap


def metric_names(metrics: str | Iterable[str] | None) -> list[str]:
    """Canonical metric names, in the order given, each once (None = every metric).

    ``metrics`` is an iterable of names or one comma-separated string (``"EN,SD"``); spellings
    are case-insensitive (``EN,en`` is one metric). Raises KeyError for an unknown name and
    ValueError when nothing is named (an empty list must not silently mean "all of them").
    """
    if metrics is None:
        return list(METRICS)
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [s.strip() if isinstance(s, str) else s for s in items]
    for s in names:
        if not isinstance(s, str):
            raise TypeError(f"a metric name must be a string, not {type(s).__name__}")
    names = [s for s in names if s]
    if not names:
        raise ValueError(f"no metric named in {metrics!r}; known: {', '.join(METRICS)}")
    return list(dict.fromkeys(canonical_metric(m) for m in names))


def parse_convention_spec(spec: str | None, metrics: list[str]) -> dict[str, str]:
    """Turn ``--convention`` text into {metric: implementation convention}.

    ``spec`` is a comma list of toolbox tags (``vifb``: every scored metric that has it) and/or
    ``METRIC.name`` items (``SF.vifb``); later items win. Metrics not named keep the default.
    Raises KeyError for an unknown tag, metric or convention, and for an item that would change
    nothing: a ``METRIC.name`` whose metric is not in ``metrics``, or a tag none of them has
    (a silently ignored convention would let a table claim a convention it was not scored by).
    """
    out = {m: resolve(m, None) for m in metrics}
    if not spec:
        return out
    scored = ", ".join(metrics)
    for item in (s.strip() for s in spec.split(",")):
        if not item or item == "default":
            continue
        if "." in item:
            mname, _, conv = item.partition(".")
            m = canonical_metric(mname)
            value = resolve(m, conv)
            if m not in out:
                raise KeyError(f"convention {item!r} is for {m}, which is not scored "
                               f"(metrics: {scored})")
            out[m] = value
            continue
        hits = [m for m in metrics if item in METRICS[m].conventions]
        if not hits:
            if not any(item in s.conventions for s in METRICS.values()):
                raise KeyError(f"unknown convention {item!r}; use a toolbox tag "
                               f"({', '.join(TOOLBOX_TAGS)}) or METRIC.name")
            has = [s.name for s in METRICS.values() if item in s.conventions]
            raise KeyError(f"convention {item!r} applies to none of the scored metrics "
                           f"({scored}); the metrics that have it: {', '.join(has)}")
        for m in hits:
            out[m] = resolve(m, item)
    return out
