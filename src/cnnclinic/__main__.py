"""``python -m cnnclinic``: the command line, also as torchrun starts it (``torchrun ... -m cnnclinic train``)."""

from cnnclinic.cli import main

main()
