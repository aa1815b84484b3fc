"""Entry point for `python -m crucible`; the same as the `crucible` console script.

See crucible.cli for the commands.
"""

from crucible.cli import main

raise SystemExit(main())
