"""`python -m fedcredit` is the `fedcredit` command."""

from fedcredit.cli import main

main()
