"""The research report of a run: built from the run folder's stored results (`build`), drawn
as SVG figures (`charts`), written as self-contained HTML and as Markdown (`render`).

Import the parts you need (`agents.report.render.write_reports`, `...build.build_report`);
this package's ``__init__`` stays light because the playbook imports `agents.report.answer`.
"""

from agents.report.answer import ROLE_ORDER, compose_answer, no_behaviour_answer, ordered

__all__ = ["ROLE_ORDER", "compose_answer", "no_behaviour_answer", "ordered"]
