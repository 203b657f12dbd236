"""``python -m segany``: same as the ``segany`` command."""

from .cli.main import main

raise SystemExit(main())
