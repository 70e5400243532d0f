"""`python -m gradtool` runs the CLI."""

from gradtool.cli import main

if __name__ == "__main__":
    main()
