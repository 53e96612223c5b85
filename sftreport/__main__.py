"""`python -m sftreport` is the `sftreport` command."""

from sftreport.cli import main

raise SystemExit(main())
