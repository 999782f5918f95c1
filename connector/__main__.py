"""`python -m connector` runs the CLI."""

from __future__ import annotations

from connector.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
