"""`python -m iddpm` runs the command line."""

from iddpm.cli import main

if __name__ == "__main__":
    main()
