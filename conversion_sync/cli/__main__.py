"""`python -m conversion_sync.cli`: the same as the `conversion-sync` command."""

from conversion_sync.cli import main

main()
