"""Every test process starts without a terminal size: output widths are part of what
the tests check, and pytest-xdist's workers inherit COLUMNS=80 and LINES=24. Tests that
need a width set COLUMNS themselves."""

import os

for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
