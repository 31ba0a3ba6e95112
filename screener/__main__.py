"""`python -m screener`: the same as the `screener` command."""

from screener.cli import main

raise SystemExit(main())
