"""``python -m cloudmask`` runs the CLI (for environments where the console script is not on PATH)."""

from cloudmask.cli import main

if __name__ == "__main__":
    main()
