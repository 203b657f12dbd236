"""``python -m segany.cli``: same as the ``segany`` command."""

from .main import main

raise SystemExit(main())
