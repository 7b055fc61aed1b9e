"""``python -m scs_gan`` is the ``scs-gan`` command."""

from .cli import main

raise SystemExit(main())
