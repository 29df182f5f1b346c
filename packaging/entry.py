"""The one-file cns-agent's entry point: the same `agent.cli:main` as the console script."""
import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
