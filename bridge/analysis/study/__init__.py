"""The step-wise study: when do background, objects, details and attributes emerge?

prompts (templates with word roles) -> execute (generations, in-process or Ray) -> runs (each
run's numbers by the phases' definitions) -> report (tables, bootstrap CIs, plots).
See docs/TIMELINES.md.
"""

from .execute import StudySettings, run_study
from .phrases import PhraseGrouper, TaggedPhrases, TitanPhrases, phrase_maps
from .prompts import ROLES, StudyPrompt, parse_line, read_prompts
from .report import write_report
from .runs import RunResult, analyse

__all__ = ["ROLES", "PhraseGrouper", "RunResult", "StudyPrompt", "StudySettings", "TaggedPhrases", "TitanPhrases", "analyse",
           "parse_line", "phrase_maps", "read_prompts", "run_study", "write_report"]
