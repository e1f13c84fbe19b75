"""``python -m fastws.cli``: the same as ``python -m fastws`` and the ``fastws`` script."""

from fastws.cli import main

raise SystemExit(main())
