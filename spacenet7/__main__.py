"""``python -m spacenet7 STAGE ...`` behaves exactly like the ``spacenet7`` console script."""

from spacenet7.cli import main

main()
