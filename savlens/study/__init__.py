"""Generalisation studies as one call: sweeps over tasks, shots, k, seeds, criteria, modes and voting rules.

:func:`run_study` takes labelled feature stores (or :class:`~savlens.cache.HeadFeatures`) of one or more tasks
and a grid (:class:`StudyConfig`), draws the few-shot splits (:func:`draw_split`: stratified, seeded, disjoint
by an optional group key such as the image), selects heads, fits and tests SAVs on every task and transfer pair,
and returns a tidy :class:`StudyTable` (one :class:`StudyRow` per setting and seed: accuracy, macro-F1,
per-class recall, the heads, the time), with summaries over seeds, CSV / JSON / pandas export and the standard
figures (:func:`write_figures`). ``savlens study config.toml`` runs the same from a TOML file
(:func:`load_study_file`). A bad config raises :class:`~savlens.errors.StudyConfigError` before any work.
See docs/studies.md.
"""

from savlens.stats import class_metrics, t_quantile_975
from savlens.study.runner import StudyConfig, make_config, run_study
from savlens.study.split import check_disjoint, draw_nested_split, draw_split, resolve_groups
from savlens.study.table import SETTING, StudyRow, StudyTable, write_figures

__all__ = [
    "SETTING",
    "StudyConfig",
    "StudyRow",
    "StudyTable",
    "check_disjoint",
    "class_metrics",
    "draw_nested_split",
    "draw_split",
    "make_config",
    "resolve_groups",
    "run_study",
    "t_quantile_975",
    "write_figures",
]
