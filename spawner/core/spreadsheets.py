"""CSV that a spreadsheet opens safely: a text cell that begins with a formula character is read as text.

Usernames come from the university's provider and course names from instructors; a cell such as
``=HYPERLINK(...)`` or ``@SUM(...)`` would otherwise run as a formula in the admin's spreadsheet (OWASP's
"CSV injection"). The cell keeps its text, prefixed with a single quote that spreadsheets do not show.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell
