"""Allow ``python -m nsn_cli``."""

from nsn_cli.cli import main

if __name__ == "__main__":
    main()
