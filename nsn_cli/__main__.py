"""Allow ``python -m nsn_cli``."""

from nsn_cli.entry import main

if __name__ == "__main__":
    main()
