"""`python -m cryoinverse` runs the command line."""

from .cli import main

main()
