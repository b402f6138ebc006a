"""The contact store: tables, migrations, staging and set-based merges, identity matching, watermarks."""
