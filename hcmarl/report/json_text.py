"""Reading the JSON that run folders and results files hold: one parse whose failure is a :class:`RunDataError`
naming where the text came from (a file, or a file's line), so a damaged file stops ``hcmarl report`` or
``hcmarl sweep`` with that name and not a traceback."""

from __future__ import annotations

import json
from typing import Any

from hcmarl.errors import RunDataError


def parse_json(text: str, where: object, hint: str = "") -> Any:
    """``json.loads(text)``; invalid JSON raises ``RunDataError("<where> is not valid JSON (<error>)<hint>")``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDataError(f"{where} is not valid JSON ({err}){hint}") from None
