"""``python -m auditlog``: the command line."""

from auditlog.cli.main import main

if __name__ == "__main__":
    main()
